"""Result rows of a session with encrypted columns: logical types out, values decrypted.

Sans-IO, driven by the relay with the frontend messages it forwards and the
backend messages it receives. Responses come back in the order of the
requests, so a FIFO of what was asked (Describe, Execute, Sync, Query) says
what each RowDescription, ParameterDescription and DataRow answers. A
statement's columns are known from its Describe; a portal's from its own
Describe, or from its statement's plus the result formats of its Bind. When
neither is known or asked for, and the statement touches an encrypted table,
the proxy describes the portal itself just before its Execute (the answer is
not passed on), so drivers that never Describe still get their rows
decrypted; clients that do describe (psycopg, node-postgres, pgbench, asyncpg
once per statement) cost no extra message.

Rows whose columns include no encrypted one pass through untouched.
"""

from __future__ import annotations

import struct
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace

from proxy.crypto import values
from proxy.crypto.columns import ColumnCrypto
from proxy.errors import PgError
from proxy.policy.rules import EncryptedColumn
from proxy.wire.backend import (
    ColumnDescription,
    ErrorResponse,
    ParameterDescription,
    RowDescription,
)
from proxy.wire.fields import FieldReader, FieldWriter, decode_text, frame
from proxy.wire.frontend import Describe

_T, _PD, _NO_DATA, _D = b"T"[0], b"t"[0], b"n"[0], b"D"[0]
_C, _EMPTY, _SUSPENDED, _ERROR, _Z = b"C"[0], b"I"[0], b"s"[0], b"E"[0], b"Z"[0]
_INT16, _INT32 = struct.Struct("!h"), struct.Struct("!i")
#: RowDescriptions remembered per session (a session runs few distinct statements).
_DESCRIPTIONS_KEPT = 64
#: Backend messages this class looks at; everything else passes by.
BACKEND_KINDS = frozenset({_T, _PD, _NO_DATA, _D, _C, _EMPTY, _SUSPENDED, _ERROR, _Z})


@dataclass(frozen=True, slots=True)
class Layout:
    """Which fields of a row are encrypted (index, column, format code)."""

    width: int
    fields: tuple[tuple[int, EncryptedColumn, int], ...]

    def formatted(self, formats: tuple[int, ...]) -> Layout:
        """The layout under a Bind's result format codes (none, one for all, or each)."""
        def fmt(i: int) -> int:
            if not formats:
                return 0
            return formats[0] if len(formats) == 1 else formats[i] if i < len(formats) else 0
        return replace(self, fields=tuple((i, c, fmt(i)) for i, c, _ in self.fields))


@dataclass(slots=True)
class _Asked:
    kind: str  # "describe", "execute", "sync" or "query"
    name: str = ""
    statement: bool = False  # for describe: S (True) or P
    injected: bool = False
    failed: bool = False


class ResultDecryptor:
    def __init__(self, crypto: Callable[[], ColumnCrypto | None],
                 tenant: Callable[[], str | None],
                 sealed_params: Callable[[str], Mapping[int, EncryptedColumn]],
                 encrypted: Callable[[str], bool]) -> None:
        self._crypto = crypto
        self._tenant = tenant
        self._sealed_params = sealed_params
        #: Whether a prepared statement touches a table with encrypted columns.
        self._encrypted = encrypted
        #: Statements and portals the client asked to describe since their Parse / Bind.
        self._described_statements: set[str] = set()
        self._described_portals: set[str] = set()
        self.timezone = "UTC"
        self._asked: deque[_Asked] = deque()
        self._statements: dict[str, Layout | None] = {}
        #: portal -> (statement, its Bind's body, where the formats start there), or
        #: its described layout.
        self._portals: dict[str, tuple[str, bytes, int] | Layout | None] = {}
        self._current: Layout | None = None
        self._descriptions: dict[bytes, tuple[Layout, bytes | None]] = {}
        #: (statement, result formats) -> (its layout, that layout under those formats).
        self._formatted: dict[tuple[str, tuple[int, ...]], tuple[Layout, Layout]] = {}
        self._described_by: ColumnCrypto | None = None

    # --- what the client asked -------------------------------------------------

    def parsed(self, name: str) -> None:
        """A Parse (re)defines ``name``: what was known of its columns is gone."""
        self._statements.pop(name, None)
        self._described_statements.discard(name)

    def describe(self, body: bytes) -> None:
        message = Describe.decode(FieldReader(body, "Describe"))
        statement = message.kind == "S"
        (self._described_statements if statement else self._described_portals).add(
            message.name)
        self._asked.append(_Asked("describe", message.name, statement))

    def bind(self, body: bytes) -> None:
        """A Bind going upstream. Its result formats are read only if a row needs them
        (most statements have no encrypted output), so only the names are decoded now."""
        portal_end = body.index(b"\0")
        statement_end = body.index(b"\0", portal_end + 1)
        portal = decode_text(body[:portal_end])
        self._portals[portal] = (decode_text(body[portal_end + 1:statement_end]), body,
                                 statement_end + 1)
        self._described_portals.discard(portal)

    def execute(self, portal: str, *, describe: bool = True) -> bytes:
        """An Execute going upstream; returns the proxy's own Describe of the portal to
        send before it when nothing else will tell its columns."""
        inject = b""
        entry = self._portals.get(portal)
        if describe and isinstance(entry, tuple) and portal not in self._described_portals:
            statement = entry[0]
            if statement not in self._statements and \
                    statement not in self._described_statements and self._encrypted(statement):
                self._asked.append(_Asked("describe", portal, False, injected=True))
                self._described_portals.add(portal)
                inject = Describe("P", portal).encode()
        self._asked.append(_Asked("execute", portal))
        return inject

    def sync(self) -> None:
        self._asked.append(_Asked("sync"))

    def query(self) -> None:
        self._asked.append(_Asked("query"))

    def closed(self, kind: str, name: str) -> None:
        (self._statements if kind == "S" else self._portals).pop(name, None)
        (self._described_statements if kind == "S" else self._described_portals).discard(name)

    # --- what the server answered ----------------------------------------------

    def backend(self, kind: int, body: bytes) -> bytes | None:
        """The bytes to send the client instead of this message (None: unchanged)."""
        head = self._asked[0] if self._asked else None
        if kind == _D:
            return self._row(head, body)
        if kind == _T:
            return self._row_description(head, body)
        if kind == _PD:
            return self._parameter_description(head, body)
        if kind == _NO_DATA:
            if head is not None and head.kind == "describe":
                self._asked.popleft()
                if head.statement:
                    self._statements[head.name] = None
                else:
                    self._portals[head.name] = None
                return b"" if head.injected else None
            return None
        if kind in (_C, _EMPTY, _SUSPENDED):
            if head is not None and head.kind == "execute":
                self._asked.popleft()
                return b"" if head.failed else None
            failed = head is not None and head.kind == "query" and head.failed
            self._current = None
            if head is not None and head.kind == "query":
                head.failed = False
            return b"" if failed else None
        if kind == _ERROR:
            while self._asked and self._asked[0].kind not in ("sync", "query"):
                self._asked.popleft()
            self._current = None
            return None
        if kind == _Z:
            while self._asked:
                if self._asked.popleft().kind in ("sync", "query"):
                    break
        return None

    def _described(self, body: bytes) -> tuple[Layout, bytes | None]:
        """A RowDescription's layout and its rewritten form (None: unchanged), remembered
        by its bytes: a repeated statement's description is the same every time."""
        crypto = self._crypto()
        if crypto is not self._described_by:
            self._descriptions.clear()  # the catalog was read again
            self._described_by = crypto
        known = self._descriptions.get(body)
        if known is not None:
            return known
        description = RowDescription.decode(FieldReader(body, "RowDescription"))
        attributes = crypto.attributes if crypto is not None else {}
        fields = tuple((i, attributes[(c.table_oid, c.column_number)], c.format_code)
                       for i, c in enumerate(description.columns)
                       if c.table_oid and (c.table_oid, c.column_number) in attributes)
        layout = Layout(len(description.columns), fields)
        rewritten = None
        if fields:
            columns = list(description.columns)
            for i, column, _ in fields:
                columns[i] = _logical(columns[i], column)
            rewritten = RowDescription(tuple(columns)).encode()
        if len(self._descriptions) >= _DESCRIPTIONS_KEPT:
            self._descriptions.clear()
        self._descriptions[body] = (layout, rewritten)
        return layout, rewritten

    def _row_description(self, head: _Asked | None, body: bytes) -> bytes | None:
        layout, rewritten = self._described(body)
        if head is not None and head.kind == "describe":
            self._asked.popleft()
            if head.statement:
                self._statements[head.name] = layout
            else:
                self._portals[head.name] = layout
            if head.injected:
                return b""
        else:
            self._current = layout
        return rewritten

    def _parameter_description(self, head: _Asked | None, body: bytes) -> bytes | None:
        if head is None or head.kind != "describe" or not head.statement:
            return None
        if head.injected:
            return b""
        sealed = self._sealed_params(head.name)
        if not sealed:
            return None
        oids = list(ParameterDescription.decode(FieldReader(body, "ParameterDescription"))
                    .type_oids)
        for number, column in sealed.items():
            if 0 < number <= len(oids):
                oids[number - 1] = values.TYPE_OIDS[column.type]
        return ParameterDescription(tuple(oids)).encode()

    def _row(self, head: _Asked | None, body: bytes) -> bytes | None:
        if head is not None and head.failed:
            return b""
        layout = self._current
        if head is not None and head.kind == "execute":
            layout = self._portal_layout(head.name)
        if layout is None or not layout.fields:
            return None
        tenant, crypto = self._tenant(), self._crypto()
        # The codec's primitives without the message objects: this runs for every row.
        reader = FieldReader(body, "DataRow")
        row = reader.nullable_values(reader.count16())
        reader.end()
        try:
            if tenant is None or crypto is None:
                raise PgError("encrypted values cannot be read in this session now",
                              hint="Set a tenant; the proxy may still be loading its keys.")
            for i, column, fmt in layout.fields:
                value = row[i] if i < len(row) else None
                if value is not None:
                    row[i] = crypto.open(tenant, column, value, fmt, self.timezone)
        except PgError as exc:
            if head is not None:
                head.failed = True
            return ErrorResponse(exc.fields()).encode()
        return frame(b"D", FieldWriter().int16(len(row)).nullable_values(row).body())

    def _portal_layout(self, portal: str) -> Layout | None:
        entry = self._portals.get(portal)
        if entry is None or isinstance(entry, Layout):
            return entry
        statement, body, offset = entry
        layout = self._statements.get(statement)
        if layout is None or not layout.fields:
            return None
        formats = _result_formats(body, offset)
        key = (statement, formats)
        formatted = self._formatted.get(key)
        if formatted is None or formatted[0] is not layout:
            formatted = self._formatted[key] = (layout, layout.formatted(formats))
        self._portals[portal] = formatted[1]
        return formatted[1]


def _result_formats(body: bytes, pos: int) -> tuple[int, ...]:
    """The result format codes of a Bind body, parameters skipped."""
    (count,) = _INT16.unpack_from(body, pos)
    pos += 2 + 2 * count
    (count,) = _INT16.unpack_from(body, pos)
    pos += 2
    for _ in range(count):
        (length,) = _INT32.unpack_from(body, pos)
        pos += 4 + max(length, 0)
    (count,) = _INT16.unpack_from(body, pos)
    return struct.unpack_from(f"!{count}h", body, pos + 2)


def _logical(description: ColumnDescription, column: EncryptedColumn) -> ColumnDescription:
    return replace(description, type_oid=values.TYPE_OIDS[column.type],
                   type_size=values.TYPE_SIZES[column.type], type_modifier=-1)


__all__ = ["BACKEND_KINDS", "Layout", "ResultDecryptor"]
