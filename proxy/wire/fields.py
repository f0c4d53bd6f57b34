"""Field-level reading and writing of PostgreSQL v3 message bodies.

Strings are decoded as UTF-8 with ``surrogateescape`` so any byte sequence a
client sends in another client_encoding still round-trips exactly.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

from proxy.errors import ProtocolViolation

_I16 = struct.Struct("!h")
_U16 = struct.Struct("!H")
_I32 = struct.Struct("!i")
_NULL = _I32.pack(-1)
_U32 = struct.Struct("!I")


def decode_text(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


def encode_text(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


class FieldReader:
    """Reads fields from one message body; any overrun is the peer's protocol error."""

    __slots__ = ("_body", "_pos", "_what")

    def __init__(self, body: bytes, what: str) -> None:
        self._body = body
        self._pos = 0
        self._what = what

    def _fail(self, reason: str) -> ProtocolViolation:
        return ProtocolViolation(f"invalid {self._what} message: {reason}")

    def _take(self, n: int) -> bytes:
        if n < 0 or self._pos + n > len(self._body):
            raise self._fail("message is shorter than its fields")
        out = self._body[self._pos:self._pos + n]
        self._pos += n
        return out

    def byte(self) -> int:
        return self._take(1)[0]

    def int16(self) -> int:
        return _I16.unpack(self._take(2))[0]

    def uint16(self) -> int:
        return _U16.unpack(self._take(2))[0]

    def int32(self) -> int:
        return _I32.unpack(self._take(4))[0]

    def uint32(self) -> int:
        return _U32.unpack(self._take(4))[0]

    def count16(self) -> int:
        n = self.int16()
        if n < 0:
            raise self._fail(f"negative count {n}")
        return n

    def raw(self, n: int) -> bytes:
        return self._take(n)

    def cstring(self) -> str:
        end = self._body.find(b"\0", self._pos)
        if end < 0:
            raise self._fail("unterminated string")
        out = self._body[self._pos:end]
        self._pos = end + 1
        return decode_text(out)

    def nullable_bytes(self) -> bytes | None:
        """An int32 length (-1 for NULL) followed by that many bytes."""
        n = self.int32()
        if n == -1:
            return None
        if n < 0:
            raise self._fail(f"negative value length {n}")
        return self._take(n)

    def nullable_values(self, count: int) -> list[bytes | None]:
        """``count`` of ``nullable_bytes`` in one pass: DataRow is on the hot path of
        decrypting result rows."""
        body, pos, size = self._body, self._pos, len(self._body)
        out: list[bytes | None] = []
        for _ in range(count):
            if pos + 4 > size:
                raise self._fail("message is shorter than its fields")
            (n,) = _I32.unpack_from(body, pos)
            pos += 4
            if n == -1:
                out.append(None)
                continue
            if n < 0:
                raise self._fail(f"negative value length {n}")
            if pos + n > size:
                raise self._fail("message is shorter than its fields")
            out.append(body[pos:pos + n])
            pos += n
        self._pos = pos
        return out

    def rest(self) -> bytes:
        out = self._body[self._pos:]
        self._pos = len(self._body)
        return out

    def end(self) -> None:
        if self._pos != len(self._body):
            raise self._fail(f"{len(self._body) - self._pos} unexpected trailing bytes")


class FieldWriter:
    """Accumulates fields of one message body."""

    __slots__ = ("_parts",)

    def __init__(self) -> None:
        self._parts: list[bytes] = []

    def byte(self, value: int) -> FieldWriter:
        self._parts.append(bytes((value,)))
        return self

    def int16(self, value: int) -> FieldWriter:
        self._parts.append(_I16.pack(value))
        return self

    def uint16(self, value: int) -> FieldWriter:
        self._parts.append(_U16.pack(value))
        return self

    def int32(self, value: int) -> FieldWriter:
        self._parts.append(_I32.pack(value))
        return self

    def uint32(self, value: int) -> FieldWriter:
        self._parts.append(_U32.pack(value))
        return self

    def raw(self, value: bytes) -> FieldWriter:
        self._parts.append(value)
        return self

    def cstring(self, value: str) -> FieldWriter:
        raw = encode_text(value)
        if b"\0" in raw:
            raise ValueError("strings in PostgreSQL messages cannot contain NUL")
        self._parts.append(raw + b"\0")
        return self

    def nullable_values(self, values: Sequence[bytes | None]) -> FieldWriter:
        """Several ``nullable_bytes`` in one call (DataRow, on the hot path)."""
        parts = self._parts
        for value in values:
            if value is None:
                parts.append(_NULL)
            else:
                parts += (_I32.pack(len(value)), value)
        return self

    def nullable_bytes(self, value: bytes | None) -> FieldWriter:
        if value is None:
            self._parts.append(_I32.pack(-1))
        else:
            self._parts.append(_I32.pack(len(value)))
            self._parts.append(value)
        return self

    def body(self) -> bytes:
        return b"".join(self._parts)


def frame(type_code: bytes, body: bytes) -> bytes:
    """A typed message: type byte, int32 length including itself, body."""
    return type_code + _I32.pack(len(body) + 4) + body


def frame_untyped(body: bytes) -> bytes:
    """A startup-phase packet: int32 length including itself, body."""
    return _I32.pack(len(body) + 4) + body
