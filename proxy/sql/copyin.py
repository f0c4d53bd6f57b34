"""COPY ... FROM STDIN into a tenant-scoped table, row by row (sans-IO).

The SQL pipeline never sees COPY rows: they arrive later, in CopyData
messages cut at arbitrary places. ``CopyIn`` reassembles rows in PostgreSQL's
text or CSV format and either appends the tenant column (when the statement
was rewritten to include it) or checks that the column holds the session's
tenant, so no row of another tenant can be loaded (I2). Fields of encrypted
columns are replaced by their ciphertexts on the way (I6).
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from proxy.errors import Refused
from proxy.policy.rules import EncryptedColumn

MAX_ROW = 64 * 1024 * 1024


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


#: Seals one field's text for a column; returns bytea's hex input form.
Sealer = Callable[[EncryptedColumn, str], str]


class CopyIn:
    def __init__(self, fmt: CopyFormat, tenant: str, quote_tenant: bool,
                 seal: Sealer | None = None) -> None:
        self.fmt = fmt
        self.tenant = tenant
        self._seal = seal
        self._append = (fmt.delimiter + (_csv_quote(tenant, fmt) if fmt.csv and quote_tenant
                                         else tenant)).encode()
        self._pending = bytearray()
        self._rows = 0
        self._skip_header = fmt.header
        self._done = False  # after the \. end marker

    def feed(self, data: bytes) -> bytes:
        """Transformed bytes for the rows completed by ``data``; raises Refused."""
        self._pending += data
        if len(self._pending) > MAX_ROW:
            raise Refused(f"COPY row {self._rows + 1} is longer than {MAX_ROW} bytes")
        out = bytearray()
        while not self._done:
            end = self._row_end()
            if end is None:
                break
            row = bytes(self._pending[:end])
            del self._pending[:end + 1]
            out += self._row(row) + b"\n"
        if self._done:
            out += self._pending
            self._pending.clear()
        return bytes(out)

    def finish(self) -> bytes:
        """The last row if it had no newline; call at CopyDone."""
        if not self._pending or self._done:
            return b""
        row = bytes(self._pending)
        self._pending.clear()
        return self._row(row)

    def _row_end(self) -> int | None:
        """Index of the newline ending the first complete row, if any."""
        if not self.fmt.csv:
            end = self._pending.find(b"\n")
            return None if end < 0 else end
        return next(_unquoted(self._pending, self.fmt.quote.encode()[0],
                              self.fmt.escape.encode()[0], 10), None)

    def _row(self, row: bytes) -> bytes:
        cr = row.endswith(b"\r")
        body = row[:-1] if cr else row
        if self._skip_header:
            self._skip_header = False
            return row
        if not self.fmt.csv and body == b"\\.":
            self._done = True
            return row
        self._rows += 1
        if self.fmt.sealed:
            row = self._sealed(body) + (b"\r" if cr else b"")
            body = row[:-1] if cr else row
        if self.fmt.tenant_index is None:
            return body + self._append + (b"\r" if cr else b"")
        value = self._field(body.decode("utf-8", "surrogateescape"), self.fmt.tenant_index)
        if value != self.tenant:
            shown = "NULL" if value is None else repr(value[:40])
            raise Refused(f"COPY row {self._rows}: tenant value {shown} is not this "
                          "session's tenant", hint="Rows cannot be loaded for another tenant.")
        return row

    def _sealed(self, body: bytes) -> bytes:
        """The row with its encrypted columns' fields sealed."""
        assert self._seal is not None
        fmt = self.fmt
        fields = _split_csv(body.decode("utf-8", "surrogateescape"), fmt) if fmt.csv else \
            _split_text(body.decode("utf-8", "surrogateescape"), fmt.delimiter)
        for index, column in fmt.sealed:
            if index >= len(fields):
                continue  # PostgreSQL reports the missing column
            raw = fields[index]
            if fmt.csv:
                if raw == "":
                    continue  # unquoted empty: NULL
                value = _csv_value(raw, fmt)
                fields[index] = self._seal(column, value)
            else:
                if raw == "\\N":
                    continue
                fields[index] = self._seal(column, _unescape(raw)).replace("\\", "\\\\")
        return fmt.delimiter.join(fields).encode("utf-8", "surrogateescape")

    def _field(self, line: str, index: int) -> str | None:
        if self.fmt.csv:
            reader = csv.reader(io.StringIO(line), delimiter=self.fmt.delimiter,
                                quotechar=self.fmt.quote, doublequote=self.fmt.escape ==
                                self.fmt.quote, escapechar=None if self.fmt.escape ==
                                self.fmt.quote else self.fmt.escape, strict=True)
            try:
                fields = next(reader, [])
            except csv.Error as exc:
                raise Refused(f"COPY row {self._rows}: the tenant column cannot be read "
                              f"({exc})", hint="Quote CSV fields as RFC 4180 does.") from exc
        else:
            fields = _split_text(line, self.fmt.delimiter)
        if index >= len(fields):
            return None
        value = fields[index]
        if not self.fmt.csv and value == "\\N":
            return None
        return value


def _split_text(line: str, delimiter: str) -> list[str]:
    """Fields of a text-format row; backslash escapes stay as written."""
    fields, current, i = [], [], 0
    while i < len(line):
        ch = line[i]
        if ch == "\\" and i + 1 < len(line):
            current.append(line[i:i + 2])
            i += 2
            continue
        if ch == delimiter:
            fields.append("".join(current))
            current = []
        else:
            current.append(ch)
        i += 1
    fields.append("".join(current))
    return fields


def _unquoted(text: Sequence[Any], quote: Any, escape: Any, stop: Any) -> Iterator[int]:
    """Positions of ``stop`` outside CSV quotes, with quote and escape read as PostgreSQL
    reads them; over bytes (items and marks are ints) or text (one-character strings)."""
    in_quotes, i, n = False, 0, len(text)
    while i < n:
        ch = text[i]
        if in_quotes:
            if ch == escape and escape != quote and i + 1 < n and text[i + 1] in (quote, escape):
                i += 2
                continue
            if ch == quote:
                in_quotes = False
        elif ch == quote:
            in_quotes = True
        elif ch == stop:
            yield i
        i += 1


def _split_csv(line: str, fmt: CopyFormat) -> list[str]:
    """Fields of a CSV row as written (quotes kept), so unchanged ones go out as they came."""
    fields, start = [], 0
    for end in _unquoted(line, fmt.quote, fmt.escape, fmt.delimiter):
        fields.append(line[start:end])
        start = end + 1
    fields.append(line[start:])
    return fields


def _csv_value(raw: str, fmt: CopyFormat) -> str:
    """A CSV field's value: quoted parts unquoted, as PostgreSQL reads them."""
    out, i, in_quotes = [], 0, False
    while i < len(raw):
        ch = raw[i]
        if in_quotes and ch == fmt.escape and i + 1 < len(raw) and \
                raw[i + 1] in (fmt.quote, fmt.escape) and (fmt.escape != fmt.quote or
                                                           raw[i + 1] == fmt.quote):
            out.append(raw[i + 1])
            i += 2
            continue
        if ch == fmt.quote:
            in_quotes = not in_quotes
        else:
            out.append(ch)
        i += 1
    return "".join(out)


_ESCAPES = {"b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v"}
_ESCAPE = re.compile(r"\\(x[0-9a-fA-F]{1,2}|[0-7]{1,3}|.)", re.DOTALL)


def _unescape(raw: str) -> str:
    """A text-format COPY field's value (backslash escapes as PostgreSQL reads them)."""
    def one(match: re.Match[str]) -> str:
        code = match.group(1)
        if code[0] == "x" and len(code) > 1:
            return chr(int(code[1:], 16))
        if code[0] in "01234567":
            return chr(int(code, 8))
        return _ESCAPES.get(code, code)
    return _ESCAPE.sub(one, raw) if "\\" in raw else raw


def _csv_quote(value: str, fmt: CopyFormat) -> str:
    return fmt.quote + value.replace(fmt.quote, fmt.quote * 2) + fmt.quote
