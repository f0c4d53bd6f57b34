"""``check``, ``explain`` and ``token``: the operator's tools around a rules file."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path

from proxy.config.yamlsource import ConfigError
from proxy.crypto.columns import ColumnCrypto
from proxy.crypto.keyring import MemoryKeyRing
from proxy.policy.rules import Rules, load_rules
from proxy.policy.tokens import load_ed25519_private_key, load_hmac_key, mint_ed25519, mint_hs256
from proxy.session.engine import Engine
from proxy.session.tenant import TenantSession
from proxy.sql.plan import IdentityAction, Plan
from proxy.sql.sealing import SealedValue

#: tenant.type -> PostgreSQL type names a tenant column may have.
_COLUMN_TYPES = {"bigint": {"bigint", "integer", "smallint"}, "integer": {"integer", "smallint"},
                 "text": {"text", "character varying", "character"}, "uuid": {"uuid"}}


def load_rules_or_report(path: str) -> Rules | None:
    """The rules, or None after printing why the file is invalid."""
    try:
        return load_rules(path)
    except ConfigError as exc:
        print(f"tenant-proxy: {exc}", file=sys.stderr)
        return None


async def check_database(rules: Rules, dsn: str) -> list[str]:
    """Problems between the rules and a live database (empty when they agree)."""
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        problems = []
        for name, rule in sorted(rules.tables.items()):
            schema, table = name.split(".", 1)
            columns = {r["column_name"]: r["data_type"] for r in await conn.fetch(
                "SELECT column_name, data_type FROM information_schema.columns "
                "WHERE table_schema = $1 AND table_name = $2", schema, table)}
            if not columns:
                problems.append(f"{rules.source}: tables.{name}: no such table in the database")
                continue
            if rule.scope != "tenant":
                continue
            kind = columns.get(rule.column or "")
            if kind is None:
                problems.append(f"{rules.source}: tables.{name}: has no column {rule.column}")
            elif kind not in _COLUMN_TYPES[rules.tenant_type]:
                problems.append(f"{rules.source}: tables.{name}: column {rule.column} is "
                                f"{kind}, but tenant.type is {rules.tenant_type}")
            encrypted = rules.encryption.columns.get(name, {}) if rules.encryption else {}
            for column in encrypted.values():
                kind = columns.get(column.column)
                if kind != "bytea":
                    problems.append(f"{rules.source}: encryption.columns.{column.qualified}: "
                                    + ("no such column" if kind is None else
                                       f"is {kind}; encrypted columns are bytea"))
        return problems
    finally:
        await conn.close()


def cmd_check(args: argparse.Namespace) -> int:
    rules = load_rules_or_report(args.rules)
    if rules is None:
        return 2
    scopes = {s: sum(1 for r in rules.tables.values() if r.scope == s)
              for s in ("tenant", "shared", "deny")}
    print(f"{args.rules}: valid (version {rules.version}); tables: {scopes['tenant']} "
          f"tenant-scoped, {scopes['shared']} shared, {scopes['deny']} denied; "
          f"{len(rules.users)} roles")
    if args.dsn:
        from proxy.cli.floor import report_floor

        problems = asyncio.run(check_database(rules, args.dsn))
        for problem in problems:
            print(problem)
        drift = report_floor(rules, args.dsn, args.role)
        if problems or drift:
            return 1
        print("the database matches the rules")
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    rules = load_rules_or_report(args.rules)
    if rules is None:
        return 2
    engine = Engine(rules)
    if rules.encryption is not None:
        # Throwaway keys: the output shows where ciphertext goes, never real ciphertext.
        keyring = MemoryKeyRing()
        if args.tenant:
            keyring.current(rules.check_tenant(args.tenant))
        engine.crypto = ColumnCrypto(rules.encryption, keyring, {},
                                     frozenset(rules.encryption.columns))
    user = next(iter(rules.users.values()), None)
    from proxy.policy.rules import UserRule

    session = TenantSession(engine, "explain", user or UserRule("trusted"),
                            rules.check_tenant(args.tenant) if args.tenant else None)
    plan = engine.plan(args.sql, extended=args.extended)
    if plan.identity is not None:
        print(f"answered by the proxy: {_describe(plan.identity)}")
        return 0
    try:
        sql = session._apply(plan)
    except Exception as exc:  # a PgError, shown as the client would see it
        sqlstate = getattr(exc, "sqlstate", "")
        print(f"REFUSED {sqlstate}: {exc}")
        for label, text in (("DETAIL", getattr(exc, "detail", None)),
                            ("HINT", getattr(exc, "hint", None))):
            if text:
                print(f"{label}: {text}")
        return 1
    print(sql if sql is not None else args.sql)
    if plan.tenant_params:
        print(f"-- checked at Bind: parameters {sorted(plan.tenant_params)} must equal "
              "the tenant")
    for line in _encryption_notes(plan):
        print(f"-- {line}")
    return 0


def _encryption_notes(plan: Plan) -> list[str]:
    """Which values the proxy encrypts and which results it decrypts."""
    sealing = plan.sealing
    if sealing is None:
        return []

    def how(sealed: SealedValue) -> str:
        column = sealed.column
        what = "searched for under every live key" if sealed.search else "written"
        return f"{column.qualified} ({column.mode} {column.type}, {what})"

    notes = [f"encrypted literal {literal!r} -> {how(sealed)}"
             for sealed, literal in sealing.literals.values()]
    notes += [f"encrypted at Bind: ${number} -> {how(sealed)}"
              for number, sealed in sorted(sealing.params.items())]
    notes += [f"decrypted in results: encrypted columns of {table}"
              for table in sorted(sealing.tables)]
    return notes


def _describe(action: IdentityAction) -> str:
    return f"{action.verb} of tenant_proxy.tenant" + (" (LOCAL)" if action.local else "")


def cmd_token(args: argparse.Namespace) -> int:
    if args.alg == "hs256":
        text = os.environ.get(args.key_env, "") if args.key_env else \
            Path(args.key_file).read_text().strip()
        if not text:
            print("tenant-proxy: no HMAC key (use --key-env or --key-file)", file=sys.stderr)
            return 2
        print(mint_hs256(load_hmac_key(text), args.tenant, args.ttl, role=args.role))
    else:
        key = load_ed25519_private_key(Path(args.key_file).read_bytes())
        print(mint_ed25519(key, args.tenant, args.ttl, role=args.role))
    return 0


def cmd_audit_verify(args: argparse.Namespace) -> int:
    from proxy.observability.audit import trail_files, verify_command

    key = os.environ.get(args.key_env, "")
    if not key:
        print(f"tenant-proxy: set {args.key_env} to the audit key", file=sys.stderr)
        return 2
    paths = [str(p) for f in args.files for p in (trail_files(f) if args.trail else [f])]
    return verify_command(paths, key.encode())


def cmd_anomaly_report(args: argparse.Namespace) -> int:
    from proxy.anomaly.detector import Report

    path = args.file
    if path is None:
        rules = load_rules_or_report(args.rules) if args.rules else None
        path = rules.anomaly.report if rules else None
    if not path:
        print("tenant-proxy: give --file, or --rules with anomaly.report set", file=sys.stderr)
        return 2
    try:
        print(Report.load(path).summary())
    except (OSError, ValueError) as exc:
        print(f"tenant-proxy: cannot read {path}: {exc}", file=sys.stderr)
        return 2
    return 0


def add_tool_parsers(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    check = sub.add_parser("check", help="validate a rules file (and a database against it)")
    check.add_argument("rules")
    check.add_argument("--dsn", help="also check tables, tenant columns and the floor "
                                     "(tenant-proxy install) in this database")
    check.add_argument("--role", action="append", default=[],
                       help="upstream role to check the floor for (repeat for several; "
                            "default: the roles the installed floor names)")
    check.set_defaults(func=cmd_check)

    explain = sub.add_parser("explain", help="show the rewritten SQL or the refusal")
    explain.add_argument("--rules", required=True)
    explain.add_argument("--tenant", help="tenant id the statement runs for")
    explain.add_argument("--extended", action="store_true",
                         help="plan it as an extended-protocol Parse")
    explain.add_argument("sql")
    explain.set_defaults(func=cmd_explain)

    token = sub.add_parser("token", help="mint a signed tenant token")
    token.add_argument("--tenant", required=True)
    token.add_argument("--ttl", type=int, default=3600, help="lifetime [seconds]")
    token.add_argument("--role", help="bind the token to this login role")
    token.add_argument("--alg", choices=("hs256", "ed25519"), default="hs256")
    token.add_argument("--key-env", default="TENANT_PROXY_TOKEN_KEY",
                       help="environment variable holding the HMAC key")
    token.add_argument("--key-file", help="HMAC key file, or Ed25519 private key PEM")
    token.set_defaults(func=cmd_token)

    audit = sub.add_parser("audit", help="audit trail tools")
    audit_sub = audit.add_subparsers(dest="audit_command", required=True)
    verify = audit_sub.add_parser("verify", help="check an audit trail; reports the first "
                                                 "bad record")
    verify.add_argument("files", nargs="+", help="trail files, oldest first")
    verify.add_argument("--trail", action="store_true",
                        help="also check FILE's rotated files (FILE.N ... FILE.1)")
    verify.add_argument("--key-env", default="TENANT_PROXY_AUDIT_KEY")
    verify.set_defaults(func=cmd_audit_verify)

    anomaly = sub.add_parser("anomaly", help="anomaly detection tools")
    anomaly_sub = anomaly.add_subparsers(dest="anomaly_command", required=True)
    report = anomaly_sub.add_parser("report", help="what was flagged and why")
    report.add_argument("--file", help="the report file (anomaly.report in the rules)")
    report.add_argument("--rules", help="read anomaly.report from this rules file")
    report.set_defaults(func=cmd_anomaly_report)
