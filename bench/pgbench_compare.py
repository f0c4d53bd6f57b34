"""pgbench through direct PostgreSQL, PgBouncer and tenant-proxy, in one run.

Sets up its own throwaway PostgreSQL, runs each target in turn (repeated,
medians reported), and writes the table with ratios to direct PostgreSQL and
to PgBouncer measured in the same run. Example:

    python bench/pgbench_compare.py --scale 10 --duration 15 --repeat 3 \
        --modes simple prepared --clients 8 --write bench/RESULTS.md
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.report import emit
from proxy.auth.scram import make_verifier
from proxy.localpg.cluster import LocalCluster, free_port

PASSWORD = "bench-secret"


@dataclass
class Result:
    target: str
    mode: str
    clients: int
    tps: list[float]
    latency_ms: list[float]

    @property
    def median_tps(self) -> float:
        return statistics.median(self.tps)


def _wait_port(port: int, timeout: float = 15.0) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"nothing listening on port {port}")


BENCH_RULES = Path(__file__).with_name("rules.yaml")


def start_proxy(pg_port: int, workdir: Path, rules: Path | None = None
                ) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    config = workdir / f"proxy-{port}.yaml"
    config.write_text(f"""
listen: 127.0.0.1:{port}
upstream:
  host: 127.0.0.1
  port: {pg_port}
  sslmode: disable
  password: {PASSWORD}
auth:
  users:
    bench: "{make_verifier(PASSWORD)}"
""" + (f"rules: {rules}\n" if rules else ""))
    exe = shutil.which("tenant-proxy") or sys.executable
    args = [exe] if exe != sys.executable else [exe, "-m", "proxy.cli.main"]
    proc = subprocess.Popen([*args, "run", "--config", str(config), "--log-level", "warning"],
                            stdout=subprocess.DEVNULL)
    _wait_port(port)
    return proc, port


def start_pgbouncer(pg_port: int, workdir: Path, pool_mode: str) -> tuple[subprocess.Popen[bytes],
                                                                             int] | None:
    exe = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
    if not Path(exe).exists():
        print("pgbouncer not found (apt-get install pgbouncer); skipping it", file=sys.stderr)
        return None
    port = free_port()
    (workdir / "userlist.txt").write_text(f'"bench" "{PASSWORD}"\n')
    ini = workdir / f"pgbouncer-{pool_mode}.ini"
    ini.write_text(f"""[databases]
* = host=127.0.0.1 port={pg_port}
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
auth_type = scram-sha-256
auth_file = {workdir / 'userlist.txt'}
pool_mode = {pool_mode}
max_client_conn = 2000
default_pool_size = 150
unix_socket_dir =
logfile = {workdir / f'pgbouncer-{pool_mode}.log'}
""")
    cmd = [exe, str(ini)]
    if os.geteuid() == 0:
        shutil.chown(workdir, "postgres")
        for f in workdir.iterdir():
            shutil.chown(f, "postgres")
        cmd = ["runuser", "-u", "postgres", "--", *cmd]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_port(port)
    return proc, port


def pgbench(port: int, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PGPASSWORD": PASSWORD}
    exe = shutil.which("pgbench") or "pgbench"
    return subprocess.run([exe, "-h", "127.0.0.1", "-p", str(port), "-U", "bench", *args,
                           "bench"], capture_output=True, text=True, env=env, check=False)


def run_one(port: int, mode: str, clients: int, duration: int, select_only: bool
            ) -> tuple[float, float]:
    args = ["-n", "-M", mode, "-c", str(clients), "-j", "2", "-T", str(duration)]
    if select_only:
        args.insert(0, "-S")
    proc = pgbench(port, *args)
    if proc.returncode != 0:
        raise RuntimeError(f"pgbench failed: {proc.stderr[-800:]}")
    tps = float(re.search(r"tps = ([\d.]+)", proc.stdout).group(1))
    latency = float(re.search(r"latency average = ([\d.]+) ms", proc.stdout).group(1))
    return tps, latency


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", type=int, default=10)
    ap.add_argument("--duration", type=int, default=15)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--modes", nargs="+", default=["simple", "prepared"])
    ap.add_argument("--clients", nargs="+", type=int, default=[8])
    ap.add_argument("--tpcb", action="store_true", help="TPC-B-like default script, not -S")
    ap.add_argument("--write", help="append the results table to this Markdown file")
    args = ap.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="tenant-proxy-bench-"))
    cluster = LocalCluster(settings={"max_connections": "400"}).start()
    procs: list[subprocess.Popen[bytes]] = []
    try:
        cluster.psql(f"CREATE ROLE bench LOGIN SUPERUSER PASSWORD '{PASSWORD}'")
        cluster.psql("CREATE DATABASE bench OWNER bench")
        init = pgbench(cluster.port, "-i", "-q", "-s", str(args.scale))
        if init.returncode != 0:
            raise RuntimeError(init.stderr)
        # The isolation target scopes pgbench_accounts by this column (bench/rules.yaml).
        cluster.psql("ALTER TABLE pgbench_accounts ADD COLUMN tenant_id int NOT NULL DEFAULT 1",
                     database="bench")
        targets: dict[str, int] = {"direct": cluster.port}
        bouncer = start_pgbouncer(cluster.port, workdir, "session")
        if bouncer:
            procs.append(bouncer[0])
            targets["pgbouncer-session"] = bouncer[1]
        proxy_proc, proxy_port = start_proxy(cluster.port, workdir)
        procs.append(proxy_proc)
        targets["tenant-proxy (pass-through)"] = proxy_port
        iso_proc, iso_port = start_proxy(cluster.port, workdir, BENCH_RULES)
        procs.append(iso_proc)
        targets["tenant-proxy (isolation)"] = iso_port

        results: list[Result] = []
        for mode in args.modes:
            for clients in args.clients:
                by_target = {t: Result(t, mode, clients, [], []) for t in targets}
                for _ in range(args.repeat):
                    for target, port in targets.items():  # interleaved: drift hits all alike
                        tps, lat = run_one(port, mode, clients, args.duration, not args.tpcb)
                        by_target[target].tps.append(tps)
                        by_target[target].latency_ms.append(lat)
                        print(f"{mode:9} c={clients:<4} {target:30} {tps:10.0f} tps", flush=True)
                results.extend(by_target.values())
        emit([render(results, args)], args.write)
    finally:
        for p in procs:
            p.terminate()
            p.wait(10)
        cluster.destroy()
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


def render(results: list[Result], args: argparse.Namespace) -> str:
    cpu = platform.processor() or platform.machine()
    cores = os.cpu_count()
    lines = [
        f"\n## pgbench {'TPC-B-like' if args.tpcb else '-S'} ({time.strftime('%Y-%m-%d')})\n",
        f"Machine: {cores} cores ({cpu}), {platform.system()} {platform.release()}, "
        f"Python {platform.python_version()}; pgbench, PostgreSQL and the proxy share the "
        "cores.\n",
        f"Command: `python bench/pgbench_compare.py --scale {args.scale} --duration "
        f"{args.duration} --repeat {args.repeat} --modes {' '.join(args.modes)} --clients "
        f"{' '.join(map(str, args.clients))}{' --tpcb' if args.tpcb else ''}`\n",
        "| mode | clients | target | median TPS | runs | avg latency ms | vs direct "
        "| vs PgBouncer |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        direct = next(x for x in results if x.target == "direct" and x.mode == r.mode
                      and x.clients == r.clients)
        bouncer = next((x for x in results if x.target.startswith("pgbouncer")
                        and x.mode == r.mode and x.clients == r.clients), None)
        vs_b = f"{r.median_tps / bouncer.median_tps:.2f}" if bouncer else "n/a"
        runs = ", ".join(f"{t:.0f}" for t in r.tps)
        lines.append(f"| {r.mode} | {r.clients} | {r.target} | {r.median_tps:.0f} | {runs} | "
                     f"{statistics.median(r.latency_ms):.3f} | "
                     f"{r.median_tps / direct.median_tps:.2f} | {vs_b} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
