"""Cost of the SQL pipeline per statement: cache hit and cache miss, in microseconds.

Runs the isolation engine in-process (no sockets, no database) over
representative statements and reports medians of repeated timings:

    python bench/rewrite_cost.py [--repeat 2000] [--write bench/RESULTS.md]

A hit is what a session pays for a statement seen before (with other literal
values, for the simple protocol); a miss plans it from scratch (pglast parse,
policy checks, sqlglot parse, scoping pass, SQL generation).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.report import publish
from proxy.policy.rules import parse_rules
from proxy.session.engine import Engine
from proxy.session.startup import open_session
from proxy.wire.frontend import Parse

RULES = """
version: 1
tenant: {column: tenant_id, type: integer}
tables:
  pgbench_accounts: {scope: tenant}
  pgbench_branches: {scope: shared, writable: true}
  pgbench_tellers: {scope: shared, writable: true}
  pgbench_history: {scope: shared, writable: true}
  users: {scope: tenant}
  orders: {scope: tenant}
users:
  bench: {identity: bound, tenant: 1}
"""

STATEMENTS = {
    "pgbench -S (simple)": "SELECT abalance FROM pgbench_accounts WHERE aid = {n};",
    "ORM join": "SELECT users.id, users.email, orders.total FROM users JOIN orders ON "
                "orders.user_id = users.id WHERE users.id = {n} ORDER BY orders.id LIMIT 10",
    "UPDATE": "UPDATE pgbench_accounts SET abalance = abalance + {n} WHERE aid = 7",
    "INSERT": "INSERT INTO orders (user_id, total) VALUES ({n}, 12.5)",
    "shared read": "SELECT bbalance FROM pgbench_branches WHERE bid = {n}",
}


def _time(fn, repeat: int) -> float:  # type: ignore[no-untyped-def]
    samples = []
    for i in range(repeat):
        start = time.perf_counter_ns()
        fn(i)
        samples.append(time.perf_counter_ns() - start)
    return statistics.median(samples) / 1000


def measure(repeat: int) -> list[tuple[str, float, float, float]]:
    rows = []
    for label, template in STATEMENTS.items():
        engine = Engine(parse_rules(RULES))
        session, _ = open_session(engine, "bench", {})
        session.query(template.format(n=1))  # warm: the plan is cached

        def hit(i: int, session=session, template=template) -> None:  # type: ignore[no-untyped-def]
            session.query(template.format(n=i + 2))

        def miss(i: int, engine=engine, session=session, template=template) -> None:  # type: ignore[no-untyped-def]
            engine.cache.clear()
            session.query(template.format(n=i + 2))

        parse = Parse("", template.format(n="$1"))
        session.parse(parse)

        def extended_hit(i: int, session=session, parse=parse) -> None:  # type: ignore[no-untyped-def]
            session.parse(parse)

        rows.append((label, _time(hit, repeat), _time(extended_hit, repeat),
                     _time(miss, max(repeat // 10, 50))))
    return rows


def corpus_misses() -> tuple[list[float], dict[str, list[float]]]:
    """Planning time (a cache miss) of every statement of the fidelity corpus under the
    corpus rules, in microseconds: all of them, and by category."""
    import yaml

    from proxy.policy.rules import load_rules
    from proxy.sql.engine import plan_statement

    root = Path(__file__).resolve().parents[1] / "tests" / "corpus"
    rules = load_rules(root / "rules.yaml")
    entries = yaml.safe_load((root / "fidelity.yaml").read_text())["entries"]
    every: list[float] = []
    by_category: dict[str, list[float]] = {}
    for entry in entries:
        sql, extended = entry["sql"], bool(entry.get("params"))
        plan_statement(sql, rules, extended=extended)  # warm imports and caches
        samples = []
        for _ in range(5):
            start = time.perf_counter_ns()
            plan_statement(sql, rules, extended=extended)
            samples.append((time.perf_counter_ns() - start) / 1000)
        value = statistics.median(samples)
        every.append(value)
        by_category.setdefault(entry["category"], []).append(value)
    return every, by_category


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=2000)
    ap.add_argument("--write")
    args = ap.parse_args()
    rows = measure(args.repeat)
    lines = [
        f"\n## SQL pipeline cost per statement ({time.strftime('%Y-%m-%d')})\n",
        f"Command: `python bench/rewrite_cost.py --repeat {args.repeat}` (median "
        "microseconds, one core, in-process).\n",
        "| statement | simple-protocol hit µs | extended-protocol hit µs | miss µs |",
        "|---|---|---|---|",
        *(f"| {label} | {hit:.1f} | {ext:.1f} | {miss:.0f} |" for label, hit, ext, miss in rows),
    ]
    every, by_category = corpus_misses()
    try:
        import importlib.metadata as metadata

        compiled = f"sqlglotc {metadata.version('sqlglotc')} installed"
    except metadata.PackageNotFoundError:
        compiled = "without sqlglotc"
    lines += [
        "",
        f"Cache misses over the fidelity corpus ({len(every)} statements, "
        f"tests/corpus/fidelity.yaml under tests/corpus/rules.yaml; median of 5 plannings "
        f"each; {compiled}): median {statistics.median(every):.0f} µs, p90 "
        f"{_quantile(every, 0.9):.0f} µs, p99 {_quantile(every, 0.99):.0f} µs, max "
        f"{max(every):.0f} µs; {sum(v > 1000 for v in every)} of {len(every)} above 1 ms.",
        "",
        "| category | statements | median µs | max µs |",
        "|---|---|---|---|",
        *(f"| {c} | {len(v)} | {statistics.median(v):.0f} | {max(v):.0f} |"
          for c, v in sorted(by_category.items())),
    ]
    publish("\n".join(lines).lstrip("\n") + "\n", args.write, ["SQL pipeline cost"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
