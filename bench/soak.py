"""Soak test and idle-connection memory, against the proxy as a real process.

    python bench/soak.py --duration 300 --clients 8 --reload-every 5 [--write bench/RESULTS.md]
    python bench/soak.py --idle 1 1000 5000 --sessions 1 200 1000 --duration 0

The soak runs the vulnerable shop's benign SaaS traffic (bench/anomaly_workload.py)
from several client threads for ``--duration`` seconds while the rules file is
rewritten every few seconds (the proxy reloads it live), and reports throughput
over time with the proxy's own CPU time per statement (which, unlike throughput,
does not depend on what else the machine runs), errors, the reloads the proxy
applied or refused (from its /metrics), and its resident memory at the start and
the end.
The idle measurement opens connections that never log in (``--idle``) and
logged-in sessions that then sit idle (``--sessions``, each with its upstream
PostgreSQL connection) and reports the proxy's resident memory per connection.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.anomaly_workload import VulnerableShop  # noqa: E402
from bench.report import emit  # noqa: E402
from proxy.auth.scram import make_verifier  # noqa: E402
from proxy.localpg.cluster import LocalCluster, free_port  # noqa: E402

PASSWORD = "soak-pw"


def rss_kib(pid: int) -> int:
    """Resident memory of the proxy: the process and its descendants (with
    several workers, the supervisor and every worker)."""
    return sum(_own_rss_kib(p) for p in process_tree(pid))


def _own_rss_kib(pid: int) -> int:
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:  # exited meanwhile
        return 0
    return next((int(line.split()[1]) for line in lines if line.startswith("VmRSS:")), 0)


def process_tree(root: int) -> list[int]:
    """``root`` and its live descendants."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            children.setdefault(int(stat.rsplit(")", 1)[1].split()[1]), []).append(int(entry))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, ()))
    return tree


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of the proxy (every process, as for its RSS): its
    own cost, whatever else the machine runs."""
    ticks = 0
    for p in process_tree(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rpartition(")")[2].split()
        except OSError:  # exited meanwhile
            continue
        ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def _wait_port(port: int, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and proc.poll() is None:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"nothing listens on {port} (proxy exit status {proc.poll()})")


def reload_counts(http_port: int) -> dict[str, int]:
    """tenant_proxy_rules_reloads_total by result, from the proxy's /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/metrics", timeout=10) as r:
        text = r.read().decode()
    found = re.findall(r'^tenant_proxy_rules_reloads_total\{result="(\w+)"\} (\S+)$', text,
                       re.MULTILINE)
    return {result: int(float(value)) for result, value in found}


def write_atomically(path: Path, text: str) -> None:
    """As a ConfigMap update does: the watcher never sees a half-written file."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def start(work: Path, max_connections: int) -> tuple[LocalCluster, subprocess.Popen[bytes], int,
                                                      Path, int]:
    cluster = LocalCluster(settings={"max_connections": str(max_connections)}).start()
    cluster.psql("CREATE DATABASE corpus")
    cluster.psql((ROOT / "tests" / "corpus" / "schema.sql").read_text(), database="corpus")
    rules = work / "rules.yaml"
    rules.write_text((ROOT / "tests" / "corpus" / "rules.yaml").read_text().replace(
        "corpus_app: {identity: trusted}", "shop: {identity: trusted}"))
    port, http_port = free_port(), free_port()
    config = work / "proxy.yaml"
    config.write_text(f"""
listen: 127.0.0.1:{port}
http_listen: 127.0.0.1:{http_port}
upstream: {{host: 127.0.0.1, port: {cluster.port}, sslmode: disable, database: corpus,
            roles: {{shop: postgres}}, password: "{cluster.superuser_password}"}}
auth: {{users: {{shop: "{make_verifier(PASSWORD)}"}}}}
rules: {rules}
limits: {{max_client_connections: 20000, login_timeout: 600}}
""")
    proc = subprocess.Popen([sys.executable, "-m", "proxy.cli.main", "run", "--config",
                             str(config), "--log-level", "warning"], stdout=subprocess.DEVNULL)
    try:
        _wait_port(port, proc)
        _wait_port(http_port, proc)
    except BaseException:  # a proxy that cannot start must not leave the cluster running
        proc.kill()
        cluster.destroy()
        raise
    return cluster, proc, port, rules, http_port


def dsn(port: int) -> str:
    return f"postgresql://shop:{PASSWORD}@127.0.0.1:{port}/corpus"


def soak(port: int, rules: Path, pid: int, http_port: int, duration: float, clients: int,
         reload_every: float) -> list[str]:
    done = [0] * clients
    errors = [0] * clients
    stop = threading.Event()

    def worker(i: int) -> None:
        rng = random.Random(i)
        with psycopg.connect(dsn(port), options=f"-c tenant_proxy.tenant={i % 3 + 1}",
                             autocommit=True) as conn:
            shop = VulnerableShop(conn)
            while not stop.is_set():
                if shop.benign(rng) < 0:
                    errors[i] += 1
                done[i] += 1

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(clients)]
    for t in threads:
        t.start()
    original = rules.read_text()
    # A harmless edit the proxy must apply without dropping anyone: an unused table
    # goes in and out of the tables section.
    edited = original.replace("tables:\n", "tables:\n  public.pgbench_history: {scope: shared}\n")
    assert edited != original, "the rules file has no tables section"
    reloads_before = reload_counts(http_port)
    edits = 0
    rows, start, last_total, last_t, flip = [], time.monotonic(), 0, time.monotonic(), False
    rss_start, last_cpu = rss_kib(pid), cpu_seconds(pid)
    next_reload = start + reload_every
    while time.monotonic() - start < duration:
        time.sleep(1)
        now = time.monotonic()
        if now >= next_reload:
            flip = not flip
            write_atomically(rules, edited if flip else original)
            edits += 1
            next_reload = now + reload_every
        if now - last_t >= 5 or now - start >= duration:
            total, cpu = sum(done), cpu_seconds(pid)
            rows.append(f"| {now - start:5.0f} | {(total - last_total) / (now - last_t):8.0f} | "
                        f"{(cpu - last_cpu) * 1e6 / max(total - last_total, 1):.0f} | "
                        f"{sum(errors)} | {rss_kib(pid) / 1024:.1f} |")
            last_total, last_t, last_cpu = total, now, cpu
    stop.set()
    for t in threads:
        t.join(10)
    rss_end = rss_kib(pid)
    time.sleep(2)  # the watcher polls every second: let it see the last edit
    reloads = {k: v - reloads_before.get(k, 0) for k, v in reload_counts(http_port).items()}
    return [
        f"Statements: {sum(done)}, errors (the shop's own failed statements, e.g. foreign-key "
        f"violations): {sum(errors)}; resident memory {rss_start / 1024:.1f} MiB at the start, "
        f"{rss_end / 1024:.1f} MiB at the end (growth {(rss_end - rss_start) / 1024:+.1f} MiB).",
        f"Rules file edited {edits} times; the proxy applied {reloads.get('ok', 0)} reloads "
        f"and refused {reloads.get('failed', 0)} (its /metrics).",
        "",
        "| second | statements/s | proxy CPU µs/statement | errors so far | proxy RSS MiB |",
        "|---|---|---|---|---|",
        *rows,
    ]


def idle_memory(port: int, pid: int, idle: list[int], sessions: list[int]) -> list[str]:
    """Logged-in sessions first: the allocator keeps memory a larger run freed, so
    measuring them after thousands of idle sockets would show nothing."""
    lines = ["| connections | kind | proxy RSS MiB | KiB per connection |", "|---|---|---|---|"]
    base = rss_kib(pid)
    for count in sessions:
        conns = [psycopg.connect(dsn(port), options="-c tenant_proxy.tenant=1", autocommit=True)
                 for _ in range(count)]
        time.sleep(1)
        rss = rss_kib(pid)
        lines.append(f"| {count} | logged in, idle (each with its upstream) | {rss / 1024:.1f} | "
                     f"{(rss - base) / max(count, 1):.1f} |")
        for c in conns:
            c.close()
        time.sleep(1)
    base = rss_kib(pid)
    for count in idle:
        socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(count)]
        time.sleep(1)
        rss = rss_kib(pid)
        lines.append(f"| {count} | connected, not logged in | {rss / 1024:.1f} | "
                     f"{(rss - base) / max(count, 1):.1f} |")
        for s in socks:
            s.close()
        time.sleep(1)
    return lines


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=300)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--reload-every", type=float, default=5)
    ap.add_argument("--idle", type=int, nargs="*", default=[])
    ap.add_argument("--sessions", type=int, nargs="*", default=[])
    ap.add_argument("--write")
    args = ap.parse_args()
    # SIGTERM (kill, timeout) unwinds like Ctrl-C, so the proxy and cluster are stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    with tempfile.TemporaryDirectory(prefix="tenant-proxy-soak-") as work:
        out = run(args, Path(work))
    emit(out, args.write)
    return 0


def run(args: argparse.Namespace, work: Path) -> list[str]:
    cluster, proc, port, rules, http_port = start(work, max([*args.sessions, 100]) + 50)
    title = " and ".join(part for part, ran in (("Soak", args.duration > 0),
                                                ("idle connections", args.idle or args.sessions))
                         if ran).capitalize()
    out = [f"\n## {title} ({time.strftime('%Y-%m-%d')})\n",
           f"Command: `python bench/soak.py {' '.join(sys.argv[1:])}` (the proxy as its own "
           f"process; {os.cpu_count()} cores shared with PostgreSQL and the clients).\n"]
    try:
        if args.duration > 0:
            def items() -> int:  # the workload inserts more than it deletes
                return int(cluster.psql("SELECT count(*) FROM order_items", database="corpus"))

            before = items()
            out += soak(port, rules, proc.pid, http_port, args.duration, args.clients,
                        args.reload_every)
            out += ["", f"order_items rows (unindexed, scanned by the workload): {before} at "
                    f"the start, {items()} at the end.", ""]
        if args.idle or args.sessions:
            out += idle_memory(port, proc.pid, args.idle, args.sessions)
    finally:
        proc.terminate()
        proc.wait(30)
        cluster.destroy()
    return out


if __name__ == "__main__":
    raise SystemExit(main())
