"""Metrics of several worker processes served as one /metrics page.

Each worker keeps its metrics in memory (prometheus_client's multiprocess mode
would double the cost of every counter increment on the statement path) and
hands a JSON snapshot of them to the supervisor on request. The supervisor
adds counters and histograms up, merges gauges by each gauge's mode (sum, or
max for info-style gauges), and keeps the last counts of workers that exited,
so totals never go backwards when a worker is restarted.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric

#: One metric family as JSON: name, help, type, unit and [sample name, labels, value] rows.
Family = dict[str, Any]
_ADDITIVE = ("counter", "histogram", "summary")


def snapshot(registry: CollectorRegistry) -> bytes:
    """The registry's current values, for the supervisor."""
    return json.dumps([
        {"name": f.name, "help": f.documentation, "type": f.type, "unit": f.unit,
         "samples": [[s.name, s.labels, s.value] for s in f.samples]}
        for f in registry.collect()
    ], separators=(",", ":")).encode()


def parse_snapshot(data: bytes) -> list[Family]:
    families = json.loads(data)
    if not isinstance(families, list):
        raise ValueError("a metrics snapshot must be a JSON list")
    return families


def merge(sources: Iterable[list[Family]], gauge_modes: Mapping[str, str]) -> list[Family]:
    """Add up families of the same name across processes.

    Counters and histograms are summed (their ``_created`` timestamps take the
    earliest); gauges use ``gauge_modes[name]`` (``sum`` by default, ``max`` or ``min``).
    """
    merged: dict[str, Family] = {}
    values: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}
    for families in sources:
        for family in families:
            name = family["name"]
            if name not in merged:
                merged[name] = {k: family[k] for k in ("name", "help", "type", "unit")}
                values[name] = {}
            mode = gauge_modes.get(name, "sum") if family["type"] == "gauge" else "sum"
            rows = values[name]
            for sample_name, labels, value in family["samples"]:
                key = (sample_name, tuple(sorted(labels.items())))
                if key not in rows:
                    rows[key] = value
                elif sample_name.endswith("_created"):
                    rows[key] = min(rows[key], value)
                elif mode == "max":
                    rows[key] = max(rows[key], value)
                elif mode == "min":
                    rows[key] = min(rows[key], value)
                else:
                    rows[key] += value
    for name, family in merged.items():
        family["samples"] = [[sample, dict(labels), value]
                             for (sample, labels), value in values[name].items()]
    return list(merged.values())


def cumulative_only(families: list[Family]) -> list[Family]:
    """What of an exited worker's metrics must stay in the totals: counters and
    histograms (its gauges, such as open connections, ended with it)."""
    return [f for f in families if f["type"] in _ADDITIVE]


def render(families: list[Family]) -> bytes:
    """Prometheus text exposition of merged families."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Fixed(families))
    return generate_latest(registry)


class _Fixed:
    def __init__(self, families: list[Family]) -> None:
        self.families = families

    def collect(self) -> Iterator[Metric]:
        for family in self.families:
            metric = Metric(family["name"], family["help"], family["type"], family["unit"])
            for sample_name, labels, value in family["samples"]:
                metric.add_sample(sample_name, labels, value)
            yield metric
