"""The synchronous view of tenant data keys that the SQL pipeline uses.

The pipeline is sans-IO, so it cannot wait on the key store; a ``KeyRing``
answers from memory. ``current`` may create the tenant's first key (a store
write, done by the implementation); ``get`` serves decryption of older
versions; ``live`` lists every readable version, for deterministic searches
that must match rows not yet re-encrypted.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import threading
import time
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import asyncpg

from proxy.crypto.cipher import DataKey, KeyUnavailable
from proxy.crypto.keystore import CHANNEL, KeyRow, KeyStore
from proxy.crypto.master import KeyWrapper

log = logging.getLogger("tenant_proxy.keys")
#: How the key ring's connection shows in pg_stat_activity.
APPLICATION_NAME = "tenant-proxy key ring"
T = TypeVar("T")
#: What a store operation raises when PostgreSQL is unreachable or refuses.
_STORE_ERRORS = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError)


class KeyRing(Protocol):
    def current(self, tenant: str) -> DataKey:
        """The version new values are sealed with; created on first use. Raises
        ``KeyUnavailable`` if the store cannot be reached."""

    def get(self, tenant: str, version: int) -> DataKey | None:
        """That version, or None if it was shredded or never existed."""

    def live(self, tenant: str) -> list[DataKey]:
        """Every readable version, newest first (empty if none)."""

    async def prefetch(self, tenant: str) -> bool:
        """Make ``current`` answer from memory without blocking (at login)."""


class MemoryKeyRing:
    """Keys held only in memory: unit tests and ``explain``."""

    def __init__(self) -> None:
        self._keys: dict[str, list[DataKey]] = {}
        #: Versions are never reused, not even after a shred.
        self._last: dict[str, int] = {}

    def current(self, tenant: str) -> DataKey:
        keys = self._keys.get(tenant)
        return keys[-1] if keys else self.rotate(tenant)

    def rotate(self, tenant: str) -> DataKey:
        version = self._last[tenant] = self._last.get(tenant, 0) + 1
        self._keys.setdefault(tenant, []).append(DataKey.generate(tenant, version))
        return self._keys[tenant][-1]

    def shred(self, tenant: str) -> None:
        self._keys.pop(tenant, None)

    def get(self, tenant: str, version: int) -> DataKey | None:
        return next((k for k in self._keys.get(tenant, ()) if k.version == version), None)

    def live(self, tenant: str) -> list[DataKey]:
        return list(reversed(self._keys.get(tenant, ())))

    async def prefetch(self, tenant: str) -> bool:
        self.current(tenant)
        return True


@dataclass(frozen=True)
class _TenantKeys:
    #: Highest stored version, shredded or not: versions at or below it that are not
    #: in ``keys`` were shredded, so ``get`` answers None without asking the store.
    newest: int
    keys: tuple[DataKey, ...]  # readable versions, newest first
    #: Stored versions that did not unwrap (wrong master key): why.
    broken: Mapping[int, str] = field(default_factory=dict)

    def find(self, version: int) -> DataKey | None:
        return next((k for k in self.keys if k.version == version), None)


class StoreKeyRing:
    """The running proxy's key ring over the key store in PostgreSQL.

    The pipeline is synchronous and must not wait on the database for every
    value, so keys are answered from memory. A background thread with its own
    event loop and asyncpg connection keeps memory current: LISTEN on the key
    channel reloads a tenant as soon as another process rotates or shreds it,
    and a full reload every ``refresh`` seconds covers lost notifications (a
    dropped connection). Only a tenant's first use blocks the caller (its key
    must be created or loaded); sessions call ``prefetch`` when they learn a
    tenant so that this is rare.
    """

    #: Least time between blocking reloads for unknown versions of one tenant, so
    #: forged ciphertext headers cannot make every row a store round trip.
    MISS_RELOAD_INTERVAL = 1.0

    def __init__(self, dsn: str, wrapper: KeyWrapper, *, refresh: float = 5.0,
                 timeout: float = 5.0) -> None:
        self._dsn = dsn
        self._wrapper = wrapper
        self._refresh = refresh
        self._timeout = timeout
        self._state: dict[str, _TenantKeys] = {}
        self._miss_reloads: dict[str, float] = {}
        self._pending: set[asyncio.Task[None]] = set()
        self._conn: asyncpg.Connection | None = None
        self._lock = asyncio.Lock()
        self._ready = threading.Event()
        self._closed = False
        #: Whether the last store operation succeeded.
        self._healthy = False
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True,
                                        name="tenant-proxy-keys")
        self._thread.start()
        self._maintainer = asyncio.run_coroutine_threadsafe(self._maintain(), self._loop)

    # The KeyRing protocol: called on the proxy's event loop, answered from memory.

    def current(self, tenant: str) -> DataKey:
        state = self._state.get(tenant)
        if state is not None:
            if state.keys and state.keys[0].version == state.newest:
                return state.keys[0]
            if state.newest in state.broken:
                raise KeyUnavailable(state.broken[state.newest])
        return self._call(self._ensure(tenant), f"tenant {tenant}'s current data key")

    def get(self, tenant: str, version: int) -> DataKey | None:
        if version <= 0:
            return None
        state = self._state.get(tenant)
        if state is None or version > state.newest:
            if not self._may_reload(tenant):
                if not self._healthy:  # "unknown" would be a guess: NULL where data is
                    raise KeyUnavailable(f"tenant {tenant}'s data key version {version} is "
                                         "not loaded and the key store is unreachable")
                return None
            self._call(self._reload_tenant(tenant), f"tenant {tenant}'s data keys")
            state = self._state.get(tenant)
            if state is None:
                return None
        if version in state.broken:
            raise KeyUnavailable(state.broken[version])
        return state.find(version)

    def live(self, tenant: str) -> list[DataKey]:
        """Raises ``KeyUnavailable`` only before the first load, if the store is down:
        an empty answer would make equality searches silently miss rows."""
        state = self._state.get(tenant)
        if state is None and not self._ready.is_set():
            # Before the first full load, "no keys" could be wrong: ask.
            self._call(self._reload_tenant(tenant), f"tenant {tenant}'s data keys")
            state = self._state.get(tenant)
        return list(state.keys) if state else []

    # For the session layer.

    async def prefetch(self, tenant: str) -> bool:
        """Load (or create) the tenant's current key without blocking the caller's
        event loop, so that ``current`` answers from memory. False if the store
        could not be reached; ``current`` will then raise with the reason."""
        state = self._state.get(tenant)
        if state is not None and state.keys and state.keys[0].version == state.newest:
            return True
        if self._closed:
            return False
        future = asyncio.run_coroutine_threadsafe(self._ensure(tenant), self._loop)
        try:
            await asyncio.wait_for(asyncio.wrap_future(future), self._timeout)
        except (KeyUnavailable, *_STORE_ERRORS) as exc:
            log.warning("could not prefetch tenant %s's data key: %s", tenant, exc)
            return False
        return True

    def wait_ready(self, timeout: float | None = None) -> bool:
        """Whether the first full load finished (within ``timeout`` seconds)."""
        return self._ready.wait(timeout)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(
                self._timeout)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(self._timeout)
        if not self._thread.is_alive():
            self._loop.close()

    # The background thread.

    def _call(self, coro: Coroutine[Any, Any, T], what: str) -> T:
        """Run a store operation on the key thread and wait for it (bounded)."""
        if self._closed:
            coro.close()
            raise KeyUnavailable(f"the key ring is closed (wanted {what})")
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result(self._timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise KeyUnavailable(f"the key store did not answer within {self._timeout:g}s "
                                 f"for {what}", hint="Check that PostgreSQL is reachable "
                                 "with the key_store settings.") from None
        except KeyUnavailable:
            raise
        except _STORE_ERRORS as exc:
            raise KeyUnavailable(f"the key store failed loading {what}: {exc}",
                                 hint="Check that PostgreSQL is reachable with the "
                                 "key_store settings.") from exc

    def _may_reload(self, tenant: str) -> bool:
        now = time.monotonic()
        if now - self._miss_reloads.get(tenant, -1e9) < self.MISS_RELOAD_INTERVAL:
            return False
        self._miss_reloads[tenant] = now
        return True

    async def _maintain(self) -> None:
        delay = 0.2
        while True:
            try:
                await self._reload_all()
            except (*_STORE_ERRORS, KeyUnavailable) as exc:
                log.warning("key store reload failed (retrying in %.1fs): %s", delay, exc)
                await self._drop()
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._refresh)
                continue
            delay = 0.2
            self._ready.set()
            await asyncio.sleep(self._refresh)

    async def _store(self) -> KeyStore:
        """The store over the live connection, reconnecting (and listening) if needed.
        Called with the lock held."""
        if self._conn is None or self._conn.is_closed():
            self._conn = None
            # A command timeout, so a silently dead connection is noticed and replaced.
            conn = await asyncpg.connect(
                self._dsn, timeout=self._timeout, command_timeout=self._timeout,
                server_settings={"application_name": APPLICATION_NAME})
            try:
                await KeyStore(conn, self._wrapper).ensure_schema()
                await conn.add_listener(CHANNEL, self._notified)
            except BaseException:
                await conn.close(timeout=1)
                raise
            self._conn = conn
        return KeyStore(self._conn, self._wrapper)

    async def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.close(timeout=1)

    def _notified(self, _conn: object, _pid: int, _channel: str, tenant: str) -> None:
        task = self._loop.create_task(self._reload_quietly(tenant))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _reload_quietly(self, tenant: str) -> None:
        try:
            await self._reload_tenant(tenant)
        except (*_STORE_ERRORS, KeyUnavailable) as exc:
            log.warning("reloading tenant %s's data keys failed: %s", tenant, exc)

    async def _guarded(self, work: Coroutine[Any, Any, T]) -> T:
        """Run ``work`` under the lock; a broken connection is dropped for the next try."""
        async with self._lock:
            try:
                result = await work
            except _STORE_ERRORS:
                self._healthy = False
                await self._drop()
                raise
            self._healthy = True
            return result

    async def _reload_all(self) -> None:
        async def work() -> None:
            rows = await (await self._store()).rows()
            by_tenant: dict[str, list[KeyRow]] = {}
            for row in rows:
                by_tenant.setdefault(row.tenant, []).append(row)
            self._state = {t: self._build(t, rs) for t, rs in by_tenant.items()}

        await self._guarded(work())

    async def _reload_tenant(self, tenant: str) -> None:
        async def work() -> None:
            self._set(tenant, await (await self._store()).rows(tenant))

        await self._guarded(work())

    async def _ensure(self, tenant: str) -> DataKey:
        async def work() -> DataKey:
            state = self._state.get(tenant)
            if state is not None and state.keys and state.keys[0].version == state.newest:
                return state.keys[0]  # another caller got it meanwhile
            store = await self._store()
            key = await store.current(tenant)
            self._set(tenant, await store.rows(tenant))
            return key

        return await self._guarded(work())

    def _set(self, tenant: str, rows: list[KeyRow]) -> None:
        if rows:
            self._state[tenant] = self._build(tenant, rows)
        else:
            self._state.pop(tenant, None)

    def _build(self, tenant: str, rows: list[KeyRow]) -> _TenantKeys:
        """Unwrap what is new; versions never change except to shredded, so a key
        already in memory is reused (a full reload costs no unwrapping)."""
        old = self._state.get(tenant)
        keys: list[DataKey] = []
        broken: dict[int, str] = {}
        for row in sorted(rows, key=lambda r: r.version, reverse=True):
            if row.wrapped is None:
                continue
            known = old.find(row.version) if old else None
            if known is not None:
                keys.append(known)
            elif old is not None and row.version in old.broken:
                broken[row.version] = old.broken[row.version]
            else:
                try:
                    keys.append(DataKey(tenant, row.version, self._wrapper.unwrap(
                        tenant, row.version, row.wrapped)))
                except (KeyUnavailable, ValueError) as exc:
                    log.error("tenant %s data key version %d is unusable: %s", tenant,
                              row.version, exc)
                    broken[row.version] = str(exc)
        return _TenantKeys(max(r.version for r in rows), tuple(keys), broken)

    async def _shutdown(self) -> None:
        self._maintainer.cancel()
        for task in list(self._pending):
            task.cancel()
        async with self._lock:
            await self._drop()


__all__ = ["DataKey", "KeyRing", "KeyUnavailable", "MemoryKeyRing", "StoreKeyRing"]
