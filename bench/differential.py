"""The differential fuzzer's long run: generated statements through the proxy
(bound tenant 1, both protocols) against PostgreSQL row-level security for
tenant 1, with a coverage table and the mismatches found.

    python bench/differential.py --count 100000 --seed 1 --floor off --write bench/RESULTS.md
    python bench/differential.py --count 2000 --floor on          # print only

``--count`` counts statements run (each generated statement runs once per
protocol). ``--floor on`` puts the proxy's upstream on a non-superuser role
bound by FORCE row-level-security policies keyed on ``tenant_proxy.tenant``
(tests/differential/schema.py, ``floor_sql``); ``off`` uses the superuser, so
the proxy alone must be right. Starts its own throwaway PostgreSQL.
"""

from __future__ import annotations

import argparse
import datetime as dt
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.report import publish  # noqa: E402
from proxy.localpg.cluster import LocalCluster, find_bindir  # noqa: E402
from tests.certs import make_certs  # noqa: E402
from tests.differential.generator import Generator  # noqa: E402
from tests.differential.report import (  # noqa: E402
    classes_table,
    coverage_table,
    figures,
    gaps,
)
from tests.differential.runner import Tally, fuzzer  # noqa: E402
from tests.harness import Database  # noqa: E402

HEADING = "Differential fuzzer vs PostgreSQL RLS"


def run(count: int, seed: int, floor: bool, progress: int) -> Tally:
    work = Path(tempfile.mkdtemp(prefix="difffuzz-"))
    certs = make_certs(work)
    cluster = LocalCluster()
    cluster.start()
    try:
        db = Database("127.0.0.1", cluster.port, "postgres", cluster.superuser_password,
                      cluster)
        with fuzzer(db, certs, work, floor=floor) as fz:
            gen = Generator(seed)
            while fz.tally.total < count:
                fz.run_all([gen.statement() for _ in range(min(250, count - fz.tally.total))])
                if progress and fz.tally.total % progress < 500:
                    t = fz.tally
                    print(f"  {t.total} statements, {t.total / t.seconds:.0f}/s, "
                          f"mismatches {dict(t.classes)}", file=sys.stderr, flush=True)
            if fz.digest() != fz.start_digest:
                raise SystemExit("the database changed during the run (a write escaped "
                                 "its rolled-back transaction)")
            return fz.tally
    finally:
        cluster.destroy()


def machine() -> str:
    pg = subprocess.run([str(find_bindir() / "postgres"), "--version"], capture_output=True,
                        text=True).stdout.strip()
    return f"Python {platform.python_version()}, {pg}, Linux {platform.release()}"


def section(tally: Tally, args: argparse.Namespace) -> str:
    floor = "on" if args.floor == "on" else "off"
    lines = [
        f"## {HEADING}, floor {floor} ({dt.date.today().isoformat()})", "",
        f"Command: `python bench/differential.py --count {args.count} --seed {args.seed} "
        f"--floor {floor} --write bench/RESULTS.md`", "",
        f"Machine: {machine()}; 2 shared CPUs, the proxy in-process on its own thread.", "",
        "Each generated statement (tests/differential/generator.py) runs as the bound "
        "tenant-1 login through the proxy (rules: tests/differential/schema.py; "
        "`multi_statement: allow`, `reset_all: allow`, `sql_prepare: rewrite`) and directly "
        "as `rls_reader` under RLS policies for tenant 1, each in a rolled-back transaction, "
        "in both protocols. Upstream role of the proxy: "
        + ("`fuzz_floor`, a non-superuser with FORCE RLS policies on `tenant_proxy.tenant`."
           if floor == "on" else "the superuser (the proxy alone must isolate).")
        + " Leaks are writes to rows not tenant 1's (trigger counter), other tenants' "
        "values or tenant_id in results, results equal to the statement run without RLS, "
        "and errors raised by rows RLS hides.", "",
        *figures(tally), "",
        "### Mismatch classes", "",
        *classes_table(tally), "",
        "### Coverage (position x kind x scope)", "",
        "Each cell: statements / agreements / refusals / mismatches other than refusals "
        "(both protocols). A position names where a relation of the scope class is "
        "referenced; for group-by, having, order-by, window and filter also the clause "
        "working over such a relation.", "",
        *coverage_table(tally), "",
        f"Never generated (position/scope): {', '.join(gaps(tally)) or 'none'}.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--floor", choices=("on", "off"), default="off")
    parser.add_argument("--write", metavar="FILE", help="put the section into FILE")
    parser.add_argument("--examples", type=int, default=0,
                        help="also print this many full mismatch cases")
    parser.add_argument("--progress", type=int, default=5000)
    args = parser.parse_args()
    tally = run(args.count, args.seed, args.floor == "on", args.progress)
    for case in tally.mismatches[:args.examples]:
        print(case.report(), file=sys.stderr)
    floor = "on" if args.floor == "on" else "off"
    publish(section(tally, args), args.write, [f"{HEADING}, floor {floor}"])


if __name__ == "__main__":
    main()
