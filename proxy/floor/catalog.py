"""What the database holds for the floor: the upstream roles' attributes, and
for each table of the rules its row-level-security flags, policies, owner,
privileges and owned sequences.

Only catalog reads and privilege functions, so any role may run them: the
proxy inspects over a connection as its own upstream role, ``install`` and
``check`` as an administrator.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import asyncpg

from proxy.floor.spec import SEQUENCE_PRIVILEGES, TABLE_PRIVILEGES, FloorSpec


@dataclass(frozen=True)
class RoleState:
    name: str
    superuser: bool
    bypassrls: bool
    #: Superuser or BYPASSRLS roles this role is a member of (it may SET ROLE to them).
    escalations: tuple[str, ...]


@dataclass(frozen=True)
class PolicyState:
    name: str
    #: pg_policy.polcmd: ``*`` (ALL), ``r``, ``a``, ``w`` or ``d``.
    command: str
    permissive: bool
    #: Role names; ``public`` for PUBLIC.
    roles: frozenset[str]
    using: str | None
    check: str | None
    #: The spec's roles this policy applies to (directly, through PUBLIC or membership).
    applies_to: frozenset[str]


@dataclass(frozen=True)
class Grants:
    """One role's privileges on one object."""

    #: What the role can do, from any source (its grants, PUBLIC's, its groups', ownership).
    effective: frozenset[str]
    #: What was granted to the role itself (table or column level), so REVOKE removes it.
    direct: frozenset[str]


@dataclass(frozen=True)
class SequenceState:
    schema: str
    name: str
    grants: Mapping[str, Grants]


@dataclass(frozen=True)
class TableState:
    owner: str
    rls: bool
    force: bool
    policies: tuple[PolicyState, ...]
    grants: Mapping[str, Grants]
    sequences: tuple[SequenceState, ...]
    #: The spec's roles that own the table or are members of its owner.
    owned_by: frozenset[str]


@dataclass(frozen=True)
class FloorState:
    #: Roles of the spec that exist.
    roles: Mapping[str, RoleState]
    #: Tables of the spec that exist, by ``schema.name``.
    tables: Mapping[str, TableState]
    #: (schema, role) pairs where the role lacks USAGE on the schema.
    schemas_without_usage: frozenset[tuple[str, str]]


_ROLES = """
SELECT r.rolname, r.rolsuper, r.rolbypassrls,
       ARRAY(SELECT b.rolname FROM pg_roles b
             WHERE (b.rolsuper OR b.rolbypassrls) AND b.oid <> r.oid
               AND pg_has_role(r.oid, b.oid, 'MEMBER') ORDER BY 1) AS escalations
FROM pg_roles r WHERE r.rolname = ANY($1::text[])
"""

_TABLES = """
SELECT c.oid, n.nspname, c.relname, pg_get_userbyid(c.relowner) AS owner,
       c.relrowsecurity, c.relforcerowsecurity,
       ARRAY(SELECT u FROM unnest($3::text[]) u WHERE pg_has_role(u, c.relowner, 'MEMBER'))
         AS owned_by
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN unnest($1::text[], $2::text[]) AS want(nsp, rel) ON want.nsp = n.nspname
                                                     AND want.rel = c.relname
WHERE c.relkind IN ('r', 'p')
"""

_POLICIES = """
SELECT p.polrelid, p.polname, p.polcmd::text AS polcmd, p.polpermissive,
       ARRAY(SELECT CASE WHEN r = 0 THEN 'public' ELSE pg_get_userbyid(r) END
             FROM unnest(p.polroles) r) AS roles,
       pg_get_expr(p.polqual, p.polrelid) AS using_expr,
       pg_get_expr(p.polwithcheck, p.polrelid) AS check_expr,
       ARRAY(SELECT u FROM unnest($2::text[]) u
             WHERE EXISTS (SELECT 1 FROM unnest(p.polroles) r
                           WHERE r = 0 OR pg_has_role(u, r, 'MEMBER'))) AS applies_to
FROM pg_policy p WHERE p.polrelid = ANY($1::oid[])
"""

#: Effective and directly granted privileges of each role on each object; column
#: privileges count (REVOKE on the table removes them as well).
_GRANTS = """
SELECT c.oid, u AS role, p AS privilege,
       CASE WHEN c.relkind = 'S' THEN has_sequence_privilege(u, c.oid, p)
            WHEN p IN ('SELECT', 'INSERT', 'UPDATE', 'REFERENCES')
              THEN has_any_column_privilege(u, c.oid, p)
            ELSE has_table_privilege(u, c.oid, p) END AS effective,
       EXISTS (SELECT 1 FROM aclexplode(c.relacl) a
               WHERE a.grantee = r.oid AND a.privilege_type = p)
       OR EXISTS (SELECT 1 FROM pg_attribute at, aclexplode(at.attacl) a
                  WHERE at.attrelid = c.oid AND a.grantee = r.oid
                    AND a.privilege_type = p) AS direct
FROM pg_class c, pg_roles r, unnest($2::text[]) AS u,
     unnest(CASE WHEN c.relkind = 'S' THEN $4::text[] ELSE $3::text[] END) AS p
WHERE c.oid = ANY($1::oid[]) AND r.rolname = u
"""

_SEQUENCES = """
SELECT d.refobjid AS table_oid, s.oid, n.nspname, s.relname
FROM pg_depend d
JOIN pg_class s ON s.oid = d.objid AND s.relkind = 'S'
JOIN pg_namespace n ON n.oid = s.relnamespace
WHERE d.classid = 'pg_class'::regclass AND d.refclassid = 'pg_class'::regclass
  AND d.refobjid = ANY($1::oid[]) AND d.deptype IN ('a', 'i')
"""

_SCHEMA_USAGE = """
SELECT s, u FROM unnest($1::text[]) s, unnest($2::text[]) u
WHERE EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = s)
  AND NOT has_schema_privilege(u, s, 'USAGE')
"""


async def read_state(conn: asyncpg.Connection, spec: FloorSpec) -> FloorState:
    roles = {r["rolname"]: RoleState(r["rolname"], r["rolsuper"], r["rolbypassrls"],
                                     tuple(r["escalations"]))
             for r in await conn.fetch(_ROLES, list(spec.roles))}
    present = sorted(roles)
    rows = await conn.fetch(_TABLES, [t.schema for t in spec.tables],
                            [t.name for t in spec.tables], present)
    oids = [r["oid"] for r in rows]
    policies: dict[int, list[PolicyState]] = {}
    for p in await conn.fetch(_POLICIES, oids, present):
        policies.setdefault(p["polrelid"], []).append(PolicyState(
            p["polname"], p["polcmd"], p["polpermissive"], frozenset(p["roles"]),
            p["using_expr"], p["check_expr"], frozenset(p["applies_to"])))
    sequences: dict[int, list[tuple[int, str, str]]] = {}
    for s in await conn.fetch(_SEQUENCES, oids):
        sequences.setdefault(s["table_oid"], []).append((s["oid"], s["nspname"], s["relname"]))
    objects = oids + [oid for seqs in sequences.values() for oid, _, _ in seqs]
    effective: dict[tuple[int, str], set[str]] = {}
    direct: dict[tuple[int, str], set[str]] = {}
    for g in await conn.fetch(_GRANTS, objects, present, list(TABLE_PRIVILEGES),
                              list(SEQUENCE_PRIVILEGES)):
        key = (g["oid"], g["role"])
        if g["effective"]:
            effective.setdefault(key, set()).add(g["privilege"])
        if g["direct"]:
            direct.setdefault(key, set()).add(g["privilege"])

    def grants(oid: int) -> dict[str, Grants]:
        return {role: Grants(frozenset(effective.get((oid, role), ())),
                             frozenset(direct.get((oid, role), ()))) for role in present}

    tables = {f"{r['nspname']}.{r['relname']}": TableState(
        r["owner"], r["relrowsecurity"], r["relforcerowsecurity"],
        tuple(sorted(policies.get(r["oid"], []), key=lambda p: p.name)), grants(r["oid"]),
        tuple(SequenceState(nsp, name, grants(oid))
              for oid, nsp, name in sorted(sequences.get(r["oid"], []))),
        frozenset(r["owned_by"])) for r in rows}
    schemas = sorted({t.schema for t in spec.tables if t.privileges})
    missing_usage = frozenset((r["s"], r["u"])
                              for r in await conn.fetch(_SCHEMA_USAGE, schemas, present))
    return FloorState(roles, tables, missing_usage)


async def installed_roles(conn: asyncpg.Connection, spec: FloorSpec, policy: str) -> list[str]:
    """Roles named by the floor's policies on the spec's tenant tables: whom an
    earlier ``install`` was for."""
    tenant = [t for t in spec.tables if t.tenant]
    rows = await conn.fetch(
        "SELECT DISTINCT CASE WHEN r = 0 THEN 'public' ELSE pg_get_userbyid(r) END AS role "
        "FROM pg_policy p JOIN pg_class c ON c.oid = p.polrelid "
        "JOIN pg_namespace n ON n.oid = c.relnamespace "
        "JOIN unnest($1::text[], $2::text[]) AS want(nsp, rel) "
        "  ON want.nsp = n.nspname AND want.rel = c.relname, unnest(p.polroles) r "
        "WHERE p.polname = $3", [t.schema for t in tenant], [t.name for t in tenant], policy)
    return sorted(r["role"] for r in rows)
