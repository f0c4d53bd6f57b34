"""Several worker processes (`tenant-proxy run --workers 2`) against real PostgreSQL:
connections spread over the workers, cancel requests find the owning worker,
/metrics adds the workers up, SIGHUP reloads every worker, a killed worker is
restarted, and SIGTERM drains them all.

The proxy runs as a real process tree (supervisor plus workers). The tests up to
the drain share one proxy; the drain test ends it, so it comes last of those.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from proxy.auth.scram import make_verifier
from proxy.config.settings import AuditSettings, Limits, Settings, load_settings
from proxy.config.yamlsource import ConfigError
from proxy.localpg.cluster import free_port
from proxy.observability.aggregate import merge, parse_snapshot, render, snapshot
from proxy.observability.metrics import GAUGE_MERGE, Metrics
from proxy.policy.rules import load_rules
from proxy.server.cancel import CancelRegistry, owner_of
from proxy.server.place import WorkerPlace, worker_settings
from proxy.wire import backend as be
from proxy.wire import frontend as fe
from tests.harness import Database, RunningProxy
from tests.rawclient import RawClient, errors

WORKERS_DB = "tp_workers"
PASSWORD = "workers-pw"
RULES = """version: 1
tenant: {column: tenant_id, type: integer}
tables:
  public.items: {scope: tenant}
  public.countries: {scope: shared}
users:
  app: {identity: bound, tenant: 1}
  migrate: {identity: bypass}
"""
DENY_COUNTRIES = RULES.replace("public.countries: {scope: shared}",
                               "public.countries: {scope: deny}")


# --- the proxy as a process tree -------------------------------------------


@dataclass
class ProxyTree:
    proc: subprocess.Popen[str]
    port: int
    http: int
    rules: Path
    log: Path

    def dsn(self, user: str = "app") -> str:
        return f"postgresql://{user}:{PASSWORD}@127.0.0.1:{self.port}/{WORKERS_DB}"

    def connect(self, user: str = "app") -> psycopg.Connection:
        return psycopg.connect(self.dsn(user), autocommit=True)

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.http}{path}",
                                        timeout=10) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def samples(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        status, text = self.get("/metrics")
        assert status == 200, text
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for family in text_string_to_metric_families(text) for s in family.samples}

    def total(self, name: str, **labels: str) -> float:
        """Sum of a metric's samples whose labels include ``labels``."""
        return sum(value for (sample, pairs), value in self.samples().items()
                   if sample == name and set(labels.items()) <= set(pairs))

    def workers(self) -> list[int]:
        """Pids of the worker processes (children running proxy.server.worker)."""
        found = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            if ppid == self.proc.pid and b"proxy.server.worker" in cmdline:
                found.append(int(entry))
        return sorted(found)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(60)


def _provision(db: Database) -> None:
    import asyncpg

    async def go() -> None:
        admin = await asyncpg.connect(db.dsn(db.superuser, "postgres"))
        try:
            if not await admin.fetchval("SELECT 1 FROM pg_database WHERE datname = $1",
                                        WORKERS_DB):
                await admin.execute(f"CREATE DATABASE {WORKERS_DB}")
        finally:
            await admin.close()
        conn = await asyncpg.connect(db.dsn(db.superuser, WORKERS_DB))
        try:
            await conn.execute("""
                CREATE TABLE IF NOT EXISTS items (id serial PRIMARY KEY, tenant_id int NOT NULL,
                                                  body text);
                CREATE TABLE IF NOT EXISTS countries (code text PRIMARY KEY);
                INSERT INTO countries VALUES ('fr'), ('jp') ON CONFLICT DO NOTHING;
                INSERT INTO items (tenant_id, body) VALUES (1, 'one'), (2, 'two');
            """)
        finally:
            await conn.close()

    asyncio.run(go())


def start_tree(db: Database, tmp_path: Path, workers: int = 2,
               drain_timeout: float = 10) -> ProxyTree:
    _provision(db)
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    port, http = free_port(), free_port()
    verifier = make_verifier(PASSWORD)
    config = tmp_path / "proxy.yaml"
    config.write_text(f"""
listen: 127.0.0.1:{port}
http_listen: 127.0.0.1:{http}
upstream: {{host: 127.0.0.1, port: {db.port}, sslmode: disable, database: {WORKERS_DB},
            roles: {{app: {db.superuser}, migrate: {db.superuser}}},
            password: "{db.superuser_password}"}}
auth: {{users: {{app: "{verifier}", migrate: "{verifier}"}}}}
rules: {rules}
rules_reload_interval: 0
limits: {{drain_timeout: {drain_timeout}}}
""")
    log = tmp_path / "proxy.log"
    proc = subprocess.Popen([sys.executable, "-m", "proxy.cli.main", "run", "--config",
                             str(config), "--workers", str(workers), "--log-format", "text"],
                            stdout=subprocess.PIPE, stderr=log.open("w"), text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert f"listening on 127.0.0.1:{port} ({workers} workers)" in line, \
        f"{line!r}\n{log.read_text()}"
    return ProxyTree(proc, port, http, rules, log)


@pytest.fixture(scope="module")
def tree(db: Database, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyTree]:
    running = start_tree(db, tmp_path_factory.mktemp("workers"))
    yield running
    running.stop()
    assert "Traceback" not in running.log.read_text()


def owner(conn: psycopg.Connection) -> int:
    """The worker serving a connection, from the proxy's BackendKeyData."""
    return owner_of(conn.info.backend_pid)


def connections_on_every_worker(tree: ProxyTree, user: str = "app", workers: int = 2,
                                limit: int = 60) -> dict[int, list[psycopg.Connection]]:
    by_worker: dict[int, list[psycopg.Connection]] = {}
    for _ in range(limit):
        conn = tree.connect(user)
        by_worker.setdefault(owner(conn), []).append(conn)
        if len(by_worker) == workers and all(len(c) >= 2 for c in by_worker.values()):
            break
    return by_worker


def close_all(by_worker: dict[int, list[psycopg.Connection]]) -> None:
    for conns in by_worker.values():
        for conn in conns:
            conn.close()


def wait_for(predicate, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


# --- one shared proxy --------------------------------------------------------


def test_connections_spread_and_metrics_add_up(tree: ProxyTree) -> None:
    conns = [tree.connect() for _ in range(40)]
    try:
        owners = [owner(c) for c in conns]
        assert set(owners) == {0, 1}, owners  # SO_REUSEPORT spreads connections
        before = tree.total("tenant_proxy_statements_total", kind="select", role="app")
        ran = {0: 0, 1: 0}
        for conn, w in zip(conns, owners, strict=True):
            for _ in range(3 if w == 0 else 5):  # different counts: a missing worker shows
                assert conn.execute("SELECT body FROM items").fetchall() == [("one",)]
                ran[w] += 1
        after = tree.total("tenant_proxy_statements_total", kind="select", role="app")
        assert after - before == ran[0] + ran[1]
        assert tree.total("tenant_proxy_client_connections") == 40
        assert tree.total("tenant_proxy_workers") == 2
        assert tree.get("/readyz") == (200, "ready\n")
        assert tree.get("/healthz") == (200, "ok\n")
        # The supervisor re-executed itself without the SQL engine: small, while
        # every worker carries it.
        assert b"pglast" not in Path(f"/proc/{tree.proc.pid}/maps").read_bytes()
        assert all(b"pglast" in Path(f"/proc/{pid}/maps").read_bytes()
                   for pid in tree.workers())
    finally:
        for c in conns:
            c.close()
    wait_for(lambda: tree.total("tenant_proxy_client_connections") == 0, 5,
             "the connection gauge to fall back to 0")


def _cancel_sleep(conn: psycopg.Connection) -> BaseException | None:
    caught: list[BaseException] = []

    def sleep() -> None:
        try:
            conn.execute("SELECT pg_sleep(30)")
        except BaseException as exc:  # reported to the test below
            caught.append(exc)

    thread = threading.Thread(target=sleep)
    thread.start()
    time.sleep(0.3)
    conn.cancel()
    thread.join(10)
    assert not thread.is_alive(), "the cancel did not stop pg_sleep"
    return caught[0] if caught else None


def test_cancel_reaches_the_owning_worker(tree: ProxyTree) -> None:
    """A CancelRequest lands on whichever worker the kernel picks; cancels are
    repeated until both paths (same worker, forwarded) have been taken. (pg_sleep
    is refused to tenants: the bypass role runs it.)"""
    by_worker = connections_on_every_worker(tree, "migrate")
    try:
        assert set(by_worker) == {0, 1}
        forwarded = delivered = 0.0
        for attempt in range(30):
            conn = by_worker[attempt % 2][0]
            error = _cancel_sleep(conn)
            assert isinstance(error, psycopg.errors.QueryCanceled), error
            assert conn.execute("SELECT 1").fetchone() == (1,)  # the session survives
            forwarded = tree.total("tenant_proxy_cancel_requests_total", result="forwarded")
            delivered = tree.total("tenant_proxy_cancel_requests_total", result="delivered")
            assert delivered == attempt + 1  # every cancel reached its backend, once
            if forwarded >= 1 and delivered - forwarded >= 1:
                break
        assert forwarded >= 1, "no cancel request ever landed on the other worker"
        assert delivered - forwarded >= 1, "no cancel request ever landed on its own worker"
    finally:
        close_all(by_worker)


def test_sighup_reloads_every_worker(tree: ProxyTree) -> None:
    by_worker = connections_on_every_worker(tree)
    try:
        conns = [conns[0] for conns in by_worker.values()]
        assert len(conns) == 2
        for conn in conns:
            assert conn.execute("SELECT count(*) FROM countries").fetchone() == (2,)
        old = tree.samples()
        tree.rules.write_text(DENY_COUNTRIES)
        time.sleep(0.5)  # the file watch is off: nothing may change without SIGHUP
        for conn in conns:
            assert conn.execute("SELECT count(*) FROM countries").fetchone() == (2,)
        tree.proc.send_signal(signal.SIGHUP)
        for conn in conns:
            def refused(conn: psycopg.Connection = conn) -> bool:
                try:
                    conn.execute("SELECT count(*) FROM countries")
                except psycopg.errors.InsufficientPrivilege:
                    return True
                return False
            wait_for(refused, 10, "SIGHUP to reach the worker")
        ok = tree.total("tenant_proxy_rules_reloads_total", result="ok")
        assert ok - sum(v for (n, labels), v in old.items()
                        if n == "tenant_proxy_rules_reloads_total"
                        and ("result", "ok") in labels) == 2  # one reload per worker
        new_version = load_rules(tree.rules).version
        versions = {dict(labels)["version"]: v for (n, labels), v in tree.samples().items()
                    if n == "tenant_proxy_rules_version_info"}
        assert versions == {new_version: 1.0}
    finally:
        close_all(by_worker)


def test_sigterm_drains_every_worker(tree: ProxyTree, db: Database) -> None:
    """Ends the shared proxy: idle sessions on both workers get 57P01 at once,
    open transactions commit, then every process exits."""
    sessions: dict[int, list[RawClient]] = {}
    for _ in range(60):
        client = RawClient.connect(tree.port)
        seen = client.login("app", PASSWORD, WORKERS_DB)
        key = next(m for m in seen if isinstance(m, be.BackendKeyData))
        sessions.setdefault(owner_of(key.process_id), []).append(client)
        if len(sessions) == 2 and all(len(s) >= 2 for s in sessions.values()):
            break
    assert set(sessions) == {0, 1}
    busy = [s[0] for s in sessions.values()]
    idle = [s[1] for s in sessions.values()]
    marker = f"drained-{time.time_ns()}"
    for client in busy:
        assert not errors(client.query("BEGIN"))
        assert not errors(client.query(f"INSERT INTO items (body) VALUES ('{marker}')"))
    workers = tree.workers()
    assert len(workers) == 2
    tree.proc.send_signal(signal.SIGTERM)
    for client in idle:
        end = client.recv()
        assert isinstance(end, be.ErrorResponse) and end.sqlstate == "57P01", end
    assert tree.get("/readyz")[0] == 503
    for client in busy:
        done = client.query("COMMIT")
        assert not errors(done) and isinstance(done[-1], be.ReadyForQuery)
        end = client.recv()
        assert isinstance(end, be.ErrorResponse) and end.sqlstate == "57P01", end
    assert tree.proc.wait(30) == 0
    for pid in workers:
        assert not Path(f"/proc/{pid}").exists(), f"worker {pid} outlived the supervisor"
    with psycopg.connect(db.dsn(db.superuser, WORKERS_DB)) as admin:
        assert admin.execute("SELECT count(*) FROM items WHERE body = %s AND tenant_id = 1",
                             (marker,)).fetchone() == (2,)


# --- its own proxy ----------------------------------------------------------


def test_killed_worker_is_restarted(db: Database, tmp_path: Path) -> None:
    tree = start_tree(db, tmp_path)
    try:
        by_worker = connections_on_every_worker(tree)
        assert set(by_worker) == {0, 1}
        for conns in by_worker.values():
            for conn in conns:
                conn.execute("SELECT body FROM items").fetchall()
        counted = tree.total("tenant_proxy_statements_total", kind="select")
        assert counted >= 4
        victim_conn = by_worker[1][0]
        victim = _worker_pid(tree, 1)
        assert victim in tree.workers()
        os.kill(victim, signal.SIGKILL)
        with pytest.raises(psycopg.OperationalError):
            victim_conn.execute("SELECT 1")
        assert by_worker[0][0].execute("SELECT 1").fetchone() == (1,)  # the other serves on
        assert tree.get("/healthz")[0] == 200
        wait_for(lambda: len(tree.workers()) == 2 and victim not in tree.workers(), 60,
                 "the supervisor to restart the killed worker")
        wait_for(lambda: tree.get("/readyz")[0] == 200, 30, "readiness after the restart")
        assert tree.total("tenant_proxy_worker_restarts_total") == 1
        # The dead worker's statements stay counted: totals never go backwards.
        assert tree.total("tenant_proxy_statements_total", kind="select") >= counted
        fresh = connections_on_every_worker(tree)
        assert set(fresh) == {0, 1}
        close_all(fresh)
        close_all({0: by_worker[0]})
        log = tree.log.read_text()
        assert f"worker 1 (pid {victim}) ended" in log and "killed by SIGKILL" in log
    finally:
        tree.stop()
    assert tree.proc.returncode == 0


def _worker_pid(tree: ProxyTree, index: int) -> int:
    """From the supervisor's log line "worker N listening (pid P)", the latest."""
    found = re.findall(rf"worker {index} listening \(pid (\d+)\)", tree.log.read_text())
    assert found, tree.log.read_text()
    return int(found[-1])


# --- memory bounds ---------------------------------------------------------


def test_clients_not_logged_in_cannot_make_the_proxy_buffer_much(proxy: RunningProxy) -> None:
    """Before authentication a message may be 64 KiB at most (PostgreSQL's own
    limit), not limits.max_message_size: the length word alone gets 08P01."""
    client = RawClient.connect(proxy.port)
    try:
        client.send(fe.StartupMessage({"user": "app", "database": "postgres"}))
        first = client.recv()
        assert isinstance(first, be.Authentication) and first.code == be.AUTH_SASL
        client.send_raw(b"p" + (1 << 20).to_bytes(4, "big") + b"x" * 1000)  # "1 MiB follows"
        end = client.recv()
        assert isinstance(end, be.ErrorResponse) and end.sqlstate == "08P01", end
        assert "exceeds the limit of 65535 bytes" in end.fields["M"]
        assert client.recv() is None  # and the connection is closed
    finally:
        client.close()


# --- the parts, without processes -------------------------------------------


def test_cancel_keys_name_their_worker() -> None:
    async def go() -> None:
        forwarded: list[tuple[int, int, int]] = []

        async def forward(owner: int, pid: int, secret: int) -> bool:
            forwarded.append((owner, pid, secret))
            return True

        cancelled: list[str] = []

        async def canceller() -> bool:
            cancelled.append("yes")
            return True

        three = CancelRegistry(3, forward)
        key = three.register(canceller)
        assert owner_of(key.process_id) == 3 and key.process_id > 0
        assert await three.cancel(key.process_id, key.secret_key) == "delivered"
        assert await three.cancel(key.process_id, key.secret_key ^ 1) == "unknown"
        other = CancelRegistry(5).register(canceller)
        assert await three.cancel(other.process_id, other.secret_key) == "forwarded"
        assert forwarded == [(5, other.process_id, other.secret_key)]
        assert cancelled == ["yes"]
        biggest = CancelRegistry(127).register(canceller)
        assert 0 < biggest.process_id < 2**31 and owner_of(biggest.process_id) == 127

    asyncio.run(go())


def test_metrics_of_workers_merge() -> None:
    a, b = Metrics(), Metrics()
    a.statements.labels("select", "1", "app", "forwarded").inc(3)
    b.statements.labels("select", "1", "app", "forwarded").inc(4)
    b.statements.labels("insert", "2", "app", "rewritten").inc()
    a.client_connections.set(2)
    b.client_connections.set(5)
    a.set_rules_version("v1")
    b.set_rules_version("v1")
    a.plan_seconds.observe(0.001)
    b.plan_seconds.observe(0.002)
    merged = merge([parse_snapshot(snapshot(a.registry)), parse_snapshot(snapshot(b.registry))],
                   GAUGE_MERGE)
    text = render(merged).decode()
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for f in text_string_to_metric_families(text) for s in f.samples}
    select = (("kind", "select"), ("outcome", "forwarded"), ("role", "app"), ("tenant", "1"))
    assert samples[("tenant_proxy_statements_total", select)] == 7
    assert samples[("tenant_proxy_client_connections", ())] == 7
    assert samples[("tenant_proxy_rules_version_info", (("version", "v1"),))] == 1
    assert samples[("tenant_proxy_plan_seconds_count", ())] == 2
    assert samples[("tenant_proxy_plan_seconds_sum", ())] == pytest.approx(0.003)


def test_workers_setting(tmp_path: Path) -> None:
    config = tmp_path / "proxy.yaml"
    config.write_text("listen: 127.0.0.1:6432\nworkers: 3\n")
    assert load_settings(str(config), env={}).worker_count() == 3
    assert load_settings(str(config), workers=1, env={}).workers == 1  # the flag wins
    assert load_settings(None, env={"TENANT_PROXY_WORKERS": "2"}).workers == 2
    assert load_settings(None, env={}).worker_count() >= 1  # default: the CPUs available
    config.write_text("listen: 127.0.0.1:6432\nworkers: 0\n")
    with pytest.raises(ConfigError, match=r"proxy.yaml:2: workers: must be between 1 and 128"):
        load_settings(str(config), env={})
    with pytest.raises(ConfigError, match="TENANT_PROXY_WORKERS"):
        load_settings(None, env={"TENANT_PROXY_WORKERS": "many"})


def test_worker_settings_split_what_cannot_be_shared() -> None:
    settings = Settings(limits=Limits(max_client_connections=1001), http_listen="0.0.0.0:9187",
                        audit=AuditSettings("/var/log/tp/audit.log", b"k" * 32), workers=4)
    mine = worker_settings(settings, WorkerPlace(2, 4, "/run/x"), 6543)
    assert mine.listen_port == 6543 and mine.http_listen is None and mine.workers == 1
    assert mine.limits.max_client_connections == 251  # 4 x 251 >= 1001
    assert mine.audit is not None and mine.audit.path == "/var/log/tp/audit-worker2.log"
