"""The detector the proxy calls per statement, and the report of what it flagged.

Modes:

``learn``
    score every statement, learn it into the model (and, through
    :meth:`Detector.novelty`, its fingerprint into the baseline); never flag.
``monitor``
    score; a score above the threshold is flagged (logged, counted) but allowed.
``enforce``
    score; a score above the threshold is flagged and ``Verdict.refuse`` is
    set: the caller refuses the statement (SQLSTATE 42501, ``Verdict.reason()``).

The model is only updated in ``learn`` mode. The top contributing features are
computed only for flagged statements, so the common path is one model score.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from proxy.anomaly.baseline import Baseline, atomic_write_json, read_json
from proxy.anomaly.features import StatementFeatures
from proxy.anomaly.model import HalfSpaceTrees

MODES = ("learn", "monitor", "enforce")
REPORT_VERSION = 1


@dataclass(frozen=True, slots=True)
class Verdict:
    score: float
    flagged: bool
    refuse: bool
    #: (feature, score drop) pairs, largest first; empty unless flagged.
    top: tuple[tuple[str, float], ...] = ()

    def reason(self) -> str:
        """One line for the error message, audit record and logs."""
        why = ", ".join(f"{name} +{value:.2f}" for name, value in self.top)
        return f"anomaly score {self.score:.2f}" + (f" ({why})" if why else "")


class Detector:
    def __init__(self, mode: str, threshold: float, model: HalfSpaceTrees, baseline: Baseline,
                 *, top: int = 3):
        if not 0.0 <= threshold <= 1.0:
            raise ValueError("anomaly threshold must be in [0, 1]")
        self.mode = mode
        self.threshold = float(threshold)
        self.model = model
        self.baseline = baseline
        self.top = top

    @property
    def mode(self) -> str:
        return self._mode

    @mode.setter
    def mode(self, mode: str) -> None:
        if mode not in MODES:
            raise ValueError(f"anomaly mode must be one of {', '.join(MODES)}, not {mode!r}")
        self._mode = mode
        self._learning = mode == "learn"
        self._enforcing = mode == "enforce"

    def novelty(self, role: str, tenant: str | None, fingerprint: str) -> tuple[float, float]:
        """(``novel_fingerprint``, ``novel_for_role``) for a statement; learn mode adds it."""
        seen_tenant, seen_role = self.baseline.seen(role, tenant, fingerprint)
        if self._learning and not seen_tenant:
            self.baseline.add(role, tenant, fingerprint)
        return (0.0 if seen_tenant else 1.0), (0.0 if seen_role else 1.0)

    def assess(self, features: StatementFeatures) -> Verdict:
        x = features.to_array()
        score = self.model.score(x)
        if self._learning:
            self.model.learn(x)
            return Verdict(score, False, False)
        if score <= self.threshold:
            return Verdict(score, False, False)
        top = tuple(self.model.explain(x, self.top))
        return Verdict(score, True, self._enforcing, top)

    def save(self, path: str | os.PathLike[str]) -> None:
        """Persist the baseline with this detector's model (one file, atomically)."""
        self.baseline.model = self.model
        self.baseline.save(path)


def _bin_label(i: int, bins: int) -> str:
    return f"{i / bins:.2f}-{(i + 1) / bins:.2f}"


class Report:
    """Counts of what was scored and flagged, per role/tenant and per top feature.

    ``record`` is called for every assessed statement (it costs a histogram
    increment unless the statement was flagged). At most ``max_pairs``
    role/tenant pairs are kept; flags of further pairs count under
    ``other_pairs``.
    """

    def __init__(self, bins: int = 20, max_pairs: int = 10_000):
        self.bins = bins
        self.max_pairs = max_pairs
        self.statements = 0
        self.flagged = 0
        self.refused = 0
        self.histogram = [0] * bins
        #: role -> tenant -> {"flagged", "refused", "max_score", "features": {name: n}}
        self.pairs: dict[str, dict[str, dict[str, Any]]] = {}
        self.n_pairs = 0
        self.other_pairs = 0
        #: feature -> {"flags": n, "contribution": summed score drop}
        self.features: dict[str, dict[str, float]] = {}
        self.started = time.time()
        self.updated = self.started

    def record(self, role: str, tenant: str | None, verdict: Verdict) -> None:
        self.statements += 1
        i = int(verdict.score * self.bins)
        self.histogram[min(max(i, 0), self.bins - 1)] += 1
        if not verdict.flagged:
            return
        self.updated = time.time()
        self.flagged += 1
        self.refused += verdict.refuse
        for name, value in verdict.top:
            entry = self.features.setdefault(name, {"flags": 0, "contribution": 0.0})
            entry["flags"] += 1
            entry["contribution"] += value
        tenants = self.pairs.get(role)
        pair = None if tenants is None else tenants.get(tenant or "")
        if pair is None:
            if self.n_pairs >= self.max_pairs:
                self.other_pairs += 1
                return
            pair = self.pairs.setdefault(role, {})[tenant or ""] = {
                "flagged": 0, "refused": 0, "max_score": 0.0, "features": {},
            }
            self.n_pairs += 1
        pair["flagged"] += 1
        pair["refused"] += verdict.refuse
        pair["max_score"] = max(pair["max_score"], verdict.score)
        for name, _ in verdict.top:
            pair["features"][name] = pair["features"].get(name, 0) + 1

    def summary(self) -> str:
        """What was flagged and why, for ``tenant-proxy anomaly report``."""
        lines: list[str] = []
        rate = self.flagged / self.statements if self.statements else 0.0
        lines.append(f"Anomaly report: {self.statements} statements scored, {self.flagged} "
                     f"flagged ({rate:.2%}), {self.refused} refused")
        lines.append(f"  from {_when(self.started)} to {_when(self.updated)}")
        lines.append("")
        lines.append("Score distribution:")
        peak = max(self.histogram) or 1
        for i, n in enumerate(self.histogram):
            if n:
                bar = "#" * max(1, round(40 * n / peak))
                lines.append(f"  {_bin_label(i, self.bins)}  {n:>9}  {bar}")
        if not self.flagged:
            lines.append("")
            lines.append("Nothing flagged.")
            return "\n".join(lines)
        lines.append("")
        lines.append("Flagged by role / tenant:")
        rows = [(pair["flagged"], role, tenant, pair)
                for role, tenants in self.pairs.items() for tenant, pair in tenants.items()]
        rows.sort(key=lambda r: (-r[0], r[1], r[2]))
        for _, role, tenant, pair in rows:
            why = ", ".join(f"{name} ({n})" for name, n in
                            sorted(pair["features"].items(), key=lambda kv: (-kv[1], kv[0]))[:3])
            lines.append(f"  {role} / {tenant or '(no tenant)'}: {pair['flagged']} flagged, "
                         f"{pair['refused']} refused, max score {pair['max_score']:.2f}"
                         + (f"; top features: {why}" if why else ""))
        if self.other_pairs:
            lines.append(f"  (further role/tenant pairs: {self.other_pairs} flagged)")
        lines.append("")
        lines.append("Why (features among the top contributors of flagged statements):")
        for name, entry in sorted(self.features.items(), key=lambda kv: (-kv[1]["flags"], kv[0])):
            mean = entry["contribution"] / entry["flags"] if entry["flags"] else 0.0
            lines.append(f"  {name:<18} in {int(entry['flags'])} flagged statement(s), "
                         f"mean score contribution {mean:.2f}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": REPORT_VERSION,
            "bins": self.bins,
            "max_pairs": self.max_pairs,
            "statements": self.statements,
            "flagged": self.flagged,
            "refused": self.refused,
            "histogram": list(self.histogram),
            "pairs": self.pairs,
            "other_pairs": self.other_pairs,
            "features": self.features,
            "started": self.started,
            "updated": self.updated,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Report:
        if not isinstance(data, dict) or data.get("version") != REPORT_VERSION:
            raise ValueError("not an anomaly report of a known version")
        report = cls(bins=int(data["bins"]), max_pairs=int(data["max_pairs"]))
        histogram = [int(n) for n in data["histogram"]]
        if len(histogram) != report.bins:
            raise ValueError("anomaly report histogram does not match its bins")
        report.histogram = histogram
        report.statements = int(data["statements"])
        report.flagged = int(data["flagged"])
        report.refused = int(data["refused"])
        report.pairs = data["pairs"]
        report.n_pairs = sum(len(tenants) for tenants in report.pairs.values())
        report.other_pairs = int(data["other_pairs"])
        report.features = data["features"]
        report.started = float(data["started"])
        report.updated = float(data["updated"])
        return report

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the report as JSON atomically (the proxy does this periodically)."""
        atomic_write_json(Path(path), self.to_dict())

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Report:
        return cls.from_dict(read_json(path))


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ts))
