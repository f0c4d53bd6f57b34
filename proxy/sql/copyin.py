"""COPY ... FROM STDIN into a tenant-scoped table, row by row (sans-IO).

The SQL pipeline never sees COPY rows: they arrive later, in CopyData
messages cut at arbitrary places. ``CopyIn`` reassembles rows exactly as
PostgreSQL's COPY FROM reads them (copyfromparse.c: a row ends at ``\\n``,
``\\r`` or ``\\r\\n``, the first one fixing the style; backslash escapes;
CSV quotes spanning lines; the ``\\.`` end marker) and either appends the
tenant column (when the statement was rewritten to include it) or checks
that the column holds the session's tenant, so no row of another tenant can
be loaded (I2). Data PostgreSQL would reject is refused with PostgreSQL's own
error, so the rows checked are always the rows stored. Fields of encrypted
columns are replaced by their ciphertexts on the way (I6).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from proxy.errors import PgError, Refused
from proxy.policy.rules import EncryptedColumn

MAX_ROW = 64 * 1024 * 1024
_CR, _NL, _BACKSLASH, _DOT = 13, 10, 92, 46


class BadCopyData(PgError):
    """COPY data PostgreSQL itself rejects (bad_copy_file_format)."""

    sqlstate = "22P04"
    default_reason = "copy_format"


@dataclass(frozen=True, slots=True)
class CopyFormat:
    csv: bool = False
    delimiter: str = "\t"
    quote: str = '"'
    escape: str = '"'
    header: bool = False
    #: Index of the tenant column in each row, or None when the proxy appends it.
    tenant_index: int | None = None
    #: (field index, column) of encrypted columns.
    sealed: tuple[tuple[int, EncryptedColumn], ...] = ()
    #: The NULL option; None for the format's default (``\\N``, or an unquoted empty CSV field).
    null: str | None = None

    @property
    def null_marker(self) -> bytes:
        if self.null is not None:
            return self.null.encode()
        return b"" if self.csv else b"\\N"


#: Seals one field's text for a column; returns bytea's hex input form.
Sealer = Callable[[EncryptedColumn, str], str]
#: One row as PostgreSQL reads it: each field's value, None for NULL.
Fields = list[bytes | None]


@dataclass(slots=True)
class Line:
    """One line of COPY data: its content and what ended it (``\\n``, ``\\r``,
    ``\\r\\n``, the end-of-data marker, or nothing at the end of the data)."""

    content: bytes
    ending: bytes
    #: True when ``\\.`` ended it: the server reads nothing after it.
    last: bool = False


class CopyLines:
    """PostgreSQL's CopyReadLine over a byte stream fed in arbitrary pieces."""

    def __init__(self, fmt: CopyFormat) -> None:
        self.csv = fmt.csv
        self.quote = ord(fmt.quote)
        #: As in PostgreSQL, no escape processing when it is the quote character.
        self.escape = ord(fmt.escape) if fmt.csv and fmt.escape != fmt.quote else -1
        self.eol: bytes | None = None
        self.ended = False
        self._buf = bytearray()
        self._pos = 0
        self._in_quote = self._last_was_esc = False
        marks = {b"\\", b"\r", b"\n"} | ({fmt.quote.encode(), fmt.escape.encode()}
                                         if fmt.csv else set())
        self._special = re.compile(b"[" + b"".join(re.escape(m) for m in sorted(marks)) + b"]")

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes) -> None:
        if not self.ended:
            self._buf += data

    def next(self, eof: bool = False) -> Line | None:
        """The next complete line, or None until more data (or the end) arrives."""
        buf = self._buf
        while not self.ended:
            match = self._special.search(buf, self._pos)
            if match is None:
                if len(buf) > self._pos:
                    self._last_was_esc = False
                self._pos = len(buf)
                break
            i = match.start()
            if i > self._pos:
                self._last_was_esc = False  # only consecutive escapes pair up
            c = buf[i]
            if c in (_BACKSLASH, _CR) and not eof and len(buf) < i + (4 if c == _BACKSLASH
                                                                      else 2):
                self._pos = i  # PostgreSQL looks ahead here: wait for the bytes
                return None
            if self.csv:
                self._quote_state(c)
            if c in (_CR, _NL) and not self._in_quote:
                return self._newline(i)
            if c == _BACKSLASH and (not self.csv or i == 0):
                if i + 1 >= len(buf):
                    break  # a backslash at the very end of the data
                if buf[i + 1] == _DOT:
                    line = self._marker(i)
                    if line is not None:
                        return line
                    continue
                if not self.csv:
                    self._pos = i + 2  # text: any byte after a backslash is data
                    continue
            self._pos = i + 1
        if eof and buf:
            return self._take(len(buf), len(buf))
        return None

    def _quote_state(self, c: int) -> None:
        if self._in_quote and c == self.escape:
            self._last_was_esc = not self._last_was_esc
        if c == self.quote and not self._last_was_esc:
            self._in_quote = not self._in_quote
        if c != self.escape:
            self._last_was_esc = False

    def _at(self, i: int) -> int:
        return self._buf[i] if i < len(self._buf) else 0

    def _newline(self, i: int) -> Line:
        what = "carriage return" if self._buf[i] == _CR else "newline"
        if self._buf[i] == _CR:
            end = i + 1
            if self.eol in (None, b"\r\n"):
                if self._at(i + 1) == _NL:
                    end, self.eol = i + 2, b"\r\n"
                elif self.eol == b"\r\n":
                    raise self._mixed(what, "\\r")
                else:
                    self.eol = b"\r"
            elif self.eol == b"\n":
                raise self._mixed(what, "\\r")
        else:
            end = i + 1
            if self.eol in (b"\r", b"\r\n"):
                raise self._mixed(what, "\\n")
            self.eol = b"\n"
        return self._take(i, end)

    def _mixed(self, what: str, escape: str) -> BadCopyData:
        if self.csv:
            return BadCopyData(f"unquoted {what} found in data",
                               hint=f"Use quoted CSV field to represent {what}.")
        return BadCopyData(f"literal {what} found in data",
                           hint=f'Use "{escape}" to represent {what}.')

    def _marker(self, i: int) -> Line | None:
        """``\\.`` at ``i``: the end of the data, or (CSV) data after all."""
        j = i + 2
        if self.eol == b"\r\n":
            c2 = self._at(j)
            j += 1
            if c2 != _CR:
                return self._not_marker(i, "end-of-copy marker does not match previous "
                                           "newline style" if c2 == _NL else
                                           "end-of-copy marker corrupt")
        c2 = self._at(j)
        j += 1
        if c2 not in (_CR, _NL):
            return self._not_marker(i, "end-of-copy marker corrupt")
        if (self.eol in (b"\n", b"\r\n") and c2 != _NL) or (self.eol == b"\r" and c2 != _CR):
            raise BadCopyData("end-of-copy marker does not match previous newline style")
        line = self._take(i, min(j, len(self._buf)))
        line.last = self.ended = True
        self._buf.clear()
        return line

    def _not_marker(self, i: int, error: str) -> None:
        if not self.csv:
            raise BadCopyData(error)
        self._pos = i + 1  # CSV: data after all, read on from after the backslash
        return None

    def _take(self, end: int, stop: int) -> Line:
        buf = self._buf
        line = Line(bytes(buf[:end]), bytes(buf[end:stop]))
        del buf[:stop]
        self._pos = 0
        self._in_quote = self._last_was_esc = False
        return line


def field_spans(fmt: CopyFormat, content: bytes) -> list[tuple[int, int, bool]]:
    """(start, end, quoted) of each field as PostgreSQL splits a line."""
    return _csv_spans(fmt, content) if fmt.csv else _text_spans(fmt, content)


def _text_spans(fmt: CopyFormat, line: bytes) -> list[tuple[int, int, bool]]:
    delim, spans, start, i, n = ord(fmt.delimiter), [], 0, 0, len(line)
    while True:
        end = i
        if i >= n:
            spans.append((start, end, False))
            return spans
        c = line[i]
        if c == delim:
            spans.append((start, end, False))
            start = i = i + 1
            continue
        if c == _BACKSLASH:
            if i + 1 >= n:  # a lone final backslash is dropped
                spans.append((start, end, False))
                return spans
            i += 2
            continue
        i += 1


def _csv_spans(fmt: CopyFormat, line: bytes) -> list[tuple[int, int, bool]]:
    delim, quote, escape = ord(fmt.delimiter), ord(fmt.quote), ord(fmt.escape)
    spans, i, n = [], 0, len(line)
    while True:
        start, quoted, in_quote = i, False, False
        while True:
            if i >= n:
                if in_quote:
                    raise BadCopyData("unterminated CSV quoted field")
                spans.append((start, i, quoted))
                return spans
            c = line[i]
            i += 1
            if in_quote:
                if c == escape and i < n and line[i] in (escape, quote):
                    i += 1
                elif c == quote:
                    in_quote = False
            elif c == delim:
                spans.append((start, i - 1, quoted))
                break
            elif c == quote:
                quoted = in_quote = True


def field_value(fmt: CopyFormat, raw: bytes, quoted: bool) -> bytes | None:
    """A field's value as PostgreSQL reads it; None for NULL."""
    if raw == fmt.null_marker and not quoted:
        return None
    if fmt.csv:
        return _csv_value(fmt, raw) if quoted else raw
    return _unescape(raw) if b"\\" in raw else raw


def row_fields(fmt: CopyFormat, content: bytes) -> Fields:
    return [field_value(fmt, content[a:b], q) for a, b, q in field_spans(fmt, content)]


def _csv_value(fmt: CopyFormat, raw: bytes) -> bytes:
    quote, escape = ord(fmt.quote), ord(fmt.escape)
    out, i, n, in_quote = bytearray(), 0, len(raw), False
    while i < n:
        c = raw[i]
        i += 1
        if in_quote and c == escape and i < n and raw[i] in (escape, quote):
            out.append(raw[i])
            i += 1
        elif c == quote:
            in_quote = not in_quote
        else:
            out.append(c)
    return bytes(out)


_ESCAPES = {ord("b"): 8, ord("f"): 12, ord("n"): 10, ord("r"): 13, ord("t"): 9, ord("v"): 11}
_ESCAPE = re.compile(rb"\\(x[0-9a-fA-F]{1,2}|[0-7]{1,3}|.)", re.DOTALL)


def _unescape(raw: bytes) -> bytes:
    """A text-format field's value (backslash escapes as PostgreSQL reads them)."""
    def one(match: re.Match[bytes]) -> bytes:
        code = match.group(1)
        if code[0] == ord("x") and len(code) > 1:
            return bytes((int(code[1:], 16),))
        if code[0] in b"01234567":
            return bytes((int(code, 8) & 0xFF,))
        return bytes((_ESCAPES.get(code[0], code[0]),))
    return _ESCAPE.sub(one, raw)


class CopyIn:
    """One execution of a COPY ... FROM STDIN: its rows checked or filled."""

    def __init__(self, fmt: CopyFormat, tenant: str, quote_tenant: bool,
                 seal: Sealer | None = None) -> None:
        self.fmt = fmt
        self.tenant = tenant
        self._seal = seal
        self._tenant = tenant.encode()
        value = _csv_quote(tenant, fmt) if fmt.csv and quote_tenant else tenant
        self._append = (fmt.delimiter + value).encode()
        self._lines = CopyLines(fmt)
        self._rows = 0
        self._skip_header = fmt.header

    def feed(self, data: bytes) -> bytes:
        """Transformed bytes for the rows completed by ``data``; raises PgError."""
        self._lines.feed(data)
        out = self._drain(eof=False)
        if self._lines.buffered > MAX_ROW:
            raise Refused(f"COPY row {self._rows + 1} is longer than {MAX_ROW} bytes")
        return out

    def finish(self) -> bytes:
        """The last row if it had no newline; call at CopyDone."""
        return self._drain(eof=True)

    def _drain(self, eof: bool) -> bytes:
        out = bytearray()
        while (line := self._lines.next(eof)) is not None:
            out += self._line(line)
        return bytes(out)

    def _line(self, line: Line) -> bytes:
        if self._skip_header:
            self._skip_header = False
            return line.content + line.ending
        if line.last and not line.content:
            return line.ending  # ``\\.`` on a line of its own: no row
        self._rows += 1
        content = self._sealed(line.content) if self.fmt.sealed else line.content
        if self.fmt.tenant_index is None:
            return self._filled(content) + line.ending
        self._check(content)
        return content + line.ending

    def _filled(self, content: bytes) -> bytes:
        if not self.fmt.csv and _lone_backslash(content):
            content = content[:-1]  # PostgreSQL drops it; it would escape the delimiter
        return content + self._append

    def _check(self, content: bytes) -> None:
        index = self.fmt.tenant_index
        assert index is not None
        fields = row_fields(self.fmt, content)
        value = fields[index] if index < len(fields) else None
        if value != self._tenant:
            shown = "NULL" if value is None else repr(value[:40].decode("utf-8", "replace"))
            raise Refused(f"COPY row {self._rows}: tenant value {shown} is not this "
                          "session's tenant", hint="Rows cannot be loaded for another tenant.")

    def _sealed(self, content: bytes) -> bytes:
        """The line with its encrypted columns' fields sealed."""
        assert self._seal is not None
        fmt = self.fmt
        spans = field_spans(fmt, content)
        out = content
        for index, column in sorted(fmt.sealed, key=lambda s: -s[0]):
            if index >= len(spans):
                continue  # PostgreSQL reports the missing column
            start, end, quoted = spans[index]
            value = field_value(fmt, content[start:end], quoted)
            if value is None:
                continue
            sealed = self._seal(column, value.decode("utf-8", "surrogateescape"))
            if not fmt.csv:
                sealed = sealed.replace("\\", "\\\\")
            out = out[:start] + sealed.encode() + out[end:]
        return out


def _lone_backslash(content: bytes) -> bool:
    trailing = len(content) - len(content.rstrip(b"\\"))
    return trailing % 2 == 1


def _csv_quote(value: str, fmt: CopyFormat) -> str:
    return fmt.quote + value.replace(fmt.quote, fmt.quote * 2) + fmt.quote
