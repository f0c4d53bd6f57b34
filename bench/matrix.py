"""The pgbench matrix: direct PostgreSQL, PgBouncer (session and transaction mode)
and tenant-proxy (pass-through, isolation, isolation + encryption, all features), in
one run.

    python -m bench.matrix --write bench/RESULTS.md          # the full matrix (~1.5 h)
    python -m bench.matrix --quick --write bench/RESULTS.md  # a reduced one (~15 min)

It starts its own PostgreSQL and PgBouncer (installing Debian's package if
needed), adds a tenant column to the pgbench tables the bench rules scope
(bench/rules.yaml), learns an anomaly baseline for the all-features proxy, then
runs every workload x protocol x client count, repeating each cell with the
targets interleaved so drift hits them alike. The section it writes replaces
the previous pgbench section of RESULTS.md; other sections stay. Last, it
measures the proxy's resident memory with idle connections (bench/soak.py).
"""

from __future__ import annotations

import argparse
import shutil
import signal
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

from bench import soak
from bench.matrix_measure import SAMPLING_RATE, WORKLOADS, Run, postmaster_pid, run_pgbench
from bench.matrix_report import render
from bench.matrix_setup import TARGETS, Target, Targets, pgbench_command, prepare_database
from bench.report import publish
from proxy.config.settings import available_cpus
from proxy.localpg.cluster import LocalCluster

QUICK = {"duration": 5, "repeat": 2, "workloads": ["select", "tpcb"],
         "protocols": ["simple", "prepared"], "clients": [8, 32]}
LEARN_SECONDS = 3
IDLE = [1, 1000, 5000]
SESSIONS = [1, 100, 1000]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m bench.matrix", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true",
                    help=f"reduced matrix: {', '.join(f'{k} {v}' for k, v in QUICK.items())}")
    ap.add_argument("--scale", type=int, default=10)
    ap.add_argument("--duration", type=int, default=15, help="seconds per pgbench run")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--workloads", nargs="+", choices=list(WORKLOADS),
                    default=["select", "tpcb"])
    ap.add_argument("--protocols", nargs="+", choices=["simple", "extended", "prepared"],
                    default=["simple", "extended", "prepared"])
    ap.add_argument("--clients", nargs="+", type=int, default=[8, 32, 128])
    ap.add_argument("--targets", nargs="+", choices=[t.name for t in TARGETS],
                    default=[t.name for t in TARGETS], metavar="TARGET",
                    help="subset of: " + ", ".join(repr(t.name) for t in TARGETS))
    ap.add_argument("--proxy-workers", type=int, default=available_cpus(),
                    help="tenant-proxy --workers (default: the proxy's own, one per CPU)")
    ap.add_argument("--also-workers", type=int, metavar="N",
                    help="add a target: the proxy with isolation and N workers")
    ap.add_argument("--no-memory", dest="memory", action="store_false",
                    help="skip the idle-connection memory measurement")
    ap.add_argument("--write", help="put the section into this Markdown file")
    args = ap.parse_args(argv)
    if args.quick:
        defaults = ap.parse_args([])
        for key, value in QUICK.items():
            if getattr(args, key) == getattr(defaults, key):  # explicit flags win
                setattr(args, key, value)
    return args


def learn_baseline(targets: Targets, args: argparse.Namespace) -> None:
    """A few seconds of every workload and protocol through a proxy in learn mode
    (one worker, so one process writes the baseline), saved when it stops."""
    proc, port, _ = targets.proxy(frozenset({"isolation", "anomaly"}), 1, anomaly_mode="learn")
    try:
        for workload in args.workloads:
            for protocol in args.protocols:
                cmd, env = pgbench_command(port, *WORKLOADS[workload], "-n", "-M", protocol,
                                           "-c", "4", "-T", str(LEARN_SECONDS))
                subprocess.run(cmd, capture_output=True, env=env, check=True)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)


def flagged(http_port: int | None) -> int | None:
    """Statements the all-features proxy flagged as anomalous (its /metrics)."""
    if http_port is None:
        return None
    with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/metrics", timeout=10) as r:
        text = r.read().decode()
    return int(sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith("tenant_proxy_statements_total{")
                   and 'outcome="flagged"' in line))


def run_matrix(args: argparse.Namespace, chosen: list[Target], cluster: LocalCluster,
               workdir: Path) -> tuple[dict[tuple[str, str, int, str], list[Run]], str]:
    targets = Targets(cluster, workdir, args.proxy_workers)
    if any("anomaly" in t.features for t in chosen):
        learn_baseline(targets, args)
    results: dict[tuple[str, str, int, str], list[Run]] = {}
    postmaster = postmaster_pid(cluster.datadir)
    try:
        targets.start(tuple(chosen))
        for workload in args.workloads:
            for protocol in args.protocols:
                for clients in args.clients:
                    for _ in range(args.repeat):
                        for target in chosen:
                            running = targets.running[target.name]
                            run = run_pgbench(running.port, workload, protocol, clients,
                                              args.duration, postmaster,
                                              running.proc.pid if running.proc else None)
                            results.setdefault((workload, protocol, clients, target.name),
                                               []).append(run)
                            print(f"{workload:6} {protocol:8} c={clients:<4} {target.name:24}"
                                  f" {run.tps:9.0f} tps {run.error or ''}", flush=True)
        notes = {name: flagged(r.http) for name, r in targets.running.items() if r.http}
    finally:
        targets.stop()
    anomaly = "; ".join(f"{name}: {n} statements flagged as anomalous"
                        for name, n in notes.items() if n is not None)
    return results, anomaly


def at_rest(root: int) -> str:
    workers = soak.process_tree(root)[1:]
    own = soak.rss_kib(root) - sum(soak.rss_kib(pid) for pid in workers)
    return f"supervisor {own / 1024:.0f} MiB, " + ", ".join(
        f"worker {soak.rss_kib(pid) / 1024:.0f} MiB" for pid in workers)


def memory(args: argparse.Namespace) -> list[str]:
    """bench/soak.py's idle-connection measurement."""
    work = Path(tempfile.mkdtemp(prefix="tenant-proxy-memory-"))
    cluster, proc, port, _, _ = soak.start(work, max(SESSIONS) + 50)
    try:
        return [f"Via `bench/soak.py`'s idle measurement (its proxy runs `tenant-proxy run` "
                f"with the default worker count, {available_cpus()}, on the soak schema and "
                f"rules). At rest: {at_rest(proc.pid)}. RSS sums every process of the proxy; "
                "KiB per connection is the growth over the row before's baseline.\n",
                *soak.idle_memory(port, proc.pid, IDLE, SESSIONS)]
    finally:
        proc.terminate()
        proc.wait(60)
        cluster.destroy()
        shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    chosen = [t for t in TARGETS if t.name in args.targets]
    if args.also_workers:
        chosen.append(Target(f"proxy isolation, {args.also_workers} workers", "proxy",
                             features=frozenset({"isolation"}), workers=args.also_workers))
    workdir = Path(tempfile.mkdtemp(prefix="tenant-proxy-matrix-"))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unwind: stop what we started
    cluster = LocalCluster(settings={"max_connections": str(4 * max(args.clients) + 100)})
    cluster.start()
    try:
        prepare_database(cluster, args.scale)
        results, anomaly = run_matrix(args, chosen, cluster, workdir)
    finally:
        cluster.destroy()
        shutil.rmtree(workdir, ignore_errors=True)
    settings = (f"scale {args.scale}, {args.duration} s per run, {args.repeat} repeats per "
                f"cell, pgbench -j min(2, clients) with {SAMPLING_RATE:.0%} of transactions "
                f"logged for percentiles, proxy with {args.proxy_workers} worker(s) unless the "
                "target says otherwise, bench "
                "rules bench/rules.yaml (pgbench_accounts tenant-scoped, the rest shared); "
                "encryption = pgbench_accounts.filler encrypted (see bench/matrix_setup.py; "
                "value costs are in the encryption section); all features = isolation + "
                "encryption + anomaly scoring (monitor, baseline learned "
                f"from {LEARN_SECONDS} s of each workload and protocol) + audit trail + "
                "/metrics" + (f"; {anomaly}" if anomaly else "") + ".")
    command = "python -m bench.matrix " + " ".join(sys.argv[1:] if argv is None else argv)
    section = render(results, [t.name for t in chosen], command.strip(), settings,
                     memory(args) if args.memory else None)
    publish(section, args.write, ["pgbench"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
