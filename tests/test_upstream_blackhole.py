"""An upstream that stops answering at the TCP level (I7): packets between the
proxy and PostgreSQL are really dropped, with no FIN or RST, so only the upstream
sockets' keepalives and TCP_USER_TIMEOUT can notice.

PostgreSQL stays where the suite started it; a forwarder listens inside a network
namespace, reached over a veth pair, and relays to it. Policy-routing rules in
that namespace blackhole chosen connections (by the proxy's source port), in both
directions, silently: the rest of the machine, its loopback included, is
untouched, and other connections through the same veth keep working. This needs
root and ``ip`` (iproute2), nothing else.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import ctypes
import ipaddress
import os
import secrets
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace

import psycopg
import pytest

from proxy.wire import backend as be
from proxy.wire import frontend as fe
from tests.certs import CertFiles
from tests.harness import (
    TEST_DB,
    Database,
    ProxyErrors,
    RunningProxy,
    proxy_settings,
    running_proxy,
)
from tests.rawclient import RawClient

CLONE_NEWNET = 0x40000000
#: Keepalive after 1 s idle, then every second; TCP_USER_TIMEOUT 2 s. A dead
#: upstream is noticed in about 2-4 s, so the whole test takes about 10 s.
KEEPALIVE = {"keepalives_idle": 1, "keepalives_interval": 1, "keepalives_count": 2,
             "tcp_user_timeout": 2000}
#: Each blackholed session must have its error well before this (seconds).
DEADLINE = 15.0


def _run(*cmd: str) -> None:
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"`{' '.join(cmd)}` failed: {done.stderr.strip()}")


def _shut(sock: socket.socket) -> None:
    """Shut down both directions, which also wakes a thread blocked on the socket."""
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


def _setns(fd: int) -> None:
    """Move the calling thread (only) into the network namespace open at ``fd``."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


@dataclass
class Netns:
    """A network namespace joined to this one by a veth pair (a /30 from the
    198.18.0.0/15 benchmarking range); ``inside`` is the namespace's address."""

    name: str
    outside_if: str
    inside: str

    def ip(self, *args: str) -> None:
        _run("ip", "-n", self.name, *args)

    def listen(self) -> socket.socket:
        """A listening socket in the namespace: this thread enters it just long
        enough to create the socket, which stays bound to it."""
        home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        target = os.open(f"/run/netns/{self.name}", os.O_RDONLY)
        try:
            _setns(target)
            try:
                return socket.create_server((self.inside, 0))
            finally:
                _setns(home)
        finally:
            os.close(home)
            os.close(target)

    def blackhole(self, port: int) -> None:
        """Drop, silently, every packet from or to the proxy's ``port``. Rules at
        pref 10 run before the ``local`` table (moved to pref 100 at setup), so
        incoming packets are dropped too, not only the namespace's answers; with
        forwarding on the veth a blackhole route sends no ICMP error back."""
        self.ip("rule", "add", "pref", "10", "ipproto", "tcp", "sport", str(port), "blackhole")
        self.ip("rule", "add", "pref", "10", "ipproto", "tcp", "dport", str(port), "blackhole")


@pytest.fixture
def netns() -> Iterator[Netns]:
    tag = secrets.token_hex(3)
    name, outside_if, inside_if = f"tpbh-{tag}", f"tpbh{tag}a", f"tpbh{tag}b"
    net = ipaddress.ip_network("198.18.0.0/15")
    subnet = ipaddress.ip_network(f"{net[secrets.randbelow(net.num_addresses // 4) * 4]}/30")
    outside, inside = str(subnet[1]), str(subnet[2])
    try:
        _run("ip", "netns", "add", name)
    except (RuntimeError, OSError) as exc:
        pytest.fail(f"cannot create a network namespace (needs root and iproute2): {exc}",
                    pytrace=False)
    ns = Netns(name, outside_if, inside)
    try:
        _run("ip", "link", "add", outside_if, "type", "veth", "peer", "name", inside_if,
             "netns", name)
        _run("ip", "addr", "add", f"{outside}/30", "dev", outside_if)
        _run("ip", "link", "set", outside_if, "up")
        ns.ip("addr", "add", f"{inside}/30", "dev", inside_if)
        ns.ip("link", "set", inside_if, "up")
        ns.ip("link", "set", "lo", "up")
        ns.ip("rule", "add", "pref", "100", "lookup", "local")
        ns.ip("rule", "del", "pref", "0")
        _run("ip", "netns", "exec", name, "sh", "-c",
             f"echo 1 > /proc/sys/net/ipv4/conf/{inside_if}/forwarding")
        yield ns
    except RuntimeError as exc:
        pytest.fail(f"cannot set up the veth pair and rules: {exc}", pytrace=False)
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False, capture_output=True)
        subprocess.run(["ip", "link", "del", outside_if], check=False, capture_output=True)


@dataclass
class Flow:
    """One relayed connection: proxy -> namespace socket -> PostgreSQL."""

    proxy_port: int
    pg_port: int
    inside: socket.socket
    outside: socket.socket
    from_proxy: int = 0  # bytes that reached the namespace from the proxy
    closed: bool = False


@dataclass
class Forwarder:
    listener: socket.socket
    target: tuple[str, int]
    flows: list[Flow] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def port(self) -> int:
        return self.listener.getsockname()[1]

    def start(self) -> Forwarder:
        threading.Thread(target=self._accept, daemon=True, name="blackhole-fwd").start()
        return self

    def _accept(self) -> None:
        while True:
            try:
                inside, peer = self.listener.accept()
            except OSError:
                return
            outside = socket.create_connection(self.target)
            flow = Flow(peer[1], outside.getsockname()[1], inside, outside)
            with self.lock:
                self.flows.append(flow)
            for src, dst, inbound in ((inside, outside, True), (outside, inside, False)):
                threading.Thread(target=self._pump, args=(flow, src, dst, inbound),
                                 daemon=True).start()

    def _pump(self, flow: Flow, src: socket.socket, dst: socket.socket, inbound: bool) -> None:
        try:
            while data := src.recv(65536):
                if inbound:
                    flow.from_proxy += len(data)
                dst.sendall(data)
        except OSError:
            pass
        flow.closed = True
        _shut(src)
        _shut(dst)

    def flow_for_pg_port(self, pg_port: int) -> Flow:
        with self.lock:
            (flow,) = [f for f in self.flows if f.pg_port == pg_port]
        return flow

    def stop(self) -> None:
        _shut(self.listener)  # wakes accept()
        self.listener.close()
        with self.lock:
            for flow in self.flows:
                for sock in (flow.inside, flow.outside):
                    _shut(sock)
                    sock.close()


def _login(proxy: RunningProxy, forwarder: Forwarder) -> tuple[RawClient, Flow, int]:
    """A logged-in raw client, its upstream flow and its backend pid."""
    client = RawClient.connect(proxy.port, timeout=DEADLINE + 10)
    seen = client.login("app", "app-secret", TEST_DB)
    assert isinstance(seen[-1], be.ReadyForQuery), seen
    rows = [m for m in client.query("SELECT pg_backend_pid(), inet_client_port()")
            if isinstance(m, be.DataRow)]
    pid, pg_port = (int(v) for v in rows[0].values)  # type: ignore[arg-type]
    return client, forwarder.flow_for_pg_port(pg_port), pid


def _until_closed(client: RawClient, start: float) -> tuple[list[be.BackendMessage], float]:
    """Every message up to the proxy's close, and the seconds it took from ``start``."""
    seen = []
    while (msg := client.recv()) is not None:
        seen.append(msg)
    return seen, time.monotonic() - start


def test_blackholed_upstream_ends_sessions_with_an_error(
        netns: Netns, db: Database, certs: CertFiles, proxy_errors: ProxyErrors) -> None:
    forwarder = Forwarder(netns.listen(), (db.host, db.port)).start()
    base = proxy_settings(db, certs)
    settings = replace(base, upstream=replace(base.upstream, host=netns.inside,
                                              port=forwarder.port, **KEEPALIVE))
    logged_before = len(proxy_errors.records)
    busy_pid = None
    try:
        with running_proxy(settings) as proxy, \
                psycopg.connect(proxy.dsn(db), autocommit=True) as steady:
            sessions = {name: _login(proxy, forwarder) for name in ("busy", "idle", "writer")}
            busy, busy_flow, busy_pid = sessions["busy"]
            sent = busy_flow.from_proxy
            busy.send(fe.Query("SELECT pg_sleep(60)"))
            deadline = time.monotonic() + 10
            while busy_flow.from_proxy == sent:  # the query is on its way to PostgreSQL
                assert time.monotonic() < deadline, "the query never reached the forwarder"
                time.sleep(0.01)
            time.sleep(0.2)
            for _, flow, _ in sessions.values():
                netns.blackhole(flow.proxy_port)
            start = time.monotonic()
            writer, writer_flow, _ = sessions["writer"]
            writer_reached = writer_flow.from_proxy
            writer.send(fe.Query("SELECT 1"))  # into the void: never acknowledged

            with concurrent.futures.ThreadPoolExecutor(3) as pool:
                ends = {name: pool.submit(_until_closed, client, start)
                        for name, (client, _, _) in sessions.items()}
                # Meanwhile the proxy serves everyone else, old sessions and new.
                served = 0
                while not all(f.done() for f in ends.values()):
                    assert steady.execute("SELECT 1").fetchone() == (1,)
                    served += 1
                    assert time.monotonic() - start < DEADLINE + 5, "a session hangs"
                    time.sleep(0.05)
                with psycopg.connect(proxy.dsn(db), connect_timeout=10) as fresh:
                    assert fresh.execute("SELECT 2").fetchone() == (2,)
                results = {name: f.result() for name, f in ends.items()}

            for name, (seen, elapsed) in results.items():
                errs = [m for m in seen if isinstance(m, be.ErrorResponse)]
                assert [(e.sqlstate, e.fields.get("S")) for e in errs] == [("08006", "FATAL")], \
                    (name, seen)
                assert isinstance(seen[-1], be.ErrorResponse), (name, seen)  # then closed
                # Not an immediate reset: the timeout noticed it, and well in time.
                assert 0.5 < elapsed < DEADLINE, (name, elapsed)
            assert served > 5
            # Dropped, not refused: the Query never reached the namespace, and the
            # relay there never saw a FIN or RST from either side.
            assert writer_flow.from_proxy == writer_reached
            assert not any(flow.closed for _, flow, _ in sessions.values())
            time.sleep(3)  # idle past several keepalive rounds: a live upstream stays
            assert steady.execute("SELECT 3").fetchone() == (3,)
    finally:
        if busy_pid is not None:
            with psycopg.connect(db.dsn(db.superuser, TEST_DB), autocommit=True) as admin:
                admin.execute("SELECT pg_terminate_backend(%s)", (busy_pid,))
        forwarder.stop()
    crashes = [r.getMessage() for r in proxy_errors.records[logged_before:] if r.exc_info]
    assert not crashes, f"the proxy logged exceptions (bugs): {crashes}"
