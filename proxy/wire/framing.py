"""Splitting byte streams into protocol frames, with limits checked first.

The framer owns the buffer and the caller owns the socket (h11's split):
``feed`` appends, ``take`` hands back every complete frame at once. A length
word is validated against the configured limit before its body is buffered,
so a hostile peer cannot make the proxy hold more than one frame's worth of
memory (I7).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from proxy.errors import ProtocolViolation

_LEN = struct.Struct("!i")


@dataclass(frozen=True, slots=True)
class Frames:
    """A run of complete typed frames: ``data`` holds them back to back and
    ``spans`` gives (type byte, start, end) of each inside it."""

    data: bytes
    spans: list[tuple[int, int, int]]

    def body(self, span: tuple[int, int, int]) -> bytes:
        return self.data[span[1] + 5:span[2]]

    def raw(self, span: tuple[int, int, int]) -> bytes:
        return self.data[span[1]:span[2]]


class MessageFramer:
    """Typed messages: one type byte, an int32 length including itself, the body."""

    __slots__ = ("_buf", "_fresh", "_max", "_peer")

    def __init__(self, max_message_size: int, peer: str) -> None:
        self._buf = bytearray()
        #: Bytes fed while nothing was buffered, framed in place: most reads hold
        #: whole messages, and then nothing is copied.
        self._fresh: bytes | None = None
        self._max = max_message_size
        self._peer = peer

    @property
    def buffered(self) -> int:
        return len(self._buf) + (len(self._fresh) if self._fresh is not None else 0)

    def feed(self, data: bytes) -> None:
        """Append received bytes."""
        if self._fresh is not None:
            self._buf += self._fresh
            self._fresh = None
        if self._buf:
            self._buf += data
        else:
            self._fresh = bytes(data)

    def take(self) -> Frames | None:
        """All complete frames buffered so far, or None if there is none yet."""
        fresh = self._fresh
        if fresh is not None:
            self._fresh = None
            frames = self._frames(fresh)
            end = frames.spans[-1][2] if frames is not None else 0
            if end < len(fresh):
                self._buf += fresh[end:]
            return frames
        frames = self._frames(self._buf)
        if frames is not None:
            del self._buf[:len(frames.data)]
        return frames

    def _frames(self, buf: bytes | bytearray) -> Frames | None:
        n = len(buf)
        pos = 0
        spans: list[tuple[int, int, int]] = []
        while n - pos >= 5:
            length = _LEN.unpack_from(buf, pos + 1)[0]
            if length < 4:
                raise ProtocolViolation(
                    f"invalid message length {length} from {self._peer} "
                    f"(message type {bytes((buf[pos],))!r})")
            if length - 4 > self._max:
                raise ProtocolViolation(
                    f"message of {length - 4} bytes from {self._peer} exceeds the limit of "
                    f"{self._max} bytes",
                    hint="Raise limits.max_message_size if this is legitimate.")
            end = pos + 1 + length
            if end > n:
                break
            spans.append((buf[pos], pos, end))
            pos = end
        if not spans:
            return None
        return Frames(buf if pos == n and isinstance(buf, bytes) else bytes(buf[:pos]), spans)

    def rest(self) -> bytes:
        """Bytes buffered after the last complete frame (handed to another reader)."""
        if self._fresh is not None:
            self.feed(b"")
        out = bytes(self._buf)
        self._buf.clear()
        return out


class StartupFramer:
    """Untyped startup-phase packets: an int32 length including itself, the body."""

    __slots__ = ("_buf", "_max")

    def __init__(self, max_packet_size: int) -> None:
        self._buf = bytearray()
        self._max = max_packet_size

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes) -> None:
        self._buf += data

    def next_packet(self) -> bytes | None:
        """The body of the next complete packet, or None until one has arrived."""
        if len(self._buf) < 4:
            return None
        length = _LEN.unpack_from(self._buf, 0)[0]
        if length < 8 or length > self._max:
            raise ProtocolViolation(
                f"invalid length of startup packet ({length} bytes; limit {self._max})")
        if len(self._buf) < length:
            return None
        body = bytes(self._buf[4:length])
        del self._buf[:length]
        return body

    def rest(self) -> bytes:
        out = bytes(self._buf)
        self._buf.clear()
        return out
