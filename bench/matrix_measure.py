"""One pgbench run, measured: TPS, latency percentiles from pgbench's sampled
per-transaction log, and the CPU time pgbench, PostgreSQL and the middle
process (proxy or PgBouncer) spent on it, read from /proc."""

from __future__ import annotations

import os
import re
import resource
import statistics
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from bench.matrix_setup import pgbench_command

_TICK = os.sysconf("SC_CLK_TCK")
#: Share of transactions pgbench logs; enough for p99 in a few seconds of traffic.
SAMPLING_RATE = 0.05
#: pgbench scripts by workload name, and the statements one transaction sends.
WORKLOADS = {"select": ("-S",), "tpcb": ()}
STATEMENTS_PER_TRANSACTION = {"select": 1, "tpcb": 7}  # TPC-B: BEGIN, 5 statements, END


@dataclass
class Run:
    tps: float
    transactions: int
    latency_ms: dict[str, float]  # p50, p95, p99
    cpu_seconds: dict[str, float]  # pgbench, postgres, middle
    error: str | None = None


def _stat_times(pid: int) -> tuple[int, int] | None:
    """(ppid, utime+stime+cutime+cstime ticks) of a process, None if it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text.rsplit(")", 1)[1].split()
    return int(fields[1]), sum(int(x) for x in fields[11:15])


def tree_cpu(root: int) -> float:
    """CPU seconds of a process and all its live descendants, including the
    children they already reaped (so backends that came and went count too)."""
    table = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            found = _stat_times(int(entry))
            if found is not None:
                table[int(entry)] = found
    total, todo, seen = 0, [root], set()
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    while todo:
        pid = todo.pop()
        if pid in seen or pid not in table:
            continue
        seen.add(pid)
        total += table[pid][1]
        todo.extend(children.get(pid, ()))
    return total / _TICK


def postmaster_pid(datadir: Path) -> int:
    return int((datadir / "postmaster.pid").read_text().split()[0])


def _percentiles(logdir: Path) -> dict[str, float]:
    latencies = []
    for log in logdir.iterdir():
        for line in log.read_text().splitlines():
            fields = line.split()
            if len(fields) >= 3:
                latencies.append(int(fields[2]) / 1000.0)
    if len(latencies) < 2:
        return {"p50": float("nan"), "p95": float("nan"), "p99": float("nan")}
    cuts = statistics.quantiles(latencies, n=100, method="inclusive")
    return {"p50": cuts[49], "p95": cuts[94], "p99": cuts[98]}


def run_pgbench(port: int, workload: str, protocol: str, clients: int, duration: int,
                postmaster: int, middle: int | None) -> Run:
    """pgbench against ``port``; ``middle`` is the proxy's or PgBouncer's root pid."""
    with tempfile.TemporaryDirectory(prefix="pgbench-log-") as logdir:
        cmd, env = pgbench_command(
            port, *WORKLOADS[workload], "-n", "-M", protocol, "-c", str(clients),
            "-j", str(min(2, clients)), "-T", str(duration), "--log",
            f"--log-prefix={logdir}/tx", f"--sampling-rate={SAMPLING_RATE}")
        before = (resource.getrusage(resource.RUSAGE_CHILDREN), tree_cpu(postmaster),
                  tree_cpu(middle) if middle else 0.0)
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
        after = (resource.getrusage(resource.RUSAGE_CHILDREN), tree_cpu(postmaster),
                 tree_cpu(middle) if middle else 0.0)
        pgbench_cpu = (after[0].ru_utime + after[0].ru_stime
                       - before[0].ru_utime - before[0].ru_stime)
        cpu = {"pgbench": pgbench_cpu, "postgres": after[1] - before[1],
               "middle": after[2] - before[2]}
        tps = re.search(r"tps = ([\d.]+) \(without initial", proc.stdout)
        count = re.search(r"number of transactions actually processed: (\d+)", proc.stdout)
        failed = re.search(r"number of failed transactions: (\d+)", proc.stdout)
        if proc.returncode != 0 or tps is None or count is None \
                or (failed and int(failed.group(1)) > 0):
            lines = proc.stderr.strip().splitlines() or ["no output"]
            reason = next((line for line in lines if "ERROR:" in line), lines[-1])
            reason = re.sub(r"client \d+ ", "", reason.removeprefix("pgbench: error: "))[:200]
            return Run(0.0, 0, {}, cpu, error=reason)
        return Run(float(tps.group(1)), int(count.group(1)), _percentiles(Path(logdir)), cpu)
