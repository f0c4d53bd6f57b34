"""``tenant-proxy demo``: a throwaway PostgreSQL with a multi-tenant schema,
the proxy in front of it with ``rules/demo.yaml``, two tenants shown to be
isolated, and DSNs to try with psql."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import sys
from pathlib import Path

import asyncpg

from proxy.auth.scram import make_verifier
from proxy.config.settings import ClientAuth, Settings, UpstreamSettings
from proxy.localpg.cluster import ClusterError, LocalCluster
from proxy.policy.tokens import load_hmac_key, mint_hs256
from proxy.server.listener import ProxyServer

RULES_DIR = Path(__file__).resolve().parents[2] / "rules"
#: Proxy logins and their passwords (demo only).
LOGINS = {"acme": "acme-password", "globex": "globex-password", "app": "app-password",
          "migrate": "migrate-password"}


async def _query(dsn: str, sql: str, *args: object) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetch(sql, *args)
    finally:
        await conn.close()


async def _show(dsns: dict[str, str], token_key: bytes) -> None:
    sql = "SELECT c.name, i.amount FROM customers c JOIN invoices i ON i.customer_id = c.id " \
          "ORDER BY c.name"
    print(f"\nThe same query for each tenant:  {sql}")
    for login in ("acme", "globex"):
        rows = await _query(dsns[login], sql)
        print(f"  as {login:<7} -> " + ", ".join(f"{r['name']} ({r['amount']})" for r in rows))
    rows = await _query(dsns["migrate"], "SELECT count(*) FROM customers")
    print(f"  as migrate (bypass role) -> {rows[0][0]} customers in the table")
    try:
        await _query(dsns["acme"], "INSERT INTO customers (tenant_id, name) VALUES (2, 'Mole')")
    except asyncpg.PostgresError as exc:
        print(f"\nacme writing a globex row is refused: {exc.sqlstate} {exc}")
    conn = await asyncpg.connect(dsns["app"])
    try:
        token = mint_hs256(token_key, "2", 3600, role="app")
        await conn.execute(f"SET tenant_proxy.tenant = '{token}'")
        names = [r[0] for r in await conn.fetch("SELECT name FROM customers ORDER BY name")]
        print(f"\napp with a signed token for tenant 2 sees: {', '.join(names)}")
    finally:
        await conn.close()


async def _serve(cluster: LocalCluster, port: int, interactive: bool, rules: str,
                 token_key: bytes) -> None:
    settings = Settings(
        listen_host="127.0.0.1", listen_port=port,
        upstream=UpstreamSettings(
            host="127.0.0.1", port=cluster.port, database="demo", sslmode="disable",
            roles={"acme": "app", "globex": "app", "app": "app", "migrate": "postgres"},
            passwords={"app": "app-password", "postgres": cluster.superuser_password}),
        auth=ClientAuth("scram-sha-256", {u: make_verifier(p) for u, p in LOGINS.items()}),
        rules=rules,
    )
    server = ProxyServer(settings)
    await server.start()
    dsns = {u: f"postgresql://{u}:{p}@127.0.0.1:{server.port}/demo" for u, p in LOGINS.items()}
    print(f"PostgreSQL (direct): {cluster.dsn(database='demo')}")
    print(f"Rules:               {rules}")
    for login in ("acme", "globex", "app", "migrate"):
        print(f"tenant-proxy as {login + ':':<8} {dsns[login]}")
    print(f"Try:  psql '{dsns['acme']}' -c 'SELECT * FROM customers'")
    try:
        await _show(dsns, token_key)
        if interactive:
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stop.set)
            print("\nPress Ctrl-C to stop.", flush=True)
            await stop.wait()
    finally:
        await server.close()


def run_demo(port: int = 6432, interactive: bool = True) -> int:
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    key_text = os.environ.setdefault("TENANT_PROXY_TOKEN_KEY",
                                     "base64:" + secrets.token_urlsafe(32).replace("-", "+")
                                     .replace("_", "/") + "=")
    cluster = LocalCluster()
    try:
        print(f"Starting a throwaway PostgreSQL cluster in {cluster.base} ...")
        cluster.start()
        cluster.psql("CREATE DATABASE demo")
        cluster.psql((RULES_DIR / "demo-schema.sql").read_text(), database="demo")
        asyncio.run(_serve(cluster, port, interactive, str(RULES_DIR / "demo.yaml"),
                           load_hmac_key(key_text)))
    except ClusterError as exc:
        print(f"tenant-proxy demo: {exc}")
        return 1
    finally:
        with contextlib.suppress(ClusterError):
            cluster.destroy()
        print("Stopped PostgreSQL and removed its data directory.")
    return 0
