"""COPY ... FROM STDIN into tenant-scoped tables: rows filled or checked one by
one, in text and CSV, however the client cuts its CopyData messages."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.errors import Refused
from proxy.sql.copyin import CopyFormat, CopyIn


def _run(fmt: CopyFormat, data: bytes, cuts: list[int], tenant: str = "1") -> bytes:
    copy = CopyIn(fmt, tenant, quote_tenant=False)
    out, last = b"", 0
    for cut in sorted(set(cuts)):
        out += copy.feed(data[last:cut])
        last = cut
    return out + copy.feed(data[last:]) + copy.finish()


TEXT = b"a@x\tAnn\nb@x\t\\N\nc\\tx@x\tC\\\\\n"
CSV = b'a@x,"Ann, Jr"\n"multi\nline@x",B\r\n"q""uote@x",C\n'


@given(st.lists(st.integers(0, len(TEXT)), max_size=6))
def test_text_rows_get_the_tenant_appended(cuts: list[int]) -> None:
    assert _run(CopyFormat(), TEXT, cuts) == \
        b"a@x\tAnn\t1\nb@x\t\\N\t1\nc\\tx@x\tC\\\\\t1\n"


@given(st.lists(st.integers(0, len(CSV)), max_size=6))
def test_csv_rows_with_quoted_newlines(cuts: list[int]) -> None:
    fmt = CopyFormat(csv=True, delimiter=",")
    assert _run(fmt, CSV, cuts) == \
        b'a@x,"Ann, Jr",1\n"multi\nline@x",B,1\r\n"q""uote@x",C,1\n'


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
