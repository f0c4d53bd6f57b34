"""Plans: what to do with one statement text, cached across sessions.

A plan is tenant-independent: the rewritten SQL is kept as parts split on
the tenant sentinel, so applying it to a tenant is a string join, and the
checks that depend on the tenant (literals and parameters that must equal it,
LISTEN channels) are listed for the session to run.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

from proxy.errors import PgError
from proxy.sql.copyin import CopyFormat
from proxy.sql.facts import StatementFacts
from proxy.sql.sealing import Sealing


@dataclass(frozen=True, slots=True)
class IdentityAction:
    """SET/RESET/SHOW of tenant_proxy.tenant, answered by the proxy."""

    verb: str  # "set", "reset" or "show"
    value: str | None = None
    local: bool = False


@dataclass(frozen=True, slots=True)
class SqlObject:
    """A SQL-level prepared statement or cursor the statement creates or uses."""

    verb: str  # prepare, declare, execute, fetch, close, deallocate
    name: str | None  # None: ALL
    #: For execute: each argument's literal text (None if not a literal).
    args: tuple[str | None, ...] = ()
    hold: bool = False


@dataclass(frozen=True, slots=True)
class Plan:
    #: Rewritten text split on the tenant sentinel; None forwards the text as it is.
    parts: tuple[str, ...] | None = None
    needs_tenant: bool = False
    tenant_params: frozenset[int] = frozenset()
    tenant_literals: tuple[str, ...] = ()
    channels: tuple[str, ...] = ()
    identity: IdentityAction | None = None
    #: A refusal that holds whatever the tenant.
    error: PgError | None = None
    kinds: tuple[str, ...] = ()
    relations: tuple[str, ...] = ()
    #: COPY ... FROM STDIN into a tenant-scoped table: how to fill or check rows.
    copy_in: CopyFormat | None = None
    sql_object: SqlObject | None = None
    #: For plans shared by statements differing only in literals: the rewritten
    #: text split at the literal slots (the tenant still as the sentinel).
    template: tuple[str, ...] | None = None
    #: How the statement looks, for the anomaly model (refused ones too).
    facts: StatementFacts = field(default_factory=StatementFacts)
    #: A stable id of the statement's shape (its cache key, hashed).
    fingerprint: str = ""
    #: Values to encrypt and the encrypted tables the statement touches.
    sealing: Sealing | None = None
    #: It sets a SAVEPOINT (a later ROLLBACK TO could undo what follows it).
    savepoint: bool = False
    #: It ends the transaction block with ROLLBACK (what it set is undone).
    rollback: bool = False

    def render(self, tenant_literal: str) -> str | None:
        if self.parts is None:
            return None
        return tenant_literal.join(self.parts)


@dataclass
class PlanCache:
    """An LRU of plans keyed by (rules version, identity mode, statement text)."""

    capacity: int = 10_000
    hits: int = 0
    misses: int = 0
    evictions: int = 0
    _entries: OrderedDict[tuple[str, str, str], Plan] = field(default_factory=OrderedDict)

    def get(self, key: tuple[str, str, str]) -> Plan | None:
        plan = self._entries.get(key)
        if plan is None:
            self.misses += 1
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        return plan

    def put(self, key: tuple[str, str, str], plan: Plan) -> None:
        self._entries[key] = plan
        self._entries.move_to_end(key)
        while len(self._entries) > self.capacity:
            self._entries.popitem(last=False)
            self.evictions += 1

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)
