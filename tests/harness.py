"""Test harness: a real PostgreSQL and the proxy running in a background thread."""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from urllib.parse import urlsplit

import asyncpg
import uvloop

from proxy.auth.scram import make_verifier
from proxy.config.settings import ClientAuth, ClientTLS, Limits, Settings, UpstreamSettings
from proxy.localpg.cluster import LocalCluster
from proxy.observability.metrics import Metrics
from proxy.server.listener import ProxyServer
from tests.certs import CertFiles

TEST_DB = "tenant_proxy_test"

#: Login roles the suite creates, with their passwords (None: trust).
ROLES = {
    "app": "app-secret",
    "md5user": "md5-secret",
    "clearuser": "clear-secret",
    "trustuser": None,
    "tlsuser": "tls-secret",
}



def proxy_password(role: str) -> str:
    """What a client gives the proxy; trust roles still authenticate to the proxy."""
    return ROLES.get(role) or f"{role}-proxy-secret"


HBA = [
    "local all all trust",
    "host all md5user 127.0.0.1/32 md5",
    "host all clearuser 127.0.0.1/32 password",
    "host all trustuser 127.0.0.1/32 trust",
    "hostssl all tlsuser 127.0.0.1/32 scram-sha-256",
    "host all tlsuser 127.0.0.1/32 reject",
    "host all all 127.0.0.1/32 scram-sha-256",
]


@dataclass
class Database:
    host: str
    port: int
    superuser: str
    superuser_password: str | None
    cluster: LocalCluster | None = None

    def dsn(self, user: str = "app", database: str = TEST_DB, password: str | None = None,
            port: int | None = None, **params: str) -> str:
        if password is None:
            password = self.superuser_password if user == self.superuser else ROLES.get(user)
        auth = f"{user}:{password}@" if password else f"{user}@"
        query = "&".join(f"{k}={v}" for k, v in params.items())
        return (f"postgresql://{auth}{self.host}:{port or self.port}/{database}"
                + (f"?{query}" if query else ""))


def provision(db: Database) -> None:
    """Create the suite's roles and database (idempotent, via asyncpg as superuser)."""
    import asyncpg

    async def go() -> None:
        conn = await asyncpg.connect(db.dsn(db.superuser, "postgres"))
        try:
            for role, password in ROLES.items():
                exists = await conn.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", role)
                encryption = "md5" if role == "md5user" else "scram-sha-256"
                await conn.execute(f"SET password_encryption = '{encryption}'")
                verb = "ALTER" if exists else "CREATE"
                pw = f"PASSWORD '{password}'" if password else "PASSWORD NULL"
                await conn.execute(f"{verb} ROLE {role} LOGIN {pw}")
            if not await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", TEST_DB):
                await conn.execute(f"CREATE DATABASE {TEST_DB} OWNER app")
        finally:
            await conn.close()

    asyncio.run(go())


async def admin_connect(db: Database, database: str = "postgres") -> asyncpg.Connection:
    """The superuser's own connection, for setting up what a test needs."""
    return await asyncpg.connect(db.dsn(db.superuser, database))


async def recreate_database(db: Database, name: str, template: str | None = None,
                            drop_only: bool = False) -> None:
    """Drop ``name`` (whoever is connected to it) and create it again, empty or from
    ``template``; with ``drop_only``, just drop it."""
    conn = await admin_connect(db)
    try:
        await conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        if not drop_only:
            await conn.execute(f"CREATE DATABASE {name}"
                               + (f" TEMPLATE {template}" if template else ""))
    finally:
        await conn.close()


def database_from_url(url: str) -> Database:
    parts = urlsplit(url)
    return Database(parts.hostname or "127.0.0.1", parts.port or 5432,
                    parts.username or "postgres", parts.password)


class RunningProxy:
    """A ProxyServer on its own uvloop loop in a daemon thread."""

    def __init__(self, settings: Settings, metrics: Metrics | None = None) -> None:
        self.settings = settings
        self.loop = uvloop.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True,
                                       name="tenant-proxy")
        self.thread.start()
        self.server = ProxyServer(settings, metrics or Metrics())
        self.call(self.server.start())
        self.port = self.server.port

    def call(self, coro, timeout: float = 30):  # type: ignore[no-untyped-def]
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def dsn(self, db: Database, user: str = "app", database: str = TEST_DB,
            **params: str) -> str:
        return db.dsn(user, database, proxy_password(user), port=self.port, **params)

    def stop(self) -> None:
        self.call(self.server.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@dataclass
class ProxyErrors(logging.Handler):
    """Collects ERROR records from the proxy; those with a traceback are bugs."""

    records: list[logging.LogRecord] = field(default_factory=list)

    def __post_init__(self) -> None:
        logging.Handler.__init__(self, logging.ERROR)

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def __hash__(self) -> int:
        return id(self)


def proxy_settings(db: Database, certs: CertFiles, **changes: object) -> Settings:
    passwords = {role: pw for role, pw in ROLES.items() if pw}
    settings = Settings(
        listen_host="127.0.0.1", listen_port=0,
        upstream=UpstreamSettings(host=db.host, port=db.port, passwords=passwords,
                                  sslmode="disable"),
        auth=ClientAuth("scram-sha-256", {role: make_verifier(proxy_password(role))
                                          for role in ROLES}),
        tls=ClientTLS("allow", str(certs.server_cert), str(certs.server_key)),
        limits=Limits(login_timeout=5.0, upstream_connect_timeout=5.0),
    )
    return replace(settings, **changes)  # type: ignore[arg-type]


@contextmanager
def running_proxy(settings: Settings, metrics: Metrics | None = None
                  ) -> Iterator[RunningProxy]:
    proxy = RunningProxy(settings, metrics)
    try:
        yield proxy
    finally:
        proxy.stop()


def env_database_url() -> str | None:
    return os.environ.get("TEST_DATABASE_URL") or None
