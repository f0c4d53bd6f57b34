"""What the rules ask of the database: per table, whether it gets the tenant
policy and which privileges the upstream roles may hold.

Writes follow ``writable`` whatever the scope (a read-only tenant table gets
SELECT only); denied tables get nothing. TRUNCATE, REFERENCES and TRIGGER are
never allowed: TRUNCATE ignores row-level security, the others let a role
attach code or constraints to a table.
"""

from __future__ import annotations

from dataclasses import dataclass

from proxy.config.settings import UpstreamSettings
from proxy.policy.rules import Rules

READ = frozenset({"SELECT"})
WRITE = frozenset({"SELECT", "INSERT", "UPDATE", "DELETE"})
#: Privileges the floor compares, by object kind (PostgreSQL 15's lists).
TABLE_PRIVILEGES = ("SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE", "REFERENCES",
                    "TRIGGER")
SEQUENCE_PRIVILEGES = ("USAGE", "SELECT", "UPDATE")


@dataclass(frozen=True)
class TableSpec:
    schema: str
    name: str
    scope: str
    #: Tenant column (tenant-scoped tables only).
    column: str | None
    writable: bool

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.name}"

    @property
    def tenant(self) -> bool:
        return self.scope == "tenant"

    @property
    def privileges(self) -> frozenset[str]:
        if self.scope == "deny":
            return frozenset()
        return WRITE if self.writable else READ

    @property
    def sequence_privileges(self) -> frozenset[str]:
        """Sequences the table owns (serial, identity) need USAGE for INSERT."""
        return frozenset({"USAGE"}) if "INSERT" in self.privileges else frozenset()


@dataclass(frozen=True)
class FloorSpec:
    tables: tuple[TableSpec, ...]
    tenant_type: str
    #: Upstream roles the floor restricts.
    roles: tuple[str, ...]

    @classmethod
    def from_rules(cls, rules: Rules, roles: tuple[str, ...] | list[str]) -> FloorSpec:
        tables = tuple(TableSpec(*name.split(".", 1), rule.scope, rule.column, rule.writable)
                       for name, rule in sorted(rules.tables.items()))
        return cls(tables, rules.tenant_type, tuple(sorted(set(roles))))


def tenant_logins(rules: Rules) -> list[str]:
    """Login roles whose statements the proxy scopes (every identity but bypass)."""
    return sorted(login for login, user in rules.users.items() if user.identity != "bypass")


def upstream_roles(rules: Rules, upstream: UpstreamSettings) -> tuple[str, ...]:
    """The database roles tenant sessions run as: the floor's subjects."""
    return tuple(sorted({upstream.role_for(login) for login in tenant_logins(rules)}))


def shared_bypass_roles(rules: Rules, upstream: UpstreamSettings) -> dict[str, str]:
    """Bypass logins (migrations) that run as a role the floor restricts: login -> role.
    The policies filter their statements too."""
    restricted = set(upstream_roles(rules, upstream))
    return {login: upstream.role_for(login) for login, user in sorted(rules.users.items())
            if user.identity == "bypass" and upstream.role_for(login) in restricted}
