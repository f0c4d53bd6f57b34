"""Sealing and opening one value of an encrypted column, for a session's tenant.

Written values are sealed under the tenant's current key; searched-for values
under every live key, as a bytea[] (see ``proxy.sql.sealing``). Parameters go
upstream in binary (raw bytea or a binary bytea[] array), literals as SQL text.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field

from proxy.crypto import values
from proxy.crypto.cipher import DataKey, KeyUnavailable, decrypt, encrypt, key_version
from proxy.crypto.keyring import KeyRing
from proxy.errors import PgError, Unsupported
from proxy.policy.rules import EncryptedColumn, EncryptionRules

BYTEA_OID = 17
_ARRAY_HEADER = struct.Struct("!iiIii")
_EMPTY_ARRAY = struct.Struct("!iiI")
_LENGTH = struct.Struct("!i")
_BYTEA_ESCAPE = re.compile(rb"\\([0-7]{3}|\\)")


class UnreadableValue(PgError):
    """A read of a value whose tenant key was shredded."""

    sqlstate = "55000"
    default_reason = "shredded"


@dataclass
class ColumnCrypto:
    rules: EncryptionRules
    keyring: KeyRing
    #: (table OID, attribute number) -> column, from the database's catalog.
    attributes: Mapping[tuple[int, int], EncryptedColumn] = field(default_factory=dict)
    #: Qualified names of the tables whose encrypted columns the catalog knows.
    tables: frozenset[str] = frozenset()

    # --- sealing ---------------------------------------------------------------

    def _keys(self, tenant: str, search: bool) -> list[DataKey]:
        return self.keyring.live(tenant) if search else [self.keyring.current(tenant)]

    @staticmethod
    def _plain(column: EncryptedColumn, data: bytes, fmt: int, client_type: int) -> bytes:
        return values.to_plain(column.type, data, fmt, canonical=column.deterministic,
                               client_type=client_type)

    def seal_param(self, tenant: str, column: EncryptedColumn, search: bool,
                   data: bytes | None, fmt: int, client_type: int = 0) -> bytes | None:
        """A Bind parameter's new value, in binary format: the ciphertext written, or
        the bytea[] of ciphertexts searched for."""
        if data is None:
            return _bytea_array([None]) if search else None
        plain = self._plain(column, data, fmt, client_type)
        sealed = [encrypt(key, column.mode, column.domain, plain)
                  for key in self._keys(tenant, search)]
        return _bytea_array(sealed) if search else sealed[0]

    def seal_literal(self, tenant: str, column: EncryptedColumn, search: bool,
                     text: str | None) -> str:
        """A literal's replacement as SQL text."""
        if text is None:
            raise Unsupported(f'write the value for encrypted column "{column.qualified}" '
                              "as a plain literal or a parameter", reason="encrypted_column")
        plain = self._plain(column, text.encode(), 0, 0)
        literals = [f"'\\x{encrypt(key, column.mode, column.domain, plain).hex()}'::bytea"
                    for key in self._keys(tenant, search)]
        if search:
            return f"ARRAY[{', '.join(literals)}]::bytea[]" if literals else "'{}'::bytea[]"
        return literals[0]

    def seal_copy_field(self, tenant: str, column: EncryptedColumn, text: str) -> str:
        """A COPY text/CSV field's replacement: the ciphertext in bytea's hex form."""
        plain = values.to_plain(column.type, text.encode(), 0, canonical=column.deterministic)
        key = self.keyring.current(tenant)
        return "\\x" + encrypt(key, column.mode, column.domain, plain).hex()

    # --- opening ---------------------------------------------------------------

    def open(self, tenant: str, column: EncryptedColumn, data: bytes, fmt: int,
             timezone: str) -> bytes | None:
        """A DataRow value as the client asked for it (text or binary)."""
        if fmt == 0:
            data = bytes.fromhex(data[2:].decode("ascii")) if data.startswith(b"\\x") else \
                _BYTEA_ESCAPE.sub(lambda m: bytes([int(m[1], 8)]) if len(m[1]) == 3 else b"\\",
                                  data)  # bytea_output = escape
        version = key_version(data)
        key = self.keyring.get(tenant, version)
        if key is None:
            if self.rules.unreadable == "null":
                return None
            raise UnreadableValue(f'the value of encrypted column "{column.qualified}" is '
                                  f"unreadable: key version {version} of this tenant was "
                                  "shredded", hint="Crypto-shredded data cannot be recovered.")
        plain = decrypt(key, column.mode, column.domain, data)
        return values.from_plain(column.type, plain, fmt, timezone=timezone)


def _bytea_array(items: list[bytes | None]) -> bytes:
    """PostgreSQL's binary array format: one dimension of bytea."""
    if not items:
        return _EMPTY_ARRAY.pack(0, 0, BYTEA_OID)
    parts = [_ARRAY_HEADER.pack(1, int(any(i is None for i in items)), BYTEA_OID,
                                len(items), 1)]
    for item in items:
        if item is None:
            parts.append(_LENGTH.pack(-1))
        else:
            parts += [_LENGTH.pack(len(item)), item]
    return b"".join(parts)


__all__ = ["ColumnCrypto", "KeyUnavailable", "UnreadableValue"]
