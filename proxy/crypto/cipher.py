"""Ciphertext format: what PostgreSQL stores in an encrypted (bytea) column.

    byte 0      format version (1)
    byte 1      mode: ``R`` randomized (AES-256-GCM) or ``D`` deterministic (AES-SIV)
    bytes 2-5   data key version, big-endian
    then        R: 12-byte random nonce, ciphertext, 16-byte tag
                D: 16-byte synthetic IV, ciphertext

The associated data is the header plus the tenant and the column's domain
(``schema.table.column``, or a shared name for deterministic columns that
are joined), so a ciphertext copied into another column or another tenant's
row fails authentication instead of decrypting to something plausible.
Deterministic mode gives equal ciphertexts for equal plaintexts under one
key version and domain, which is what lets ``=``, ``IN``, unique indexes,
GROUP BY and equi-joins work on the stored bytes.
"""

from __future__ import annotations

import functools
import os
import struct
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, AESSIV
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from proxy.errors import PgError

FORMAT_VERSION = 1
RANDOMIZED, DETERMINISTIC = "randomized", "deterministic"
_MODE_BYTE = {RANDOMIZED: b"R", DETERMINISTIC: b"D"}
_HEADER = struct.Struct("!BcI")
HEADER_SIZE = _HEADER.size
_NONCE = 12


class DataCorrupted(PgError):
    """A stored value that does not authenticate: tampered, or copied from elsewhere."""

    sqlstate = "XX001"
    default_reason = "decrypt"


class KeyUnavailable(PgError):
    """The tenant's key for a value is gone (shredded) or not known."""

    sqlstate = "55000"
    default_reason = "key"


def _derive(material: bytes, label: bytes, length: int) -> bytes:
    return HKDF(hashes.SHA256(), length, salt=None, info=b"tenant-proxy " + label
                ).derive(material)


@dataclass(frozen=True)
class DataKey:
    """One version of one tenant's data key (32 random bytes), with its two
    derived AEADs: separate keys per mode, so GCM and SIV never share one."""

    tenant: str
    version: int
    material: bytes = field(repr=False)
    gcm: AESGCM = field(init=False, repr=False, compare=False)
    siv: AESSIV = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if len(self.material) != 32:
            raise ValueError("a data key is 32 bytes")
        object.__setattr__(self, "gcm", AESGCM(_derive(self.material, b"gcm", 32)))
        object.__setattr__(self, "siv", AESSIV(_derive(self.material, b"siv", 64)))

    @classmethod
    def generate(cls, tenant: str, version: int) -> DataKey:
        return cls(tenant, version, os.urandom(32))


@functools.lru_cache(maxsize=4096)
def _associated(header: bytes, tenant: str, domain: str) -> bytes:
    parts = [header]
    for text in (tenant, domain):
        raw = text.encode()
        parts += [struct.pack("!H", len(raw)), raw]
    return b"".join(parts)


def encrypt(key: DataKey, mode: str, domain: str, plaintext: bytes) -> bytes:
    header = _HEADER.pack(FORMAT_VERSION, _MODE_BYTE[mode], key.version)
    ad = _associated(header, key.tenant, domain)
    if mode == RANDOMIZED:
        nonce = os.urandom(_NONCE)
        return header + nonce + key.gcm.encrypt(nonce, plaintext, ad)
    return header + key.siv.encrypt(plaintext, [ad])


def key_version(ciphertext: bytes) -> int:
    """The data key version a stored value was sealed with (``DataCorrupted`` if it
    is not a tenant-proxy ciphertext)."""
    if len(ciphertext) < HEADER_SIZE or ciphertext[0] != FORMAT_VERSION:
        raise DataCorrupted("an encrypted column holds a value that is not a tenant-proxy "
                            "ciphertext")
    return int(_HEADER.unpack_from(ciphertext)[2])


def decrypt(key: DataKey, mode: str, domain: str, ciphertext: bytes) -> bytes:
    """Open a value; ``key`` must be the version ``key_version`` names."""
    header = ciphertext[:HEADER_SIZE]
    if key_version(ciphertext) != key.version or header[1:2] != _MODE_BYTE[mode]:
        raise DataCorrupted(f"a value in {domain} was not sealed for this column's mode "
                            "and key", hint="It was written by something other than "
                            "tenant-proxy, or copied from another column.")
    ad = _associated(header, key.tenant, domain)
    try:
        if mode == RANDOMIZED:
            body = ciphertext[HEADER_SIZE:]
            return key.gcm.decrypt(body[:_NONCE], body[_NONCE:], ad)
        return key.siv.decrypt(ciphertext[HEADER_SIZE:], [ad])
    except InvalidTag:
        raise DataCorrupted(f"a value in {domain} does not decrypt for this tenant and "
                            "column", hint="It was copied from another row of another "
                            "tenant or another column, or altered in the database.") from None
