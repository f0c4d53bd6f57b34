"""Tenant data keys, wrapped by the master key, in a table of the database itself.

Keeping them next to the data means no extra service to run, and every proxy
and ``keys`` command sees one truth. The table only ever holds wrapped keys.
Versions are never reused: a shred keeps the rows (``wrapped`` NULL), so a
later key for that tenant gets a higher version and no old ciphertext can be
mistaken for a new one. Every change is announced with NOTIFY on
``tenant_proxy_keys`` (payload: the tenant), in the same transaction, so
listeners reload after it is visible.

Concurrency between proxies and commands is settled by the primary key:
creating a version is ``INSERT ... ON CONFLICT DO NOTHING``; the loser reads
the winner's row back, so two proxies racing on a tenant's first value end up
with the same key.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from proxy.crypto.cipher import DataKey, KeyUnavailable
from proxy.crypto.master import KeyWrapper

if TYPE_CHECKING:
    import asyncpg

SCHEMA = "tenant_proxy"
TABLE = f"{SCHEMA}.data_keys"
CHANNEL = "tenant_proxy_keys"
#: Attempts to settle a version when other processes keep winning the race.
_ATTEMPTS = 20

_DDL = f"""
CREATE SCHEMA IF NOT EXISTS {SCHEMA};
CREATE TABLE IF NOT EXISTS {TABLE} (
    tenant text NOT NULL,
    version integer NOT NULL CHECK (version > 0),
    wrapped bytea NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    shredded_at timestamptz NULL,
    PRIMARY KEY (tenant, version)
);
"""


@dataclass(frozen=True)
class KeyRow:
    """One stored version; ``wrapped`` is None once shredded."""

    tenant: str
    version: int
    wrapped: bytes | None
    created_at: datetime
    shredded_at: datetime | None

    @property
    def shredded(self) -> bool:
        return self.wrapped is None


class KeyStore:
    """Key operations over one asyncpg connection (the caller owns it and must not
    run other queries on it concurrently)."""

    def __init__(self, conn: asyncpg.Connection, wrapper: KeyWrapper) -> None:
        self.conn = conn
        self.wrapper = wrapper

    async def ensure_schema(self) -> None:
        """Create the schema and table if missing. Checked first, so a role without
        CREATE on the database works once an admin has created them."""
        if await self.conn.fetchval("SELECT to_regclass($1)", TABLE) is None:
            # Concurrent CREATE ... IF NOT EXISTS can still collide in the catalogs.
            async with self.conn.transaction():
                await self.conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", TABLE)
                await self.conn.execute(_DDL)

    async def rows(self, tenant: str | None = None) -> list[KeyRow]:
        """Every stored version (of one tenant, or all), by tenant then version."""
        records = await self.conn.fetch(
            f"SELECT tenant, version, wrapped, created_at, shredded_at FROM {TABLE} "
            "WHERE $1::text IS NULL OR tenant = $1 ORDER BY tenant, version", tenant)
        return [KeyRow(**dict(r)) for r in records]

    def unwrap(self, row: KeyRow) -> DataKey:
        if row.wrapped is None:
            raise KeyUnavailable(f"data key version {row.version} of tenant {row.tenant} "
                                 "was shredded")
        material = self.wrapper.unwrap(row.tenant, row.version, row.wrapped)
        return DataKey(row.tenant, row.version, material)

    async def current(self, tenant: str) -> DataKey:
        """The tenant's newest key; a new one if it has none or its newest was
        shredded (then one version above the shredded ones)."""
        for _ in range(_ATTEMPTS):
            record = await self.conn.fetchrow(
                f"SELECT tenant, version, wrapped, created_at, shredded_at FROM {TABLE} "
                "WHERE tenant = $1 ORDER BY version DESC LIMIT 1", tenant)
            newest = KeyRow(**dict(record)) if record else None
            if newest is not None and not newest.shredded:
                return self.unwrap(newest)
            key = await self._insert(tenant, newest.version + 1 if newest else 1)
            if key is not None:
                return key
            # Another process created that version first: its key is ours; read it back.
        raise KeyUnavailable(f"could not settle a data key for tenant {tenant}: the key "
                             "store kept changing")

    async def rotate(self, tenant: str) -> DataKey:
        """A new version above every existing one; new values are sealed with it."""
        for _ in range(_ATTEMPTS):
            newest = await self.conn.fetchval(
                f"SELECT max(version) FROM {TABLE} WHERE tenant = $1", tenant)
            key = await self._insert(tenant, (newest or 0) + 1)
            if key is not None:
                return key
        raise KeyUnavailable(f"could not rotate tenant {tenant}'s data key: other "
                             "processes kept taking the next version")

    async def rotate_all(self) -> list[DataKey]:
        """Rotate every tenant whose newest version is readable (a shredded tenant gets
        a fresh key on its next write anyway)."""
        tenants = await self.conn.fetch(
            f"SELECT DISTINCT ON (tenant) tenant, wrapped IS NULL AS shredded FROM {TABLE} "
            "ORDER BY tenant, version DESC")
        return [await self.rotate(r["tenant"]) for r in tenants if not r["shredded"]]

    async def shred(self, tenant: str) -> int:
        """Forget every version of the tenant's key: its encrypted values become
        unreadable for good. Returns how many versions were shredded now."""
        async with self.conn.transaction():
            status = await self.conn.execute(
                f"UPDATE {TABLE} SET wrapped = NULL, shredded_at = now() "
                "WHERE tenant = $1 AND wrapped IS NOT NULL", tenant)
            await self._notify(tenant)
        return int(status.split()[-1])

    async def _insert(self, tenant: str, version: int) -> DataKey | None:
        """Create that version; None if another process already did."""
        key = DataKey.generate(tenant, version)
        wrapped = self.wrapper.wrap(tenant, version, key.material)
        async with self.conn.transaction():
            inserted = await self.conn.fetchval(
                f"INSERT INTO {TABLE} (tenant, version, wrapped) VALUES ($1, $2, $3) "
                "ON CONFLICT DO NOTHING RETURNING version", tenant, version, wrapped)
            if inserted is not None:
                await self._notify(tenant)
        return key if inserted is not None else None

    async def _notify(self, tenant: str) -> None:
        await self.conn.execute("SELECT pg_notify($1, $2)", CHANNEL, tenant)


__all__ = ["CHANNEL", "SCHEMA", "TABLE", "KeyRow", "KeyStore"]
