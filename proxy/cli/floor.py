"""``tenant-proxy install`` and the floor part of ``tenant-proxy check``: make
PostgreSQL enforce what the rules say for the upstream roles, and report where
it no longer does (proxy/floor, docs/FLOOR.md)."""

from __future__ import annotations

import argparse
import asyncio
import sys

import asyncpg

from proxy.cli.tools import load_rules_or_report
from proxy.floor.catalog import installed_roles, read_state
from proxy.floor.compare import Finding, findings
from proxy.floor.install import InstallError, install
from proxy.floor.spec import FloorSpec, tenant_logins
from proxy.floor.sql import POLICY_NAME
from proxy.policy.rules import Rules

_CONNECT_ERRORS = (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError)


async def check_floor(rules: Rules, dsn: str, roles: list[str]) -> tuple[list[str], list[Finding]]:
    """The roles checked and the floor's drift for them. Without ``roles``, the
    roles an earlier install named in its policies (none: nothing installed)."""
    conn = await asyncpg.connect(dsn, timeout=15)
    try:
        if not roles:
            roles = await installed_roles(conn, FloorSpec.from_rules(rules, ()), POLICY_NAME)
        if not roles:
            return [], []
        spec = FloorSpec.from_rules(rules, roles)
        return list(spec.roles), findings(spec, await read_state(conn, spec))
    finally:
        await conn.close()


def report_floor(rules: Rules, dsn: str, roles: list[str]) -> int:
    """Print the floor's drift; the number of findings (0: in place, or not installed)."""
    checked, found = asyncio.run(check_floor(rules, dsn, roles))
    if not checked:
        print(f"floor: not installed (no {POLICY_NAME} policies; see tenant-proxy install, "
              "or name the upstream roles with --role)")
        return 0
    for finding in found:
        print(f"floor drift: {finding}")
    if not found:
        print(f"floor: in place for {', '.join(checked)}")
    return len(found)


async def _install(args: argparse.Namespace, rules: Rules) -> int:
    roles = args.role or tenant_logins(rules)
    if not roles:
        print("tenant-proxy: no upstream roles: give --role (the rules have no tenant logins)",
              file=sys.stderr)
        return 2
    spec = FloorSpec.from_rules(rules, roles)
    try:
        conn = await asyncpg.connect(args.dsn, timeout=15)
    except _CONNECT_ERRORS as exc:
        print(f"tenant-proxy: cannot connect to {args.dsn.split('@')[-1]}: {exc}",
              file=sys.stderr)
        return 2
    try:
        if not args.dry_run:
            print(f"installing the floor of {rules.source} for {', '.join(spec.roles)}")
        result = await install(conn, spec, dry_run=args.dry_run)
    except (InstallError, asyncpg.PostgresError) as exc:
        print(f"tenant-proxy: install failed, nothing changed: {exc}", file=sys.stderr)
        return 1
    finally:
        await conn.close()
    if args.dry_run:
        return 0
    for finding in result.remaining:
        print(f"{'not fixed' if finding.breaks else 'note'}: {finding}")
    if not result.floor_on:
        print("the floor is OFF until the problems above are fixed by an administrator")
        return 1
    print(f"the floor is on for {', '.join(spec.roles)}")
    return 0


def cmd_install(args: argparse.Namespace) -> int:
    rules = load_rules_or_report(args.rules)
    if rules is None:
        return 2
    return asyncio.run(_install(args, rules))


def add_install_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    install_cmd = sub.add_parser(
        "install", help="install the floor: row-level security and grants from the rules")
    install_cmd.add_argument("--rules", required=True)
    install_cmd.add_argument("--dsn", required=True,
                             help="an administrator's postgresql:// URL (table owner or "
                                  "superuser) of the database to protect")
    install_cmd.add_argument("--role", action="append", default=[],
                             help="upstream role tenant sessions run as (repeat for several; "
                                  "default: the rules' tenant logins)")
    install_cmd.add_argument("--dry-run", action="store_true",
                             help="print the SQL it would run and change nothing")
    install_cmd.set_defaults(func=cmd_install)
