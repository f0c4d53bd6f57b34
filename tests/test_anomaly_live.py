"""The anomaly detector end to end: a baseline learned from benign traffic of a
deliberately vulnerable application through the proxy, then injection attacks
of every family flagged and held-out benign traffic mostly not."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import psycopg
import pytest

from bench.anomaly_workload import ATTACK_FAMILIES, measure
from proxy.config.settings import AuditSettings
from proxy.observability.metrics import Metrics
from tests.certs import CertFiles
from tests.corpus_harness import CORPUS, CORPUS_DB, corpus_settings, create_corpus_db
from tests.harness import Database, proxy_settings, running_proxy

RULES = (CORPUS / "rules.yaml").read_text().replace(
    "users:\n  corpus_app: {identity: trusted}",
    "users:\n  corpus_app: {identity: trusted}\n  shop: {identity: trusted}")


def test_detector_flags_injection_families(db: Database, certs: CertFiles,
                                           tmp_path: Path) -> None:
    create_corpus_db(db)
    rules_path = tmp_path / "rules.yaml"
    state, report = tmp_path / "baseline.json", tmp_path / "report.json"

    def write_rules(mode: str, threshold: float) -> None:
        rules_path.write_text(RULES + f"anomaly: {{mode: {mode}, threshold: {threshold}, "
                              f"state: {state}, report: {report}}}\n")

    write_rules("learn", 1.0)
    audit = tmp_path / "audit.log"
    settings = replace(corpus_settings(proxy_settings(db, certs), rules_path,
                                       {"shop": "shop-pw"}),
                       audit=AuditSettings(str(audit), b"a" * 32), rules_reload_interval=0)
    with running_proxy(settings, Metrics()) as proxy:
        watcher = proxy.server.watcher
        assert watcher is not None

        def set_mode(mode: str, threshold: float) -> None:
            write_rules(mode, threshold)
            assert watcher.reload()

        def connect() -> psycopg.Connection:
            return psycopg.connect(f"postgresql://shop:shop-pw@127.0.0.1:{proxy.port}/"
                                   f"{CORPUS_DB}", options="-c tenant_proxy.tenant=1",
                                   autocommit=True)

        result = measure(connect, set_mode, str(audit), learn=1200, calibrate=400,
                         heldout=600, attack_rounds=6)
    print(f"\nanomaly detection: {result}")
    assert result["false_positive_rate"] <= 0.03
    detection = result["detection"]
    assert isinstance(detection, dict) and set(detection) == set(ATTACK_FAMILIES)
    for family, rate in detection.items():
        assert rate >= 0.6, (family, result)
    assert state.exists()  # the learned baseline was saved
    assert report.exists()
    from proxy.anomaly.detector import Report

    assert "flag" in Report.load(report).summary().lower()


def test_enforce_refuses_attacks_and_allows_the_baseline(db: Database, certs: CertFiles,
                                                         tmp_path: Path) -> None:
    """After learning, enforce mode refuses an injection with 42501 and its reason,
    while statements like the learned ones still run."""
    import random

    from bench.anomaly_workload import VulnerableShop

    create_corpus_db(db)
    rules_path = tmp_path / "rules.yaml"
    state = tmp_path / "baseline.json"

    def write_rules(mode: str, threshold: float) -> None:
        rules_path.write_text(RULES + f"anomaly: {{mode: {mode}, threshold: {threshold}, "
                              f"state: {state}}}\n")

    write_rules("learn", 1.0)
    settings = replace(corpus_settings(proxy_settings(db, certs), rules_path,
                                       {"shop": "shop-pw"}), rules_reload_interval=0)
    with running_proxy(settings, Metrics()) as proxy:
        dsn = f"postgresql://shop:shop-pw@127.0.0.1:{proxy.port}/{CORPUS_DB}"
        with psycopg.connect(dsn, options="-c tenant_proxy.tenant=1", autocommit=True) as conn:
            conn.prepare_threshold = None
            shop, rng = VulnerableShop(conn), random.Random(3)
            for _ in range(600):
                shop.benign(rng)
            write_rules("enforce", 0.5)
            assert proxy.server.watcher is not None and proxy.server.watcher.reload()
            with pytest.raises(psycopg.errors.InsufficientPrivilege,
                               match="refused as anomalous: anomaly score"):
                conn.execute("SELECT id, name FROM users WHERE email = 'x' UNION SELECT "
                             "oid::int, relname FROM pg_class --'")
            conn.execute("SET tenant_proxy.tenant = '1'")  # never refused as anomalous
            assert conn.execute("SELECT total FROM orders WHERE id = 3").fetchall()


def test_anomaly_report_command(tmp_path: Path) -> None:
    """`tenant-proxy anomaly report` prints what was flagged and why."""
    import subprocess
    import sys

    from proxy.anomaly.detector import Report, Verdict

    report = Report()
    report.record("shop", "1", Verdict(0.97, True, False, (("tautology", 0.4), ("union", 0.2))))
    report.record("shop", "1", Verdict(0.91, True, True, (("catalog_probe", 0.5),)))
    path = tmp_path / "report.json"
    report.save(path)
    out = subprocess.run([sys.executable, "-m", "proxy.cli.main", "anomaly", "report",
                          "--file", str(path)], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    assert "shop" in out.stdout and "tautology" in out.stdout and "catalog_probe" in out.stdout
    missing = subprocess.run([sys.executable, "-m", "proxy.cli.main", "anomaly", "report",
                              "--file", str(tmp_path / "none.json")], capture_output=True,
                             text=True, check=False)
    assert missing.returncode == 2 and "cannot read" in missing.stderr
