"""The floor: PostgreSQL enforcing tenant isolation under the proxy (proxy/floor).

Against the real server: install is idempotent, check reports drift, the
upstream role cannot read another tenant's rows even on a path the proxy does
not rewrite, and the running proxy reports the floor (refusing to start when
it is required and off)."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import asyncpg
import psycopg
import pytest

from proxy.auth.scram import make_verifier
from proxy.config.settings import Settings
from proxy.floor import sql
from proxy.floor.expression import same_expression
from proxy.floor.monitor import FloorUnavailable
from proxy.observability.aggregate import merge
from proxy.observability.logs import JsonFormatter
from proxy.observability.metrics import GAUGE_MERGE, Metrics
from proxy.server.listener import ProxyServer
from tests.certs import CertFiles
from tests.corpus_harness import CORPUS, CORPUS_TABLE_RULES
from tests.harness import (
    Database,
    RunningProxy,
    admin_connect,
    proxy_password,
    proxy_settings,
    recreate_database,
    running_proxy,
)

FLOOR_DB = "floor_test"
ROLE, ROLE_PW = "floor_app", "floor-app-pw"
#: A login the proxy forwards unrewritten (bypass), running as the floor's role.
BYPASS = "floor_migrator"
RULES = CORPUS_TABLE_RULES + f"""
users:
  {ROLE}: {{identity: trusted}}
  {BYPASS}: {{identity: bypass}}
"""
TENANT_1_USERS = 3


def _run(db: Database, coro_fn, database: str = FLOOR_DB):  # type: ignore[no-untyped-def]
    async def go():  # type: ignore[no-untyped-def]
        conn = await admin_connect(db, database)
        try:
            return await coro_fn(conn)
        finally:
            await conn.close()
    return asyncio.run(go())


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "proxy.cli.main", *args], capture_output=True,
                          text=True, timeout=120, check=False, env=dict(os.environ))


@pytest.fixture(scope="module")
def rules_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("floor") / "rules.yaml"
    path.write_text(RULES)
    return path


@pytest.fixture(scope="module")
def floor_db(db: Database, rules_file: Path) -> Iterator[str]:
    """The corpus schema in its own database, owned by the superuser, with a plain
    (not superuser, not BYPASSRLS, not owner) upstream role; the floor installed."""
    async def setup(conn: asyncpg.Connection) -> None:
        verb = "ALTER" if await conn.fetchval(
            "SELECT 1 FROM pg_roles WHERE rolname = $1", ROLE) else "CREATE"
        await conn.execute(f"{verb} ROLE {ROLE} LOGIN NOSUPERUSER NOBYPASSRLS "
                           f"PASSWORD '{ROLE_PW}'")

    _run(db, setup, "postgres")
    asyncio.run(recreate_database(db, FLOOR_DB))

    async def schema(conn: asyncpg.Connection) -> None:
        await conn.execute((CORPUS / "schema.sql").read_text())

    _run(db, schema)
    installed = _cli("install", "--rules", str(rules_file), "--dsn", _admin(db), "--role", ROLE)
    assert installed.returncode == 0, installed.stdout + installed.stderr
    yield FLOOR_DB
    asyncio.run(recreate_database(db, FLOOR_DB, drop_only=True))


def _admin(db: Database) -> str:
    return db.dsn(db.superuser, FLOOR_DB)


def _settings(db: Database, certs: CertFiles, rules_file: Path, **changes: object) -> Settings:
    base = proxy_settings(db, certs)
    upstream = replace(base.upstream, database=FLOOR_DB, roles={BYPASS: ROLE},
                       passwords={**base.upstream.passwords, ROLE: ROLE_PW})
    verifiers = {login: make_verifier(proxy_password(login)) for login in (ROLE, BYPASS)}
    auth = replace(base.auth, users={**base.auth.users, **verifiers})
    return replace(base, upstream=upstream, auth=auth, rules=str(rules_file),
                   rules_reload_interval=0.2, http_listen="127.0.0.1:0",
                   **changes)  # type: ignore[arg-type]


def _superuser_settings(db: Database, certs: CertFiles, rules_file: Path,
                        **changes: object) -> Settings:
    """Every login runs upstream as the superuser, as in the rest of the suite."""
    settings = _settings(db, certs, rules_file, **changes)
    upstream = replace(settings.upstream, roles={ROLE: db.superuser, BYPASS: db.superuser},
                       passwords={**settings.upstream.passwords,
                                  db.superuser: db.superuser_password or ""})
    return replace(settings, upstream=upstream)


def _get(proxy: RunningProxy, path: str) -> tuple[int, str]:
    assert proxy.server.ops is not None
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{proxy.server.ops.port}{path}",
                                    timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def _wait_for_floor(proxy: RunningProxy, text: str, timeout: float = 15) -> str:
    deadline = time.monotonic() + timeout
    while True:
        body = _get(proxy, "/readyz?verbose")[1]
        if text in body:
            return body
        assert time.monotonic() < deadline, f"{text!r} never showed in /readyz?verbose: {body}"
        time.sleep(0.1)


def _floor_gauge(proxy: RunningProxy) -> float:
    for line in _get(proxy, "/metrics")[1].splitlines():
        if line.startswith("tenant_proxy_floor_on "):
            return float(line.split()[1])
    raise AssertionError("no tenant_proxy_floor_on in /metrics")


# --- built SQL ---------------------------------------------------------------------


def test_names_are_quoted_and_every_statement_parses_as_one() -> None:
    hostile = 'x"; DROP TABLE users; --'
    statement = sql.create_policy("public", hostile, hostile, "integer", [hostile])
    assert statement.startswith('CREATE POLICY "tenant_proxy_isolation" ON "public".'
                                '"x""; DROP TABLE users; --"')
    assert sql.revoke(["SELECT"], "TABLE", "s", "t", "public") == \
        'REVOKE SELECT ON TABLE "s"."t" FROM PUBLIC'
    with pytest.raises(sql.FloorSqlError):
        sql.ident("a\0b")
    with pytest.raises(sql.FloorSqlError):
        sql.grant(["SELECT; DROP TABLE t"], "TABLE", "s", "t", "r")


def test_policy_expressions_compare_as_the_server_prints_them() -> None:
    wanted = sql.tenant_predicate("tenant_id", "integer")
    printed = ("(tenant_id = (NULLIF(current_setting('tenant_proxy.tenant'::text, true), "
               "''::text))::integer)")
    assert same_expression(printed, wanted)
    assert not same_expression(printed.replace("::integer)", "::integer) OR true"), wanted)
    assert not same_expression(printed.replace("tenant_proxy.tenant", "app.tenant"), wanted)
    assert not same_expression(printed, sql.tenant_predicate("tenant_id", "bigint"))
    assert not same_expression(None, wanted)


# --- install and check -------------------------------------------------------------


def test_install_is_idempotent(db: Database, floor_db: str, rules_file: Path) -> None:
    again = _cli("install", "--rules", str(rules_file), "--dsn", _admin(db), "--role", ROLE)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "nothing to change" in again.stdout and "fixed" not in again.stdout
    dry = _cli("install", "--rules", str(rules_file), "--dsn", _admin(db), "--role", ROLE,
               "--dry-run")
    assert dry.returncode == 0 and dry.stdout == "", dry.stdout + dry.stderr

    async def catalog(conn: asyncpg.Connection) -> list[asyncpg.Record]:
        return await conn.fetch(
            "SELECT c.relname, c.relrowsecurity, c.relforcerowsecurity, "
            "       (SELECT count(*) FROM pg_policy p WHERE p.polrelid = c.oid "
            "        AND p.polname = 'tenant_proxy_isolation') AS policies, "
            "       has_table_privilege($1, c.oid, 'SELECT') AS can_select, "
            "       has_table_privilege($1, c.oid, 'INSERT') AS can_insert, "
            "       has_table_privilege($1, c.oid, 'TRUNCATE') AS can_truncate "
            "FROM pg_class c WHERE c.relname = ANY($2::text[]) ORDER BY 1", ROLE,
            ["users", "tenants", "countries", "audit_events"])

    rows = {r["relname"]: tuple(r)[1:] for r in _run(db, catalog)}
    assert rows == {"audit_events": (False, False, 0, False, False, False),
                    "countries": (False, False, 0, True, False, False),
                    "tenants": (True, True, 1, True, False, False),
                    "users": (True, True, 1, True, True, False)}


def test_check_reports_drift_until_install_repairs_it(db: Database, floor_db: str,
                                                      rules_file: Path) -> None:
    clean = _cli("check", str(rules_file), "--dsn", _admin(db))
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert f"floor: in place for {ROLE}" in clean.stdout

    async def drift(conn: asyncpg.Connection) -> None:
        await conn.execute("DROP POLICY tenant_proxy_isolation ON orders")
        await conn.execute("ALTER TABLE users NO FORCE ROW LEVEL SECURITY")
        await conn.execute("ALTER TABLE documents DISABLE ROW LEVEL SECURITY")
        await conn.execute(f"GRANT INSERT ON countries TO {ROLE}")
        await conn.execute(f"GRANT SELECT (actor) ON audit_events TO {ROLE}")

    _run(db, drift)
    try:
        found = _cli("check", str(rules_file), "--dsn", _admin(db))
        assert found.returncode == 1, found.stdout + found.stderr
        for line in ("public.orders: policy tenant_proxy_isolation is missing",
                     "public.users: row-level security is not forced",
                     "public.documents: row-level security is not enabled",
                     f"public.countries ({ROLE}): granted INSERT beyond the rules",
                     f"public.audit_events ({ROLE}): granted SELECT beyond the rules"):
            assert f"floor drift: {line}" in found.stdout, found.stdout
        assert "the database matches the rules" not in found.stdout
    finally:
        fixed = _cli("install", "--rules", str(rules_file), "--dsn", _admin(db))
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    assert "fixed public.orders: policy tenant_proxy_isolation is missing" in fixed.stdout
    assert _cli("check", str(rules_file), "--dsn", _admin(db)).returncode == 0


def test_a_changed_policy_is_replaced(db: Database, floor_db: str, rules_file: Path) -> None:
    async def widen(conn: asyncpg.Connection) -> None:
        await conn.execute("ALTER POLICY tenant_proxy_isolation ON orders USING "
                           "(tenant_id = NULLIF(current_setting('tenant_proxy.tenant', true), "
                           "'')::integer OR total > 1000)")

    _run(db, widen)
    found = _cli("check", str(rules_file), "--dsn", _admin(db), "--role", ROLE)
    assert found.returncode == 1
    assert "public.orders: policy tenant_proxy_isolation has USING (" in found.stdout
    fixed = _cli("install", "--rules", str(rules_file), "--dsn", _admin(db))
    assert fixed.returncode == 0 and "fixed public.orders" in fixed.stdout, fixed.stdout

    async def qual(conn: asyncpg.Connection) -> str:
        return await conn.fetchval("SELECT pg_get_expr(polqual, polrelid) FROM pg_policy "
                                   "WHERE polname = 'tenant_proxy_isolation' "
                                   "AND polrelid = 'orders'::regclass")

    assert "total" not in _run(db, qual)


# --- what the floor enforces -------------------------------------------------------


def test_the_role_sees_one_tenant_even_without_the_proxy(db: Database, floor_db: str) -> None:
    """Straight to PostgreSQL as the upstream role, with the setting the proxy would
    send: every statement, however unscoped, meets the floor."""
    async def as_role(tenant: str | None):  # type: ignore[no-untyped-def]
        settings = {"tenant_proxy.tenant": tenant} if tenant is not None else {}
        return await asyncpg.connect(db.dsn(ROLE, FLOOR_DB, ROLE_PW), server_settings=settings)

    async def go() -> None:
        conn = await as_role("1")
        try:
            tenants = [r[0] for r in await conn.fetch("SELECT tenant_id FROM users")]
            assert tenants == [1] * TENANT_1_USERS
            assert await conn.fetchval("SELECT count(*) FROM orders WHERE tenant_id = 2") == 0
            # The error oracle: a predicate that fails on other tenants' values runs
            # after the policy (a security barrier), so it never sees them.
            assert await conn.fetch("SELECT 1 FROM users WHERE tenant_id <> 1 AND "
                                    "has_schema_privilege(ssn, 'USAGE')") == []
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await conn.execute("INSERT INTO orders (tenant_id, total) VALUES (2, 1)")
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await conn.fetch("SELECT * FROM audit_events")
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await conn.execute("UPDATE countries SET name = 'x'")
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await conn.execute("TRUNCATE orders")
            assert await conn.execute("UPDATE users SET name = name") == \
                f"UPDATE {TENANT_1_USERS}"
        finally:
            await conn.close()
        for tenant in ("", None):  # no tenant: no rows, never a cast error
            conn = await as_role(tenant)
            try:
                assert await conn.fetchval("SELECT count(*) FROM users") == 0
            finally:
                await conn.close()

    asyncio.run(go())


def test_through_the_proxy_with_the_floor_required(db: Database, certs: CertFiles,
                                                   floor_db: str, rules_file: Path) -> None:
    settings = _settings(db, certs, rules_file, floor="required")
    with running_proxy(settings, Metrics()) as proxy:
        assert _get(proxy, "/readyz?verbose") == (200, f"ready\nfloor: on for {ROLE}\n")
        assert _get(proxy, "/readyz") == (200, "ready\n")
        assert _floor_gauge(proxy) == 1
        with psycopg.connect(proxy.dsn(db, ROLE, FLOOR_DB),
                             options="-c tenant_proxy.tenant=1") as conn:
            assert conn.execute("SELECT count(*) FROM users").fetchone() == (TENANT_1_USERS,)
        # A bypass login is forwarded unrewritten, but runs as the floor's role.
        with psycopg.connect(proxy.dsn(db, BYPASS, FLOOR_DB),
                             options="-c tenant_proxy.tenant=1") as conn:
            rows = conn.execute("SELECT DISTINCT tenant_id FROM users").fetchall()
            assert rows == [(1,)]
            assert conn.execute("SELECT count(*) FROM documents").fetchone() == (2,)


def test_a_reload_inspects_again(db: Database, certs: CertFiles, floor_db: str,
                                 rules_file: Path, tmp_path: Path) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    with running_proxy(_settings(db, certs, rules), Metrics()) as proxy:
        _wait_for_floor(proxy, f"floor: on for {ROLE}")
        _run(db, lambda conn: conn.execute("DROP POLICY tenant_proxy_isolation ON orders"))
        try:
            rules.write_text(RULES + "# edited\n")
            body = _wait_for_floor(proxy, "floor: off")
            assert "public.orders: policy tenant_proxy_isolation is missing" in body
            assert _get(proxy, "/readyz")[0] == 200  # recommended: still serving
            assert _floor_gauge(proxy) == 0
        finally:
            assert _cli("install", "--rules", str(rules_file), "--dsn",
                        _admin(db)).returncode == 0


# --- a floor that is off -------------------------------------------------------------


def test_required_refuses_to_start_with_a_superuser_upstream(
        db: Database, certs: CertFiles, floor_db: str, rules_file: Path) -> None:
    settings = _superuser_settings(db, certs, rules_file, floor="required")
    server = ProxyServer(settings, Metrics())
    with pytest.raises(FloorUnavailable) as refused:
        asyncio.run(server.start())
    message = str(refused.value)
    assert f"role {db.superuser}: is a superuser" in message
    assert "tenant-proxy install --rules" in message
    assert server._server is None  # it never listened


def test_run_with_floor_required_exits_with_the_fix(db: Database, floor_db: str,
                                                   rules_file: Path, tmp_path: Path) -> None:
    config = tmp_path / "proxy.yaml"
    config.write_text(json.dumps({
        "listen": "127.0.0.1:0", "rules": str(rules_file), "floor": "required", "workers": 1,
        "upstream": {"host": db.host, "port": db.port, "database": FLOOR_DB,
                     "user": db.superuser, "password": db.superuser_password,
                     "sslmode": "disable"}}))
    run = _cli("run", "--config", str(config))
    assert run.returncode == 2, run.stdout + run.stderr
    assert "floor: required, but floor: off" in run.stderr
    assert "is a superuser" in run.stderr and "tenant-proxy install" in run.stderr
    assert "listening" not in run.stdout


def test_recommended_starts_and_reports_the_floor_off(
        db: Database, certs: CertFiles, floor_db: str, rules_file: Path) -> None:
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append  # type: ignore[method-assign]
    logger = logging.getLogger("tenant_proxy.floor")
    logger.addHandler(handler)
    try:
        settings = _superuser_settings(db, certs, rules_file)
        assert settings.floor == "recommended"
        with running_proxy(settings, Metrics()) as proxy:
            body = _wait_for_floor(proxy, "floor: off")
            assert body.startswith("ready\n")
            assert f"role {db.superuser}: is a superuser" in body
            assert _floor_gauge(proxy) == 0
            with psycopg.connect(proxy.dsn(db, ROLE, FLOOR_DB),
                                 options="-c tenant_proxy.tenant=2") as conn:
                assert conn.execute("SELECT count(*) FROM users").fetchone() == (3,)
    finally:
        logger.removeHandler(handler)
    warning = next(r for r in records if r.getMessage().startswith("floor: off"))
    event = json.loads(JsonFormatter().format(warning))
    assert event["level"] == "warning" and event["floor"] == "off"
    assert event["floor_mode"] == "recommended" and event["roles"] == [db.superuser]
    assert any("is a superuser" in reason for reason in event["reasons"])


def test_floor_off_setting_does_not_inspect(db: Database, certs: CertFiles, floor_db: str,
                                            rules_file: Path) -> None:
    settings = _superuser_settings(db, certs, rules_file, floor="off")
    with running_proxy(settings, Metrics()) as proxy:
        assert _get(proxy, "/readyz?verbose") == (200, "ready\nfloor: not inspected "
                                                        "(floor: off)\n")
        assert proxy.server.floor.report is None


def test_workers_floor_gauge_merges_to_the_minimum() -> None:
    def family(value: float) -> list[dict[str, object]]:
        return [{"name": "tenant_proxy_floor_on", "help": "", "type": "gauge", "unit": "",
                 "samples": [["tenant_proxy_floor_on", {}, value]]}]

    merged = merge([family(1), family(0), family(1)], GAUGE_MERGE)
    assert merged[0]["samples"] == [["tenant_proxy_floor_on", {}, 0]]
