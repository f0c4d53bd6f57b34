"""Reading whole protocol messages from an asyncio stream during handshakes."""

from __future__ import annotations

import asyncio

from proxy.wire.fields import frame
from proxy.wire.framing import MessageFramer

READ_SIZE = 256 * 1024


class MessageStream:
    """Typed messages, one at a time, for the request/response phases
    (authentication, upstream startup) where throughput does not matter."""

    def __init__(self, reader: asyncio.StreamReader, framer: MessageFramer,
                 initial: bytes = b"") -> None:
        self.reader = reader
        self._framer = framer
        self._queue: list[tuple[int, bytes]] = []
        if initial:
            framer.feed(initial)

    async def recv(self) -> tuple[int, bytes] | None:
        """The next (type byte, body), or None if the peer closed the connection."""
        while not self._queue:
            frames = self._framer.take()
            if frames is not None:
                self._queue.extend((kind, frames.data[start + 5:end])
                                   for kind, start, end in frames.spans)
                break
            data = await self.reader.read(READ_SIZE)
            if not data:
                return None
            self._framer.feed(data)
        return self._queue.pop(0)

    def leftover(self) -> bytes:
        """Bytes received beyond the messages consumed, for the next reader."""
        queued = b"".join(frame(bytes((kind,)), body) for kind, body in self._queue)
        self._queue.clear()
        return queued + self._framer.rest()


def take_buffered(reader: asyncio.StreamReader) -> bytes:
    """Bytes a stream buffered but nobody read, removed from it: handed to the
    protocol that takes the connection over."""
    buffer = getattr(reader, "_buffer", None)
    if not buffer:
        return b""
    out = bytes(buffer)
    buffer.clear()
    return out


def stream_eof(reader: asyncio.StreamReader) -> bool:
    """Whether the peer already closed its side before the takeover."""
    return bool(getattr(reader, "_eof", False))


def unread_bytes(reader: asyncio.StreamReader) -> int:
    """Bytes the stream has buffered but nobody has read yet.

    Checked before a TLS handshake: anything a client sent after SSLRequest in
    plaintext must never be read as if it came through TLS (CVE-2021-3935).
    """
    return len(getattr(reader, "_buffer", b""))
