"""Value codecs of encrypted columns (proxy/crypto/values.py), held to PostgreSQL itself.

The plaintext sealed in an encrypted column must be exactly PostgreSQL's binary send
of the value, and what a client reads back must be exactly PostgreSQL's text output
in that client's TimeZone; so the live tests ask a real server for both, for
generated inputs of every logical type, and compare refusals SQLSTATE for SQLSTATE.
The offline properties use psycopg's binary adapters as a second, independent
implementation of the binary formats.
"""

from __future__ import annotations

import decimal
import json
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from functools import partial
from typing import Any

import psycopg
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from psycopg import pq
from psycopg.adapt import Dumper, Loader
from psycopg.types.bool import BoolBinaryDumper, BoolBinaryLoader
from psycopg.types.datetime import (
    DateBinaryDumper,
    DateBinaryLoader,
    DatetimeBinaryDumper,
    TimestamptzBinaryLoader,
)
from psycopg.types.json import Jsonb, JsonbBinaryDumper, JsonbBinaryLoader
from psycopg.types.numeric import (
    DecimalBinaryDumper,
    Int2BinaryDumper,
    Int2BinaryLoader,
    Int4BinaryDumper,
    Int4BinaryLoader,
    Int8BinaryDumper,
    Int8BinaryLoader,
    NumericBinaryLoader,
)
from psycopg.types.string import (
    ByteaBinaryLoader,
    BytesBinaryDumper,
    StrBinaryDumper,
    TextBinaryLoader,
)

from proxy.crypto.values import TYPE_OIDS, TYPE_SIZES, InvalidValue, from_plain, to_plain
from tests.harness import Database

TYPES = tuple(TYPE_OIDS)
#: Session time zones: half-hour and odd historical offsets, DST in both hemispheres'
#: sense, and POSIX-style fixed offsets (which count hours west of Greenwich).
ZONES = ("UTC", "Asia/Kolkata", "America/St_Johns", "Europe/Amsterdam", "+05:30", "<-07>+07")
Outcome = tuple[Any, ...]


# --- generated text inputs, in the forms the codecs claim to read -----------------------

_space = st.sampled_from(["", "", "", " ", "  ", "\t", "\n", " \r\n"])
_digits = "0123456789"
_chars = st.characters(exclude_characters="\x00", exclude_categories=("Cs",))  # storable text


def _padded(core: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    return st.builds(lambda a, c, b: a + c + b, _space, core, _space)


def _any_case(words: Sequence[str]) -> st.SearchStrategy[str]:
    return st.builds(
        lambda w, mask: "".join(c.upper() if mask >> i & 1 else c for i, c in enumerate(w)),
        st.sampled_from(words), st.integers(0, 1023))


def _integers(bits: int) -> st.SearchStrategy[str]:
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    value = st.one_of(st.integers(lo, hi), st.sampled_from([lo, hi, lo - 1, hi + 1, 0]),
                      st.integers(-10**25, 10**25))
    literal = st.builds(lambda v, plus, zeros: ("-" if v < 0 else plus) + "0" * zeros + str(abs(v)),
                        value, st.sampled_from(["", "+"]), st.integers(0, 3))
    return _padded(st.one_of(literal, st.sampled_from(["", "+", "1 2", "12a", "--1", "١٢"])))


def _exponent() -> st.SearchStrategy[str]:
    size = st.one_of(st.integers(0, 40), st.integers(16370, 16400), st.integers(131060, 131080))
    return st.builds(lambda e, sign, n: f"{e}{sign}{n}", st.sampled_from("eE"),
                     st.sampled_from(["", "+", "-"]), size)


_numeric = _padded(st.one_of(
    st.builds(lambda sign, whole, fraction, exponent: sign + whole + fraction + exponent,
              st.sampled_from(["", "+", "-"]), st.text(_digits, max_size=25),
              st.one_of(st.just(""), st.text(_digits, max_size=25).map(lambda d: "." + d)),
              st.one_of(st.just(""), _exponent())),
    _any_case(["nan", "infinity", "+infinity", "-infinity", "inf", "+inf", "-inf", "-nan"])))

_boolean = _padded(_any_case(["t", "tr", "tru", "true", "y", "ye", "yes", "on", "1", "f", "fa",
                              "fal", "fals", "false", "n", "no", "of", "off", "0", "o", "",
                              "truee", "2", "-1", "o n"]))


def _ymd(max_year: int) -> st.SearchStrategy[tuple[str, str]]:
    """A date (any field may be out of range) and an era suffix."""
    year = st.one_of(st.integers(0, 2200), st.integers(1, max_year),
                     st.sampled_from([4713, 4714, max_year - 1, max_year]))
    return st.builds(lambda y, m, d, width, mwidth, era: (f"{y:0{width}d}-{m:0{mwidth}d}-"
                                                          f"{d:0{mwidth}d}", era),
                     year, st.integers(1, 13), st.integers(1, 31), st.integers(3, 5),
                     st.integers(1, 2), st.sampled_from(["", "", "", " BC", " AD", " bc"]))


_date = _padded(st.one_of(
    _ymd(5874898).map(lambda parts: parts[0] + parts[1]),
    _any_case(["infinity", "-infinity", "epoch"])))

_clock = st.builds(
    lambda sep, h, m, s, fraction: f"{sep}{h:02d}:{m:02d}" + ("" if s is None else
                                                            f":{s:02d}{fraction}"),
    st.sampled_from([" ", "T", "t", "  "]), st.integers(0, 24),
    st.one_of(st.integers(0, 59), st.just(60)), st.one_of(st.none(), st.integers(0, 60)),
    st.one_of(st.just(""), st.text(_digits, max_size=9).map(lambda d: "." + d)))
_offset = st.builds(
    lambda sign, h, m, s, style: sign + [f"{h:02d}", f"{h}", f"{h:02d}:{m:02d}",
                                         f"{h:02d}{m:02d}", f"{h:02d}:{m:02d}:{s:02d}"][style],
    st.sampled_from("+-"), st.one_of(st.integers(0, 15), st.just(16)), st.integers(0, 59),
    st.integers(0, 59), st.integers(0, 4))
_zone_names = st.sampled_from(["Z", "z", "UTC", "utc", "GMT", "Europe/Paris", "asia/kolkata",
                               "America/New_York", "Nowhere/Atall"])


def _timestamp(parts: tuple[str, str], clock: str, zone: str | None, spaced: bool) -> str:
    day, era = parts
    if zone is not None and (spaced or not clock or zone[0].isalpha()):
        zone = " " + zone
    return day + clock + (zone or "") + era


_timestamptz = _padded(st.one_of(
    st.builds(_timestamp, _ymd(294277), st.one_of(st.just(""), _clock),
              st.one_of(st.none(), _offset, _zone_names), st.booleans()),
    _any_case(["infinity", "-infinity", "epoch"])))

_json_space = st.sampled_from(["", "", " ", "\n", "\t ", "\r\n"])
_json_number = st.builds(
    lambda sign, whole, fraction, exponent: sign + whole + fraction + exponent,
    st.sampled_from(["", "-"]), st.one_of(st.just("0"), st.from_regex(r"[1-9][0-9]{0,20}",
                                                                       fullmatch=True)),
    st.one_of(st.just(""), st.from_regex(r"\.[0-9]{1,10}", fullmatch=True)),
    st.one_of(st.just(""), st.from_regex(r"[eE][+-]?[0-9]{1,3}", fullmatch=True)))
_json_string = st.builds(
    lambda s, ascii_only, slash: json.dumps(s, ensure_ascii=ascii_only).replace(
        "/", "\\/" if slash else "/"),
    st.text(_chars, max_size=8), st.booleans(), st.booleans())
_json_key = st.one_of(st.sampled_from(['"a"', '"b"', '"aa"', '""', '"é"', '"ab"', '"B"']),
                      _json_string)
_json = st.recursive(
    st.one_of(st.sampled_from(["null", "true", "false"]), _json_number, _json_string),
    lambda inner: st.one_of(
        st.builds(lambda items, sp: "[" + sp + ("," + sp).join(items) + "]",
                  st.lists(inner, max_size=4), _json_space),
        st.builds(lambda pairs, sp: "{" + ",".join(f"{sp}{k}{sp}:{sp}{v}" for k, v in pairs)
                  + sp + "}", st.lists(st.tuples(_json_key, inner), max_size=4), _json_space)),
    max_leaves=12)
_jsonb = st.one_of(
    st.builds(lambda a, j, b: a + j + b, _json_space, _json, _json_space),
    st.sampled_from(["", "{", "[1,]", "NaN", "Infinity", "'a'", '"\\u0000"', '"\\ud800"',
                     '"\\ud83d\\ude00"', "01", "1.", '{"a" 1}', "[1] x", "tru", "1e999999",
                     '"\\x"', '"\t"']))


def _bytea_literal(data: bytes, style: int) -> str:
    if style == 0:
        return "\\x" + data.hex()
    if style == 1:
        return "\\x" + " ".join(data.hex().upper()[i:i + 2] for i in range(0, 2 * len(data), 2))
    return "".join(chr(b) if 0x20 <= b < 0x7F and b != 0x5C else
                   "\\\\" if b == 0x5C else f"\\{b:03o}" for b in data)


_bytea = st.one_of(
    st.builds(_bytea_literal, st.binary(max_size=24), st.integers(0, 2)),
    st.sampled_from(["\\xa", "\\xzz", "a\\b", "a\\400", "\\X41", "\\x a b", "\\x", "a\\\\"]))
_text = st.text(_chars)

INPUTS: dict[str, st.SearchStrategy[str]] = {
    "text": _text, "smallint": _integers(16), "integer": _integers(32),
    "bigint": _integers(64), "numeric": _numeric, "boolean": _boolean, "date": _date,
    "timestamptz": _timestamptz, "jsonb": _jsonb, "bytea": _bytea,
}
#: Inputs worth checking whatever hypothesis draws: DST gaps and overlaps, local mean
#: time offsets with seconds, years past datetime's range, the ends of the range.
TIMESTAMP_EXAMPLES = [
    "2024-03-31 02:30:00", "2024-10-27 02:30:00", "2024-03-10 02:30:00",
    "2024-11-03 01:30:00", "1988-04-03 00:30:00", "1988-10-30 00:30:00",
    "1890-07-01 12:00:00", "0100-01-02 12:00:00 BC", "20000-07-02 12:00:00",
    "4714-11-24 00:00:00 BC", "4714-11-24 12:00:00+00 BC", "294276-12-31 23:59:59.999999",
    "294276-12-31 23:59:59.999999+00", "2024-01-02 12:00:59.9999995", "2024-01-02 23:59:60",
    "2024-01-02 12:00:60.5", "2024-01-02 23:59:60.5", "2024-01-02 24:00:00.0000001",
]


# --- PostgreSQL as the oracle ------------------------------------------------------------

class Postgres:
    """One superuser session, asked through libpq directly so values stay raw bytes."""

    def __init__(self, conn: psycopg.Connection) -> None:
        self.conn = conn
        self.zone: str | None = None

    def timezone(self, zone: str) -> None:
        if zone != self.zone:
            self.run("SELECT set_config('TimeZone', $1, false)", zone.encode())
            self.zone = zone

    def run(self, sql: str, value: bytes, *, oid: int = 0, fmt: int = 0,
            result: int = 1) -> Outcome:
        res = self.conn.pgconn.exec_params(sql.encode(), [value], [oid], [fmt], result)
        if res.status == pq.ExecStatus.TUPLES_OK:
            return ("ok", res.get_value(0, 0))
        sqlstate = res.error_field(pq.DiagnosticField.SQLSTATE) or b""
        message = res.error_field(pq.DiagnosticField.MESSAGE_PRIMARY) or b""
        return ("error", sqlstate.decode(), message.decode())


def _ours(call: Callable[[], bytes]) -> Outcome:
    try:
        return ("ok", call())
    except InvalidValue as exc:
        return ("error", exc.sqlstate, exc.message)


@pytest.fixture(scope="module")
def pg(db: Database) -> Iterator[Postgres]:
    with psycopg.connect(db.dsn(db.superuser, "postgres"), autocommit=True) as conn:
        yield Postgres(conn)


def _check(pg: Postgres, type_name: str, text: str, zone: str) -> None:
    """(a) our plaintext is PostgreSQL's binary send of the value, or we refuse it as
    PostgreSQL does; (b) our text output is PostgreSQL's, in the session's zone."""
    data, oid, cast = text.encode(), TYPE_OIDS[type_name], f"SELECT $1::{type_name}"
    pg.timezone(zone)
    want = pg.run(cast, data)
    assert _ours(lambda: to_plain(type_name, data, 0, canonical=False, timezone=zone)) == want
    if want[0] != "ok":
        return
    plain = want[1]
    assert from_plain(type_name, plain, 0, timezone=zone) == \
        pg.run(cast, plain, oid=oid, fmt=1, result=0)[1]
    assert from_plain(type_name, plain, 1, timezone=zone) == plain
    assert to_plain(type_name, plain, 1, canonical=False, client_type=oid, timezone=zone) == plain
    canonical = pg.run("SELECT trim_scale($1::numeric)", data)[1] \
        if type_name == "numeric" else plain
    assert to_plain(type_name, data, 0, canonical=True, timezone=zone) == canonical
    assert to_plain(type_name, plain, 1, canonical=True, client_type=oid,
                    timezone=zone) == canonical


@pytest.mark.parametrize("type_name", [t for t in TYPES if t != "timestamptz"])
def test_values_match_postgresql(pg: Postgres, type_name: str) -> None:
    @settings(max_examples=50, deadline=None)
    @given(text=INPUTS[type_name])
    def check(text: str) -> None:
        _check(pg, type_name, text, "UTC")
    check()


@pytest.mark.parametrize("zone", ZONES)
def test_timestamps_match_postgresql(pg: Postgres, zone: str) -> None:
    @settings(max_examples=50, deadline=None)
    @given(text=_timestamptz)
    def check(text: str) -> None:
        _check(pg, "timestamptz", text, zone)
    for text in TIMESTAMP_EXAMPLES:
        check = example(text=text)(check)
    check()


def _near_miss(text: str, at: int, char: str, drop: bool) -> str:
    at %= len(text) + 1
    return text[:at] + text[at + 1:] if drop else text[:at] + char + text[at:]


@pytest.mark.parametrize("type_name", TYPES)
def test_whatever_we_accept_postgresql_reads_alike(pg: Postgres, type_name: str) -> None:
    """Mangled inputs: the codecs may refuse forms PostgreSQL reads (they read the common
    ones), but anything they accept must mean to PostgreSQL what it means to them."""
    @settings(max_examples=50, deadline=None)
    @given(text=st.builds(_near_miss, INPUTS[type_name], st.integers(0, 60),
                          st.characters(codec="utf-8", exclude_characters="\x00"),
                          st.booleans()),
           zone=st.sampled_from(ZONES))
    def check(text: str, zone: str) -> None:
        got = _ours(lambda: to_plain(type_name, text.encode(), 0, canonical=False,
                                     timezone=zone))
        if got[0] == "ok":
            pg.timezone(zone)
            assert pg.run(f"SELECT $1::{type_name}", text.encode()) == got
    check()


#: Declared parameter types with a value of each; PostgreSQL sends us their binary form.
DECLARED = {
    "smallint": "-7", "integer": "70000", "bigint": "70000000000", "numeric": "7.50",
    "real": "7.5", "double precision": "7.5", "text": "7", "character varying": "7",
    "name": "7", "character(3)": "7", "boolean": "true", "date": "2024-01-02",
    "timestamp": "2024-03-10 02:30:00", "timestamptz": "2024-01-02 03:04:05.5+05:30",
    "json": '{"b": 1, "a": 1.50, "a": [2]}', "jsonb": '{"b": 1}', "bytea": "\\x00ff",
    "uuid": "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", "interval": "1 day",
}


def test_binary_parameters_match_postgresql_assignment(pg: Postgres) -> None:
    """A binary parameter of every declared type into a column of every logical type, as
    INSERT assigns it: what we take, PostgreSQL stores alike; what PostgreSQL refuses as
    a type mismatch (42804), we refuse too; range errors are the same errors."""
    pg.timezone("America/St_Johns")
    samples = {}
    for declared, literal in DECLARED.items():
        oid = int(pg.run("SELECT $1::regtype::oid", declared.encode(), result=0)[1])
        samples[declared] = (oid, pg.run(f"SELECT $1::{declared}", literal.encode())[1])
    accepted = 0
    for type_name in TYPES:
        table = f"values_{type_name}"
        pg.conn.execute(f"CREATE TEMP TABLE IF NOT EXISTS {table} (c {type_name})")
        cases = [(oid, value) for oid, value in samples.values()]
        own_value = samples[type_name][1]
        cases += [(0, own_value), (705, own_value)]
        for oid, value in cases:
            want = pg.run(f"INSERT INTO {table} VALUES ($1) RETURNING c", value, oid=oid, fmt=1)
            got = _ours(partial(to_plain, type_name, value, 1, canonical=False,
                                client_type=oid, timezone="America/St_Johns"))
            context = (type_name, oid, value, want, got)
            if got[0] == "ok":
                accepted += 1
                assert want == got, context
            elif got[1] == "42804":
                assert want[0] == "ok" or want[1] == "42804", context
            else:
                assert want[:2] == got[:2], context
            if want[0] == "error" and want[1] == "42804":
                assert got[:2] == ("error", "42804"), context
    assert accepted >= 2 * len(TYPES)


BAD_BINARY = {
    "text": [b"a\x00b", b"\xc3\x28", b"\xed\xa0\x80"],
    "smallint": [b"\x00", b"\x00\x00\x00"], "integer": [b"\x00\x00"],
    "bigint": [b"\x00" * 7], "boolean": [b"", b"\x00\x01"], "date": [b"\x00\x00\x00"],
    "timestamptz": [b"\x00" * 9, (2**63 - 2).to_bytes(8, "big")],
    "numeric": [b"\x00\x01\x00\x00", b"\x00\x01\x00\x00\x00\x00\x00\x00\x27\x10",
                b"\x00\x00\x00\x00\x12\x34\x00\x00", b"\x00\x00\x00\x00\x00\x00\x40\x00"],
    "jsonb": [b"", b"\x01{", b"\x01\xff", b'\x01"a\x00"'], "bytea": [],
}


@pytest.mark.parametrize("type_name", TYPES)
def test_bad_binary_values_are_refused_as_postgresql_refuses_them(pg: Postgres,
                                                                 type_name: str) -> None:
    oid = TYPE_OIDS[type_name]
    for value in BAD_BINARY[type_name]:
        want = pg.run(f"SELECT $1::{type_name}", value, oid=oid, fmt=1)
        assert want[0] == "error"
        got = _ours(partial(to_plain, type_name, value, 1, canonical=False, client_type=oid))
        assert got[:2] == want[:2], (value, want, got)


@pytest.mark.parametrize("type_name", TYPES)
def test_text_values_must_be_utf8(pg: Postgres, type_name: str) -> None:
    for value in (b"1\xff", b"\xc3\x28", b"\xed\xa0\x80"):
        want = pg.run(f"SELECT $1::{type_name}", value)
        assert want[0] == "error"
        got = _ours(partial(to_plain, type_name, value, 0, canonical=False))
        assert got == want


def test_type_oids_and_sizes_are_postgresqls(pg: Postgres) -> None:
    for type_name, oid in TYPE_OIDS.items():
        row = pg.run("SELECT format('%s %s', oid, typlen) FROM pg_type WHERE oid = $1::regtype",
                     type_name.encode(), result=0)
        assert row == ("ok", f"{oid} {TYPE_SIZES[type_name]}".encode())


# --- offline properties, against psycopg's independent binary adapters ----------------

_decimals = st.one_of(
    st.builds(lambda sign, digits, exponent: Decimal((sign, digits, exponent)),
              st.integers(0, 1), st.lists(st.integers(0, 9), min_size=1, max_size=40).map(tuple),
              st.integers(-60, 60)),
    st.sampled_from([Decimal("NaN"), Decimal("Infinity"), Decimal("-Infinity")]))
_json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-10**20, 10**20), st.text(_chars, max_size=8)),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(_chars, max_size=3),
                                                                inner, max_size=4),
    max_leaves=10)
_zones = st.sampled_from([UTC, timezone(timedelta(hours=5, minutes=30)),
                          timezone(-timedelta(hours=3, minutes=30, seconds=52))])
_sorted_json: Callable[[Jsonb], str] = lambda j: json.dumps(j.obj, sort_keys=True,  # noqa: E731
                                                           separators=(",", ":"))

#: logical type -> Python values, psycopg's binary dumper and loader, a text rendering.
PYTHON: dict[str, tuple[st.SearchStrategy[Any], type[Dumper], type[Loader],
                        Callable[[Any], str]]] = {
    "smallint": (st.integers(-2**15, 2**15 - 1), Int2BinaryDumper, Int2BinaryLoader, str),
    "integer": (st.integers(-2**31, 2**31 - 1), Int4BinaryDumper, Int4BinaryLoader, str),
    "bigint": (st.integers(-2**63, 2**63 - 1), Int8BinaryDumper, Int8BinaryLoader, str),
    "numeric": (_decimals, DecimalBinaryDumper, NumericBinaryLoader, str),
    "boolean": (st.booleans(), BoolBinaryDumper, BoolBinaryLoader, lambda b: "ft"[b]),
    "date": (st.dates(), DateBinaryDumper, DateBinaryLoader, date.isoformat),
    "timestamptz": (st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30),
                                 timezones=_zones),
                    DatetimeBinaryDumper, TimestamptzBinaryLoader, datetime.isoformat),
    "jsonb": (_json_values.map(Jsonb), JsonbBinaryDumper, JsonbBinaryLoader, _sorted_json),
    "bytea": (st.binary(), BytesBinaryDumper, ByteaBinaryLoader, lambda b: "\\x" + b.hex()),
    "text": (_text, StrBinaryDumper, TextBinaryLoader, str),
}


@pytest.mark.parametrize("type_name", TYPES)
@settings(deadline=None)  # a shared CI machine: no timing
@given(data=st.data())
def test_text_and_binary_inputs_of_a_value_seal_alike(type_name: str, data: st.DataObject
                                                      ) -> None:
    values, dumper, _, render = PYTHON[type_name]
    value = data.draw(values)
    binary = bytes(dumper(type(value)).dump(value))
    oid = TYPE_OIDS[type_name]
    for canonical in (False, True):
        assert to_plain(type_name, render(value).encode(), 0, canonical=canonical,
                        timezone="Asia/Kolkata") == \
            to_plain(type_name, binary, 1, canonical=canonical, client_type=oid,
                     timezone="Asia/Kolkata")


@pytest.mark.parametrize("type_name", TYPES)
@settings(deadline=None)  # a shared CI machine: no timing
@given(data=st.data())
def test_binary_round_trip(type_name: str, data: st.DataObject) -> None:
    """binary -> plain -> binary is the identity on what PostgreSQL would store, and
    psycopg reads the plaintext back as the value it sent."""
    values, dumper, loader, _ = PYTHON[type_name]
    value = data.draw(values)
    oid = TYPE_OIDS[type_name]
    for canonical in (False, True):
        plain = to_plain(type_name, bytes(dumper(type(value)).dump(value)), 1,
                         canonical=canonical, client_type=oid)
        assert from_plain(type_name, plain, 1) == plain
        assert to_plain(type_name, plain, 1, canonical=canonical, client_type=oid) == plain
        loaded = loader(oid).load(plain)
        if isinstance(value, Jsonb):
            assert loaded == value.obj
        elif isinstance(value, Decimal) and value.is_nan():
            assert loaded.is_nan()
        else:
            assert loaded == value
        if isinstance(value, Decimal) and value.is_finite():
            if canonical:  # the display scale of the value itself, 0 for zero
                # (normalize() rounds to the context's precision: give it all digits)
                exact = decimal.Context(prec=len(value.as_tuple().digits) + 1)
                scale = value.normalize(exact).as_tuple().exponent if value else 0
            else:
                scale = value.as_tuple().exponent
            assert loaded.as_tuple().exponent == min(0, int(scale))


@pytest.mark.parametrize("type_name", TYPES)
@settings(deadline=None)  # a shared CI machine: no timing
@given(data=st.data())
def test_text_round_trip(type_name: str, data: st.DataObject) -> None:
    """text -> plain -> text: what a client reads back, it can send again for the same
    plaintext, in any session time zone."""
    text = data.draw(INPUTS[type_name]).encode()
    zone = data.draw(st.sampled_from(ZONES))
    try:
        plain = to_plain(type_name, text, 0, canonical=False, timezone=zone)
    except InvalidValue:
        return
    shown = from_plain(type_name, plain, 0, timezone=zone)
    assert to_plain(type_name, shown, 0, canonical=False, timezone=zone) == plain
    assert from_plain(type_name, to_plain(type_name, shown, 0, canonical=False,
                                          timezone=zone), 0, timezone=zone) == shown
    assert to_plain(type_name, shown, 0, canonical=True, timezone=zone) == \
        to_plain(type_name, text, 0, canonical=True, timezone=zone)


def _canonical_numeric(value: Decimal, binary: bool) -> bytes:
    if binary:
        return to_plain("numeric", bytes(DecimalBinaryDumper(Decimal).dump(value)), 1,
                        canonical=True, client_type=TYPE_OIDS["numeric"])
    return to_plain("numeric", str(value).encode(), 0, canonical=True)


@settings(deadline=None)
@given(a=_decimals, b=_decimals, zeros=st.integers(0, 6), binary=st.booleans())
def test_canonical_numerics_are_equal_exactly_when_the_values_are(
        a: Decimal, b: Decimal, zeros: int, binary: bool) -> None:
    sealed = _canonical_numeric(a, binary)
    if a.is_finite():
        sign, digits, exponent = a.as_tuple()
        padded = Decimal((sign, digits + (0,) * zeros, int(exponent) - zeros))
        assert _canonical_numeric(padded, not binary) == sealed
    same = a == b or (a.is_nan() and b.is_nan())
    assert (_canonical_numeric(b, not binary) == sealed) == same


@pytest.mark.parametrize("type_name", ["date", "timestamptz"])
@pytest.mark.parametrize("word", [b"now", b" Today", b"tomorrow", b"YESTERDAY"])
def test_time_relative_words_are_refused_not_frozen(type_name: str, word: bytes) -> None:
    """PostgreSQL would read these at the time of the statement; sealing the proxy's
    reading of them would store a value the client never sent."""
    with pytest.raises(InvalidValue) as caught:
        to_plain(type_name, word, 0, canonical=False)
    assert caught.value.sqlstate == "0A000"


@pytest.mark.parametrize("zone", ["Nowhere/Atall", "EST5EDT,M3.2.0,M11.1.0"])
def test_unreadable_session_time_zones_are_refused(zone: str) -> None:
    with pytest.raises(InvalidValue) as caught:
        to_plain("timestamptz", b"2024-01-02 03:04:05", 0, canonical=False, timezone=zone)
    assert caught.value.sqlstate == "22023"
