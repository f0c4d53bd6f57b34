"""Prepared statements, portals and the server's answers to them (sans-IO).

PostgreSQL keeps one namespace of prepared statements for SQL ``PREPARE`` and
protocol Parse, and one of portals for ``DECLARE`` and protocol Bind. A name
changes only when the server says so: a Parse of a name in use fails, a
``DEALLOCATE`` in an aborted transaction does nothing. So the proxy keeps,
per name, every entry the server may hold under it, adds an entry when the
message that creates it is sent, and settles the name when the answer comes
(``Steps``). Checks run against every entry a name may stand for, so no
ordering of messages makes a statement run with checks other than its own.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from proxy.sql.copyin import CopyFormat
from proxy.sql.plan import SqlObject
from proxy.sql.sealing import SealedValue
from proxy.wire.frontend import Parse


@dataclass(eq=False, slots=True)
class Prepared:
    """A prepared statement, however it was prepared."""

    tenant: str | None
    params: frozenset[int]
    #: The client's Parse, to prepare the statement again for another tenant.
    parse: Parse | None = None
    #: Parameters of encrypted columns, sealed at Bind.
    sealed: dict[int, SealedValue] = field(default_factory=dict)
    #: Whether it touches a table with encrypted columns (its rows may need decrypting).
    encrypted: bool = False
    #: It runs COPY ... FROM STDIN; ``copy_in`` says how its rows are checked (None: as sent).
    copies: bool = False
    copy_in: CopyFormat | None = None
    #: A SQL PREPARE, EXECUTE, DECLARE, FETCH, CLOSE or DEALLOCATE it runs.
    sql_object: SqlObject | None = None
    #: For a SQL PREPARE run through the protocol: the statement it prepares.
    prepares: Prepared | None = None
    #: For SET/RESET of the tenant: the switch, made when an execution is confirmed.
    identity: Callable[[], None] | None = None
    confirmed: bool = False
    #: The Sync epoch of the message that creates it.
    due: int = 0


@dataclass(eq=False, slots=True)
class Portal:
    """A portal: a protocol Bind or a SQL cursor."""

    tenant: str | None
    statement: Prepared | None = None
    hold: bool = False
    confirmed: bool = False
    due: int = 0


E = TypeVar("E", Prepared, Portal)


class Names(Generic[E]):
    """One namespace: per name, every entry the server may hold under it."""

    def __init__(self) -> None:
        self._entries: dict[str, list[E]] = {}

    def get(self, name: str, due: int | None = None) -> list[E]:
        """The entries ``name`` may stand for in a message of epoch ``due``: a creation
        sent earlier in the same epoch is the only one, as its failure would make the
        server skip that message."""
        entries = self._entries.get(name, [])
        if entries and not entries[-1].confirmed and entries[-1].due == due:
            return entries[-1:]
        return entries

    def define(self, name: str, entry: E, due: int) -> None:
        """Sent: until the answer, the name may mean this entry or the old ones."""
        entry.due = due
        entries = self._entries.get(name)
        if entries is None:
            self._entries[name] = [entry]
        else:
            entries.append(entry)

    def only(self, name: str, entry: E) -> bool:
        """Whether ``entry`` is the one thing ``name`` can mean now."""
        entries = self._entries.get(name)
        return entries is not None and len(entries) == 1 and entries[0] is entry

    def settle(self, name: str, entry: E) -> None:
        """``entry`` is what ``name`` means from now on, without an answer to wait for."""
        entry.confirmed = True
        self._entries[name] = [entry]

    def confirm(self, name: str, entry: E) -> None:
        entries = self._entries.get(name, ())
        if entries and (entries[-1] is entry or any(e is entry for e in entries)):
            entry.confirmed = True
            self._entries[name] = [entry]

    def fail(self, name: str, entry: E) -> None:
        self._set(name, [e for e in self.get(name) if e is not entry])

    def remove(self, name: str) -> None:
        """The server dropped the name: entries still being created stay."""
        self._set(name, [e for e in self.get(name) if not e.confirmed])

    def remove_all(self, keep: Callable[[E], bool] = lambda e: False) -> None:
        for name in list(self._entries):
            self._set(name, [e for e in self._entries[name] if keep(e) or not e.confirmed])

    def reset(self) -> None:
        self._entries.clear()

    def clear(self, keep: Callable[[E], bool]) -> None:
        """Every entry but those ``keep`` says to keep (all of them, usually, at once)."""
        kept = {name: [e for e in entries if keep(e)] for name, entries in self._entries.items()}
        self._entries = {name: entries for name, entries in kept.items() if entries}

    def _set(self, name: str, entries: list[E]) -> None:
        if entries:
            self._entries[name] = entries
        else:
            self._entries.pop(name, None)

    def __len__(self) -> int:
        return len(self._entries)


#: Answer kinds: ParseComplete, BindComplete, CloseComplete; the end of an Execute.
PARSED, BOUND, CLOSED = b"1"[0], b"2"[0], b"3"[0]
EXECUTED = (b"C"[0], b"I"[0], b"s"[0])
QUERY = b"Q"[0]


@dataclass(eq=False, slots=True)
class Step:
    """A message sent upstream whose answer settles state or may start a COPY."""

    #: The number of the ReadyForQuery that ends its Sync epoch.
    due: int
    #: What answers it: PARSED, BOUND, CLOSED, EXECUTED[0] or QUERY (ReadyForQuery).
    kind: int
    done: Callable[[], None] | None = None
    failed: Callable[[], None] | None = None
    #: A name it defines: confirmed by the answer, dropped by a failure (kept here
    #: rather than as callbacks: a Parse or Bind on the hot path allocates less).
    names: Names[Any] | None = None
    name: str = ""
    entry: Any = None
    #: For executions: whether a COPY ... FROM STDIN may run, and how its rows are checked.
    copies: bool = False
    copy_in: CopyFormat | None = None
    tenant: str | None = None


class Steps:
    """The steps the server has not answered yet, in the order it answers them.

    After an error the server skips everything up to Sync, so every step of the
    epoch fails; a step the epoch ends without answering leaves its names
    unsettled (every entry still checked).
    """

    def __init__(self) -> None:
        self._steps: deque[Step] = deque()
        self.received = 0

    def __bool__(self) -> bool:
        return bool(self._steps)

    def add(self, step: Step) -> None:
        self._steps.append(step)

    def running(self) -> Step | None:
        """The execution the server is in now (the one a CopyInResponse belongs to)."""
        head = self._head()
        return head if head is not None and head.kind in (EXECUTED[0], QUERY) else None

    @property
    def executing(self) -> bool:
        """Whether an execution is still unanswered (it may yet start a COPY)."""
        return any(s.kind in (EXECUTED[0], QUERY) for s in self._steps)

    def answered(self, kind: int) -> None:
        head = self._head()
        if head is None:
            return
        expected = EXECUTED[0] if kind in EXECUTED else kind
        if head.kind == expected:
            self._steps.popleft()
            if head.names is not None:
                head.names.confirm(head.name, head.entry)
            if head.done is not None:
                head.done()

    def error(self) -> None:
        current = self.received + 1
        while self._steps and self._steps[0].due <= current:
            step = self._steps.popleft()
            if step.names is not None:
                step.names.fail(step.name, step.entry)
            if step.failed is not None:
                step.failed()

    def ready(self, number: int) -> None:
        self.received = number
        while self._steps and self._steps[0].due <= number:
            step = self._steps.popleft()
            if step.kind == QUERY and step.done is not None:
                step.done()

    def _head(self) -> Step | None:
        current = self.received + 1
        head = self._steps[0] if self._steps else None
        return head if head is not None and head.due == current else None
