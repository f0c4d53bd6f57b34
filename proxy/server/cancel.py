"""The proxy's own BackendKeyData: clients never learn upstream backend keys.

Each session gets a process id unique in this proxy and a random secret; a
CancelRequest naming them is turned into a CancelRequest for that session's
current upstream backend.
"""

from __future__ import annotations

import hmac
import itertools
import secrets
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

Canceller = Callable[[], Awaitable[bool]]


@dataclass(frozen=True, slots=True)
class CancelKey:
    process_id: int
    secret_key: int


class CancelRegistry:
    def __init__(self, first_pid: int = 1) -> None:
        self._pids = itertools.count(first_pid)
        self._entries: dict[int, tuple[int, Canceller]] = {}

    def register(self, canceller: Canceller) -> CancelKey:
        pid = next(self._pids) & 0x7FFFFFFF
        secret = struct.unpack("!i", secrets.token_bytes(4))[0]
        self._entries[pid] = (secret, canceller)
        return CancelKey(pid, secret)

    def unregister(self, key: CancelKey) -> None:
        self._entries.pop(key.process_id, None)

    def lookup(self, process_id: int, secret_key: int) -> Canceller | None:
        entry = self._entries.get(process_id)
        if entry is None:
            return None
        secret, canceller = entry
        if not hmac.compare_digest(struct.pack("!i", secret), struct.pack("!i", secret_key)):
            return None
        return canceller

    def __len__(self) -> int:
        return len(self._entries)
