"""The anomaly detector as the proxy runs it: built from the rules, fed one
statement at a time from the plan's facts and the session's activity, and
saved to disk while it learns."""

from __future__ import annotations

import logging
from pathlib import Path

from proxy.anomaly.activity import SessionActivity
from proxy.anomaly.baseline import Baseline
from proxy.anomaly.detector import Detector, Report, Verdict
from proxy.anomaly.features import (
    StatementFeatures,
    error_burst_feature,
    kind_features,
    rate_feature,
    relations_feature,
    rows_feature,
)
from proxy.anomaly.model import HalfSpaceTrees
from proxy.policy.rules import AnomalyRule
from proxy.sql.facts import STATEMENT_KINDS, StatementFacts

log = logging.getLogger("tenant_proxy.anomaly")


class AnomalyRuntime:
    def __init__(self, rule: AnomalyRule) -> None:
        self.rule = rule
        baseline = Baseline()
        if rule.state and Path(rule.state).exists():
            baseline = Baseline.load(rule.state)
            log.info("anomaly baseline loaded from %s", rule.state)
        model = baseline.model or HalfSpaceTrees()
        self.detector = Detector(rule.mode, rule.threshold, model, baseline)
        self.report = Report.load(rule.report) if rule.report and Path(rule.report).exists() \
            else Report()

    def update(self, rule: AnomalyRule) -> None:
        """Rules reload: mode and threshold change in place; the learned state stays,
        and is saved when learning ends."""
        if self.rule.mode == "learn" and rule.mode != "learn" and self.rule.state:
            self.detector.save(self.rule.state)
        self.rule = rule
        self.detector.mode = rule.mode
        self.detector.threshold = rule.threshold

    def assess(self, role: str, tenant: str | None, fingerprint: str, facts: StatementFacts,
               sql: str, refused: bool, activity: SessionActivity) -> Verdict:
        novel, novel_role = self.detector.novelty(role, tenant, fingerprint)
        select, write, other = kind_features(STATEMENT_KINDS.get(facts.kinds[0], "other")
                                             if facts.kinds else "other")
        features = StatementFeatures(
            novel_fingerprint=novel, novel_for_role=novel_role, kind_select=select,
            kind_write=write, kind_other=other,
            relations=relations_feature(len(facts.relations)),
            catalog_probe=float(facts.catalog_probe), tautology=float(facts.tautology),
            union=float(facts.union), stacked=float(facts.stacked),
            comment=float("--" in sql or "/*" in sql),
            time_function=float(facts.time_function), refused=float(refused),
            error_burst=error_burst_feature(activity.recent_errors),
            rate=rate_feature(activity.statements_per_second),
            rows_returned=rows_feature(activity.last_rows))
        verdict = self.detector.assess(features)
        if verdict.flagged:
            self.report.record(role, tenant, verdict)
            log.warning("anomalous statement from role %s tenant %s: %s", role, tenant,
                        verdict.reason())
        return verdict

    def save(self) -> None:
        if self.rule.state and self.rule.mode == "learn":
            self.detector.save(self.rule.state)
        if self.rule.report:
            self.report.save(self.rule.report)
