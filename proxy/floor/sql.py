"""Every SQL statement the floor runs or prints, and its quoting.

Names come from the rules file and the command line; they reach SQL only
through :func:`ident`, values only through :func:`literal` (both the proxy's one
quoting module, ``proxy.quoting``, with the floor's error), and every built
statement is parsed with PostgreSQL's grammar (pglast) before it is returned,
so a name can never end a token or add a statement.
"""

from __future__ import annotations

from collections.abc import Iterable

import pglast

from proxy import quoting
from proxy.sql.engine import TENANT_SETTING

#: The one policy the floor owns on each tenant-scoped table.
POLICY_NAME = "tenant_proxy_isolation"

#: tenant.type -> the SQL type the setting is cast to.
_CASTS = {"bigint": "bigint", "integer": "integer", "text": "text", "uuid": "uuid"}


class FloorSqlError(ValueError):
    """A built statement did not parse as exactly one statement (a bug, or a hostile name)."""


def ident(name: str) -> str:
    try:
        return quoting.ident(name)
    except ValueError as exc:
        raise FloorSqlError(str(exc)) from exc


def literal(value: str) -> str:
    try:
        return quoting.string(value)
    except ValueError as exc:
        raise FloorSqlError(str(exc)) from exc


def table_name(schema: str, name: str) -> str:
    return f"{ident(schema)}.{ident(name)}"


def _role(name: str) -> str:
    return "PUBLIC" if name == "public" else ident(name)


def _checked(sql: str) -> str:
    try:
        statements = pglast.parse_sql(sql)
    except pglast.parser.ParseError as exc:
        raise FloorSqlError(f"built SQL does not parse ({exc}): {sql}") from exc
    if len(statements) != 1:
        raise FloorSqlError(f"built SQL is {len(statements)} statements: {sql}")
    return sql


def tenant_predicate(column: str, tenant_type: str) -> str:
    """The policy's USING and WITH CHECK expression: the row's tenant column equals
    the session's tenant; an empty or missing setting matches no row (NULL), never
    a cast error."""
    return (f"{ident(column)} = NULLIF(current_setting({literal(TENANT_SETTING)}, true), "
            f"'')::{_CASTS[tenant_type]}")


def enable_rls(schema: str, name: str) -> str:
    return _checked(f"ALTER TABLE {table_name(schema, name)} ENABLE ROW LEVEL SECURITY")


def force_rls(schema: str, name: str) -> str:
    return _checked(f"ALTER TABLE {table_name(schema, name)} FORCE ROW LEVEL SECURITY")


def create_policy(schema: str, name: str, column: str, tenant_type: str,
                  roles: Iterable[str]) -> str:
    predicate = tenant_predicate(column, tenant_type)
    return _checked(f"CREATE POLICY {ident(POLICY_NAME)} ON {table_name(schema, name)} "
                    f"AS PERMISSIVE FOR ALL TO {', '.join(_role(r) for r in sorted(roles))} "
                    f"USING ({predicate}) WITH CHECK ({predicate})")


def drop_policy(schema: str, name: str, policy: str = POLICY_NAME) -> str:
    return _checked(f"DROP POLICY {ident(policy)} ON {table_name(schema, name)}")


def grant(privileges: Iterable[str], kind: str, schema: str, name: str, role: str) -> str:
    """GRANT on a TABLE or SEQUENCE (privileges are keywords from a fixed set)."""
    return _checked(f"GRANT {_privileges(privileges)} ON {_kind(kind)} "
                    f"{table_name(schema, name)} TO {_role(role)}")


def revoke(privileges: Iterable[str], kind: str, schema: str, name: str, role: str) -> str:
    return _checked(f"REVOKE {_privileges(privileges)} ON {_kind(kind)} "
                    f"{table_name(schema, name)} FROM {_role(role)}")


def grant_schema_usage(schema: str, role: str) -> str:
    return _checked(f"GRANT USAGE ON SCHEMA {ident(schema)} TO {_role(role)}")


def alter_role(role: str, option: str) -> str:
    """Advice for the administrator (never run by the floor): NOSUPERUSER, NOBYPASSRLS."""
    if option not in ("NOSUPERUSER", "NOBYPASSRLS"):
        raise FloorSqlError(f"unexpected role option {option!r}")
    return _checked(f"ALTER ROLE {ident(role)} {option}")


_PRIVILEGES = frozenset({"SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE", "REFERENCES",
                         "TRIGGER", "USAGE"})


def _privileges(privileges: Iterable[str]) -> str:
    chosen = sorted(set(privileges))
    unknown = set(chosen) - _PRIVILEGES
    if not chosen or unknown:
        raise FloorSqlError(f"unexpected privileges {sorted(unknown) or 'none'}")
    return ", ".join(chosen)


def _kind(kind: str) -> str:
    if kind not in ("TABLE", "SEQUENCE"):
        raise FloorSqlError(f"unexpected object kind {kind!r}")
    return kind
