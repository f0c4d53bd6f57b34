"""Upstream and client faults: the proxy answers with proper errors, nothing
hangs, and new sessions work as soon as PostgreSQL is back (I7)."""

from __future__ import annotations

import socket
import struct
import time

import psycopg
import pytest

from proxy.localpg.cluster import LocalCluster
from proxy.wire import backend as be
from proxy.wire import frontend as fe
from tests.certs import CertFiles
from tests.harness import TEST_DB, Database, RunningProxy
from tests.rawclient import RawClient, errors


def _login(proxy: RunningProxy) -> RawClient:
    client = RawClient.connect(proxy.port, timeout=20)
    seen = client.login("app", "app-secret", TEST_DB)
    assert isinstance(seen[-1], be.ReadyForQuery), seen
    return client


def _wait_until_up(proxy: RunningProxy, db: Database, deadline: float = 30) -> None:
    end = time.monotonic() + deadline
    while True:
        try:
            with psycopg.connect(proxy.dsn(db), connect_timeout=5) as conn:
                assert conn.execute("SELECT 1").fetchone() == (1,)
                return
        except psycopg.OperationalError:
            if time.monotonic() > end:
                raise
            time.sleep(0.2)


def _ends_with_error(client: RawClient) -> list[str]:
    """Read until the proxy closes; the SQLSTATEs of the errors seen."""
    states = []
    while (msg := client.recv()) is not None:
        if isinstance(msg, be.ErrorResponse):
            states.append(msg.sqlstate)
    return states


@pytest.mark.parametrize("mode", ["fast", "immediate"])
def test_restart_with_idle_and_busy_sessions(local_cluster: LocalCluster, proxy: RunningProxy,
                                             db: Database, mode: str) -> None:
    idle = _login(proxy)
    in_tx = _login(proxy)
    assert not errors(in_tx.query("CREATE TABLE IF NOT EXISTS fault_rows (v int)"))
    assert not errors(in_tx.query("BEGIN"))
    assert not errors(in_tx.query("INSERT INTO fault_rows VALUES (1)"))
    copying = _login(proxy)
    copying.send(fe.Query("COPY fault_rows FROM STDIN"))
    assert isinstance(copying.recv(), be.CopyInResponse)
    copying.send(fe.CopyData(b"2\n"))
    local_cluster.restart(mode)
    # Every session gets an error (the server's FATAL, or 08006) and is closed.
    for client in (idle, in_tx, copying):
        client.sock.settimeout(20)
        if client is copying:
            client.send(fe.CopyDone())
        else:
            client.send(fe.Query("SELECT 1"))
        states = _ends_with_error(client)
        assert states and set(states) <= {"57P01", "08006", "57P02", "57P03"}, states
    _wait_until_up(proxy, db)
    with psycopg.connect(proxy.dsn(db)) as conn:  # nothing of the broken transaction stayed
        assert conn.execute("SELECT count(*) FROM fault_rows").fetchone() == (0,)


def test_statement_timeout_reaches_the_client(proxy: RunningProxy, db: Database) -> None:
    with psycopg.connect(proxy.dsn(db), autocommit=True) as conn:
        conn.execute("SET statement_timeout = 300")
        start = time.monotonic()
        with pytest.raises(psycopg.errors.QueryCanceled):
            conn.execute("SELECT pg_sleep(10)")
        assert time.monotonic() - start < 3
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_client_killed_mid_transaction_rolls_back(proxy: RunningProxy, db: Database) -> None:
    client = _login(proxy)
    assert not errors(client.query("CREATE TABLE IF NOT EXISTS killed_rows (v int)"))
    assert not errors(client.query("BEGIN"))
    assert not errors(client.query("INSERT INTO killed_rows VALUES (42)"))
    client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    client.close()  # RST: the process died
    deadline = time.monotonic() + 5
    with psycopg.connect(db.dsn(db.superuser, TEST_DB), autocommit=True) as admin:
        while time.monotonic() < deadline:
            open_tx = admin.execute("SELECT count(*) FROM pg_stat_activity WHERE "
                                    "datname = %s AND state LIKE 'idle in transaction%%'",
                                    (TEST_DB,)).fetchone()[0]
            if open_tx == 0:
                break
            time.sleep(0.1)
        assert open_tx == 0
        assert admin.execute("SELECT count(*) FROM killed_rows WHERE v = 42").fetchone() == (0,)


def test_client_that_never_reads_keeps_memory_bounded(proxy: RunningProxy) -> None:
    """Backpressure: a huge result to a client that does not read pauses the
    upstream instead of buffering the result in the proxy."""
    import resource

    client = _login(proxy)
    client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    client.send(fe.Query("SELECT repeat('x', 1000) FROM generate_series(1, 400000)"))
    time.sleep(3)  # ~400 MB of results waiting; the client reads nothing
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert grown_kib < 64 * 1024, f"the proxy grew by {grown_kib} KiB"
    other = _login(proxy)  # the proxy still serves others meanwhile
    assert not errors(other.query("SELECT 1"))
    other.close()
    client.close()


def test_connection_storm_and_many_idle_connections(proxy: RunningProxy, db: Database) -> None:
    """Hundreds of concurrent logins and idle connections; all served, none lost."""
    import concurrent.futures

    def one(_: int) -> int:
        with psycopg.connect(proxy.dsn(db), connect_timeout=30) as conn:
            return conn.execute("SELECT 1").fetchone()[0]

    with concurrent.futures.ThreadPoolExecutor(max_workers=40) as pool:
        assert sum(pool.map(one, range(200))) == 200
    import resource

    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    count = max(100, min(1000, (soft - 300) // 2))  # both ends live in this process
    idle = [socket.create_connection(("127.0.0.1", proxy.port)) for _ in range(count)]
    try:
        for s in idle[:10]:
            s.sendall(fe.SSLRequest().encode())
            assert s.recv(1) in (b"S", b"N")
        deadline = time.monotonic() + 5
        while proxy.server.sessions < count and time.monotonic() < deadline:
            time.sleep(0.05)
        assert proxy.server.sessions >= count
        assert one(0) == 1
    finally:
        for s in idle:
            s.close()


def test_upstream_sockets_detect_a_silent_peer(db: Database, certs: CertFiles) -> None:
    """Keepalives and TCP_USER_TIMEOUT are set on upstream sockets, so a dead host
    or dropped route ends the session with 08006 instead of hanging it."""
    from dataclasses import replace

    from tests.harness import proxy_settings, running_proxy

    settings = proxy_settings(db, certs)
    settings = replace(settings, upstream=replace(settings.upstream, keepalives_idle=7,
                                                  tcp_user_timeout=4000))
    with running_proxy(settings) as proxy:
        client = _login(proxy)
        (session,) = proxy.server._sessions.values()
        assert session.upstream is not None
        sock = session.upstream.writer.get_extra_info("socket")
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 7
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) == 4000
        client.close()
