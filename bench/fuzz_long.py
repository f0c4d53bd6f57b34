"""The long protocol-fuzzing run (issue 7): atheris/libFuzzer on every target.

    python bench/fuzz_long.py                       # 10 minutes per target, all targets
    python bench/fuzz_long.py --minutes 3 --targets relay relay_sql --parallel 2
    python bench/fuzz_long.py --corpus-dir /var/tmp/fuzz-corpus   # keep what it learns

Each target runs ``python -m tests.fuzz.harness`` over a working corpus
(seeded from ``tests/fuzz/seeds/<target>``) for its time budget. Bugs already
pinned by a failing regression test (``KNOWN_BUGS`` in
``tests/fuzz/targets.py``) are skipped so the run can find new ones
(``--strict`` reports them too). A new crash, timeout or out-of-memory input
is copied to ``tests/fuzz/crashes/<target>-<sha1>.bin`` with a ``.txt`` that
holds its traceback, its signature and the input as a bytes literal; the
crash's signature is then skipped and the target restarted for the time that
is left, so one bug does not end the run.

It reports, per target: executions, exec/s, libFuzzer's edge coverage
(``cov:``) and features (``ft:``), corpus size, and the crashes found.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.fuzz import targets  # noqa: E402

STATUS = re.compile(r"^#(\d+)\s+\w+\s+cov: (\d+) ft: (\d+) corp: (\d+)/(\S+)"
                    r"(?: lim: \d+)? exec/s: (\d+) rss: (\d+)Mb", re.MULTILINE)
ARTIFACT = re.compile(r"Test unit written to (\S+)")
KNOWN_HIT = re.compile(r"^fuzz: ignored known bug (\S+) after ([\d.]+) s", re.MULTILINE)


@dataclass
class Crash:
    kind: str  # crash, timeout, oom, leak, slow-unit
    path: str
    signature: str
    size: int


@dataclass
class TargetReport:
    target: str
    seconds: float = 0.0
    executions: int = 0
    cov: int = 0
    ft: int = 0
    corpus_files: int = 0
    corpus_size: str = ""
    peak_rss_mb: int = 0
    restarts: int = 0
    crashes: list[Crash] = field(default_factory=list)
    known_bugs_hit: dict[str, float] = field(default_factory=dict)

    @property
    def exec_per_s(self) -> float:
        return self.executions / self.seconds if self.seconds else 0.0


def reproduce(target: str, data: bytes) -> tuple[str, str]:
    """Run a crashing input again in this process: (signature, traceback)."""
    try:
        targets.fuzz_target(target, skip_known=False)(data)
    except Exception as exc:
        return targets.signature(exc), "".join(traceback.format_exception(exc))
    return "no-repro", "the input did not crash when run again in-process"


def save_crash(target: str, artifact: Path, crashes_dir: Path, output: str) -> Crash:
    data = artifact.read_bytes()
    kind = artifact.name.split("-", 1)[0]
    digest = hashlib.sha1(data).hexdigest()
    crashes_dir.mkdir(parents=True, exist_ok=True)
    dest = crashes_dir / f"{target}-{digest[:16]}.bin"
    dest.write_bytes(data)
    if kind == "crash":
        sig, story = reproduce(target, data)
    else:
        sig, story = f"{kind}@{target}", output[-3000:]
    dest.with_suffix(".txt").write_text(
        f"target: {target}\nkind: {kind}\nsignature: {sig}\nlength: {len(data)}\n\n"
        f"{story}\n\ninput as a bytes literal:\n{data!r}\n")
    return Crash(kind, str(dest.relative_to(REPO)), sig, len(data))


def run_target(target: str, seconds: float, work: Path, args: argparse.Namespace
               ) -> TargetReport:
    report = TargetReport(target)
    corpus = work / target
    if not corpus.exists():
        shutil.copytree(targets.SEEDS / target, corpus)
    artifacts = work / f"{target}-artifacts"
    ignore: list[str] = []
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 5:
        shutil.rmtree(artifacts, ignore_errors=True)
        artifacts.mkdir(parents=True)
        env = {**os.environ, "FUZZ_IGNORE_KNOWN": "0" if args.strict else "1",
               "FUZZ_IGNORE_SIGNATURES": ",".join(ignore)}
        if args.instrument:
            env["FUZZ_INSTRUMENT"] = args.instrument
        cmd = [sys.executable, "-m", "tests.fuzz.harness", target,
               f"-dict={targets.DICTS[target]}", f"-max_total_time={int(left)}",
               f"-max_len={args.max_len}", f"-timeout={args.timeout}",
               f"-rss_limit_mb={args.rss_limit_mb}", f"-artifact_prefix={artifacts}/",
               "-print_final_stats=1", str(corpus)]
        started = time.monotonic()
        proc = subprocess.run(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, errors="replace",
                              check=False, timeout=left + 120)
        report.seconds += time.monotonic() - started
        output = proc.stdout
        (work / f"{target}-{report.restarts}.log").write_text(output)
        runs = re.findall(r"stat::number_of_executed_units:\s*(\d+)", output)
        statuses = STATUS.findall(output)
        if runs:
            report.executions += int(runs[-1])
        elif statuses:
            report.executions += int(statuses[-1][0])
        if statuses:
            last = statuses[-1]
            report.cov, report.ft = max(report.cov, int(last[1])), max(report.ft, int(last[2]))
            report.corpus_files, report.corpus_size = int(last[3]), last[4]
            report.peak_rss_mb = max(report.peak_rss_mb, int(last[6]))
        for name, after in KNOWN_HIT.findall(output):
            report.known_bugs_hit.setdefault(name, float(after))
        found = [Path(p) for p in ARTIFACT.findall(output)] + sorted(artifacts.glob("*"))
        seen: set[Path] = set()
        for artifact in found:
            if artifact in seen or not artifact.exists():
                continue
            seen.add(artifact)
            crash = save_crash(target, artifact, args.crashes_dir, output)
            report.crashes.append(crash)
            print(f"  {target}: {crash.kind} {crash.signature} -> {crash.path}", flush=True)
            if crash.kind == "crash" and crash.signature != "no-repro":
                ignore.append(crash.signature)
        if proc.returncode == 0 or not seen:
            break
        report.restarts += 1
        if report.restarts > args.max_restarts:
            break
    return report


def print_table(reports: list[TargetReport]) -> None:
    print(f"\n{'target':<10} {'time s':>7} {'executions':>11} {'exec/s':>8} {'cov':>6} "
          f"{'ft':>7} {'corpus':>12} {'rss MB':>7} {'crashes':>8}")
    for r in reports:
        print(f"{r.target:<10} {r.seconds:>7.0f} {r.executions:>11,} {r.exec_per_s:>8.0f} "
              f"{r.cov:>6} {r.ft:>7} {f'{r.corpus_files}/{r.corpus_size}':>12} "
              f"{r.peak_rss_mb:>7} {len(r.crashes):>8}")
    for r in reports:
        for c in r.crashes:
            print(f"  new {c.kind} in {r.target}: {c.signature} ({c.size} bytes) -> {c.path}")
        for name, after in r.known_bugs_hit.items():
            print(f"  known bug {name} hit by {r.target} after {after:.1f} s (skipped)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", nargs="+", default=list(targets.TARGET_NAMES),
                        choices=targets.TARGET_NAMES)
    parser.add_argument("--minutes", type=float, default=10.0, help="per target")
    parser.add_argument("--parallel", type=int, default=1, help="targets at once")
    parser.add_argument("--max-len", type=int, default=8192)
    parser.add_argument("--timeout", type=int, default=10, help="seconds for one input")
    parser.add_argument("--rss-limit-mb", type=int, default=2048)
    parser.add_argument("--max-restarts", type=int, default=10)
    parser.add_argument("--corpus-dir", type=Path,
                        help="working corpus to keep between runs (default: a temp dir)")
    parser.add_argument("--crashes-dir", type=Path, default=targets.CRASHES)
    parser.add_argument("--instrument", default="",
                        help="more packages to instrument, e.g. sqlglot")
    parser.add_argument("--strict", action="store_true",
                        help="report the known bugs too (the run stops at the first)")
    parser.add_argument("--json", type=Path, help="also write the report as JSON")
    args = parser.parse_args()
    try:
        import atheris  # noqa: F401
    except ImportError:
        sys.exit("atheris is not installed: pip install 'atheris>=3.0,<4'")
    work = args.corpus_dir or Path(tempfile.mkdtemp(prefix="fuzz-long-"))
    work.mkdir(parents=True, exist_ok=True)
    seconds = args.minutes * 60
    print(f"fuzzing {', '.join(args.targets)} for {args.minutes:g} min each "
          f"({args.parallel} at a time); work dir {work}", flush=True)
    reports: list[TargetReport] = []
    if args.parallel <= 1:
        for target in args.targets:
            reports.append(run_target(target, seconds, work, args))
            print_table(reports[-1:])
    else:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(args.parallel) as pool:
            reports = list(pool.map(lambda t: run_target(t, seconds, work, args),
                                    args.targets))
    print_table(reports)
    if args.json:
        args.json.write_text(json.dumps([{**asdict(r), "exec_per_s": r.exec_per_s}
                                         for r in reports], indent=2))
    return 1 if any(r.crashes for r in reports) else 0


if __name__ == "__main__":
    sys.exit(main())
