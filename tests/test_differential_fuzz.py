"""Differential fuzzing against PostgreSQL row-level security (issue 12).

At least 5,000 generated statements (tests/differential/generator.py) run as a
bound tenant-1 login through the proxy, in both protocols, and directly under
RLS for tenant 1 (tests/differential/runner.py). Any leak or wrong result
fails the test with the offending statements; refusals are reported, and
cells whose refusal share grew against the recorded baseline
(tests/differential/refusals.json; rewrite it with DIFF_FUZZ_BASELINE=write)
are printed, so a statement class that stops being accepted is visible.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.certs import CertFiles
from tests.differential.generator import Generator
from tests.differential.report import classes_table, figures
from tests.differential.runner import REFUSED, Tally, fuzzer
from tests.harness import Database

pytestmark = pytest.mark.live

COUNT = 5000
SEED = 20261204
BASELINE = Path(__file__).parent / "differential" / "refusals.json"


def _refusal_shares(tally: Tally) -> dict[str, float]:
    return {"|".join(cell): round((c[REFUSED] + c["refusal"]) / c["statements"], 3)
            for cell, c in sorted(tally.cells.items()) if c["statements"] >= 4}


def _refusal_changes(tally: Tally) -> list[str]:
    now = _refusal_shares(tally)
    if os.environ.get("DIFF_FUZZ_BASELINE") == "write":
        BASELINE.write_text(json.dumps(now, indent=0, sort_keys=True) + "\n")
        return []
    if not BASELINE.exists():
        return []
    before = json.loads(BASELINE.read_text())
    return [f"{cell}: refused {before.get(cell, 0):.0%} -> {share:.0%}"
            for cell, share in now.items() if share - before.get(cell, 0) > 0.2]


def test_proxy_matches_rls(db: Database, certs: CertFiles, tmp_path: Path) -> None:
    with fuzzer(db, certs, tmp_path) as fz:
        gen = Generator(SEED)
        while fz.tally.total < COUNT:
            fz.run_all([gen.statement() for _ in range(100)])
        unchanged = fz.digest() == fz.start_digest
    tally = fz.tally
    print("\n".join(["", "differential fuzzer:", *figures(tally)]))
    changes = _refusal_changes(tally)
    if changes:
        print("refused more often than in tests/differential/refusals.json:\n  "
              + "\n  ".join(changes))
    assert unchanged, "a write escaped its rolled-back transaction"
    failures = tally.failures()
    if failures:
        print("\n".join(classes_table(tally)))
    assert not failures, f"{len(failures)} leaks or wrong results, e.g.:\n" + \
        "\n".join(c.report() for c in failures[:15])
