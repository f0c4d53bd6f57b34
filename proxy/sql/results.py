"""Result rows of a session with encrypted columns: logical types out, values decrypted.

Sans-IO, driven by the relay with the frontend messages it forwards and the
backend messages it receives. Responses come back in the order of the
requests, so a FIFO of what was asked (Describe, Execute, Sync, Query) says
what each RowDescription, ParameterDescription and DataRow answers. A
statement's columns are known from its Describe; a portal's from its own
Describe, or from its statement's plus the result formats of its Bind. For
statements on encrypted tables the session has the proxy describe the
statement itself right after Parse (the answer is not passed on), so
drivers that never Describe (asyncpg re-executing a statement) still get
their rows decrypted.

Rows whose columns include no encrypted one pass through untouched.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace

from proxy.crypto import values
from proxy.crypto.columns import ColumnCrypto
from proxy.errors import PgError
from proxy.policy.rules import EncryptedColumn
from proxy.wire.backend import (
    ColumnDescription,
    DataRow,
    ErrorResponse,
    ParameterDescription,
    RowDescription,
)
from proxy.wire.fields import FieldReader
from proxy.wire.frontend import Bind, Describe

_T, _PD, _NO_DATA, _D = b"T"[0], b"t"[0], b"n"[0], b"D"[0]
_C, _EMPTY, _SUSPENDED, _ERROR, _Z = b"C"[0], b"I"[0], b"s"[0], b"E"[0], b"Z"[0]
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
                 sealed_params: Callable[[str], Mapping[int, EncryptedColumn]]) -> None:
        self._crypto = crypto
        self._tenant = tenant
        self._sealed_params = sealed_params
        self.timezone = "UTC"
        self._asked: deque[_Asked] = deque()
        self._statements: dict[str, Layout | None] = {}
        #: portal -> (statement, result formats) from its Bind, or its described layout.
        self._portals: dict[str, tuple[str, tuple[int, ...]] | Layout | None] = {}
        self._current: Layout | None = None
        self._descriptions: dict[bytes, tuple[Layout, bytes | None]] = {}
        self._described_by: ColumnCrypto | None = None

    # --- what the client asked -------------------------------------------------

    def describe_after_parse(self, name: str) -> bytes:
        """The proxy's own Describe of a just-parsed statement."""
        self._asked.append(_Asked("describe", name, True, injected=True))
        return Describe("S", name).encode()

    def describe(self, body: bytes) -> None:
        message = Describe.decode(FieldReader(body, "Describe"))
        self._asked.append(_Asked("describe", message.name, message.kind == "S"))

    def bind(self, message: Bind) -> None:
        self._portals[message.portal] = (message.statement, message.result_formats)

    def execute(self, portal: str) -> None:
        self._asked.append(_Asked("execute", portal))

    def sync(self) -> None:
        self._asked.append(_Asked("sync"))

    def query(self) -> None:
        self._asked.append(_Asked("query"))

    def closed(self, kind: str, name: str) -> None:
        (self._statements if kind == "S" else self._portals).pop(name, None)

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
        row = list(DataRow.decode(FieldReader(body, "DataRow")).values)
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
        return DataRow(tuple(row)).encode()

    def _portal_layout(self, portal: str) -> Layout | None:
        entry = self._portals.get(portal)
        if entry is None or isinstance(entry, Layout):
            return entry
        statement, formats = entry
        layout = self._statements.get(statement)
        if layout is None:
            return None
        layout = layout.formatted(formats)
        self._portals[portal] = layout
        return layout


def _logical(description: ColumnDescription, column: EncryptedColumn) -> ColumnDescription:
    return replace(description, type_oid=values.TYPE_OIDS[column.type],
                   type_size=values.TYPE_SIZES[column.type], type_modifier=-1)


__all__ = ["BACKEND_KINDS", "Layout", "ResultDecryptor"]
