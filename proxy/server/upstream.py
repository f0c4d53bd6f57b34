"""Opening and authenticating the upstream PostgreSQL connection."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from dataclasses import dataclass, field

from proxy.auth.scram import MECHANISM, ScramClient, md5_password
from proxy.config.settings import UpstreamSettings
from proxy.errors import CannotConnect, ConnectionFailure, InvalidAuthorization, PgError
from proxy.server.streams import MessageStream
from proxy.server.tls import upstream_context
from proxy.wire import backend as be
from proxy.wire.fields import FieldReader
from proxy.wire.framing import MessageFramer
from proxy.wire.frontend import (
    CancelRequest,
    PasswordMessage,
    SASLInitialResponse,
    SSLRequest,
    StartupMessage,
)


class UpstreamError(PgError):
    """An ErrorResponse the upstream sent during startup, passed on verbatim."""

    def __init__(self, fields: dict[str, str]) -> None:
        super().__init__(fields.get("M", "upstream error"))
        self.upstream_fields = fields
        self.sqlstate = fields.get("C", "08006")
        self.severity = fields.get("S", "FATAL")

    def fields(self) -> dict[str, str]:
        return self.upstream_fields


@dataclass
class UpstreamConnection:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    process_id: int = 0
    secret_key: int = 0
    #: ParameterStatus frames, raw, to replay to the client.
    parameter_status: list[bytes] = field(default_factory=list)
    status: bytes = b"I"
    leftover: bytes = b""


def _tune_socket(sock: socket.socket | None, settings: UpstreamSettings) -> None:
    """Keepalives and a user timeout, so a peer that vanished without a FIN or RST
    (a dead host, a dropped route) is noticed instead of hanging the session."""
    if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for name, value in (("TCP_KEEPIDLE", settings.keepalives_idle),
                        ("TCP_KEEPINTVL", settings.keepalives_interval),
                        ("TCP_KEEPCNT", settings.keepalives_count),
                        ("TCP_USER_TIMEOUT", settings.tcp_user_timeout)):
        option = getattr(socket, name, None)
        if option is not None:  # Linux; other systems keep their defaults
            sock.setsockopt(socket.IPPROTO_TCP, option, value)


async def _open_socket(settings: UpstreamSettings) -> tuple[asyncio.StreamReader,
                                                             asyncio.StreamWriter]:
    """TCP connect, then SSLRequest negotiation as ``sslmode`` asks."""
    try:
        reader, writer = await asyncio.open_connection(settings.host, settings.port)
    except OSError as exc:
        raise CannotConnect(
            f"could not connect to upstream server at {settings.host}:{settings.port}: "
            f"{exc.strerror or exc}", hint="Is PostgreSQL running and accepting TCP connections?"
        ) from exc
    _tune_socket(writer.get_extra_info("socket"), settings)
    ctx = upstream_context(settings.sslmode, settings.sslrootcert)
    if ctx is None:
        return reader, writer
    writer.write(SSLRequest().encode())
    await writer.drain()
    answer = await reader.read(1)
    if answer == b"S":
        try:
            await writer.start_tls(ctx, server_hostname=settings.host
                                   if settings.sslmode == "verify-full" else None)
        except (OSError, ValueError) as exc:
            writer.close()
            raise CannotConnect(f"TLS handshake with upstream failed: {exc}") from exc
        return reader, writer
    if answer == b"N" and settings.sslmode == "prefer":
        return reader, writer
    writer.close()
    raise CannotConnect(f"upstream server does not support SSL, but sslmode is {settings.sslmode}")


async def _startup_message(stream: MessageStream, phase: str) -> tuple[int, bytes]:
    """The next message before ReadyForQuery; an upstream error ends the login."""
    msg = await stream.recv()
    if msg is None:
        raise ConnectionFailure(f"upstream closed the connection during {phase}")
    kind, body = msg
    if kind == be.ErrorResponse.type_code[0]:
        raise UpstreamError(be.ErrorResponse.decode(FieldReader(body, "ErrorResponse")).fields)
    return kind, body


async def _authenticate(stream: MessageStream, writer: asyncio.StreamWriter, user: str,
                        password: str | None) -> None:
    scram: ScramClient | None = None
    while True:
        kind, body = await _startup_message(stream, "authentication")
        if kind != be.Authentication.type_code[0]:
            raise ConnectionFailure(f"unexpected message {bytes((kind,))!r} from upstream "
                                    "during authentication")
        auth = be.Authentication.decode(FieldReader(body, "Authentication"))
        if auth.code == be.AUTH_OK:
            return
        if auth.code in (be.AUTH_CLEARTEXT, be.AUTH_MD5, be.AUTH_SASL) and password is None:
            raise InvalidAuthorization(
                f'upstream asks for a password for user "{user}" and none is configured',
                hint="Set upstream.password or upstream.passwords in the proxy settings.")
        secret = password or ""
        if auth.code == be.AUTH_CLEARTEXT:
            reply = PasswordMessage(secret.encode() + b"\0").encode()
        elif auth.code == be.AUTH_MD5:
            reply = PasswordMessage(md5_password(user, secret, auth.data) + b"\0").encode()
        elif auth.code == be.AUTH_SASL:
            if MECHANISM not in auth.mechanisms:
                raise InvalidAuthorization(
                    f"upstream offers SASL mechanisms {auth.mechanisms}, none supported")
            scram = ScramClient(secret)
            reply = SASLInitialResponse(MECHANISM, scram.first()).encode()
        elif auth.code == be.AUTH_SASL_CONTINUE and scram is not None:
            reply = PasswordMessage(scram.final(auth.data)).encode()
        elif auth.code == be.AUTH_SASL_FINAL and scram is not None:
            scram.verify(auth.data)
            continue
        else:
            raise InvalidAuthorization(
                f"upstream requested an unsupported authentication method (code {auth.code})")
        writer.write(reply)
        await writer.drain()


async def open_upstream(settings: UpstreamSettings, params: dict[str, str], *,
                        timeout: float, max_message_size: int) -> UpstreamConnection:
    """Connect, authenticate as ``params['user']`` and read up to the first
    ReadyForQuery. Errors are PgErrors ready to show the client."""
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await _open_socket(settings)
            try:
                return await _start(reader, writer, settings, params, max_message_size)
            except BaseException:
                writer.close()
                raise
    except TimeoutError as exc:
        raise CannotConnect(f"timeout expired connecting to upstream server at "
                            f"{settings.host}:{settings.port} ({timeout:g} s)") from exc
    except (ConnectionError, OSError) as exc:
        raise ConnectionFailure(f"upstream connection failed during startup: {exc}") from exc


async def _start(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 settings: UpstreamSettings, params: dict[str, str],
                 max_message_size: int) -> UpstreamConnection:
    writer.write(StartupMessage(params).encode())
    await writer.drain()
    stream = MessageStream(reader, MessageFramer(max_message_size, "server"))
    user = params["user"]
    await _authenticate(stream, writer, user, settings.password_for(user))
    conn = UpstreamConnection(reader, writer)
    while True:
        kind, body = await _startup_message(stream, "startup")
        if kind == be.ParameterStatus.type_code[0]:
            conn.parameter_status.append(be.ParameterStatus.decode(
                FieldReader(body, "ParameterStatus")).encode())
        elif kind == be.BackendKeyData.type_code[0]:
            key = be.BackendKeyData.decode(FieldReader(body, "BackendKeyData"))
            conn.process_id, conn.secret_key = key.process_id, key.secret_key
        elif kind == be.ReadyForQuery.type_code[0]:
            conn.status = be.ReadyForQuery.decode(FieldReader(body, "ReadyForQuery")).status
            conn.leftover = stream.leftover()
            return conn
        elif kind != be.NoticeResponse.type_code[0]:
            raise ConnectionFailure(f"unexpected message {bytes((kind,))!r} from upstream "
                                    "during startup")


async def cancel_upstream(settings: UpstreamSettings, process_id: int, secret_key: int,
                          timeout: float) -> bool:
    """Send a CancelRequest for an upstream backend; True if it was delivered."""
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await _open_socket(settings)
            writer.write(CancelRequest(process_id, secret_key).encode())
            await writer.drain()
            await reader.read(1)  # the server closes the connection when done
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            return True
    except (TimeoutError, OSError, PgError):
        return False
