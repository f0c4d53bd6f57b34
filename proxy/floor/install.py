"""``tenant-proxy install``: make the database match the floor the rules ask for.

Idempotent: it reads the catalog, runs only the statements that fix what
differs (in one transaction, so a policy is never missing between its drop and
its re-creation), and reads the catalog again to report what only an
administrator can fix. A second run finds nothing to do and says so.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import asyncpg

from proxy.floor.catalog import read_state
from proxy.floor.compare import Finding, findings
from proxy.floor.spec import FloorSpec


@dataclass
class InstallResult:
    #: Statements run (or, in a dry run, that would run).
    statements: list[str] = field(default_factory=list)
    #: What still differs afterwards (nothing install can fix, unless a dry run).
    remaining: list[Finding] = field(default_factory=list)

    @property
    def floor_on(self) -> bool:
        return not any(f.breaks for f in self.remaining)


class InstallError(RuntimeError):
    pass


async def install(conn: asyncpg.Connection, spec: FloorSpec, *, dry_run: bool = False,
                  say: Callable[[str], None] = print) -> InstallResult:
    state = await read_state(conn, spec)
    missing = sorted(set(spec.roles) - set(state.roles))
    if missing:
        raise InstallError(f"no such role: {', '.join(missing)} (policies and grants name "
                           "the upstream roles; create them first)")
    before = findings(spec, state)
    to_fix = [f for f in before if f.fix]
    result = InstallResult([s for f in to_fix for s in f.fix])
    if dry_run:
        for statement in result.statements:
            say(statement + ";")
        result.remaining = before
        return result
    if not to_fix:
        say(f"nothing to change: the floor is installed for {', '.join(spec.roles)}")
    else:
        async with conn.transaction():
            for statement in result.statements:
                await conn.execute(statement)
        for finding in to_fix:
            say(f"fixed {finding.subject}: {finding.problem}")
    result.remaining = findings(spec, await read_state(conn, spec))
    return result
