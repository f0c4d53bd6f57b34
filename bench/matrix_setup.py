"""What the pgbench matrix runs against: a throwaway PostgreSQL with pgbench tables
(a tenant column on every table the bench rules scope), PgBouncer in session and
transaction mode, and tenant-proxy in each of its feature sets.

Each target is a process (or none, for direct PostgreSQL) listening on a port;
``Targets`` starts them all once and stops them at the end.
"""

from __future__ import annotations

import base64
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from proxy.auth.scram import make_verifier
from proxy.localpg.cluster import LocalCluster, free_port
from proxy.policy.rules import load_rules

USER = "bench"
PASSWORD = "bench-secret"
DATABASE = "bench"
BENCH_RULES = Path(__file__).with_name("rules.yaml")
ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Target:
    """One column of the comparison. ``features`` say what the proxy does:
    ``isolation`` (the bench rules), ``encryption`` (pgbench_accounts.filler encrypted:
    every statement on the table goes through the encryption pass, its prepared
    statements are described and its rows checked for encrypted columns, although
    pgbench's scripts never read or write that column; ``bench.encryption_cost``
    measures sealing and decrypting values), ``anomaly`` (scoring in monitor mode with a
    baseline learned first), ``audit`` (the signed trail), ``metrics`` (/metrics on)."""

    name: str
    kind: str  # direct, pgbouncer or proxy
    pool_mode: str | None = None
    features: frozenset[str] = frozenset()
    #: The proxy's --workers; None: the run's --proxy-workers.
    workers: int | None = None


TARGETS: tuple[Target, ...] = (
    Target("direct", "direct"),
    Target("pgbouncer session", "pgbouncer", pool_mode="session"),
    Target("pgbouncer transaction", "pgbouncer", pool_mode="transaction"),
    Target("proxy pass-through", "proxy"),
    Target("proxy isolation", "proxy", features=frozenset({"isolation"})),
    Target("proxy isolation + encryption", "proxy",
           features=frozenset({"isolation", "encryption"})),
    Target("proxy all features", "proxy",
           features=frozenset({"isolation", "encryption", "anomaly", "audit", "metrics"})),
)
#: What ratios are taken against (same cell, same run).
DIRECT, POOLER = "direct", "pgbouncer session"


def wait_port(port: int, proc: subprocess.Popen[bytes] | None = None,
              timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with status {proc.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"nothing listens on port {port} after {timeout:g} s")


def ensure_pgbouncer() -> str:
    """PgBouncer's binary, installing Debian's package if it is missing."""
    found = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
    if Path(found).exists():
        return found
    if not shutil.which("apt-get"):
        raise RuntimeError("pgbouncer is not installed and apt-get is not available")
    print("installing pgbouncer (apt-get)", file=sys.stderr, flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-q"], check=True, env=env)
    subprocess.run(["apt-get", "install", "-y", "-q", "pgbouncer"], check=True, env=env)
    return shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"


def pgbench_command(port: int, *args: str) -> tuple[list[str], dict[str, str]]:
    exe = shutil.which("pgbench") or "pgbench"
    return ([exe, "-h", "127.0.0.1", "-p", str(port), "-U", USER, *args, DATABASE],
            {**os.environ, "PGPASSWORD": PASSWORD})


def prepare_database(cluster: LocalCluster, scale: int, rules: Path = BENCH_RULES) -> None:
    """pgbench tables at ``scale``, plus the tenant column on every table the
    rules scope (all rows tenant 1, so every target sees the same data)."""
    cluster.psql(f"CREATE ROLE {USER} LOGIN SUPERUSER PASSWORD '{PASSWORD}'")
    cluster.psql(f"CREATE DATABASE {DATABASE} OWNER {USER}")
    cmd, env = pgbench_command(cluster.port, "-i", "-q", "-s", str(scale))
    init = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if init.returncode != 0:
        raise RuntimeError(f"pgbench -i failed: {init.stderr[-800:]}")
    # Encrypted columns are bytea: the filler nobody reads becomes one (NULL) for
    # every target alike.
    cluster.psql("ALTER TABLE pgbench_accounts ALTER COLUMN filler TYPE bytea USING NULL",
                 database=DATABASE)
    parsed = load_rules(rules)
    for table, rule in parsed.tables.items():
        if rule.scope == "tenant":
            column = rule.column or parsed.tenant_column
            cluster.psql(f"ALTER TABLE {table} ADD COLUMN {column} int NOT NULL DEFAULT 1",
                         database=DATABASE)
    cluster.psql("VACUUM ANALYZE", database=DATABASE)


@dataclass
class Running:
    target: Target
    port: int
    #: Root of the process tree whose CPU is this target's (None for direct).
    proc: subprocess.Popen[bytes] | None = None
    #: The proxy's /metrics port, when it serves one.
    http: int | None = None


@dataclass
class Targets:
    """Every target of one matrix run, on one PostgreSQL."""

    cluster: LocalCluster
    workdir: Path
    proxy_workers: int
    running: dict[str, Running] = field(default_factory=dict)
    anomaly_state: Path | None = None

    def start(self, targets: tuple[Target, ...]) -> None:
        for target in targets:
            if target.kind == "direct":
                self.running[target.name] = Running(target, self.cluster.port)
            elif target.kind == "pgbouncer":
                proc, port = self._pgbouncer(target.pool_mode or "session")
                self.running[target.name] = Running(target, port, proc)
            else:
                proc, port, http = self.proxy(target.features,
                                              target.workers or self.proxy_workers)
                self.running[target.name] = Running(target, port, proc, http)

    def stop(self) -> None:
        for run in self.running.values():
            if run.proc is not None and run.proc.poll() is None:
                run.proc.send_signal(signal.SIGTERM)
        for run in self.running.values():
            if run.proc is not None:
                try:
                    run.proc.wait(60)
                except subprocess.TimeoutExpired:
                    run.proc.kill()

    def _pgbouncer(self, pool_mode: str) -> tuple[subprocess.Popen[bytes], int]:
        exe = ensure_pgbouncer()
        port = free_port()
        (self.workdir / "userlist.txt").write_text(f'"{USER}" "{PASSWORD}"\n')
        ini = self.workdir / f"pgbouncer-{pool_mode}.ini"
        ini.write_text(f"""[databases]
* = host=127.0.0.1 port={self.cluster.port}
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
auth_type = scram-sha-256
auth_file = {self.workdir / 'userlist.txt'}
pool_mode = {pool_mode}
max_client_conn = 2000
default_pool_size = 150
unix_socket_dir =
logfile = {self.workdir / f'pgbouncer-{pool_mode}.log'}
""")
        cmd = [exe, str(ini)]
        if os.geteuid() == 0:  # pgbouncer refuses to run as root
            shutil.chown(self.workdir, "postgres")
            for f in self.workdir.iterdir():
                shutil.chown(f, "postgres")
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(port, proc)
        return proc, port

    def proxy(self, features: frozenset[str], workers: int,
              anomaly_mode: str = "monitor"
              ) -> tuple[subprocess.Popen[bytes], int, int | None]:
        """Start the proxy; returns its process, port and /metrics port."""
        port = free_port()
        http = free_port() if "metrics" in features else None
        config: dict[str, object] = {
            "listen": f"127.0.0.1:{port}",
            "upstream": {"host": "127.0.0.1", "port": self.cluster.port, "sslmode": "disable",
                         "password": PASSWORD},
            "auth": {"users": {USER: str(make_verifier(PASSWORD))}},
            "limits": {"max_client_connections": 5000},
            "workers": workers,
        }
        if "isolation" in features:
            config["rules"] = str(self.proxy_rules(features, anomaly_mode, port))
        if "encryption" in features:
            config["key_store"] = {"url": f"postgresql://{USER}:{PASSWORD}@127.0.0.1:"
                                          f"{self.cluster.port}/{DATABASE}"}
        if "audit" in features:
            config["audit"] = {"path": str(self.workdir / f"audit-{port}.log"),
                               "key": secrets.token_hex(32)}
        if http is not None:
            config["http_listen"] = f"127.0.0.1:{http}"
        path = self.workdir / f"proxy-{port}.yaml"
        path.write_text(yaml.safe_dump(config))
        log = (self.workdir / f"proxy-{port}.log").open("wb")
        proc = subprocess.Popen([sys.executable, "-m", "proxy.cli.main", "run", "--config",
                                 str(path), "--log-level", "warning"],
                                stdout=subprocess.DEVNULL, stderr=log, cwd=ROOT)
        wait_port(port, proc)
        return proc, port, http

    def proxy_rules(self, features: frozenset[str], anomaly_mode: str, port: int) -> Path:
        """The bench rules with what ``features`` add to them."""
        rules = yaml.safe_load(BENCH_RULES.read_text())
        if "anomaly" in features:
            if self.anomaly_state is None:
                self.anomaly_state = self.workdir / "anomaly-baseline.json"
            rules["anomaly"] = {"mode": anomaly_mode, "state": str(self.anomaly_state)}
        if "encryption" in features:
            rules["encryption"] = {
                "master_key": base64.b64encode(secrets.token_bytes(32)).decode(),
                "columns": {"public.pgbench_accounts.filler": {"mode": "randomized",
                                                                "type": "text"}}}
        path = self.workdir / f"rules-{port}.yaml"
        path.write_text(yaml.safe_dump(rules))
        return path
