"""Frontend (client to server) messages of protocol v3, as frozen objects.

Each class decodes itself from a message body and encodes itself to a whole
frame; invalid field values cannot be built. ``FRONTEND_DECODERS`` maps the
type byte to the class, so a byte the table lacks is a protocol violation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from proxy.errors import ProtocolViolation
from proxy.wire.common import CopyData, CopyDone, EmptyMessage
from proxy.wire.fields import FieldReader, FieldWriter, frame, frame_untyped

PROTOCOL_3_0 = 3 << 16
SSL_REQUEST_CODE = 80877103
GSSENC_REQUEST_CODE = 80877104
CANCEL_REQUEST_CODE = 80877102

INT16_MAX = 32767


def _check_formats(formats: tuple[int, ...], what: str) -> None:
    if len(formats) > INT16_MAX:
        raise ProtocolViolation(f"{what}: too many format codes")
    for code in formats:
        if code not in (0, 1):
            raise ProtocolViolation(f"{what}: unsupported format code {code}")


# --- startup-phase packets (no type byte) ---------------------------------

@dataclass(frozen=True, slots=True)
class StartupMessage:
    parameters: dict[str, str]
    protocol: int = PROTOCOL_3_0

    @property
    def minor(self) -> int:
        return self.protocol & 0xFFFF

    def encode(self) -> bytes:
        w = FieldWriter().int32(self.protocol)
        for key, value in self.parameters.items():
            w.cstring(key).cstring(value)
        return frame_untyped(w.byte(0).body())


@dataclass(frozen=True, slots=True)
class SSLRequest:
    def encode(self) -> bytes:
        return frame_untyped(FieldWriter().int32(SSL_REQUEST_CODE).body())


@dataclass(frozen=True, slots=True)
class GSSENCRequest:
    def encode(self) -> bytes:
        return frame_untyped(FieldWriter().int32(GSSENC_REQUEST_CODE).body())


@dataclass(frozen=True, slots=True)
class CancelRequest:
    process_id: int
    secret_key: int

    def encode(self) -> bytes:
        body = (FieldWriter().int32(CANCEL_REQUEST_CODE).int32(self.process_id)
                .int32(self.secret_key).body())
        return frame_untyped(body)


StartupPacket = StartupMessage | SSLRequest | GSSENCRequest | CancelRequest


# --- typed messages ---------------------------------------------------------

@dataclass(frozen=True, slots=True)
class PasswordMessage:
    """'p': a password, SASLInitialResponse or SASLResponse; which one depends on
    the authentication exchange in progress, so the body stays raw here."""

    type_code: ClassVar[bytes] = b"p"
    payload: bytes

    @classmethod
    def decode(cls, r: FieldReader) -> PasswordMessage:
        return cls(r.rest())

    def encode(self) -> bytes:
        return frame(self.type_code, self.payload)


@dataclass(frozen=True, slots=True)
class SASLInitialResponse:
    mechanism: str
    data: bytes | None

    @classmethod
    def parse(cls, payload: bytes) -> SASLInitialResponse:
        r = FieldReader(payload, "SASLInitialResponse")
        mechanism = r.cstring()
        data = r.nullable_bytes()
        r.end()
        return cls(mechanism, data)

    def encode(self) -> bytes:
        body = FieldWriter().cstring(self.mechanism).nullable_bytes(self.data).body()
        return frame(b"p", body)


@dataclass(frozen=True, slots=True)
class Query:
    type_code: ClassVar[bytes] = b"Q"
    sql: str

    @classmethod
    def decode(cls, r: FieldReader) -> Query:
        sql = r.cstring()
        r.end()
        return cls(sql)

    def encode(self) -> bytes:
        return frame(self.type_code, FieldWriter().cstring(self.sql).body())


@dataclass(frozen=True, slots=True)
class Parse:
    type_code: ClassVar[bytes] = b"P"
    name: str
    sql: str
    param_types: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if len(self.param_types) > INT16_MAX:
            raise ProtocolViolation("Parse: too many parameter types")

    @classmethod
    def decode(cls, r: FieldReader) -> Parse:
        name = r.cstring()
        sql = r.cstring()
        types = tuple(r.uint32() for _ in range(r.count16()))
        r.end()
        return cls(name, sql, types)

    def encode(self) -> bytes:
        w = FieldWriter().cstring(self.name).cstring(self.sql).int16(len(self.param_types))
        for oid in self.param_types:
            w.uint32(oid)
        return frame(self.type_code, w.body())


@dataclass(frozen=True, slots=True)
class Bind:
    type_code: ClassVar[bytes] = b"B"
    portal: str
    statement: str
    param_formats: tuple[int, ...] = ()
    params: tuple[bytes | None, ...] = ()
    result_formats: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        _check_formats(self.param_formats, "Bind parameter formats")
        _check_formats(self.result_formats, "Bind result formats")
        if len(self.params) > INT16_MAX:
            raise ProtocolViolation("Bind: too many parameters")
        if len(self.param_formats) not in (0, 1, len(self.params)):
            raise ProtocolViolation(
                f"Bind message has {len(self.param_formats)} parameter formats "
                f"but {len(self.params)} parameters")

    def param_format(self, index: int) -> int:
        if not self.param_formats:
            return 0
        return self.param_formats[0 if len(self.param_formats) == 1 else index]

    @classmethod
    def decode(cls, r: FieldReader) -> Bind:
        portal = r.cstring()
        statement = r.cstring()
        param_formats = tuple(r.int16() for _ in range(r.count16()))
        params = tuple(r.nullable_bytes() for _ in range(r.count16()))
        result_formats = tuple(r.int16() for _ in range(r.count16()))
        r.end()
        return cls(portal, statement, param_formats, params, result_formats)

    def encode(self) -> bytes:
        w = FieldWriter().cstring(self.portal).cstring(self.statement)
        w.int16(len(self.param_formats))
        for code in self.param_formats:
            w.int16(code)
        w.int16(len(self.params))
        for value in self.params:
            w.nullable_bytes(value)
        w.int16(len(self.result_formats))
        for code in self.result_formats:
            w.int16(code)
        return frame(self.type_code, w.body())


def _target_kind(value: int, what: str) -> str:
    kind = chr(value)
    if kind not in ("S", "P"):
        raise ProtocolViolation(f"invalid {what} target type {kind!r}")
    return kind


@dataclass(frozen=True, slots=True)
class _Target:
    """Describe and Close: a kind ('S' statement or 'P' portal) and a name."""

    type_code: ClassVar[bytes] = b""
    kind: str
    name: str

    def __post_init__(self) -> None:
        _target_kind(ord(self.kind), type(self).__name__)

    @classmethod
    def decode(cls, r: FieldReader) -> _Target:
        kind = _target_kind(r.byte(), cls.__name__)
        name = r.cstring()
        r.end()
        return cls(kind, name)

    def encode(self) -> bytes:
        return frame(self.type_code, FieldWriter().byte(ord(self.kind)).cstring(self.name).body())


@dataclass(frozen=True, slots=True)
class Describe(_Target):
    type_code: ClassVar[bytes] = b"D"


@dataclass(frozen=True, slots=True)
class Close(_Target):
    type_code: ClassVar[bytes] = b"C"


@dataclass(frozen=True, slots=True)
class Execute:
    type_code: ClassVar[bytes] = b"E"
    portal: str
    max_rows: int = 0

    @classmethod
    def decode(cls, r: FieldReader) -> Execute:
        portal = r.cstring()
        max_rows = r.int32()
        r.end()
        return cls(portal, max_rows)

    def encode(self) -> bytes:
        return frame(self.type_code, FieldWriter().cstring(self.portal).int32(self.max_rows).body())


@dataclass(frozen=True, slots=True)
class Sync(EmptyMessage):
    type_code: ClassVar[bytes] = b"S"


@dataclass(frozen=True, slots=True)
class Flush(EmptyMessage):
    type_code: ClassVar[bytes] = b"H"


@dataclass(frozen=True, slots=True)
class Terminate(EmptyMessage):
    type_code: ClassVar[bytes] = b"X"


@dataclass(frozen=True, slots=True)
class CopyFail:
    type_code: ClassVar[bytes] = b"f"
    reason: str

    @classmethod
    def decode(cls, r: FieldReader) -> CopyFail:
        reason = r.cstring()
        r.end()
        return cls(reason)

    def encode(self) -> bytes:
        return frame(self.type_code, FieldWriter().cstring(self.reason).body())


@dataclass(frozen=True, slots=True)
class FunctionCall:
    type_code: ClassVar[bytes] = b"F"
    function_oid: int
    arg_formats: tuple[int, ...] = ()
    args: tuple[bytes | None, ...] = ()
    result_format: int = 0

    def __post_init__(self) -> None:
        _check_formats(self.arg_formats, "FunctionCall argument formats")
        _check_formats((self.result_format,), "FunctionCall result format")

    @classmethod
    def decode(cls, r: FieldReader) -> FunctionCall:
        oid = r.uint32()
        formats = tuple(r.int16() for _ in range(r.count16()))
        args = tuple(r.nullable_bytes() for _ in range(r.count16()))
        result_format = r.int16()
        r.end()
        return cls(oid, formats, args, result_format)

    def encode(self) -> bytes:
        w = FieldWriter().uint32(self.function_oid).int16(len(self.arg_formats))
        for code in self.arg_formats:
            w.int16(code)
        w.int16(len(self.args))
        for value in self.args:
            w.nullable_bytes(value)
        w.int16(self.result_format)
        return frame(self.type_code, w.body())


FrontendMessage = (PasswordMessage | Query | Parse | Bind | Describe | Close | Execute | Sync
                   | Flush | Terminate | CopyData | CopyDone | CopyFail | FunctionCall)

FRONTEND_DECODERS: dict[int, type] = {
    cls.type_code[0]: cls
    for cls in (PasswordMessage, Query, Parse, Bind, Describe, Close, Execute, Sync, Flush,
                Terminate, CopyData, CopyDone, CopyFail, FunctionCall)
}


def decode_frontend(type_byte: int, body: bytes) -> FrontendMessage:
    cls = FRONTEND_DECODERS.get(type_byte)
    if cls is None:
        raise ProtocolViolation(f"invalid frontend message type {type_byte!r}")
    return cls.decode(FieldReader(body, cls.__name__))


def decode_startup(body: bytes, *, max_parameters: int) -> StartupPacket:
    """Decode a startup-phase packet body (the part after the length word)."""
    r = FieldReader(body, "startup")
    code = r.int32()
    if code == SSL_REQUEST_CODE:
        r.end()
        return SSLRequest()
    if code == GSSENC_REQUEST_CODE:
        r.end()
        return GSSENCRequest()
    if code == CANCEL_REQUEST_CODE:
        pid = r.int32()
        secret = r.int32()
        r.end()
        return CancelRequest(pid, secret)
    if code >> 16 != 3:
        raise ProtocolViolation(
            f"unsupported frontend protocol {code >> 16}.{code & 0xFFFF}: "
            "server supports 3.0 to 3.0")
    params: dict[str, str] = {}
    while True:
        key = r.cstring()
        if not key:
            break
        if len(params) >= max_parameters:
            raise ProtocolViolation(f"startup packet has more than {max_parameters} parameters")
        params[key] = r.cstring()
    r.end()
    return StartupMessage(params, code)


__all__ = [
    "FRONTEND_DECODERS", "Bind", "CancelRequest", "Close", "CopyData", "CopyDone", "CopyFail",
    "Describe", "Execute", "Flush", "FrontendMessage", "FunctionCall", "GSSENCRequest",
    "Parse", "PasswordMessage", "Query", "SASLInitialResponse", "SSLRequest",
    "StartupMessage", "StartupPacket", "Sync", "Terminate", "decode_frontend", "decode_startup",
]
