"""The proxy's own BackendKeyData: clients never learn upstream backend keys.

Each session gets a process id unique in this proxy and a random secret; a
CancelRequest naming them is turned into a CancelRequest for that session's
current upstream backend.

With several worker processes a CancelRequest arrives on a new connection,
which SO_REUSEPORT may hand to any worker. So the process id carries the
index of the worker that owns the session (bits 24-30, below the sign bit),
and a worker receiving a request for another worker's session forwards it to
that worker (``forward``) instead of looking it up.
"""

from __future__ import annotations

import hmac
import secrets
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from proxy.config.settings import MAX_WORKERS

Canceller = Callable[[], Awaitable[bool]]
#: Sends (owner worker, process id, secret) to the owner; True if it was delivered.
Forwarder = Callable[[int, int, int], Awaitable[bool]]

#: Worker indexes take the bits between the sequence number and the sign bit.
_SEQUENCE_BITS = 31 - (MAX_WORKERS - 1).bit_length()
_SEQUENCE_MASK = (1 << _SEQUENCE_BITS) - 1


def owner_of(process_id: int) -> int:
    """The worker index a proxy process id was handed out by."""
    return (process_id >> _SEQUENCE_BITS) & (MAX_WORKERS - 1)


@dataclass(frozen=True, slots=True)
class CancelKey:
    process_id: int
    secret_key: int


class CancelRegistry:
    def __init__(self, worker: int = 0, forward: Forwarder | None = None) -> None:
        if not 0 <= worker < MAX_WORKERS:
            raise ValueError(f"worker index {worker} outside 0..{MAX_WORKERS - 1}")
        self.worker = worker
        self._forward = forward
        self._next = 0
        self._entries: dict[int, tuple[int, Canceller]] = {}

    def register(self, canceller: Canceller) -> CancelKey:
        if len(self._entries) > _SEQUENCE_MASK // 2:
            raise RuntimeError("cancel registry full")  # 8 million live sessions: a leak
        while True:  # skip ids still in use after the sequence wraps
            self._next = self._next % _SEQUENCE_MASK + 1
            pid = (self.worker << _SEQUENCE_BITS) | self._next
            if pid not in self._entries:
                break
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

    async def cancel(self, process_id: int, secret_key: int) -> str:
        """Deliver a CancelRequest wherever its session lives.

        Returns ``delivered`` (sent to the upstream backend), ``forwarded`` (handed
        to the owning worker) or ``unknown`` (no session with that key here).
        """
        owner = owner_of(process_id)
        if owner != self.worker and self._forward is not None:
            return "forwarded" if await self._forward(owner, process_id, secret_key) \
                else "unknown"
        return await self.cancel_local(process_id, secret_key)

    async def cancel_local(self, process_id: int, secret_key: int) -> str:
        canceller = self.lookup(process_id, secret_key)
        if canceller is None:
            return "unknown"
        await canceller()
        return "delivered"

    def __len__(self) -> int:
        return len(self._entries)
