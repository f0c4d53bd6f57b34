"""``tenant-proxy demo``: a throwaway PostgreSQL with a multi-tenant schema,
the proxy in front of it, and DSNs to try with psql."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from pathlib import Path

import asyncpg

from proxy.auth.scram import make_verifier
from proxy.config.settings import ClientAuth, Settings, UpstreamSettings
from proxy.localpg.cluster import ClusterError, LocalCluster
from proxy.server.listener import ProxyServer

RULES_DIR = Path(__file__).resolve().parents[2] / "rules"
DEMO_USERS = {"app": "app-password"}


async def _show(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT t.name AS tenant, count(c.*) AS customers "
            "FROM tenants t LEFT JOIN customers c ON c.tenant_id = t.id "
            "GROUP BY t.name ORDER BY t.name")
        print("Through the proxy (pass-through mode, no rules loaded yet):")
        for row in rows:
            print(f"  tenant {row['tenant']:<8} customers: {row['customers']}")
    finally:
        await conn.close()


async def _serve(cluster: LocalCluster, port: int, interactive: bool) -> None:
    settings = Settings(
        listen_host="127.0.0.1", listen_port=port,
        upstream=UpstreamSettings(host="127.0.0.1", port=cluster.port, database="demo",
                                  passwords=DEMO_USERS, sslmode="disable"),
        auth=ClientAuth("scram-sha-256", {u: make_verifier(p) for u, p in DEMO_USERS.items()}),
    )
    server = ProxyServer(settings)
    await server.start()
    dsn = f"postgresql://app:app-password@127.0.0.1:{server.port}/demo"
    print(f"PostgreSQL (direct): {cluster.dsn(database='demo')}")
    print(f"tenant-proxy:        {dsn}")
    print(f"Try:  psql '{dsn}'")
    try:
        await _show(dsn)
        if interactive:
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stop.set)
            print("Press Ctrl-C to stop.", flush=True)
            await stop.wait()
    finally:
        await server.close()


def run_demo(port: int = 6432, interactive: bool = True) -> int:
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    cluster = LocalCluster()
    try:
        print(f"Starting a throwaway PostgreSQL cluster in {cluster.base} ...")
        cluster.start()
        cluster.psql("CREATE DATABASE demo")
        cluster.psql((RULES_DIR / "demo-schema.sql").read_text(), database="demo")
        asyncio.run(_serve(cluster, port, interactive))
    except ClusterError as exc:
        print(f"tenant-proxy demo: {exc}")
        return 1
    finally:
        with contextlib.suppress(ClusterError):
            cluster.destroy()
        print("Stopped PostgreSQL and removed its data directory.")
    return 0

