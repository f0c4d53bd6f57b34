"""Benign SaaS traffic and SQL-injection attacks against a deliberately
vulnerable application, for training and measuring the anomaly detector.

The application (``VulnerableShop``) builds some statements by pasting user
input into SQL, as careless code does; the attack families feed it payloads.
Everything runs through tenant-proxy on the corpus schema
(``tests/corpus/schema.sql``). Run it to print detection and false-positive
rates (the proxy, PostgreSQL and a learn/monitor cycle are set up here):

    python bench/anomaly_workload.py [--learn 1500] [--heldout 1000] [--write bench/RESULTS.md]
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import psycopg

ATTACK_FAMILIES = ("boolean", "union", "time", "error", "stacked", "enumeration")
TENANTS = ("1", "2", "3")


@dataclass
class VulnerableShop:
    """A small storefront back end; its search and lookups paste input into SQL."""

    conn: psycopg.Connection

    def run(self, sql: str) -> int:
        """Execute, returning rows seen; errors are swallowed like a careless app does."""
        try:
            cur = self.conn.execute(sql)
            return len(cur.fetchall()) if cur.description else cur.rowcount
        except psycopg.Error:
            return -1

    # --- vulnerable endpoints (string concatenation) -----------------------
    def find_user(self, email: str) -> int:
        return self.run(f"SELECT id, name FROM users WHERE email = '{email}'")

    def order_total(self, order_id: str) -> int:
        return self.run(f"SELECT total FROM orders WHERE id = {order_id}")

    def search_docs(self, tag: str) -> int:
        return self.run(f"SELECT id FROM documents WHERE '{tag}' = ANY(tags) ORDER BY id LIMIT 20")

    # --- ordinary ORM-style traffic ----------------------------------------------
    def benign(self, rng: random.Random) -> int:
        if rng.randrange(8) == 0:  # requests of many tenants share the connection
            self.run(f"SET tenant_proxy.tenant = '{rng.choice(TENANTS)}'")
        choice = rng.randrange(10)
        n = rng.randrange(1, 40)
        if choice == 0:
            return self.find_user(f"user{n}@acme.test")
        if choice == 1:
            return self.order_total(str(n))
        if choice == 2:
            return self.search_docs(rng.choice(["red", "blue", "urgent", "draft"]))
        if choice == 3:
            return self.run(f"SELECT orders.id, orders.total, orders.created_at FROM orders "
                            f"WHERE orders.user_id = {n} ORDER BY orders.created_at DESC "
                            f"LIMIT 10 OFFSET {rng.randrange(0, 30, 10)}")
        if choice == 4:
            return self.run("SELECT users.id, count(orders.id) AS n, sum(orders.total) AS total "
                            "FROM users LEFT JOIN orders ON orders.user_id = users.id "
                            "GROUP BY users.id ORDER BY total DESC NULLS LAST LIMIT 5")
        if choice == 5:
            return self.run(f"SELECT order_items.sku, order_items.qty FROM order_items "
                            f"WHERE order_items.order_id = {n}")
        if choice == 6:
            return self.run(f"UPDATE orders SET total = total + {rng.randrange(1, 9)} "
                            f"WHERE id = {n}")
        if choice == 7:
            return self.run(f"INSERT INTO order_items (order_id, sku, qty) SELECT id, "
                            f"'sku-{n}', {rng.randrange(1, 5)} FROM orders WHERE id = {n}")
        if choice == 8:
            return self.run(f"DELETE FROM order_items WHERE sku = 'sku-{n}' AND qty > 3")
        return self.run(f"SELECT documents.id, documents.body FROM documents "
                        f"WHERE documents.id = {n}")


def attack_payloads(family: str, rng: random.Random) -> Iterator[Callable[[VulnerableShop], int]]:
    """Endpoint calls with payloads of one injection family, in a few variants each."""
    n = rng.randrange(1, 40)
    if family == "boolean":
        yield lambda s: s.find_user("x' OR '1'='1")
        yield lambda s: s.find_user("x' OR 1=1 --")
        yield lambda s: s.order_total(f"{n} OR 1=1")
        yield lambda s: s.search_docs("a' = 'a' OR 'b")
    elif family == "union":
        yield lambda s: s.find_user("x' UNION SELECT id, ssn FROM users --")
        yield lambda s: s.order_total(f"{n} UNION SELECT tenant_id FROM users")
        yield lambda s: s.find_user("x' UNION ALL SELECT 1, email FROM users WHERE 'a'='a")
    elif family == "time":
        yield lambda s: s.find_user("x' AND pg_sleep(1) IS NULL --")
        yield lambda s: s.order_total(f"{n} AND (SELECT pg_sleep(0.5)) IS NOT NULL")
        yield lambda s: s.find_user("x'; SELECT pg_sleep(1) --")
    elif family == "error":
        yield lambda s: s.order_total(f"{n} AND 1 = CAST((SELECT ssn FROM users LIMIT 1) AS int)")
        yield lambda s: s.find_user("x' AND 1=CAST((SELECT email FROM users LIMIT 1) AS int) --")
        yield lambda s: s.order_total(f"{n}'")
        yield lambda s: s.find_user("x''")
    elif family == "stacked":
        yield lambda s: s.find_user("x'; DELETE FROM documents; --")
        yield lambda s: s.order_total(f"{n}; UPDATE orders SET total = 0")
        yield lambda s: s.find_user("x'; DROP TABLE users; --")
    elif family == "enumeration":
        yield lambda s: s.find_user("x' UNION SELECT oid::int, relname FROM pg_class --")
        yield lambda s: s.find_user("x' UNION SELECT 1, table_name FROM "
                                    "information_schema.tables --")
        yield lambda s: s.order_total(f"{n} UNION SELECT count(*) FROM pg_catalog.pg_namespace")
        yield lambda s: s.find_user("x' UNION SELECT 1, usename FROM pg_user --")
    else:
        raise ValueError(f"unknown attack family {family!r}")


def _scores_since(audit_path: str, mark: int) -> tuple[list[float], int]:
    """Anomaly scores of the statements audited after line ``mark`` (identity
    statements, which the proxy answers itself, are left out)."""
    import json

    with open(audit_path) as f:
        lines = f.read().splitlines()
    events = [json.loads(line)["event"] for line in lines[mark:]]
    return [e.get("anomaly_score", 0.0) for e in events if e["kind"] != "identity"], len(lines)


def measure(connect: Callable[[], psycopg.Connection],
            set_mode: Callable[[str, float], None], audit_path: str, *, learn: int = 1500,
            calibrate: int = 600, heldout: int = 1000, seed: int = 7,
            attack_rounds: int = 15) -> dict[str, object]:
    """Learn a baseline from benign traffic, pick the threshold as the 99.5th
    percentile of calibration scores, then measure false positives on held-out
    benign traffic and detection per attack family (all numbers computed here)."""
    rng = random.Random(seed)
    with connect() as conn:
        conn.prepare_threshold = None  # every execution is planned (and scored) again
        shop = VulnerableShop(conn)
        set_mode("learn", 1.0)
        for _ in range(learn):
            shop.benign(rng)
        set_mode("monitor", 1.0)
        _, mark = _scores_since(audit_path, 0)
        for _ in range(calibrate):
            shop.benign(rng)
        calibration, mark = _scores_since(audit_path, mark)
        calibration.sort()
        threshold = calibration[min(len(calibration) - 1, int(len(calibration) * 0.995))]
        set_mode("monitor", threshold)
        for _ in range(heldout):
            shop.benign(rng)
        held, mark = _scores_since(audit_path, mark)
        detection: dict[str, float] = {}
        for family in ATTACK_FAMILIES:
            hits = tries = 0
            for _ in range(attack_rounds):
                for call in attack_payloads(family, rng):
                    shop.benign(rng)  # attacks hide among ordinary requests
                    _, mark = _scores_since(audit_path, mark)
                    call(shop)
                    scores, mark = _scores_since(audit_path, mark)
                    tries += 1
                    hits += bool(scores) and max(scores) > threshold
            detection[family] = hits / tries
    return {
        "threshold": threshold,
        "false_positive_rate": sum(s > threshold for s in held) / len(held),
        "heldout": len(held),
        "detection": detection,
    }


def scoring_latency(samples: int = 10_000) -> tuple[float, float]:
    """p50 and p99 of one Detector.assess call, microseconds, on a warm model."""
    import time

    import numpy as np

    from proxy.anomaly.baseline import Baseline
    from proxy.anomaly.detector import Detector
    from proxy.anomaly.features import NUM_FEATURES, StatementFeatures
    from proxy.anomaly.model import HalfSpaceTrees

    rng = np.random.RandomState(0)
    model = HalfSpaceTrees()
    model.learn_many(rng.rand(2000, NUM_FEATURES) * 0.2)
    detector = Detector("monitor", 0.95, model, Baseline(model))
    vectors = [StatementFeatures.from_array(v) for v in rng.rand(samples, NUM_FEATURES) * 0.2]
    times = []
    for features in vectors:
        start = time.perf_counter_ns()
        detector.assess(features)
        times.append(time.perf_counter_ns() - start)
    times.sort()
    return times[len(times) // 2] / 1000, times[int(len(times) * 0.99)] / 1000


def main() -> int:
    import argparse
    import asyncio
    import subprocess
    import sys
    import tempfile
    import threading
    import time
    from pathlib import Path

    import uvloop

    root = Path(__file__).resolve().parents[1]
    sys.path.insert(0, str(root))
    from bench.report import emit
    from proxy.auth.scram import make_verifier
    from proxy.config.settings import AuditSettings, ClientAuth, Settings, UpstreamSettings
    from proxy.localpg.cluster import LocalCluster
    from proxy.observability.metrics import Metrics
    from proxy.server.listener import ProxyServer

    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--learn", type=int, default=1500)
    ap.add_argument("--heldout", type=int, default=1000)
    ap.add_argument("--write")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="tenant-proxy-anomaly-"))
    rules, audit = work / "rules.yaml", work / "audit.log"
    base_rules = (root / "tests" / "corpus" / "rules.yaml").read_text().replace(
        "corpus_app: {identity: trusted}", "shop: {identity: trusted}")

    def write_rules(mode: str, threshold: float) -> None:
        rules.write_text(base_rules + f"anomaly: {{mode: {mode}, threshold: {threshold}, "
                         f"state: {work / 'baseline.json'}}}\n")

    cold = subprocess.run([sys.executable, "-c", "import time; t = time.perf_counter(); "
                           "from proxy.anomaly.warmup import warm_up; warm_up(); "
                           "print(time.perf_counter() - t)"], capture_output=True, text=True,
                          cwd=root, check=True)
    cluster = LocalCluster().start()
    loop = uvloop.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()
    try:
        cluster.psql("CREATE DATABASE corpus")
        cluster.psql((root / "tests" / "corpus" / "schema.sql").read_text(), database="corpus")
        write_rules("learn", 1.0)
        server = ProxyServer(Settings(
            listen_port=0, rules=str(rules), rules_reload_interval=0,
            upstream=UpstreamSettings(port=cluster.port, database="corpus", sslmode="disable",
                                      roles={"shop": "postgres"},
                                      passwords={"postgres": cluster.superuser_password}),
            auth=ClientAuth(users={"shop": make_verifier("shop-pw")}),
            audit=AuditSettings(str(audit), b"b" * 32)), Metrics())
        asyncio.run_coroutine_threadsafe(server.start(), loop).result(60)
        assert server.watcher is not None
        watcher = server.watcher

        def set_mode(mode: str, threshold: float) -> None:
            write_rules(mode, threshold)
            loop.call_soon_threadsafe(watcher.reload)
            time.sleep(0.2)

        def connect() -> psycopg.Connection:
            return psycopg.connect(f"postgresql://shop:shop-pw@127.0.0.1:{server.port}/corpus",
                                   options="-c tenant_proxy.tenant=1", autocommit=True)

        result = measure(connect, set_mode, str(audit), learn=args.learn,
                         heldout=args.heldout)
        asyncio.run_coroutine_threadsafe(server.close(), loop).result(30)
    finally:
        cluster.destroy()
    p50, p99 = scoring_latency()
    warm = subprocess.run([sys.executable, "-c", "import time; t = time.perf_counter(); "
                           "from proxy.anomaly.warmup import warm_up; warm_up(); "
                           "print(time.perf_counter() - t)"], capture_output=True, text=True,
                          cwd=root, check=True)
    detection = result["detection"]
    assert isinstance(detection, dict)
    lines = [
        f"\n## Anomaly detection ({time.strftime('%Y-%m-%d')})\n",
        f"Command: `python bench/anomaly_workload.py --learn {args.learn} --heldout "
        f"{args.heldout}` (baseline learned from the vulnerable shop's benign traffic through "
        "the proxy; threshold = 99.5th percentile of calibration scores).\n",
        "| attack family | detected |", "|---|---|",
        *(f"| {family} | {rate:.0%} |" for family, rate in detection.items()),
        "",
        f"False positives on {result['heldout']} held-out benign statements: "
        f"{result['false_positive_rate']:.2%} (threshold {result['threshold']:.3f}).",
        f"Scoring latency (Detector.assess, 10,000 calls): p50 {p50:.1f} µs, p99 {p99:.1f} µs.",
        f"Compiling or loading the numba code at start: {float(cold.stdout):.2f} s on a first "
        f"run (cache may already be warm), {float(warm.stdout):.2f} s with a warm cache.",
    ]
    emit(lines, args.write)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
