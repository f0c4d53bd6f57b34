"""Messages that look the same in both directions of the protocol."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from proxy.wire.fields import FieldReader, frame


@dataclass(frozen=True, slots=True)
class EmptyMessage:
    """Base for messages with no body."""

    type_code: ClassVar[bytes] = b""

    @classmethod
    def decode(cls, r: FieldReader) -> EmptyMessage:
        r.end()
        return cls()

    def encode(self) -> bytes:
        return frame(self.type_code, b"")


@dataclass(frozen=True, slots=True)
class CopyData:
    type_code: ClassVar[bytes] = b"d"
    data: bytes

    @classmethod
    def decode(cls, r: FieldReader) -> CopyData:
        return cls(r.rest())

    def encode(self) -> bytes:
        return frame(self.type_code, self.data)


@dataclass(frozen=True, slots=True)
class CopyDone(EmptyMessage):
    type_code: ClassVar[bytes] = b"c"
