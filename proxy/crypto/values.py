"""Codecs between what clients send or read and the plaintext sealed in an encrypted column.

The plaintext is the logical type's PostgreSQL binary send format, so one sealed
value serves text and binary clients alike, and binary values pass through with
little more than validation. Text input follows PostgreSQL's input functions for
the common forms and refuses the rest with PostgreSQL's SQLSTATE and wording:
the database never sees these values, so the proxy has to be the one to say no.
Text output is what PostgreSQL would send (DateStyle ISO, bytea_output hex, the
session's TimeZone). Text is UTF-8 (the proxy's client_encoding).

``canonical`` is for deterministic columns, where equal ciphertexts must mean
equal values: numeric drops the display scale that does not change the value.
jsonb is always normalized as PostgreSQL stores it (key order, last duplicate
key wins, numbers as numeric prints them).
"""

from __future__ import annotations

import json
import re
import struct
from collections.abc import Callable
from datetime import datetime, timedelta, tzinfo
from functools import lru_cache
from json.encoder import encode_basestring as _json_string  # escape_json's escapes
from typing import Any, NoReturn
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from proxy.errors import PgError

TYPE_OIDS: dict[str, int] = {
    "text": 25, "smallint": 21, "integer": 23, "bigint": 20, "numeric": 1700, "boolean": 16,
    "date": 1082, "timestamptz": 1184, "jsonb": 3802, "bytea": 17,
}
#: RowDescription type sizes (pg_type.typlen): -1 is varlena.
TYPE_SIZES: dict[str, int] = {
    "text": -1, "smallint": 2, "integer": 4, "bigint": 8, "numeric": -1, "boolean": 1,
    "date": 4, "timestamptz": 8, "jsonb": -1, "bytea": -1,
}

_TEXT, _VARCHAR, _NAME, _UNKNOWN = 25, 1043, 19, 705
_INT2, _INT4, _INT8, _TIMESTAMP, _JSON = 21, 23, 20, 1114, 114
#: Names for the 42804 message, as PostgreSQL spells them.
_OID_NAMES = {
    **{oid: name for name, oid in TYPE_OIDS.items()}, 1184: "timestamp with time zone",
    _VARCHAR: "character varying", _NAME: "name", _UNKNOWN: "unknown", _JSON: "json",
    _TIMESTAMP: "timestamp without time zone", 1042: "character", 700: "real",
    701: "double precision", 1083: "time without time zone", 1266: "time with time zone",
    1186: "interval", 2950: "uuid", 26: "oid",
}

_I2, _I4, _I8 = struct.Struct("!h"), struct.Struct("!i"), struct.Struct("!q")
_WS = b" \t\n\r\v\f"  # C isspace(), which PostgreSQL's input functions skip


class InvalidValue(PgError):
    """A value PostgreSQL's input function for the logical type would refuse; the
    SQLSTATE is the one PostgreSQL gives, so clients see what they would without
    the proxy."""

    sqlstate = "22P02"
    default_reason = "value"

    def __init__(self, message: str, sqlstate: str = "22P02", hint: str | None = None,
                 detail: str | None = None) -> None:
        super().__init__(message, hint, detail)
        self.sqlstate = sqlstate


def _show(data: bytes) -> str:
    return data.decode("utf-8", "replace")


def _syntax(pgname: str, data: bytes, sqlstate: str = "22P02") -> InvalidValue:
    return InvalidValue(f'invalid input syntax for type {pgname}: "{_show(data)}"', sqlstate)


def _size_error(pgname: str, size: int, expected: int) -> InvalidValue:
    """A binary value of the wrong size, as PostgreSQL reports it: running out of bytes is
    a protocol error there (08P01, though the session goes on), bytes left over a format
    error."""
    if size < expected:
        return InvalidValue("insufficient data left in message", "08P01")
    return InvalidValue(f"incorrect binary data format for type {pgname}", "22P03")


def _check_utf8(data: bytes) -> None:
    """PostgreSQL's check for text in a UTF8 database: valid UTF-8 and no NUL."""
    if b"\0" in data:
        raise InvalidValue('invalid byte sequence for encoding "UTF8": 0x00', "22021")
    if not data.isascii():
        try:
            data.decode()
        except UnicodeDecodeError as exc:
            raise _encoding_error(data, exc.start) from None


def _encoding_error(data: bytes, start: int) -> InvalidValue:
    lead = data[start]
    size = 2 if 0xC0 <= lead < 0xE0 else 3 if 0xE0 <= lead < 0xF0 else \
        4 if 0xF0 <= lead < 0xF8 else 1
    shown = " ".join(f"0x{b:02x}" for b in data[start:start + size])
    return InvalidValue(f'invalid byte sequence for encoding "UTF8": {shown}', "22021")


# --- text and bytea -------------------------------------------------------------------

def _text_recv(data: bytes, canonical: bool, timezone: str) -> bytes:
    _check_utf8(data)
    return bytes(data)


_HEX_SPACE = b" \t\n\r"  # hex_decode skips these between digit pairs, nothing else
_BYTEA_ESCAPED = re.compile(rb"(?:[^\\]|\\[0-3][0-7][0-7]|\\\\)*", re.S)
_BYTEA_ESCAPE = re.compile(rb"\\([0-3][0-7][0-7]|\\)")


def _bytea_in(data: bytes, canonical: bool, timezone: str) -> bytes:
    if data[:2] == b"\\x":
        if b"\v" not in data and b"\f" not in data:  # fromhex would skip them, PG does not
            try:
                return bytes.fromhex(data[2:].decode("ascii"))
            except (ValueError, UnicodeDecodeError):
                pass
        return _hex_decode(data[2:])
    if b"\\" not in data:
        return bytes(data)
    if _BYTEA_ESCAPED.fullmatch(data) is None:
        raise InvalidValue("invalid input syntax for type bytea")
    return _BYTEA_ESCAPE.sub(
        lambda m: b"\\" if m[1] == b"\\" else bytes((int(m[1], 8),)), data)


def _hex_decode(body: bytes) -> bytes:
    """hex_decode pair by pair, for its errors: ``bytes.fromhex`` is the fast path."""
    out, i, n = bytearray(), 0, len(body)
    while i < n:
        if body[i] in _HEX_SPACE:
            i += 1
            continue
        for j in (i, i + 1):
            if j == n:
                raise InvalidValue("invalid hexadecimal data: odd number of digits", "22023")
            if body[j:j + 1] not in b"0123456789abcdefABCDEF":
                shown = body[j:j + 4].decode("utf-8", "ignore")[:1] or _show(body[j:j + 1])
                raise InvalidValue(f'invalid hexadecimal digit: "{shown}"', "22023")
        out.append(int(body[i:i + 2], 16))
        i += 2
    return bytes(out)


def _bytea_out(plain: bytes, timezone: str) -> bytes:
    return b"\\x" + plain.hex().encode()


# --- integers -------------------------------------------------------------------------

_INTEGER = re.compile(rb"[+-]?[0-9]+")


def _int_in(pgname: str, out: struct.Struct) -> Callable[[bytes, bool, str], bytes]:
    bits = out.size * 8
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1

    def decode(data: bytes, canonical: bool, timezone: str) -> bytes:
        text = data.strip(_WS)
        if _INTEGER.fullmatch(text) is None:
            raise _syntax(pgname, data)
        if len(text.lstrip(b"+-").lstrip(b"0")) > 19 or not lo <= (value := int(text)) <= hi:
            raise InvalidValue(f'value "{_show(data)}" is out of range for type {pgname}',
                               "22003")
        return out.pack(value)
    return decode


def _int_recv(source: struct.Struct, source_name: str, out: struct.Struct, pgname: str
              ) -> Callable[[bytes, bool, str], bytes]:
    """A binary int2/int4/int8 into an integer column, range-checked as the
    assignment cast would."""
    bits = out.size * 8
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1

    def decode(data: bytes, canonical: bool, timezone: str) -> bytes:
        if len(data) != source.size:
            raise _size_error(source_name, len(data), source.size)
        if source is out:
            return bytes(data)
        (value,) = source.unpack(data)
        if not lo <= value <= hi:
            raise InvalidValue(f"{pgname} out of range", "22003")
        return out.pack(value)
    return decode


def _int_out(plain: bytes, timezone: str) -> bytes:
    return b"%d" % int.from_bytes(plain, "big", signed=True)


#: Binary integer parameters any integer or numeric column takes.
_INT_SOURCES = {_INT2: (_I2, "smallint"), _INT4: (_I4, "integer"), _INT8: (_I8, "bigint")}


# --- numeric --------------------------------------------------------------------------

_NUM_HEAD = struct.Struct("!HhHH")  # ndigits, weight, sign, dscale; then base-10000 digits
_POS, _NEG, _NAN, _PINF, _NINF = 0x0000, 0x4000, 0xC000, 0xD000, 0xF000
#: How numeric_send sends NaN and the infinities: its header macros read the special
#: values' flag bits as a short-format display scale, 32 for the infinities.
_NUM_SPECIAL_PLAIN = {sign: _NUM_HEAD.pack(0, 0, sign, 32 if sign != _NAN else 0)
                      for sign in (_NAN, _PINF, _NINF)}
_NUM_SPECIALS = {b"nan": _NAN, b"infinity": _PINF, b"+infinity": _PINF, b"-infinity": _NINF,
                 b"inf": _PINF, b"+inf": _PINF, b"-inf": _NINF}
_NUM_SPECIAL_TEXT = {_NAN: b"NaN", _PINF: b"Infinity", _NINF: b"-Infinity"}
_NUMERIC = re.compile(rb"([+-]?)([0-9]*)(?:\.([0-9]*))?(?:[eE]([+-]?[0-9]+))?")
_EXPONENT_LIMIT = 0x7FFFFFFF // 2
_DSCALE_MAX = 0x3FFF


def _numeric_overflow() -> InvalidValue:
    return InvalidValue("value overflows numeric format", "22003")


def _numeric_pack(negative: bool, digits: bytes, point: int, dscale: int,
                  canonical: bool) -> bytes:
    """The stored form of the decimal ``digits`` with the point after ``point`` of them:
    stripped of zero digits (and of the sign of zero) as make_result stores it."""
    significant = digits.lstrip(b"0")
    point -= len(digits) - len(significant)
    significant = significant.rstrip(b"0")
    if not significant:
        weight, groups, negative = 0, [], False
        if canonical:
            dscale = 0
    else:
        if canonical:
            dscale = max(0, len(significant) - point)
        lead = -point % 4
        weight = (point + lead) // 4 - 1
        if weight > 0x7FFF:
            raise _numeric_overflow()
        body = b"0" * lead + significant
        body += b"0" * (-len(body) % 4)
        groups = [int(body[i:i + 4]) for i in range(0, len(body), 4)]
    if weight < -0x8000 or dscale > _DSCALE_MAX:
        raise _numeric_overflow()
    return (_NUM_HEAD.pack(len(groups), weight, _NEG if negative else _POS, dscale)
            + struct.pack(f"!{len(groups)}H", *groups))


def _numeric_in(data: bytes, canonical: bool, timezone: str) -> bytes:
    text = data.strip(_WS)
    m = _NUMERIC.fullmatch(text)
    if m is None or not (m[2] or m[3]):
        special = _NUM_SPECIALS.get(text.lower())
        if special is None:
            raise _syntax("numeric", data)
        return _NUM_SPECIAL_PLAIN[special]
    sign, whole, fraction, exponent = m.groups()
    fraction = fraction or b""
    shift = 0
    if exponent and (len(exponent.lstrip(b"+-").lstrip(b"0")) > 10
                     or abs(shift := int(exponent)) >= _EXPONENT_LIMIT):
        raise _numeric_overflow()
    return _numeric_pack(sign == b"-", whole + fraction, len(whole) + shift,
                         max(0, len(fraction) - shift), canonical)


def _numeric_recv(data: bytes, canonical: bool, timezone: str) -> bytes:
    """numeric_recv: validate, truncate digits the scale hides, store normalized."""
    if len(data) < _NUM_HEAD.size:
        raise _size_error("numeric", len(data), _NUM_HEAD.size)
    count, weight, sign, dscale = _NUM_HEAD.unpack_from(data)
    if sign not in (_POS, _NEG, _NAN, _PINF, _NINF):
        raise InvalidValue('invalid sign in external "numeric" value', "22P03")
    if dscale > _DSCALE_MAX:
        raise InvalidValue('invalid scale in external "numeric" value', "22P03")
    if len(data) != _NUM_HEAD.size + 2 * count:
        raise _size_error("numeric", len(data), _NUM_HEAD.size + 2 * count)
    digits = struct.unpack_from(f"!{count}H", data, _NUM_HEAD.size)
    if any(d >= 10000 for d in digits):
        raise InvalidValue('invalid digit in external "numeric" value', "22P03")
    if sign not in (_POS, _NEG):
        return _NUM_SPECIAL_PLAIN[sign]
    point = (weight + 1) * 4
    text = (b"%04d" * count % digits)[:max(0, point + dscale)]
    return _numeric_pack(sign == _NEG, text, point, dscale, canonical)


def _int_to_numeric(source: struct.Struct, source_name: str
                    ) -> Callable[[bytes, bool, str], bytes]:
    def decode(data: bytes, canonical: bool, timezone: str) -> bytes:
        if len(data) != source.size:
            raise _size_error(source_name, len(data), source.size)
        (value,) = source.unpack(data)
        digits = b"%d" % abs(value)
        return _numeric_pack(value < 0, digits, len(digits), 0, canonical)
    return decode


def _numeric_out(plain: bytes, timezone: str) -> bytes:
    count, weight, sign, dscale = _NUM_HEAD.unpack_from(plain)
    if sign not in (_POS, _NEG):
        return _NUM_SPECIAL_TEXT[sign]
    digits = b"%04d" * count % struct.unpack_from(f"!{count}H", plain, _NUM_HEAD.size)
    point = (weight + 1) * 4
    if point <= 0:
        whole, fraction = b"0", b"0" * -point + digits
    else:
        digits += b"0" * (point - len(digits))
        whole, fraction = digits[:point].lstrip(b"0") or b"0", digits[point:]
    text = whole + b"." + (fraction + b"0" * dscale)[:dscale] if dscale else whole
    return b"-" + text if sign == _NEG else text


def _numeric_text(data: bytes) -> str:
    """A numeric literal as PostgreSQL prints the stored value (jsonb numbers)."""
    return _numeric_out(_numeric_in(data, False, "UTC"), "UTC").decode()


# --- boolean --------------------------------------------------------------------------

_BOOL_TRUE, _BOOL_FALSE = b"\x01", b"\x00"
#: parse_bool: unique prefixes of true/false/yes/no, on/off (two letters at least), 1/0.
_BOOLEANS = {
    **{w[:n]: _BOOL_TRUE for w in (b"true", b"yes") for n in range(1, len(w) + 1)},
    **{w[:n]: _BOOL_FALSE for w in (b"false", b"no") for n in range(1, len(w) + 1)},
    b"on": _BOOL_TRUE, b"of": _BOOL_FALSE, b"off": _BOOL_FALSE, b"1": _BOOL_TRUE,
    b"0": _BOOL_FALSE,
}


def _bool_in(data: bytes, canonical: bool, timezone: str) -> bytes:
    value = _BOOLEANS.get(data.strip(_WS).lower())
    if value is None:
        raise _syntax("boolean", data)
    return value


def _bool_recv(data: bytes, canonical: bool, timezone: str) -> bytes:
    if len(data) != 1:
        raise _size_error("boolean", len(data), 1)
    return _BOOL_TRUE if data[0] else _BOOL_FALSE


def _bool_out(plain: bytes, timezone: str) -> bytes:
    return b"t" if plain[0] else b"f"


# --- date and timestamptz -------------------------------------------------------------

_POSTGRES_EPOCH_JDATE = 2451545  # 2000-01-01
_UNIX_EPOCH_OFFSET = 946684800  # seconds from 1970-01-01 to 2000-01-01
_DATE_MIN, _DATE_END = -_POSTGRES_EPOCH_JDATE, 2147483494 - _POSTGRES_EPOCH_JDATE
_DATE_NOBEGIN, _DATE_NOEND = -0x80000000, 0x7FFFFFFF
_TS_MIN, _TS_END = -211813488000000000, 9223371331200000000
_TS_NOBEGIN, _TS_NOEND = -0x8000000000000000, 0x7FFFFFFFFFFFFFFF
_DATE_SPECIAL_TEXT = {_DATE_NOEND: b"infinity", _DATE_NOBEGIN: b"-infinity"}
_TS_SPECIAL_TEXT = {_TS_NOEND: b"infinity", _TS_NOBEGIN: b"-infinity"}
_DATE_WORDS = {b"infinity": _I4.pack(_DATE_NOEND), b"-infinity": _I4.pack(_DATE_NOBEGIN),
               b"epoch": _I4.pack(-10957)}
_TS_WORDS = {b"infinity": _I8.pack(_TS_NOEND), b"-infinity": _I8.pack(_TS_NOBEGIN),
             b"epoch": _I8.pack(-_UNIX_EPOCH_OFFSET * 1_000_000)}
_RELATIVE_WORDS = frozenset((b"now", b"today", b"tomorrow", b"yesterday"))
_MONTH_DAYS = (0, 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)
_TIMESTAMPTZ = "timestamp with time zone"

_DATE = re.compile(rb"([0-9]{3,})-([0-9]{1,2})-([0-9]{1,2})(?:[ \t\n\r\v\f]+(bc|ad))?", re.I)
_TIMESTAMP = re.compile(
    rb"([0-9]{3,})-([0-9]{1,2})-([0-9]{1,2})"
    rb"(?:(?:t|[ \t\n\r\v\f]+t?)([0-9]{1,2}):([0-9]{1,2})(?::([0-9]{1,2})(\.[0-9]*)?)?)?"
    rb"(?:[ \t\n\r\v\f]*(z|[+-][0-9]+(?::[0-9]+(?::[0-9]+)?)?|[a-z][a-z0-9_/+-]*))?"
    rb"(?:[ \t\n\r\v\f]+(bc|ad))?", re.I)


def _date2j(year: int, month: int, day: int) -> int:
    """PostgreSQL's date2j: Julian day of a proleptic Gregorian date (year 0 is 1 BC)."""
    if month > 2:
        month, year = month + 1, year + 4800
    else:
        month, year = month + 13, year + 4799
    century = year // 100
    return year * 365 - 32167 + year // 4 - century + century // 4 + 7834 * month // 256 + day


def _j2date(jd: int) -> tuple[int, int, int]:
    """PostgreSQL's j2date."""
    julian = jd + 32044
    quad = julian // 146097
    extra = (julian - quad * 146097) * 4 + 3
    julian += 60 + quad * 3 + extra // 146097
    quad = julian // 1461
    julian -= quad * 1461
    y = julian * 4 // 1461
    julian = ((julian + 305) % 365 if y else (julian + 306) % 366) + 123
    y += quad * 4
    quad = julian * 2141 // 65536
    return y - 4800, (quad + 10) % 12 + 1, julian - 7834 * quad // 256


def _valid_julian(year: int, month: int) -> bool:
    return (year > -4713 or (year == -4713 and month >= 11)) and \
        (year < 5874898 or (year == 5874898 and month < 6))


def _field_overflow(data: bytes) -> InvalidValue:
    return InvalidValue(f'date/time field value out of range: "{_show(data)}"', "22008")


def _relative(word: bytes, pgname: str) -> InvalidValue:
    return InvalidValue(
        f'cannot encrypt the time-relative {pgname} value "{_show(word)}"', "0A000",
        hint="tenant-proxy encrypts values before PostgreSQL sees them; send the "
             "date or time itself.")


def _ymd(data: bytes, year_text: bytes, month_text: bytes, day_text: bytes,
         era: bytes | None) -> tuple[int, int, int]:
    """Year (astronomical: 0 is 1 BC), month, day, checked as ValidateDate checks them."""
    if len(year_text) > 10 or (year := int(year_text)) > 0x7FFFFFFF or year == 0:
        raise _field_overflow(data)
    if era is not None and era.lower() == b"bc":
        year = 1 - year
    month, day = int(month_text), int(day_text)
    if not 1 <= month <= 12 or day < 1 or day > _MONTH_DAYS[month] + (
            month == 2 and year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)):
        raise _field_overflow(data)
    return year, month, day


def _date_in(data: bytes, canonical: bool, timezone: str) -> bytes:
    text = data.strip(_WS)
    m = _DATE.fullmatch(text)
    if m is None:
        word = text.lower()
        if word in _DATE_WORDS:
            return _DATE_WORDS[word]
        if word in _RELATIVE_WORDS:
            raise _relative(word, "date")
        raise _syntax("date", data, "22007")
    year, month, day = _ymd(data, *m.groups())
    days = _date2j(year, month, day) - _POSTGRES_EPOCH_JDATE
    if not _valid_julian(year, month) or not _DATE_MIN <= days < _DATE_END:
        raise InvalidValue(f'date out of range: "{_show(data)}"', "22008")
    return _I4.pack(days)


def _date_recv(data: bytes, canonical: bool, timezone: str) -> bytes:
    if len(data) != 4:
        raise _size_error("date", len(data), 4)
    (days,) = _I4.unpack(data)
    if days not in _DATE_SPECIAL_TEXT and not _DATE_MIN <= days < _DATE_END:
        raise InvalidValue("date out of range", "22008")
    return bytes(data)


def _date_out(plain: bytes, timezone: str) -> bytes:
    (days,) = _I4.unpack(plain)
    special = _DATE_SPECIAL_TEXT.get(days)
    if special is not None:
        return special
    year, month, day = _j2date(days + _POSTGRES_EPOCH_JDATE)
    if year > 0:
        return b"%04d-%02d-%02d" % (year, month, day)
    return b"%04d-%02d-%02d BC" % (1 - year, month, day)


_UTC_NAMES = frozenset(("UTC", "Etc/UTC", "GMT", "Etc/GMT"))
#: A POSIX TZ spec without daylight rules; the offset counts hours *west* of Greenwich.
_POSIX_FIXED = re.compile(r"(?:<[A-Za-z0-9+-]+>|[A-Za-z]{3,})?([+-]?)([0-9]{1,2})"
                          r"(?::([0-9]{1,2})(?::([0-9]{1,2}))?)?")
_EPOCH = datetime(1970, 1, 1)
#: datetime covers years 1-9999. Earlier instants take the offset in force at the start
#: of year 1 (the zone's first, local mean time, as in PostgreSQL); later ones repeat
#: every 400 years, as the Gregorian calendar and the zone's standing rule do.
_SAFE_LOW, _SAFE_HIGH = -62135596800 + 2 * 86400, 253402300799 - 2 * 86400
_SECS_400Y = 146097 * 86400


@lru_cache(maxsize=1)
def _zone_names() -> dict[str, str]:
    return {name.lower(): name for name in available_timezones()}


def _tzdb(name: str) -> ZoneInfo | None:
    """A tz database zone, matched without regard to case as PostgreSQL matches it."""
    for key in (name, _zone_names().get(name.lower())):
        if key is not None:
            try:
                return ZoneInfo(key)
            except (ZoneInfoNotFoundError, ValueError, OSError):
                pass
    return None


@lru_cache(maxsize=256)
def _zone(name: str) -> tzinfo | int:
    """A TimeZone setting or a zone named in a timestamp: a zone, or a fixed offset in
    seconds east of UTC (POSIX specs such as '<+05:30>-05:30', 'UTC+3', '+05:30',
    which PostgreSQL, like POSIX, reads as hours west of Greenwich)."""
    if name in _UTC_NAMES:
        return 0
    zone = _tzdb(name)
    if zone is not None:
        return zone
    m = _POSIX_FIXED.fullmatch(name)
    if m is None:
        raise InvalidValue(f'time zone "{name}" not recognized', "22023",
                           hint="tenant-proxy knows tz database names and fixed offsets, "
                                "not POSIX daylight-saving rules.")
    sign, hours, minutes, seconds = m.groups()
    west = int(hours) * 3600 + int(minutes or 0) * 60 + int(seconds or 0)
    return west if sign == "-" else -west


def _shifted(unix: int) -> int:
    if unix < _SAFE_LOW:
        return _SAFE_LOW
    if unix > _SAFE_HIGH:
        return unix - ((unix - _SAFE_HIGH) // _SECS_400Y + 1) * _SECS_400Y
    return unix


def _seconds(delta: timedelta | None) -> int:
    assert delta is not None
    return delta.days * 86400 + delta.seconds


def _offset_at(zone: tzinfo | int, unix: int) -> int:
    """Seconds east of UTC in force at an instant."""
    if isinstance(zone, int):
        return zone
    return _seconds(datetime.fromtimestamp(_shifted(unix), zone).utcoffset())


def _offset_of_local(zone: tzinfo | int, local: int) -> int:
    """Seconds east of UTC for a wall-clock time. In a gap or an overlap PostgreSQL takes
    the smaller offset (before a spring-forward, after a fall-back)."""
    if isinstance(zone, int):
        return zone
    wall = _EPOCH + timedelta(seconds=_shifted(local))
    return min(_seconds(wall.replace(tzinfo=zone).utcoffset()),
               _seconds(wall.replace(tzinfo=zone, fold=1).utcoffset()))


def _displacement(token: bytes, data: bytes) -> int:
    """DecodeTimezone: '+05', '+0530', '+05:30', '+05:30:15' -> seconds east."""
    parts = token[1:].split(b":")
    if any(len(p) > 9 for p in parts):
        raise _tz_overflow(data)
    hours, minutes, seconds = (int(p) for p in (*parts, b"0", b"0")[:3])
    if len(parts) == 1 and len(token) > 3:
        hours, minutes = divmod(hours, 100)
    if hours > 15 or minutes >= 60 or seconds >= 60:
        raise _tz_overflow(data)
    east = hours * 3600 + minutes * 60 + seconds
    return -east if token[:1] == b"-" else east


def _tz_overflow(data: bytes) -> InvalidValue:
    return InvalidValue(f'time zone displacement out of range: "{_show(data)}"', "22009")


def _ts_out_of_range(data: bytes) -> InvalidValue:
    return InvalidValue(f'timestamp out of range: "{_show(data)}"', "22008")


def _timestamptz_in(data: bytes, canonical: bool, timezone: str) -> bytes:
    text = data.strip(_WS)
    m = _TIMESTAMP.fullmatch(text)
    if m is None:
        word = text.lower()
        if word in _TS_WORDS:
            return _TS_WORDS[word]
        if word in _RELATIVE_WORDS:
            raise _relative(word, _TIMESTAMPTZ)
        raise _syntax(_TIMESTAMPTZ, data, "22007")
    year_t, month_t, day_t, hour_t, minute_t, second_t, fraction, zone_t, era = m.groups()
    if hour_t is None and zone_t is not None and text[m.start(8) - 1] not in _WS:
        raise _syntax(_TIMESTAMPTZ, data, "22007")  # '2024-01-02-05' is no date and zone
    if era is None and zone_t is not None and zone_t.lower() in (b"bc", b"ad"):
        zone_t, era = None, zone_t
    # In PostgreSQL's order: the time as it is read, then the zone, then the date.
    hour, minute, second = int(hour_t or 0), int(minute_t or 0), int(second_t or 0)
    micros = round(float(b"0" + fraction) * 1_000_000) if fraction else 0
    clock = (hour * 3600 + minute * 60 + second) * 1_000_000 + micros
    if minute > 59 or second > 60 or clock > 86400_000_000:  # time_overflows()
        raise _field_overflow(data)
    zone: tzinfo | int
    if zone_t is None:
        zone = _zone(timezone)
    elif zone_t[:1] in b"+-":
        zone = _displacement(zone_t, data)
    elif zone_t.lower() in (b"z", b"utc", b"gmt"):
        zone = 0
    elif b"/" in zone_t and (named := _tzdb(zone_t.decode())) is not None:
        zone = named
    elif b"/" in zone_t:
        raise InvalidValue(f'time zone "{zone_t.decode().lower()}" not recognized', "22023")
    else:
        raise InvalidValue(
            f'invalid input syntax for type {_TIMESTAMPTZ}: "{_show(data)}"', "22007",
            hint="tenant-proxy reads numeric offsets and full time zone names "
                 "(Area/Location), not abbreviations.")
    year, month, day = _ymd(data, year_t, month_t, day_t, era)
    if not _valid_julian(year, month):
        raise _ts_out_of_range(data)
    local = (_date2j(year, month, day) - _POSTGRES_EPOCH_JDATE) * 86400 + \
        hour * 3600 + minute * 60 + second
    east = _offset_of_local(zone, local + _UNIX_EPOCH_OFFSET)
    value = (local - east) * 1_000_000 + micros
    if not _TS_MIN <= value < _TS_END:
        raise _ts_out_of_range(data)
    return _I8.pack(value)


def _timestamptz_recv(data: bytes, canonical: bool, timezone: str) -> bytes:
    if len(data) != 8:
        raise _size_error(_TIMESTAMPTZ, len(data), 8)
    (value,) = _I8.unpack(data)
    if value not in _TS_SPECIAL_TEXT and not _TS_MIN <= value < _TS_END:
        raise InvalidValue("timestamp out of range", "22008")
    return bytes(data)


def _timestamp_recv(data: bytes, canonical: bool, timezone: str) -> bytes:
    """A binary timestamp without time zone, read in the session's TimeZone as the
    implicit cast to timestamptz reads it."""
    if len(data) != 8:
        raise _size_error(_OID_NAMES[_TIMESTAMP], len(data), 8)
    (local,) = _I8.unpack(data)
    if local in _TS_SPECIAL_TEXT:
        return bytes(data)
    if not _TS_MIN <= local < _TS_END:
        raise InvalidValue("timestamp out of range", "22008")
    east = _offset_of_local(_zone(timezone), local // 1_000_000 + _UNIX_EPOCH_OFFSET)
    value = local - east * 1_000_000
    if not _TS_MIN <= value < _TS_END:
        raise InvalidValue("timestamp out of range", "22008")
    return _I8.pack(value)


@lru_cache(maxsize=256)
def _offset_text(east: int) -> bytes:
    """EncodeTimezone: +05, +05:30, +00:19:32."""
    hours, rest = divmod(abs(east), 3600)
    minutes, seconds = divmod(rest, 60)
    sign = b"+" if east >= 0 else b"-"
    if seconds:
        return sign + b"%02d:%02d:%02d" % (hours, minutes, seconds)
    return sign + (b"%02d:%02d" % (hours, minutes) if minutes else b"%02d" % hours)


def _timestamptz_out(plain: bytes, timezone: str) -> bytes:
    (value,) = _I8.unpack(plain)
    special = _TS_SPECIAL_TEXT.get(value)
    if special is not None:
        return special
    seconds, micros = divmod(value, 1_000_000)
    east = _offset_at(_zone(timezone), seconds + _UNIX_EPOCH_OFFSET)
    days, clock = divmod(seconds + east, 86400)
    year, month, day = _j2date(days + _POSTGRES_EPOCH_JDATE)
    hour, rest = divmod(clock, 3600)
    text = b"%04d-%02d-%02d %02d:%02d:%02d" % (year if year > 0 else 1 - year, month, day,
                                               hour, *divmod(rest, 60))
    if micros:
        text += (b".%06d" % micros).rstrip(b"0")
    text += _offset_text(east)
    return text if year > 0 else text + b" BC"


# --- jsonb ----------------------------------------------------------------------------

class _Number(str):
    """A JSON number, already as PostgreSQL prints the numeric it becomes."""

    __slots__ = ()


def _json_int(text: str) -> _Number:
    if len(text) < 100 and text != "-0":  # JSON ints have no leading zeros or '+'
        return _Number(text)
    return _Number(_numeric_text(text.encode()))


def _json_float(text: str) -> _Number:
    return _Number(_numeric_text(text.encode()))


def _json_constant(name: str) -> NoReturn:
    raise InvalidValue("invalid input syntax for type json", detail=f'Token "{name}" is invalid.')


_JSON_DECODER = json.JSONDecoder(parse_int=_json_int, parse_float=_json_float,
                                 parse_constant=_json_constant)


def _jsonb_text(value: Any, out: list[str]) -> None:
    """JsonbToCString: keys by length then bytes, ', ' and ': ' separators, and the
    escapes of escape_json (which are json's with ensure_ascii off)."""
    kind = type(value)
    if kind is _Number:
        out.append(value)
    elif kind is str:
        if "\0" in value:
            raise InvalidValue("unsupported Unicode escape sequence", "22P05",
                               detail="\\u0000 cannot be converted to text.")
        out.append(_json_string(value))
    elif kind is dict:
        keyed = sorted(((k.encode(), k, v) for k, v in value.items()),
                       key=lambda e: (len(e[0]), e[0]))
        out.append("{")
        for i, (_, key, item) in enumerate(keyed):
            if i:
                out.append(", ")
            _jsonb_text(key, out)
            out.append(": ")
            _jsonb_text(item, out)
        out.append("}")
    elif kind is list:
        out.append("[")
        for i, item in enumerate(value):
            if i:
                out.append(", ")
            _jsonb_text(item, out)
        out.append("]")
    else:
        out.append("null" if value is None else "true" if value else "false")


def _jsonb_in(data: bytes, canonical: bool, timezone: str) -> bytes:
    """JSON text (valid UTF-8) -> jsonb_send's form: version 1 and the normalized text."""
    out: list[str] = []
    try:
        _jsonb_text(_JSON_DECODER.decode(data.decode()), out)
        return b"\x01" + "".join(out).encode()
    except json.JSONDecodeError as exc:
        raise InvalidValue("invalid input syntax for type json", detail=exc.msg) from None
    except UnicodeEncodeError:
        raise InvalidValue("invalid input syntax for type json",
                           detail="Unicode surrogates must come in high-low pairs.") from None
    except RecursionError:
        raise InvalidValue("stack depth limit exceeded", "54001") from None


def _json_recv(data: bytes, canonical: bool, timezone: str) -> bytes:
    _check_utf8(data)
    return _jsonb_in(data, canonical, timezone)


def _jsonb_recv(data: bytes, canonical: bool, timezone: str) -> bytes:
    if not data:
        raise _size_error("jsonb", 0, 1)
    if data[0] != 1:
        raise InvalidValue(f"unsupported jsonb version number {data[0]}", "22P03")
    return _json_recv(data[1:], canonical, timezone)


def _jsonb_out(plain: bytes, timezone: str) -> bytes:
    return plain[1:]


# --- dispatch -------------------------------------------------------------------------

_Decoder = Callable[[bytes, bool, str], bytes]


def _same(data: bytes, canonical: bool, timezone: str) -> bytes:
    return bytes(data)


_TEXT_IN: dict[str, _Decoder] = {
    "text": _same, "smallint": _int_in("smallint", _I2), "integer": _int_in("integer", _I4),
    "bigint": _int_in("bigint", _I8), "numeric": _numeric_in, "boolean": _bool_in,
    "date": _date_in, "timestamptz": _timestamptz_in, "jsonb": _jsonb_in, "bytea": _bytea_in,
}
#: Per logical type, the binary parameter types it takes (by declared OID).
_BINARY_IN: dict[str, dict[int, _Decoder]] = {
    "text": dict.fromkeys((_TEXT, _VARCHAR, _NAME), _text_recv),
    **{name: {oid: _int_recv(*source, out, name) for oid, source in _INT_SOURCES.items()}
       for name, out in (("smallint", _I2), ("integer", _I4), ("bigint", _I8))},
    "numeric": {TYPE_OIDS["numeric"]: _numeric_recv,
                **{oid: _int_to_numeric(*source) for oid, source in _INT_SOURCES.items()}},
    "boolean": {TYPE_OIDS["boolean"]: _bool_recv},
    "date": {TYPE_OIDS["date"]: _date_recv},
    "timestamptz": {TYPE_OIDS["timestamptz"]: _timestamptz_recv, _TIMESTAMP: _timestamp_recv},
    "jsonb": {TYPE_OIDS["jsonb"]: _jsonb_recv, _JSON: _json_recv},
    "bytea": {TYPE_OIDS["bytea"]: _same},
}
for _name, _decoders in _BINARY_IN.items():
    # Unspecified and unknown parameters take the type PostgreSQL infers: the logical one.
    _decoders[0] = _decoders[_UNKNOWN] = _decoders[TYPE_OIDS[_name]]

_TEXT_OUT: dict[str, Callable[[bytes, str], bytes]] = {
    "text": lambda plain, timezone: plain, "smallint": _int_out, "integer": _int_out,
    "bigint": _int_out, "numeric": _numeric_out, "boolean": _bool_out, "date": _date_out,
    "timestamptz": _timestamptz_out, "jsonb": _jsonb_out, "bytea": _bytea_out,
}


def to_plain(type_name: str, data: bytes, fmt: int, *, canonical: bool, client_type: int = 0,
             timezone: str = "UTC") -> bytes:
    """A client's value (fmt 0: text, as in SQL literals, text parameters and COPY fields;
    fmt 1: a binary parameter declared as ``client_type``) -> the plaintext to seal.
    ``timezone`` (the session's TimeZone) places timestamps given without an offset."""
    if fmt == 0:
        _check_utf8(data)  # as PostgreSQL checks every text value from a client
        return _TEXT_IN[type_name](data, canonical, timezone)
    decode = _BINARY_IN[type_name].get(client_type)
    if decode is None:
        declared = _OID_NAMES.get(client_type, f"OID {client_type}")
        raise InvalidValue(
            f"an encrypted {type_name} value cannot be sent as a binary parameter of type "
            f"{declared}", "42804",
            hint=f"Declare the parameter as {_OID_NAMES[TYPE_OIDS[type_name]]} (or leave its "
                 "type unspecified), or send it in text format.")
    return decode(data, canonical, timezone)


def from_plain(type_name: str, plain: bytes, fmt: int, *, timezone: str = "UTC") -> bytes:
    """An opened plaintext -> the value as PostgreSQL would send it in a DataRow, in text
    (fmt 0, in the session's TimeZone) or binary (fmt 1: the plaintext itself)."""
    if fmt == 0:
        return _TEXT_OUT[type_name](plain, timezone)
    return plain
