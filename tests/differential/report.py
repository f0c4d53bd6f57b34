"""Markdown for the differential fuzzer: figures, mismatch classes with their
shortest example, and the position x kind x scope coverage table."""

from __future__ import annotations

import re
from collections import defaultdict

from tests.differential.generator import KINDS, POSITIONS
from tests.differential.runner import CLASSES, REFUSED, Case, Tally
from tests.differential.schema import SCOPES


def mismatch_classes(tally: Tally) -> list[tuple[tuple[str, str, str], int, Case]]:
    """(class, reason, kind) -> count and the shortest statement, most frequent first."""
    groups: dict[tuple[str, str, str], list[Case]] = defaultdict(list)
    for case in tally.mismatches:
        why = re.sub(r"; shows .*$", "; shows another tenant's value", case.verdict.why)
        groups[(case.verdict.klass or "", why, case.statement.kind)].append(case)
    out = []
    for key, cases in groups.items():
        shortest = min(cases, key=lambda c: len(c.statement.sql))
        out.append((key, len(cases), shortest))
    return sorted(out, key=lambda g: (CLASSES.index(g[0][0]), -g[1]))


def figures(tally: Tally) -> list[str]:
    total = tally.total
    rate = total / tally.seconds if tally.seconds else 0.0
    mism = sum(tally.classes.values())
    refusals = tally.outcomes[REFUSED] + tally.classes["refusal"]
    lines = [
        f"- statements run: {total} ({tally.protocols['simple']} simple Query, "
        f"{tally.protocols['extended']} extended Parse/Bind/Execute), "
        f"{tally.seconds:.0f} s, {rate:.0f} statements/s (RLS reference and proxy "
        "each run every statement once per protocol)",
        f"- agreements: {tally.outcomes['agree']}; refused by the proxy where RLS also "
        f"failed: {tally.outcomes[REFUSED]}; PostgreSQL RLS itself failed on "
        f"{tally.rls_errors} ({100 * tally.rls_errors / max(total, 1):.0f}%)",
        f"- refusal rate (any proxy 42501/0A000 refusal): {refusals} "
        f"({100 * refusals / max(total, 1):.1f}%)",
        f"- **mismatches: {mism}** — " + ", ".join(f"{k}: {tally.classes[k]}" for k in CLASSES),
    ]
    return lines


def classes_table(tally: Tally, limit: int = 40) -> list[str]:
    groups = mismatch_classes(tally)
    if not groups:
        return ["No mismatches."]
    lines = ["| class | reason | kind | count | shortest example (simple form) |",
             "|---|---|---|---|---|"]
    for (klass, why, kind), n, case in groups[:limit]:
        sql = case.statement.sql.replace("|", "\\|")
        lines.append(f"| {klass} | {why} | {kind} | {n} | `{sql}` |")
    if len(groups) > limit:
        lines.append(f"| ... | {len(groups) - limit} more groups | | | |")
    return lines


def coverage_table(tally: Tally) -> list[str]:
    """Rows: position x kind that occurred; columns: scope classes; each cell
    ``statements / agreements / refusals / mismatches`` (both protocols)."""
    lines = ["| position | kind | " + " | ".join(SCOPES) + " |",
             "|---|---|" + "---|" * len(SCOPES)]
    for pos in POSITIONS:
        for kind in KINDS:
            row = []
            for scope in SCOPES:
                c = tally.cells.get((pos, kind, scope))
                if not c:
                    row.append("")
                    continue
                refused = c[REFUSED] + c["refusal"]
                mism = sum(c[k] for k in CLASSES if k != "refusal")
                row.append(f"{c['statements']} / {c['agree']} / {refused} / {mism}")
            if any(row):
                lines.append(f"| {pos} | {kind} | " + " | ".join(row) + " |")
    return lines


def gaps(tally: Tally) -> list[str]:
    """Positions x scopes never generated (any kind)."""
    seen = {(p, s) for p, _, s in tally.cells}
    return [f"{p}/{s}" for p in POSITIONS for s in SCOPES if (p, s) not in seen]
