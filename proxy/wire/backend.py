"""Backend (server to client) messages of protocol v3, as frozen objects.

The relay forwards most backend traffic as raw bytes; these classes are for
the messages the proxy reads or writes itself (authentication, status,
errors, descriptions) and for tests, which round-trip every one of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from proxy.errors import ProtocolViolation
from proxy.wire.common import CopyData, CopyDone, EmptyMessage
from proxy.wire.fields import FieldReader, FieldWriter, frame

# Authentication request codes ('R' messages).
AUTH_OK = 0
AUTH_KERBEROS_V5 = 2
AUTH_CLEARTEXT = 3
AUTH_MD5 = 5
AUTH_GSS = 7
AUTH_GSS_CONTINUE = 8
AUTH_SSPI = 9
AUTH_SASL = 10
AUTH_SASL_CONTINUE = 11
AUTH_SASL_FINAL = 12

_AUTH_CODES = {AUTH_OK, AUTH_KERBEROS_V5, AUTH_CLEARTEXT, AUTH_MD5, AUTH_GSS,
               AUTH_GSS_CONTINUE, AUTH_SSPI, AUTH_SASL, AUTH_SASL_CONTINUE, AUTH_SASL_FINAL}

TRANSACTION_STATUSES = (b"I", b"T", b"E")


@dataclass(frozen=True, slots=True)
class Authentication:
    """'R': the code says which request; ``data`` holds the salt, SASL mechanism
    list or SASL payload that follows it."""

    type_code: ClassVar[bytes] = b"R"
    code: int
    data: bytes = b""

    def __post_init__(self) -> None:
        if self.code not in _AUTH_CODES:
            raise ProtocolViolation(f"unknown authentication request code {self.code}")
        if self.code == AUTH_MD5 and len(self.data) != 4:
            raise ProtocolViolation("MD5 authentication request needs a 4-byte salt")

    @property
    def mechanisms(self) -> list[str]:
        """The SASL mechanisms offered by an AuthenticationSASL request."""
        r = FieldReader(self.data, "AuthenticationSASL")
        out = []
        while name := r.cstring():
            out.append(name)
        return out

    @classmethod
    def sasl(cls, mechanisms: list[str]) -> Authentication:
        w = FieldWriter()
        for name in mechanisms:
            w.cstring(name)
        return cls(AUTH_SASL, w.byte(0).body())

    @classmethod
    def decode(cls, r: FieldReader) -> Authentication:
        code = r.int32()
        return cls(code, r.rest())

    def encode(self) -> bytes:
        return frame(self.type_code, FieldWriter().int32(self.code).raw(self.data).body())


@dataclass(frozen=True, slots=True)
class BackendKeyData:
    type_code: ClassVar[bytes] = b"K"
    process_id: int
    secret_key: int

    @classmethod
    def decode(cls, r: FieldReader) -> BackendKeyData:
        pid, secret = r.int32(), r.int32()
        r.end()
        return cls(pid, secret)

    def encode(self) -> bytes:
        return frame(self.type_code,
                     FieldWriter().int32(self.process_id).int32(self.secret_key).body())


@dataclass(frozen=True, slots=True)
class ParseComplete(EmptyMessage):
    type_code: ClassVar[bytes] = b"1"


@dataclass(frozen=True, slots=True)
class BindComplete(EmptyMessage):
    type_code: ClassVar[bytes] = b"2"


@dataclass(frozen=True, slots=True)
class CloseComplete(EmptyMessage):
    type_code: ClassVar[bytes] = b"3"


@dataclass(frozen=True, slots=True)
class NoData(EmptyMessage):
    type_code: ClassVar[bytes] = b"n"


@dataclass(frozen=True, slots=True)
class EmptyQueryResponse(EmptyMessage):
    type_code: ClassVar[bytes] = b"I"


@dataclass(frozen=True, slots=True)
class PortalSuspended(EmptyMessage):
    type_code: ClassVar[bytes] = b"s"


@dataclass(frozen=True, slots=True)
class CommandComplete:
    type_code: ClassVar[bytes] = b"C"
    tag: str

    @classmethod
    def decode(cls, r: FieldReader) -> CommandComplete:
        tag = r.cstring()
        r.end()
        return cls(tag)

    def encode(self) -> bytes:
        return frame(self.type_code, FieldWriter().cstring(self.tag).body())


@dataclass(frozen=True, slots=True)
class _CopyResponse:
    type_code: ClassVar[bytes] = b""
    overall_format: int
    column_formats: tuple[int, ...]

    def __post_init__(self) -> None:
        for code in (self.overall_format, *self.column_formats):
            if code not in (0, 1):
                raise ProtocolViolation(f"invalid COPY format code {code}")

    @classmethod
    def decode(cls, r: FieldReader) -> _CopyResponse:
        overall = r.byte()
        formats = tuple(r.int16() for _ in range(r.count16()))
        r.end()
        return cls(overall, formats)

    def encode(self) -> bytes:
        w = FieldWriter().byte(self.overall_format).int16(len(self.column_formats))
        for code in self.column_formats:
            w.int16(code)
        return frame(self.type_code, w.body())


@dataclass(frozen=True, slots=True)
class CopyInResponse(_CopyResponse):
    type_code: ClassVar[bytes] = b"G"


@dataclass(frozen=True, slots=True)
class CopyOutResponse(_CopyResponse):
    type_code: ClassVar[bytes] = b"H"


@dataclass(frozen=True, slots=True)
class CopyBothResponse(_CopyResponse):
    type_code: ClassVar[bytes] = b"W"


@dataclass(frozen=True, slots=True)
class DataRow:
    type_code: ClassVar[bytes] = b"D"
    values: tuple[bytes | None, ...]

    @classmethod
    def decode(cls, r: FieldReader) -> DataRow:
        values = tuple(r.nullable_values(r.count16()))
        r.end()
        return cls(values)

    def encode(self) -> bytes:
        w = FieldWriter().int16(len(self.values)).nullable_values(self.values)
        return frame(self.type_code, w.body())


@dataclass(frozen=True, slots=True)
class _Fields:
    """ErrorResponse and NoticeResponse: one-letter-coded string fields."""

    type_code: ClassVar[bytes] = b""
    fields: dict[str, str]

    @property
    def sqlstate(self) -> str:
        return self.fields.get("C", "")

    @property
    def message(self) -> str:
        return self.fields.get("M", "")

    @classmethod
    def decode(cls, r: FieldReader) -> _Fields:
        fields: dict[str, str] = {}
        while code := r.byte():
            fields[chr(code)] = r.cstring()
        r.end()
        return cls(fields)

    def encode(self) -> bytes:
        w = FieldWriter()
        for code, value in self.fields.items():
            w.byte(ord(code)).cstring(value)
        return frame(self.type_code, w.byte(0).body())


@dataclass(frozen=True, slots=True)
class ErrorResponse(_Fields):
    type_code: ClassVar[bytes] = b"E"


@dataclass(frozen=True, slots=True)
class NoticeResponse(_Fields):
    type_code: ClassVar[bytes] = b"N"


#: The cast error a rewritten statement's tenant guard raises (proxy.sql.splice.raise_expr).
GUARD_PREFIX = 'invalid input syntax for type integer: "tenant-proxy: '
#: Why a guard fails, as the rewriter words it; anything else gets a generic message.
GUARD_REASONS = frozenset({"the conflicting row belongs to another tenant",
                           "a new row belongs to another tenant"})


def guard_error(fields: dict[str, str]) -> dict[str, str] | None:
    """The error row-level security gives (42501) in place of a tenant guard's cast
    error; None for every other error. Only the proxy's own wording is kept: nothing
    of the row (position, context, detail) reaches the client."""
    message = fields.get("M", "")
    if fields.get("C") != "22P02" or not message.startswith(GUARD_PREFIX):
        return None
    why = message[len(GUARD_PREFIX):].removesuffix('"')
    out = {code: fields[code] for code in ("S", "V") if code in fields}
    out.update(C="42501",
               M=f"new row violates row-level security policy: "
                 f"{why if why in GUARD_REASONS else 'a row belongs to another tenant'}",
               H="tenant-proxy keeps each tenant's rows apart; rows of another tenant can "
                 "be neither read nor written.")
    return out


@dataclass(frozen=True, slots=True)
class FunctionCallResponse:
    type_code: ClassVar[bytes] = b"V"
    value: bytes | None

    @classmethod
    def decode(cls, r: FieldReader) -> FunctionCallResponse:
        value = r.nullable_bytes()
        r.end()
        return cls(value)

    def encode(self) -> bytes:
        return frame(self.type_code, FieldWriter().nullable_bytes(self.value).body())


@dataclass(frozen=True, slots=True)
class NegotiateProtocolVersion:
    type_code: ClassVar[bytes] = b"v"
    newest_minor: int
    unrecognized: tuple[str, ...] = ()

    @classmethod
    def decode(cls, r: FieldReader) -> NegotiateProtocolVersion:
        minor = r.int32()
        count = r.int32()
        if count < 0:
            raise ProtocolViolation(f"negative option count {count}")
        options = tuple(r.cstring() for _ in range(count))
        r.end()
        return cls(minor, options)

    def encode(self) -> bytes:
        w = FieldWriter().int32(self.newest_minor).int32(len(self.unrecognized))
        for name in self.unrecognized:
            w.cstring(name)
        return frame(self.type_code, w.body())


@dataclass(frozen=True, slots=True)
class NotificationResponse:
    type_code: ClassVar[bytes] = b"A"
    process_id: int
    channel: str
    payload: str

    @classmethod
    def decode(cls, r: FieldReader) -> NotificationResponse:
        pid = r.int32()
        channel, payload = r.cstring(), r.cstring()
        r.end()
        return cls(pid, channel, payload)

    def encode(self) -> bytes:
        body = (FieldWriter().int32(self.process_id).cstring(self.channel)
                .cstring(self.payload).body())
        return frame(self.type_code, body)


@dataclass(frozen=True, slots=True)
class ParameterDescription:
    type_code: ClassVar[bytes] = b"t"
    type_oids: tuple[int, ...]

    @classmethod
    def decode(cls, r: FieldReader) -> ParameterDescription:
        oids = tuple(r.uint32() for _ in range(r.uint16()))
        r.end()
        return cls(oids)

    def encode(self) -> bytes:
        w = FieldWriter().uint16(len(self.type_oids))
        for oid in self.type_oids:
            w.uint32(oid)
        return frame(self.type_code, w.body())


@dataclass(frozen=True, slots=True)
class ParameterStatus:
    type_code: ClassVar[bytes] = b"S"
    name: str
    value: str

    @classmethod
    def decode(cls, r: FieldReader) -> ParameterStatus:
        name, value = r.cstring(), r.cstring()
        r.end()
        return cls(name, value)

    def encode(self) -> bytes:
        return frame(self.type_code, FieldWriter().cstring(self.name).cstring(self.value).body())


@dataclass(frozen=True, slots=True)
class ReadyForQuery:
    type_code: ClassVar[bytes] = b"Z"
    status: bytes = b"I"

    def __post_init__(self) -> None:
        if self.status not in TRANSACTION_STATUSES:
            raise ProtocolViolation(f"invalid transaction status {self.status!r}")

    @classmethod
    def decode(cls, r: FieldReader) -> ReadyForQuery:
        status = r.raw(1)
        r.end()
        return cls(status)

    def encode(self) -> bytes:
        return frame(self.type_code, self.status)


@dataclass(frozen=True, slots=True)
class ColumnDescription:
    name: str
    table_oid: int
    column_number: int
    type_oid: int
    type_size: int
    type_modifier: int
    format_code: int


@dataclass(frozen=True, slots=True)
class RowDescription:
    type_code: ClassVar[bytes] = b"T"
    columns: tuple[ColumnDescription, ...]

    @classmethod
    def decode(cls, r: FieldReader) -> RowDescription:
        columns = tuple(
            ColumnDescription(r.cstring(), r.uint32(), r.int16(), r.uint32(), r.int16(),
                              r.int32(), r.int16())
            for _ in range(r.count16()))
        r.end()
        return cls(columns)

    def encode(self) -> bytes:
        w = FieldWriter().int16(len(self.columns))
        for c in self.columns:
            (w.cstring(c.name).uint32(c.table_oid).int16(c.column_number).uint32(c.type_oid)
             .int16(c.type_size).int32(c.type_modifier).int16(c.format_code))
        return frame(self.type_code, w.body())


BackendMessage = (Authentication | BackendKeyData | ParseComplete | BindComplete | CloseComplete
                  | NoData | EmptyQueryResponse | PortalSuspended | CopyDone | CommandComplete
                  | CopyData | CopyInResponse | CopyOutResponse | CopyBothResponse | DataRow
                  | ErrorResponse | NoticeResponse | FunctionCallResponse
                  | NegotiateProtocolVersion | NotificationResponse | ParameterDescription
                  | ParameterStatus | ReadyForQuery | RowDescription)

BACKEND_DECODERS: dict[int, type] = {
    cls.type_code[0]: cls
    for cls in (Authentication, BackendKeyData, ParseComplete, BindComplete, CloseComplete,
                NoData, EmptyQueryResponse, PortalSuspended, CopyDone, CommandComplete, CopyData,
                CopyInResponse, CopyOutResponse, CopyBothResponse, DataRow, ErrorResponse,
                NoticeResponse, FunctionCallResponse, NegotiateProtocolVersion,
                NotificationResponse, ParameterDescription, ParameterStatus, ReadyForQuery,
                RowDescription)
}


def decode_backend(type_byte: int, body: bytes) -> BackendMessage:
    cls = BACKEND_DECODERS.get(type_byte)
    if cls is None:
        raise ProtocolViolation(f"invalid backend message type {type_byte!r}")
    return cls.decode(FieldReader(body, cls.__name__))

