"""Startup negotiation, refusals and hostile input against the running proxy (I5, I7)."""

from __future__ import annotations

import asyncio
import socket
import struct
import time
from dataclasses import replace

import psycopg
import pytest

from proxy.config.settings import Limits
from proxy.errors import Refused
from proxy.session.hooks import PassThrough
from proxy.wire import backend as be
from proxy.wire import frontend as fe
from tests.certs import CertFiles
from tests.harness import TEST_DB, Database, RunningProxy, proxy_settings, running_proxy
from tests.rawclient import RawClient, errors


def _login(proxy: RunningProxy, **params: str) -> RawClient:
    client = RawClient.connect(proxy.port)
    seen = client.login("app", "app-secret", TEST_DB, **params)
    assert isinstance(seen[-1], be.ReadyForQuery), seen
    return client


def _closed_with(client: RawClient, sqlstate: str) -> be.ErrorResponse:
    msgs = []
    while (msg := client.recv()) is not None:
        msgs.append(msg)
    errs = errors(msgs)
    assert errs and errs[-1].sqlstate == sqlstate, msgs
    assert errs[-1].fields["S"] == "FATAL"
    return errs[-1]


def test_startup_sends_proxy_backend_key_and_parameters(proxy: RunningProxy) -> None:
    client = RawClient.connect(proxy.port)
    seen = client.login("app", "app-secret", TEST_DB, application_name="raw-test")
    names = {m.name: m.value for m in seen if isinstance(m, be.ParameterStatus)}
    assert names["application_name"] == "raw-test"
    assert "server_version" in names and names["client_encoding"] == "UTF8"
    (key,) = [m for m in seen if isinstance(m, be.BackendKeyData)]
    pid = client.query("SELECT pg_backend_pid()")
    real_pid = int(next(m for m in pid if isinstance(m, be.DataRow)).values[0])
    assert key.process_id != real_pid  # the client never sees the upstream's key
    client.close()


def test_newer_minor_version_and_pq_options_are_negotiated(proxy: RunningProxy) -> None:
    client = RawClient.connect(proxy.port)
    seen = client.login("app", "app-secret", TEST_DB, protocol=(3 << 16) | 2,
                        **{"_pq_.compression": "on"})
    assert seen[0] == be.NegotiateProtocolVersion(0, ("_pq_.compression",))
    assert isinstance(seen[-1], be.ReadyForQuery)
    rows = client.query("SELECT 'negotiated'")
    assert any(isinstance(m, be.DataRow) and m.values == (b"negotiated",) for m in rows)
    client.close()


def test_gssenc_declined_then_startup_works(proxy: RunningProxy) -> None:
    client = RawClient.connect(proxy.port)
    client.send(fe.GSSENCRequest())
    assert client.sock.recv(1) == b"N"
    assert isinstance(client.login("app", "app-secret", TEST_DB)[-1], be.ReadyForQuery)
    client.close()


@pytest.mark.parametrize("garbage", [
    b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
    struct.pack("!i", 3),
    struct.pack("!i", -5) + b"xxxx",
    struct.pack("!i", 1_000_000),
    struct.pack("!ii", 8, 1234),
])
def test_garbage_before_startup_is_refused(proxy: RunningProxy, garbage: bytes) -> None:
    other = _login(proxy)
    client = RawClient.connect(proxy.port)
    client.send_raw(garbage)
    _closed_with(client, "08P01")
    assert isinstance(other.query("SELECT 1")[-1], be.ReadyForQuery)  # others unaffected
    other.close()


def test_too_many_startup_parameters(proxy: RunningProxy) -> None:
    client = RawClient.connect(proxy.port)
    params = {f"p{i}": "x" for i in range(proxy.settings.limits.max_startup_parameters + 1)}
    client.send(fe.StartupMessage({"user": "app", **params}))
    err = _closed_with(client, "08P01")
    assert "more than" in err.message


@pytest.mark.parametrize("wire,reason", [
    (b"Q" + struct.pack("!i", 2**31 - 1), "exceeds the limit"),
    (b"Q" + struct.pack("!i", -10), "invalid message length"),
    (b"\x07" + struct.pack("!i", 4), "invalid frontend message type"),
    (fe.PasswordMessage(b"late").encode(), "invalid frontend message type"),
])
def test_bad_messages_after_login_close_only_that_client(proxy: RunningProxy, wire: bytes,
                                                         reason: str) -> None:
    other = _login(proxy)
    client = _login(proxy)
    client.send_raw(wire)
    assert reason in _closed_with(client, "08P01").message
    assert isinstance(other.query("SELECT 2")[-1], be.ReadyForQuery)
    other.close()


def test_function_call_refused_and_session_usable(proxy: RunningProxy) -> None:
    client = _login(proxy)
    client.send(fe.FunctionCall(1299, (), (), 0))  # now()
    msgs = client.recv_until_ready()
    (err,) = errors(msgs)
    assert err.sqlstate == "0A000" and "fastpath" in err.message
    assert msgs[-1] == be.ReadyForQuery(b"I")
    assert any(isinstance(m, be.DataRow) for m in client.query("SELECT 1"))
    client.close()


def test_login_timeout(db: Database, certs: CertFiles) -> None:
    settings = proxy_settings(db, certs, limits=Limits(login_timeout=0.5))
    with running_proxy(settings) as proxy:
        client = RawClient.connect(proxy.port)
        start = time.monotonic()
        err = _closed_with(client, "08P01")
        assert "login timeout" in err.message
        assert time.monotonic() - start < 3
        # A slowloris that sends half a startup packet is cut off too.
        slow = RawClient.connect(proxy.port)
        slow.send_raw(fe.StartupMessage({"user": "app"}).encode()[:6])
        _closed_with(slow, "08P01")


def test_ssl_request_followed_by_plaintext_is_refused(proxy: RunningProxy) -> None:
    """Bytes sent after SSLRequest but before the handshake are never read as
    protocol messages (CVE-2021-3935 class)."""
    client = RawClient.connect(proxy.port)
    client.send_raw(fe.SSLRequest().encode() + fe.StartupMessage({"user": "app"}).encode())
    assert "unencrypted data after SSL request" in _closed_with(client, "08P01").message


def test_tls_required_refuses_plaintext(db: Database, certs: CertFiles) -> None:
    settings = proxy_settings(db, certs)
    settings = replace(settings, tls=replace(settings.tls, mode="require"))
    with running_proxy(settings) as proxy:
        with pytest.raises(psycopg.OperationalError, match="requires SSL"):
            psycopg.connect(proxy.dsn(db, sslmode="disable"))
        with psycopg.connect(proxy.dsn(db, sslmode="require")) as conn:
            assert conn.pgconn.ssl_in_use


def test_client_certificate_verification(db: Database, certs: CertFiles) -> None:
    settings = proxy_settings(db, certs)
    settings = replace(settings, tls=replace(settings.tls, mode="require",
                                             client_ca=str(certs.ca)))
    with running_proxy(settings) as proxy:
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(proxy.dsn(db, sslmode="require"))
        dsn = proxy.dsn(db, sslmode="require", sslcert=str(certs.client_cert),
                        sslkey=str(certs.client_key))
        with psycopg.connect(dsn) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)


def test_refusal_behaves_like_a_server_error(db: Database, certs: CertFiles) -> None:
    """A refused statement aborts the transaction exactly as a server error would."""

    class NoDrop(PassThrough):
        inspects = True

        def query(self, sql: str) -> str | None:
            if "drop" in sql.lower():
                raise Refused("DROP is refused by tenant-proxy", hint="Use a migration role.")
            return None

        def parse(self, message: fe.Parse) -> fe.Parse | None:
            self.query(message.sql)
            return None

    with running_proxy(proxy_settings(db, certs)) as proxy:
        proxy.server.state.hook_factory = lambda role, params: (NoDrop(), params)
        with psycopg.connect(proxy.dsn(db)) as conn:
            conn.execute("CREATE TEMP TABLE keep (x int)")
            conn.commit()
            conn.execute("INSERT INTO keep VALUES (1)")
            with pytest.raises(psycopg.errors.InsufficientPrivilege) as info:
                conn.execute("DROP TABLE keep")
            assert info.value.diag.message_hint == "Use a migration role."
            assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INERROR
            conn.rollback()
            assert conn.execute("SELECT count(*) FROM keep").fetchone() == (0,)
            conn.rollback()
            # Extended protocol, pipelined: the refusal lands between its neighbours.
            conn.autocommit = True
            with pytest.raises(psycopg.errors.InsufficientPrivilege), conn.pipeline():
                first = conn.execute("SELECT %s::int", (1,))
                conn.execute("DROP TABLE IF EXISTS keep WHERE %s", (1,))
            assert first.fetchone() == (1,)
            assert conn.execute("SELECT 2").fetchone() == (2,)


def test_client_vanishing_mid_query_cancels_upstream(proxy: RunningProxy, db: Database) -> None:
    client = _login(proxy, application_name="vanishing-client")
    client.send(fe.Query("SELECT pg_sleep(60)"))
    time.sleep(0.3)
    client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    client.close()  # RST, as when a client process is killed
    deadline = time.monotonic() + 5
    with psycopg.connect(db.dsn(db.superuser, "postgres")) as admin:
        while time.monotonic() < deadline:
            active = admin.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = "
                "'vanishing-client' AND state = 'active'").fetchone()[0]
            if active == 0:
                break
            time.sleep(0.1)
    assert active == 0


def test_upstream_refusing_connections(db: Database, certs: CertFiles) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead_port = s.getsockname()[1]
    settings = proxy_settings(db, certs)
    settings = replace(settings, upstream=replace(settings.upstream, port=dead_port))
    with running_proxy(settings) as proxy:
        client = RawClient.connect(proxy.port)
        (err,) = errors(client.login("app", "app-secret", TEST_DB))
        assert err.sqlstate == "08001" and err.fields["S"] == "FATAL"
        assert "could not connect to upstream" in err.message
        with pytest.raises(psycopg.OperationalError, match="could not connect to upstream"):
            psycopg.connect(proxy.dsn(db))


class CuttableForwarder:
    """A TCP hop between proxy and PostgreSQL whose connections can be cut,
    to make the upstream vanish as a dead host or network would."""

    def __init__(self, target_port: int) -> None:
        self.target = target_port
        self.writers: list[asyncio.StreamWriter] = []
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[1]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target)
        self.writers += [writer, up_writer]

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            while data := await src.read(65536):
                dst.write(data)
            dst.close()

        await asyncio.gather(pump(reader, up_writer), pump(up_reader, writer),
                             return_exceptions=True)

    async def cut(self) -> None:
        for w in self.writers:
            w.transport.abort()


def test_upstream_dying_mid_session_gives_08006(db: Database, certs: CertFiles) -> None:
    settings = proxy_settings(db, certs)
    with running_proxy(settings) as proxy:
        forwarder = CuttableForwarder(db.port)
        port = proxy.call(forwarder.start())
        proxy.server.state.settings = replace(
            settings, upstream=replace(settings.upstream, port=port))
        client = _login(proxy)
        bystander = RawClient.connect(proxy.port)
        assert isinstance(bystander.login("app", "app-secret", TEST_DB)[-1], be.ReadyForQuery)
        client.send(fe.Query("SELECT pg_sleep(5)"))
        time.sleep(0.3)
        proxy.call(forwarder.cut())
        err = _closed_with(client, "08006")
        assert "server closed the connection unexpectedly" in err.message
        bystander.close()


def test_terminated_backend_error_is_forwarded(proxy: RunningProxy, db: Database) -> None:
    client = _login(proxy, application_name="to-be-terminated")
    with psycopg.connect(db.dsn(db.superuser, "postgres"), autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                      "WHERE application_name = 'to-be-terminated'")
    _closed_with(client, "57P01")


def test_client_connection_limit(db: Database, certs: CertFiles) -> None:
    settings = proxy_settings(db, certs, limits=Limits(max_client_connections=2))
    with running_proxy(settings) as proxy:
        held = [_login(proxy), _login(proxy)]
        extra = RawClient.connect(proxy.port)
        assert "too many clients" in _closed_with(extra, "53300").message
        for c in held:
            c.close()


def test_terminate_closes_quietly(proxy: RunningProxy) -> None:
    """After Terminate the upstream closes too; the client must not get an error
    for that, however the two closes race (node-postgres raises on one)."""
    for _ in range(40):
        client = _login(proxy)
        client.send(fe.Terminate())
        leftovers = []
        while (msg := client.recv()) is not None:
            leftovers.append(msg)
        assert leftovers == []
        client.close()
