"""COPY ... FROM STDIN into tenant-scoped tables: rows filled or checked one by
one, in text and CSV, however the client cuts its CopyData messages, and split
exactly as PostgreSQL splits them (issue 12, class 5)."""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy.errors import PgError, Refused
from proxy.sql.copyin import BadCopyData, CopyFormat, CopyIn, CopyLines, row_fields
from tests.harness import Database


def _run(fmt: CopyFormat, data: bytes, cuts: list[int], tenant: str = "1") -> bytes:
    copy = CopyIn(fmt, tenant, quote_tenant=False)
    out, last = b"", 0
    for cut in sorted(set(cuts)):
        out += copy.feed(data[last:cut])
        last = cut
    return out + copy.feed(data[last:]) + copy.finish()


TEXT = b"a@x\tAnn\nb@x\t\\N\nc\\tx@x\tC\\\\\n"
CSV = b'a@x,"Ann, Jr"\r\n"multi\r\nline@x",B\r\n"q""uote@x",C\r\n'


@given(st.lists(st.integers(0, len(TEXT)), max_size=6))
def test_text_rows_get_the_tenant_appended(cuts: list[int]) -> None:
    assert _run(CopyFormat(), TEXT, cuts) == \
        b"a@x\tAnn\t1\nb@x\t\\N\t1\nc\\tx@x\tC\\\\\t1\n"


@given(st.lists(st.integers(0, len(CSV)), max_size=6))
def test_csv_rows_with_quoted_newlines(cuts: list[int]) -> None:
    fmt = CopyFormat(csv=True, delimiter=",")
    assert _run(fmt, CSV, cuts) == \
        b'a@x,"Ann, Jr",1\r\n"multi\r\nline@x",B,1\r\n"q""uote@x",C,1\r\n'


def test_header_end_marker_and_missing_final_newline() -> None:
    fmt = CopyFormat(csv=True, delimiter=",", header=True)
    assert _run(fmt, b"email,name\nx@x,X", []) == b"email,name\nx@x,X,1"
    assert _run(CopyFormat(), b"x@x\tX\n\\.\n", []) == b"x@x\tX\t1\n\\.\n"


@pytest.mark.parametrize("fmt,data", [
    (CopyFormat(tenant_index=0), b"1\ta@x\n2\tb@x\n"),
    (CopyFormat(tenant_index=1), b"a@x\t\\N\n"),
    (CopyFormat(csv=True, delimiter=",", tenant_index=1), b'a@x,"1"\nb@x,"2"\n'),
    (CopyFormat(csv=True, delimiter=",", tenant_index=1), b"a@x\n"),
])
def test_rows_of_another_tenant_are_refused(fmt: CopyFormat, data: bytes) -> None:
    with pytest.raises(Refused, match="is not this session's tenant"):
        _run(fmt, data, [])


def test_rows_of_the_tenant_pass_unchanged() -> None:
    data = b'1,"a@x"\n1,b@x\n'
    assert _run(CopyFormat(csv=True, delimiter=",", tenant_index=0), data, [3, 9]) == data


# --- rows split as PostgreSQL splits them --------------------------------------------


@pytest.mark.parametrize("fmt,data", [
    (CopyFormat(tenant_index=0), b"1\t11.11\r2\t22.22"),  # the example
    (CopyFormat(tenant_index=0), b"1\t11.11\r2\t22.22\r"),
    (CopyFormat(csv=True, delimiter=",", tenant_index=0), b"1,11.11\r2,22.22\r"),
    (CopyFormat(tenant_index=1), b"11.11\t1\r\n22.22\t2\r\n"),
    (CopyFormat(tenant_index=0), b"1\t1\\\\\n2\t2\n"),  # an escaped backslash, then a row
    (CopyFormat(tenant_index=0), b"\\x32\tx\n"),  # \x32 is "2"
    (CopyFormat(tenant_index=0), b"\\N\tx\n"),
])
def test_rows_ended_by_any_newline_are_checked(fmt: CopyFormat, data: bytes) -> None:
    for cuts in ([], list(range(len(data)))):
        with pytest.raises(Refused, match="is not this session's tenant"):
            _run(fmt, data, cuts)


@pytest.mark.parametrize("data,error", [
    (b"1\tx\n1\ty\r", "literal carriage return found in data"),
    (b"1\tx\r\n1\ty\n", "literal newline found in data"),
    (b"1\tx\r1\ty\n", "literal newline found in data"),
    (b"1\tx\n\\.x\n", "end-of-copy marker corrupt"),
    (b"1\tx\r\\.\n", "end-of-copy marker does not match previous newline style"),
])
def test_data_postgresql_rejects_is_refused_with_its_error(data: bytes, error: str) -> None:
    with pytest.raises(BadCopyData, match=error) as info:
        _run(CopyFormat(tenant_index=0), data, [])
    assert info.value.sqlstate == "22P04"


def test_escapes_and_end_marker_as_postgresql_reads_them() -> None:
    fmt = CopyFormat(tenant_index=0)
    assert _run(fmt, b"\\061\tx\n", []) == b"\\061\tx\n"  # octal 061 is "1"
    assert _run(fmt, b"1\ta\\\nb\n1\tc\\.\n2\tz\n", []) == b"1\ta\\\nb\n1\tc\\.\n"
    assert _run(CopyFormat(), b"x\ty\\", []) == b"x\ty\t1"  # PostgreSQL drops the lone \\


# --- the splitter against PostgreSQL itself ------------------------------------------

COLUMNS = ("a", "b", "c")
TEXT_PIECES = [b"a", b"1", b"\t", b"\\", b"\\\\", b"\\N", b"\\.", b"\\n", b"\\r", b"\r", b"\n",
               b"\r\n", b"\\x41", b"\\101", b".", b"\\t", b"\\\r", b"\\\n"]
CSV_PIECES = [b"a", b"1", b",", b'"', b'""', b"\r", b"\n", b"\r\n", b"\\.", b"\\", b" ", b".",
              b"'"]


@st.composite
def payloads(draw: st.DrawFn) -> tuple[CopyFormat, str, bytes, list[int]]:
    csv = draw(st.booleans())
    pieces = draw(st.lists(st.sampled_from(CSV_PIECES if csv else TEXT_PIECES), max_size=30))
    data = b"".join(pieces)
    header = draw(st.booleans())
    escape = draw(st.sampled_from(['"', "'", "\\"])) if csv else '"'
    fmt = CopyFormat(csv=csv, delimiter="," if csv else "\t", escape=escape, header=header)
    options = ["FORMAT csv", f"ESCAPE '{escape * (2 if escape == chr(39) else 1)}'"] if csv \
        else ["FORMAT text"]
    options += ["HEADER"] if header else []
    cuts = sorted(draw(st.sets(st.integers(0, len(data)), max_size=4)))
    return fmt, f"({', '.join(options)})", data, cuts


def split(fmt: CopyFormat, data: bytes, cuts: list[int]) -> list[tuple[str | None, ...]]:
    """The rows the proxy's splitter reads, checked for the column count as the server
    checks it (line by line, so the first error is the server's first error)."""
    lines, rows, header = CopyLines(fmt), [], fmt.header
    pieces = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]
    for n, piece in enumerate(pieces):
        lines.feed(piece)
        while (line := lines.next(eof=n == len(pieces) - 1)) is not None:
            if header or (line.last and not line.content):
                header = False
                continue
            row = tuple(None if f is None else f.decode() for f in row_fields(fmt,
                                                                              line.content))
            if len(row) < len(COLUMNS):
                raise BadCopyData(f'missing data for column "{COLUMNS[len(row)]}"')
            if len(row) > len(COLUMNS):
                raise BadCopyData("extra data after last expected column")
            rows.append(row)
    return rows


@pytest.fixture(scope="module")
def copy_table(db: Database) -> Iterator[psycopg.Connection]:
    with psycopg.connect(db.dsn(), autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS copy_split; CREATE TABLE copy_split "
                     "(id serial, a text, b text, c text, t text)")
        yield conn
        conn.execute("DROP TABLE copy_split")


def stored(conn: psycopg.Connection, options: str, data: bytes, columns: str
           ) -> list[tuple[str | None, ...]] | psycopg.Error:
    conn.execute("TRUNCATE copy_split RESTART IDENTITY")
    try:
        with conn.cursor().copy(f"COPY copy_split ({columns}) FROM STDIN {options}") as copy:
            copy.write(data)
    except psycopg.Error as exc:
        return exc
    return [tuple(r) for r in conn.execute(f"SELECT {columns} FROM copy_split ORDER BY id")]


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(payloads())
def test_splitter_reads_the_rows_postgresql_stores(
        copy_table: psycopg.Connection, payload: tuple[CopyFormat, str, bytes, list[int]]
) -> None:
    """Random text and CSV payloads (\\r, \\n, \\r\\n, escapes, quotes, end markers) go
    into a real table directly: the server stores exactly the rows the splitter read,
    or both fail with the same error; and the proxy's output with the tenant column
    appended stores those rows plus the tenant."""
    fmt, options, data, cuts = payload
    try:
        mine: list[tuple[str | None, ...]] | PgError = split(fmt, data, cuts)
    except BadCopyData as exc:
        mine = exc
    got = stored(copy_table, options, data, "a, b, c")
    if isinstance(mine, PgError):
        assert isinstance(got, psycopg.Error), (mine, got)
        assert got.diag.message_primary == mine.message and got.sqlstate == mine.sqlstate
        return
    assert got == mine
    copy = CopyIn(fmt, "7", quote_tenant=False)
    filled = b"".join(copy.feed(data[a:b]) for a, b in zip([0, *cuts], [*cuts, len(data)],
                                                           strict=True)) + copy.finish()
    assert stored(copy_table, options, filled, "a, b, c, t") == [(*r, "7") for r in mine]
