"""The synchronous view of tenant data keys that the SQL pipeline uses.

The pipeline is sans-IO, so it cannot wait on the key store; a ``KeyRing``
answers from memory. ``current`` may create the tenant's first key (a store
write, done by the implementation); ``get`` serves decryption of older
versions; ``live`` lists every readable version, for deterministic searches
that must match rows not yet re-encrypted.
"""

from __future__ import annotations

from typing import Protocol

from proxy.crypto.cipher import DataKey, KeyUnavailable


class KeyRing(Protocol):
    def current(self, tenant: str) -> DataKey:
        """The version new values are sealed with; created on first use. Raises
        ``KeyUnavailable`` if the store cannot be reached."""

    def get(self, tenant: str, version: int) -> DataKey | None:
        """That version, or None if it was shredded or never existed."""

    def live(self, tenant: str) -> list[DataKey]:
        """Every readable version, newest first (empty if none)."""


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


__all__ = ["DataKey", "KeyRing", "KeyUnavailable", "MemoryKeyRing"]
