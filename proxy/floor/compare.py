"""The differences between what the rules ask of the database and what it has.

Each :class:`Finding` says whether the floor is off while it holds
(``breaks``), the statements ``install`` runs to fix it, or, when only an
administrator can (role attributes, ownership, grants to PUBLIC or to groups),
what to do. The floor is on for a set of roles when no finding breaks it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from proxy.floor import sql
from proxy.floor.catalog import FloorState, Grants, PolicyState, TableState
from proxy.floor.expression import same_expression
from proxy.floor.spec import FloorSpec, TableSpec


@dataclass(frozen=True)
class Finding:
    subject: str
    problem: str
    #: The floor does not hold while this is so (else: drift from what install sets).
    breaks: bool
    #: Statements ``install`` runs to fix it; empty when only an administrator can.
    fix: tuple[str, ...] = ()
    advice: str | None = None

    def __str__(self) -> str:
        text = f"{self.subject}: {self.problem}"
        if self.fix:
            return text + " (tenant-proxy install fixes it)"
        return text + (f"; {self.advice}" if self.advice else "")


def findings(spec: FloorSpec, state: FloorState) -> list[Finding]:
    out = list(_roles(spec, state))
    for table in spec.tables:
        live = state.tables.get(table.qualified)
        if live is None:
            out.append(Finding(table.qualified, "no such table; the floor covers it once "
                               "it exists and install has run", breaks=False))
            continue
        out += _rls(spec, table, live)
        for role in sorted(state.roles):
            out += _privileges(table, live, role)
    out += [Finding(f"schema {schema}", f"{role} lacks USAGE the rules' tables need",
                    breaks=False, fix=(sql.grant_schema_usage(schema, role),))
            for schema, role in sorted(state.schemas_without_usage)]
    return out


def floor_on(found: list[Finding]) -> bool:
    return not any(f.breaks for f in found)


def _roles(spec: FloorSpec, state: FloorState) -> Iterator[Finding]:
    for name in spec.roles:
        role = state.roles.get(name)
        subject = f"role {name}"
        if role is None:
            yield Finding(subject, "does not exist", breaks=True,
                          advice="create it, or name the upstream role with --role")
            continue
        if role.superuser:
            yield Finding(subject, "is a superuser: row-level security and grants never "
                          "apply to it", breaks=True,
                          advice=f"run tenant sessions as another role, or "
                                 f"{sql.alter_role(name, 'NOSUPERUSER')}")
        if role.bypassrls:
            yield Finding(subject, "has BYPASSRLS: row-level security never applies to it",
                          breaks=True, advice=sql.alter_role(name, "NOBYPASSRLS"))
        if role.escalations:
            yield Finding(subject, f"is a member of {', '.join(role.escalations)}, which "
                          "bypass row-level security (it may SET ROLE to them)", breaks=True,
                          advice="REVOKE that membership")


def _rls(spec: FloorSpec, table: TableSpec, live: TableState) -> Iterator[Finding]:
    ours = next((p for p in live.policies if p.name == sql.POLICY_NAME), None)
    if not table.tenant:
        if ours is not None:
            yield Finding(table.qualified, f"has policy {sql.POLICY_NAME} but is not "
                          "tenant-scoped", breaks=False,
                          fix=(sql.drop_policy(table.schema, table.name),))
        return
    assert table.column is not None
    if not live.rls:
        yield Finding(table.qualified, "row-level security is not enabled", breaks=True,
                      fix=(sql.enable_rls(table.schema, table.name),))
    if not live.force:
        owners = sorted(live.owned_by)
        yield Finding(table.qualified, "row-level security is not forced" + (
            f" and {', '.join(owners)} own(s) it: policies do not apply to an owner"
            if owners else ""), breaks=bool(owners),
            fix=(sql.force_rls(table.schema, table.name),))
    create = sql.create_policy(table.schema, table.name, table.column, spec.tenant_type,
                               spec.roles)
    if ours is None:
        yield Finding(table.qualified, f"policy {sql.POLICY_NAME} is missing", breaks=True,
                      fix=(create,))
    else:
        difference = _policy_difference(ours, table.column, spec)
        if difference:
            yield Finding(table.qualified, f"policy {sql.POLICY_NAME} {difference}",
                          breaks=True,
                          fix=(sql.drop_policy(table.schema, table.name), create))
    for policy in live.policies:
        if policy.name != sql.POLICY_NAME and policy.permissive and policy.applies_to:
            yield Finding(table.qualified, f"permissive policy {policy.name} also applies to "
                          f"{', '.join(sorted(policy.applies_to))} and widens the floor's "
                          "(permissive policies are ORed)", breaks=True,
                          advice=f"{sql.drop_policy(table.schema, table.name, policy.name)}, "
                                 "or recreate it AS RESTRICTIVE")


def _policy_difference(policy: PolicyState, column: str, spec: FloorSpec) -> str | None:
    wanted = sql.tenant_predicate(column, spec.tenant_type)
    if policy.command != "*":
        return "is not FOR ALL"
    if not policy.permissive:
        return "is RESTRICTIVE (alone it lets no row through)"
    if "public" not in policy.roles and not set(spec.roles) <= policy.roles:
        return f"is for {', '.join(sorted(policy.roles))}, not {', '.join(spec.roles)}"
    if not same_expression(policy.using, wanted):
        return f"has USING ({policy.using}), not ({wanted})"
    if not same_expression(policy.check, wanted):
        return f"has WITH CHECK ({policy.check}), not ({wanted})"
    return None


def _privileges(table: TableSpec, live: TableState, role: str) -> Iterator[Finding]:
    allowed = table.privileges
    subject = f"{table.qualified} ({role})"
    if role in live.owned_by:
        yield Finding(subject, f"{role} owns the table (or is a member of its owner "
                      f"{live.owner}): grants cannot restrict an owner (TRUNCATE ignores "
                      "row-level security; an owner may alter or drop policies). FORCE "
                      "row-level security still filters its reads and writes", breaks=True,
                      advice=f"make another role the owner (ALTER TABLE "
                             f"{sql.table_name(table.schema, table.name)} OWNER TO ...)")
    else:
        yield from _grants(subject, "TABLE", table.schema, table.name, live.grants[role],
                           allowed, role)
    for sequence in live.sequences:
        yield from _grants(f"sequence {sequence.schema}.{sequence.name} ({role})", "SEQUENCE",
                           sequence.schema, sequence.name, sequence.grants[role],
                           table.sequence_privileges, role)


def _grants(subject: str, kind: str, schema: str, name: str, grants: Grants,
            allowed: frozenset[str], role: str) -> Iterator[Finding]:
    excess = grants.effective - allowed
    granted = excess & grants.direct
    if granted:
        yield Finding(subject, f"granted {', '.join(sorted(granted))} beyond the rules",
                      breaks=True, fix=(sql.revoke(granted, kind, schema, name, role),))
    inherited = excess - grants.direct
    if inherited:
        from_public = sql.revoke(inherited, kind, schema, name, "public")
        yield Finding(subject, f"has {', '.join(sorted(inherited))} beyond the rules "
                      "through PUBLIC or a role it is a member of", breaks=True,
                      advice=f"revoke it there ({from_public} if PUBLIC has it)")
    missing = allowed - grants.effective
    if missing:
        yield Finding(subject, f"lacks {', '.join(sorted(missing))} the rules allow",
                      breaks=False, fix=(sql.grant(missing, kind, schema, name, role),))
