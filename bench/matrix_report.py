"""The pgbench matrix as Markdown: machine, command, one table per workload with
medians, latency percentiles, ratios from the same run and the CPU split, then
how the figures compare with the issue's targets."""

from __future__ import annotations

import math
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.matrix_measure import STATEMENTS_PER_TRANSACTION, Run
from bench.matrix_setup import DIRECT, POOLER, ensure_pgbouncer
from proxy.localpg.cluster import find_bindir

Cell = tuple[str, str, int]  # workload, protocol, clients
WORKLOAD_TITLES = {"select": "`-S` (select only)", "tpcb": "TPC-B-like (the default script)"}
#: The issue's targets: isolation at least 0.9 x PgBouncer session mode, proxy CPU at
#: most 25 us per statement, all features at least 0.8 x PgBouncer.
TARGET_CELLS = [("select", p, c) for p in ("simple", "prepared") for c in (8, 32)]


@dataclass
class Summary:
    runs: list[Run]

    @property
    def ok(self) -> list[Run]:
        return [r for r in self.runs if r.error is None]

    @property
    def tps(self) -> float:
        return statistics.median(r.tps for r in self.ok) if self.ok else math.nan

    def latency(self, key: str) -> float:
        values = [r.latency_ms[key] for r in self.ok if key in r.latency_ms]
        return statistics.median(values) if values else math.nan

    def cpu_us(self, part: str) -> float:
        """Median CPU microseconds per transaction of one part."""
        values = [r.cpu_seconds[part] / r.transactions * 1e6 for r in self.ok if r.transactions]
        return statistics.median(values) if values else math.nan


def _tool_version(cmd: list[str]) -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=10)
    except OSError:
        return "not found"
    return (out.stdout or out.stderr).strip().splitlines()[0] if (out.stdout or out.stderr) \
        else "unknown"


def machine() -> str:
    model = next((line.split(":", 1)[1].strip() for line in
                  Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.machine())
    mem_kib = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                   if line.startswith("MemTotal"))
    postgres = _tool_version([str(find_bindir() / "postgres"), "--version"])
    return (f"{len(os.sched_getaffinity(0))} CPUs ({model}), {mem_kib / 1048576:.0f} GiB, "
            f"{platform.system()} {platform.release()}, Python {platform.python_version()}, "
            f"{postgres}, {_tool_version([ensure_pgbouncer(), '--version'])}, "
            f"{_tool_version(['pgbench', '--version'])}")


def _f(value: float, digits: int = 0) -> str:
    return "n/a" if math.isnan(value) else f"{value:.{digits}f}"


def _ratio(a: float, b: float) -> str:
    return "n/a" if math.isnan(a) or math.isnan(b) or b == 0 else f"{a / b:.2f}"


def render(results: Mapping[tuple[str, str, int, str], list[Run]], targets: Sequence[str],
           command: str, settings: str, memory: list[str] | None = None) -> str:
    cells = list(dict.fromkeys(k[:3] for k in results))  # in the order they ran
    lines = [
        f"## pgbench matrix ({time.strftime('%Y-%m-%d')})\n",
        f"Machine: {machine()}. pgbench, PostgreSQL, PgBouncer and the proxy all share "
        "these CPUs (and the machine is shared with other work), so figures are noisy: "
        "compare targets within one cell, where runs are interleaved.\n",
        f"Command: `{command}`\n",
        f"Setup: {settings}\n",
        "Columns: median TPS over the repeats (each run listed); latency percentiles "
        "from pgbench's sampled per-transaction log (median over the repeats); ratios to "
        "direct PostgreSQL and to PgBouncer session mode in the same cell; CPU microseconds "
        "per transaction of pgbench, PostgreSQL (all its processes) and the middle process "
        "(proxy supervisor and workers, or PgBouncer), from /proc.\n",
    ]
    for workload in dict.fromkeys(c[0] for c in cells):
        lines += [f"### {WORKLOAD_TITLES[workload]}\n",
                  "| -M | -c | target | median TPS | runs | p50 ms | p95 ms | p99 ms | "
                  "vs direct | vs PgBouncer | CPU µs/tx pgbench | PostgreSQL | proxy or "
                  "PgBouncer |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for cell in (c for c in cells if c[0] == workload):
            direct = Summary(results.get((*cell, DIRECT), []))
            pooler = Summary(results.get((*cell, POOLER), []))
            for name in targets:
                s = Summary(results.get((*cell, name), []))
                runs = ", ".join(f"{r.tps:.0f}" if r.error is None else "failed"
                                 for r in s.runs)
                lines.append(
                    f"| {cell[1]} | {cell[2]} | {name} | {_f(s.tps)} | {runs} | "
                    f"{_f(s.latency('p50'), 2)} | {_f(s.latency('p95'), 2)} | "
                    f"{_f(s.latency('p99'), 2)} | {_ratio(s.tps, direct.tps)} | "
                    f"{_ratio(s.tps, pooler.tps)} | {_f(s.cpu_us('pgbench'), 1)} | "
                    f"{_f(s.cpu_us('postgres'), 1)} | "
                    f"{'' if name == DIRECT else _f(s.cpu_us('middle'), 1)} |")
        errors = {r.error for k, runs in results.items() if k[0] == workload for r in runs
                  if r.error}
        lines += [f"\nFailed runs: {'; '.join(sorted(errors))}" if errors else "", ""]
    lines += targets_section(results)
    if memory:
        lines += ["### Idle connections: the proxy's resident memory\n", *memory, ""]
    return "\n".join(lines) + "\n"


def targets_section(results: Mapping[tuple[str, str, int, str], list[Run]]) -> list[str]:
    lines = ["### Against the issue's targets\n",
             "| cell | isolation vs PgBouncer (≥ 0.90) | isolation proxy CPU µs/statement "
             "(≤ 25) | all features vs PgBouncer (≥ 0.80) |", "|---|---|---|---|"]
    for cell in TARGET_CELLS:
        if (*cell, POOLER) not in results:
            continue
        pooler = Summary(results[(*cell, POOLER)]).tps
        iso = Summary(results.get((*cell, "proxy isolation"), []))
        full = Summary(results.get((*cell, "proxy all features"), []))
        cpu = iso.cpu_us("middle") / STATEMENTS_PER_TRANSACTION[cell[0]]
        lines.append(f"| -S -M {cell[1]} -c {cell[2]} | {_verdict(iso.tps / pooler, 0.9)} | "
                     f"{_verdict(cpu, 25, lower=True, digits=1)} | "
                     f"{_verdict(full.tps / pooler, 0.8)} |")
    return [*lines, ""]


def _verdict(value: float, target: float, lower: bool = False, digits: int = 2) -> str:
    if math.isnan(value):
        return "n/a"
    met = value <= target if lower else value >= target
    if met:
        return f"{value:.{digits}f} (met)"
    miss = (value / target - 1) if lower else (1 - value / target)
    return f"{value:.{digits}f} (missed by {miss:.0%})"
