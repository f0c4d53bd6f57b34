"""One client connection: startup, authentication, upstream, then the relay."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Callable
from dataclasses import dataclass

from proxy.auth.scram import MECHANISM, ScramServer
from proxy.config.settings import Settings
from proxy.errors import (
    AdminShutdown,
    CannotConnect,
    ConnectionFailure,
    InvalidAuthorization,
    PgError,
    ProtocolViolation,
)
from proxy.observability.metrics import METRICS, Metrics
from proxy.server.cancel import CancelKey, CancelRegistry
from proxy.server.pump import Pump
from proxy.server.streams import (
    READ_SIZE,
    MessageStream,
    stream_eof,
    take_buffered,
    unread_bytes,
)
from proxy.server.upstream import (
    UpstreamConnection,
    UpstreamError,
    cancel_upstream,
    open_upstream,
)
from proxy.session.hooks import PassThrough, StatementHook
from proxy.session.relay import Relay, check_server_parameter
from proxy.wire import backend as be
from proxy.wire.fields import FieldReader
from proxy.wire.framing import MessageFramer, StartupFramer
from proxy.wire.frontend import (
    CancelRequest,
    GSSENCRequest,
    PasswordMessage,
    SASLInitialResponse,
    SSLRequest,
    StartupMessage,
    decode_startup,
)

log = logging.getLogger("tenant_proxy.session")

#: Startup parameters the proxy decides itself instead of forwarding.
_NOT_FORWARDED = {"user", "database", "replication"}
#: Largest message a client may send before it is authenticated (PostgreSQL's
#: PG_MAX_AUTH_TOKEN_LENGTH): a connection that has not logged in holds at most
#: this, not ``limits.max_message_size``.
MAX_AUTH_MESSAGE = 65535


def forwarded_startup(params: dict[str, str]) -> dict[str, str]:
    """The client's startup parameters the upstream may see (names in any case:
    PostgreSQL reads settings case-insensitively)."""
    return {k: v for k, v in params.items()
            if k.lower() not in _NOT_FORWARDED and not k.startswith("_pq_.")}


def replication_requested(params: dict[str, str]) -> bool:
    value = next((v for k, v in params.items() if k.lower() == "replication"), "false")
    return value.lower() not in ("false", "off", "no", "0")


HookFactory = Callable[[str, dict[str, str]], tuple[StatementHook, dict[str, str]]]


def pass_through(role: str, params: dict[str, str]) -> tuple[StatementHook, dict[str, str]]:
    return PassThrough(), params


@dataclass
class ServerState:
    """What sessions share: settings, the cancel registry, and the factory that
    gives each login its statement hook and upstream startup parameters."""

    settings: Settings
    cancels: CancelRegistry
    client_tls: ssl.SSLContext | None
    hook_factory: HookFactory = pass_through
    metrics: Metrics = METRICS
    draining: bool = False


class Session:
    def __init__(self, state: ServerState, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter) -> None:
        self.state = state
        self.limits = state.settings.limits
        self.reader = reader
        self.writer = writer
        self.tls = False
        self.user = ""
        self.upstream: UpstreamConnection | None = None
        self.cancel_key: CancelKey | None = None
        self.relay: Relay | None = None
        self.pumped = False
        self.hook: StatementHook = PassThrough()
        self.upstream_dead = False
        self._bytes_in = state.metrics.bytes.labels("client_to_server")
        self._bytes_out = state.metrics.bytes.labels("server_to_client")
        peer = writer.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)

    async def run(self) -> None:
        metrics = self.state.metrics
        metrics.client_connections.inc()
        try:
            try:
                async with asyncio.timeout(self.limits.login_timeout):
                    startup = await self._startup()
                    if startup is None:
                        return
                    leftover = await self._login(startup)
            except TimeoutError:
                await self._fail(ProtocolViolation(
                    f"login timeout expired ({self.limits.login_timeout:g} s)"))
                return
            await self._relay(leftover)
        except PgError as exc:
            if isinstance(exc, (ConnectionFailure, CannotConnect, UpstreamError)):
                metrics.upstream_errors.labels(exc.sqlstate).inc()
            await self._fail(exc)
        except (ConnectionError, ssl.SSLError, OSError) as exc:
            log.info("client %s disconnected: %s", self.peer, exc)
        finally:
            await self._close()
            metrics.client_connections.dec()

    # --- startup ------------------------------------------------------------

    async def _startup(self) -> StartupMessage | None:
        """Read startup packets until a StartupMessage (None: nothing more to do)."""
        framer = StartupFramer(self.limits.max_startup_packet)
        while True:
            body = framer.next_packet()
            if body is None:
                data = await self.reader.read(READ_SIZE)
                if not data:
                    return None
                framer.feed(data)
                continue
            packet = decode_startup(body, max_parameters=self.limits.max_startup_parameters)
            if isinstance(packet, CancelRequest):
                await self._cancel(packet)
                return None
            if isinstance(packet, GSSENCRequest):
                self.writer.write(b"N")
                continue
            if isinstance(packet, SSLRequest):
                await self._ssl_request(framer)
                continue
            if framer.buffered:
                raise ProtocolViolation("unexpected data after the startup packet")
            return packet

    async def _ssl_request(self, framer: StartupFramer) -> None:
        ctx = self.state.client_tls
        if self.tls:
            raise ProtocolViolation("SSLRequest received on an encrypted connection")
        if ctx is None:
            self.writer.write(b"N")
            return
        if framer.buffered or unread_bytes(self.reader):
            raise ProtocolViolation("received unencrypted data after SSL request",
                                    hint="This could be either a client-software bug or "
                                         "evidence of an attempted man-in-the-middle attack.")
        self.writer.write(b"S")
        await self.writer.drain()
        await self.writer.start_tls(ctx)
        self.tls = True

    async def _cancel(self, packet: CancelRequest) -> None:
        result = await self.state.cancels.cancel(packet.process_id, packet.secret_key)
        self.state.metrics.cancel_requests.labels(result).inc()
        if result == "unknown":
            log.info("cancel request from %s for unknown backend %d", self.peer,
                     packet.process_id)

    # --- authentication and upstream ----------------------------------------

    async def _login(self, startup: StartupMessage) -> bytes:
        settings = self.state.settings
        params = startup.parameters
        self.user = params.get("user", "")
        if not self.user:
            raise InvalidAuthorization("no PostgreSQL user name specified in startup packet")
        if settings.tls.mode == "require" and not self.tls:
            raise InvalidAuthorization(
                f'connection for user "{self.user}" requires SSL encryption',
                hint="Connect with sslmode=require.")
        if replication_requested(params):
            raise InvalidAuthorization("replication connections are not supported by the proxy")
        if self.state.draining:
            raise AdminShutdown("the proxy is shutting down")
        unknown = [k for k in params if k.startswith("_pq_.")]
        if startup.minor > 0 or unknown:
            self.writer.write(be.NegotiateProtocolVersion(0, tuple(unknown)).encode())
        stream = MessageStream(self.reader, MessageFramer(
            min(self.limits.max_message_size, MAX_AUTH_MESSAGE), "client"))
        await self._authenticate(stream)
        self.hook, upstream_params = self.state.hook_factory(self.user,
                                                             forwarded_startup(params))
        await self.hook.warm()
        up = settings.upstream
        upstream_params["user"] = up.role_for(self.user)
        upstream_params["database"] = up.database or params.get("database") or self.user
        self.upstream = await open_upstream(up, upstream_params,
                                            timeout=self.limits.upstream_connect_timeout,
                                            max_message_size=self.limits.max_message_size)
        self.state.metrics.upstream_connections.inc()
        if self.hook.scoped:
            for raw in self.upstream.parameter_status:
                status = be.ParameterStatus.decode(FieldReader(raw[5:], "S"))
                check_server_parameter(status)
                if status.name == "TimeZone" and self.hook.results is not None:
                    self.hook.results.timezone = status.value
        self.cancel_key = self.state.cancels.register(self._cancel_upstream)
        self.writer.write(b"".join([
            be.Authentication(be.AUTH_OK).encode(),
            *self.upstream.parameter_status,
            be.BackendKeyData(self.cancel_key.process_id, self.cancel_key.secret_key).encode(),
            be.ReadyForQuery(self.upstream.status).encode(),
        ]))
        await self.writer.drain()
        log.info("session started: client=%s user=%s tls=%s", self.peer, self.user, self.tls)
        return stream.leftover()

    async def _authenticate(self, stream: MessageStream) -> None:
        auth = self.state.settings.auth
        if auth.method == "trust":
            return
        server = ScramServer(self.user, auth.users.get(self.user))
        self.writer.write(be.Authentication.sasl([MECHANISM]).encode())
        initial = SASLInitialResponse.parse(await self._password_message(stream))
        first = server.first(initial.mechanism, initial.data or b"")
        self.writer.write(be.Authentication(be.AUTH_SASL_CONTINUE, first).encode())
        final = server.final(await self._password_message(stream))
        self.writer.write(be.Authentication(be.AUTH_SASL_FINAL, final).encode())

    async def _password_message(self, stream: MessageStream) -> bytes:
        await self.writer.drain()
        msg = await stream.recv()
        if msg is None:
            raise ConnectionResetError("client closed the connection during authentication")
        kind, body = msg
        if kind != PasswordMessage.type_code[0]:
            raise ProtocolViolation(
                f"expected password response, got message type {bytes((kind,))!r}")
        return PasswordMessage.decode(FieldReader(body, "PasswordMessage")).payload

    async def _cancel_upstream(self) -> bool:
        if self.upstream is None:
            return False
        return await cancel_upstream(self.state.settings.upstream, self.upstream.process_id,
                                     self.upstream.secret_key,
                                     self.state.settings.limits.upstream_connect_timeout)

    # --- relay --------------------------------------------------------------

    async def _relay(self, leftover: bytes) -> None:
        assert self.upstream is not None
        metrics = self.state.metrics
        relay = self.relay = Relay(max_message_size=self.limits.max_message_size,
                                   hook=self.hook,
                                   on_ready=metrics.statement_seconds.observe)
        relay.status = self.upstream.status
        client_eof = stream_eof(self.reader)
        upstream_eof = stream_eof(self.upstream.reader)
        pump = Pump(relay, self.writer.transport, self.upstream.writer.transport,  # type: ignore[arg-type]
                    self._bytes_in.inc, self._bytes_out.inc)
        self.pumped = True
        pump.start(leftover + take_buffered(self.reader),
                   self.upstream.leftover + take_buffered(self.upstream.reader))
        if upstream_eof:
            pump.on_upstream_closed()
        if client_eof:
            pump.on_client_closed()
        error = await pump.done
        if isinstance(error, ConnectionFailure):
            self.upstream_dead = True
        if error is not None:
            raise error

    # --- teardown -----------------------------------------------------------

    def close_if_idle(self) -> None:
        """During a drain: end the session if no transaction or query is open."""
        relay = self.relay
        if relay is None or relay.busy or relay.status != b"I" or self.writer.is_closing():
            return
        error = AdminShutdown("terminating connection: tenant-proxy is shutting down",
                              hint="Reconnect; another proxy instance will serve you.")
        with contextlib.suppress(ConnectionError, OSError, RuntimeError):
            self.writer.write(be.ErrorResponse(error.fields()).encode())
            self.writer.close()

    async def _fail(self, error: PgError) -> None:
        if error.sqlstate not in ("28P01", "28000"):
            log.info("session %s: %s %s", self.peer, error.sqlstate, error.message)
        else:
            log.warning("authentication failed for user %r from %s: %s", self.user,
                        self.peer, error.message)
        fields = error.fields()
        if not error.fatal and fields.get("S") != "FATAL":
            fields = {**fields, "S": "FATAL", "V": "FATAL"}
        with contextlib.suppress(ConnectionError, OSError, RuntimeError):
            self.writer.write(be.ErrorResponse(fields).encode())
            await self.writer.drain()

    async def _close(self) -> None:
        if self.relay is not None and self.relay.busy and not self.upstream_dead:
            log.info("client %s left mid-query; cancelling its upstream query", self.peer)
            await self._cancel_upstream()
        if self.cancel_key is not None:
            self.state.cancels.unregister(self.cancel_key)
        if self.upstream is not None:
            self.state.metrics.upstream_connections.dec()
            up = self.upstream.writer
            with contextlib.suppress(ConnectionError, OSError, RuntimeError):
                if not up.is_closing():
                    up.write(b"X\x00\x00\x00\x04")
                up.close()
        with contextlib.suppress(ConnectionError, OSError, RuntimeError, TimeoutError):
            self.writer.close()
            if not self.pumped:  # the pump's protocol, not the stream's, sees the close
                await asyncio.wait_for(self.writer.wait_closed(), 1.0)
