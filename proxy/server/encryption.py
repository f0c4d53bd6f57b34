"""Column encryption's moving parts in a running proxy: key ring and catalog.

The engine's ``crypto`` is built from the current rules, the key store and
the catalog (which table OID and attribute number each encrypted column has).
It is rebuilt as soon as a rules reload changes the encryption section, and
the catalog is read again every ``key_refresh`` seconds so that tables a
migration creates or fixes are picked up; until then statements on them are
refused, never run unencrypted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import asyncpg

from proxy.config.settings import KeyStoreSettings, Settings
from proxy.crypto.catalog import load_attributes
from proxy.crypto.columns import ColumnCrypto
from proxy.crypto.keyring import StoreKeyRing
from proxy.crypto.master import MasterKey
from proxy.policy.rules import EncryptionRules
from proxy.session.engine import Engine

log = logging.getLogger("tenant_proxy.crypto")

#: How often a rules reload is looked for (the catalog is read every key_refresh).
_POLL_SECONDS = 0.25


class EncryptionService:
    def __init__(self, settings: Settings, engine: Engine) -> None:
        self._settings = settings
        self._engine = engine
        self._keyring: StoreKeyRing | None = None
        self._rules: EncryptionRules | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def dsn(self) -> str:
        store = self._settings.key_store or KeyStoreSettings()
        return store.dsn(self._settings.upstream)

    async def start(self) -> None:
        await self._sync(force_catalog=True)
        self._task = asyncio.get_running_loop().create_task(self._maintain())

    async def _maintain(self) -> None:
        since = 0.0
        while True:
            await asyncio.sleep(_POLL_SECONDS)
            since += _POLL_SECONDS
            rules = self._engine.rules.encryption
            due = rules is not None and since >= rules.key_refresh
            if rules is not self._rules or due:
                since = 0.0
                try:
                    await self._sync(force_catalog=due)
                except (TimeoutError, OSError, asyncpg.PostgresError) as exc:
                    log.warning("cannot read the encrypted columns' catalog: %s", exc)

    async def _sync(self, *, force_catalog: bool) -> None:
        rules = self._engine.rules.encryption
        if rules is None:
            self._engine.crypto = None
            self._rules = None
            self._close_keyring()
            return
        if self._keyring is None or self._rules is None or \
                self._rules.master_key != rules.master_key:
            self._close_keyring()
            self._keyring = StoreKeyRing(self.dsn, MasterKey(rules.master_key),
                                         refresh=rules.key_refresh)
        crypto = self._engine.crypto
        if crypto is None or force_catalog or rules is not self._rules:
            conn = await asyncpg.connect(self.dsn, timeout=10)
            try:
                attributes, tables = await load_attributes(conn, rules)
            finally:
                await conn.close()
            missing = set(rules.columns) - tables
            if missing and (crypto is None or crypto.tables != tables):
                log.error("encrypted tables %s are not in the database as the rules describe "
                          "them; statements on them are refused", ", ".join(sorted(missing)))
            self._engine.crypto = ColumnCrypto(rules, self._keyring, attributes, tables)
        self._rules = rules

    def _close_keyring(self) -> None:
        if self._keyring is not None:
            self._keyring.close()
            self._keyring = None

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._close_keyring()
