"""COPY ... FROM STDIN into a tenant-scoped table, row by row (sans-IO).

The SQL pipeline never sees COPY rows: they arrive later, in CopyData
messages cut at arbitrary places. ``CopyIn`` reassembles rows in PostgreSQL's
text or CSV format and either appends the tenant column (when the statement
was rewritten to include it) or checks that the column holds the session's
tenant, so no row of another tenant can be loaded (I2).
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass

from proxy.errors import Refused

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


class CopyIn:
    def __init__(self, fmt: CopyFormat, tenant: str, quote_tenant: bool) -> None:
        self.fmt = fmt
        self.tenant = tenant
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
        quote, escape = self.fmt.quote.encode()[0], self.fmt.escape.encode()[0]
        in_quotes = False
        i, buf = 0, self._pending
        while i < len(buf):
            ch = buf[i]
            if in_quotes:
                if ch == escape and escape != quote and i + 1 < len(buf) and \
                        buf[i + 1] in (quote, escape):
                    i += 2
                    continue
                if ch == quote:
                    in_quotes = False
            elif ch == quote:
                in_quotes = True
            elif ch == 10:
                return i
            i += 1
        return None

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
        if self.fmt.tenant_index is None:
            return body + self._append + (b"\r" if cr else b"")
        value = self._field(body.decode("utf-8", "surrogateescape"), self.fmt.tenant_index)
        if value != self.tenant:
            shown = "NULL" if value is None else repr(value[:40])
            raise Refused(f"COPY row {self._rows}: tenant value {shown} is not this "
                          "session's tenant", hint="Rows cannot be loaded for another tenant.")
        return row

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


def _csv_quote(value: str, fmt: CopyFormat) -> str:
    return fmt.quote + value.replace(fmt.quote, fmt.quote * 2) + fmt.quote
