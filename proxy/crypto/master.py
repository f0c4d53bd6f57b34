"""The master key that wraps tenant data keys (envelope encryption).

Data keys are stored in the database only in wrapped form, so a dump, a
backup or a replica of the key table is useless without the master key,
which lives outside the database (an env var or a file, see the rules file's
``encryption.master_key``).

A KMS plugs in by implementing ``KeyWrapper``: ``wrap`` calls the KMS's
encrypt (for AWS KMS, ``Encrypt`` with an ``EncryptionContext`` of
``{"tenant": ..., "version": ...}``; for Vault transit, ``encrypt`` with the
same pair as ``context``) and ``unwrap`` its decrypt with the same context,
raising ``KeyUnavailable`` when the KMS refuses. The wrapped bytes are opaque
to the key store. Both methods are only called from the key ring's background
thread and from the ``keys`` commands, never on a session's event loop, so a
blocking KMS client is fine; ``StoreKeyRing`` caches unwrapped keys, so the
KMS sees one call per key version and process, not one per value.
"""

from __future__ import annotations

import os
import struct
from typing import Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from proxy.crypto.cipher import KeyUnavailable

#: First byte of a wrapped key: lets a later format (or a KMS) coexist.
_WRAP_FORMAT = 1
_NONCE = 12


class KeyWrapper(Protocol):
    def wrap(self, tenant: str, version: int, material: bytes) -> bytes:
        """Seal a data key for storage, bound to its tenant and version."""

    def unwrap(self, tenant: str, version: int, wrapped: bytes) -> bytes:
        """Open a stored data key; ``KeyUnavailable`` if it does not open for that
        tenant and version (wrong master key, or a row altered or moved)."""


def _associated(tenant: str, version: int) -> bytes:
    raw = tenant.encode()
    return b"tenant-proxy data key\0" + struct.pack("!BHI", _WRAP_FORMAT, len(raw),
                                                     version) + raw


class MasterKey:
    """AES-256-GCM key wrapping with a random nonce. The associated data names the
    tenant and version, so a wrapped key copied to another tenant's row (or to
    another version) does not unwrap: an attacker with write access to the key
    table cannot make tenant A's data readable with tenant B's key."""

    def __init__(self, key: bytes) -> None:
        if len(key) != 32:
            raise ValueError("the master key must be 32 bytes")
        self._gcm = AESGCM(key)

    def wrap(self, tenant: str, version: int, material: bytes) -> bytes:
        nonce = os.urandom(_NONCE)
        return bytes([_WRAP_FORMAT]) + nonce + self._gcm.encrypt(
            nonce, material, _associated(tenant, version))

    def unwrap(self, tenant: str, version: int, wrapped: bytes) -> bytes:
        if len(wrapped) < 1 + _NONCE + 16 or wrapped[0] != _WRAP_FORMAT:
            raise KeyUnavailable(f"data key version {version} of tenant {tenant} is not a "
                                 "key wrapped by tenant-proxy's master key")
        try:
            return self._gcm.decrypt(wrapped[1:1 + _NONCE], wrapped[1 + _NONCE:],
                                     _associated(tenant, version))
        except InvalidTag:
            raise KeyUnavailable(
                f"data key version {version} of tenant {tenant} does not unwrap with this "
                "master key", hint="The master key differs from the one that wrapped it, or "
                "the key row was altered or copied from another tenant or version.") from None
