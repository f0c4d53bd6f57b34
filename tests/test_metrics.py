"""The statement-path counters and histograms read exactly as prometheus_client's would."""

from __future__ import annotations

import re

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from proxy.observability.aggregate import merge, parse_snapshot, render, snapshot
from proxy.observability.metrics import FastCounter, FastHistogram

BUCKETS = (0.00001, 0.000025, 0.5, 1.0, 10.0)
OBSERVED = (0.0, 0.00001, 0.00002, 0.3, 0.5, 20.0)


def exposition(registry: CollectorRegistry) -> str:
    """Text exposition without the creation timestamps (they differ by construction)."""
    return re.sub(r"(_created(\{[^}]*\})?) \S+", r"\1", generate_latest(registry).decode())


def fill(registry: CollectorRegistry, *, fast: bool) -> None:
    if fast:
        counter = FastCounter("tp_things", "Things.", ["kind", "tenant"], registry)
        histogram = FastHistogram("tp_seconds", "Time.", BUCKETS, registry)
    else:
        counter = Counter("tp_things", "Things.", ["kind", "tenant"], registry=registry)
        histogram = Histogram("tp_seconds", "Time.", buckets=BUCKETS, registry=registry)
    counter.labels("select", "t1").inc()
    counter.labels("select", "t1").inc(2.5)
    counter.labels("insert", "other").inc()
    for value in OBSERVED:
        histogram.observe(value)


def test_exposition_matches_prometheus_client() -> None:
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    fill(ours, fast=True)
    fill(theirs, fast=False)
    assert exposition(ours) == exposition(theirs)


def test_workers_merge_as_before() -> None:
    """Two workers' snapshots add up as prometheus_client's did."""
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    fill(ours, fast=True)
    fill(theirs, fast=False)
    merged = [render(merge([parse_snapshot(snapshot(r))] * 2, {})) for r in (ours, theirs)]
    strip = re.compile(rb"(_created(\{[^}]*\})?) \S+")
    assert strip.sub(rb"\1", merged[0]) == strip.sub(rb"\1", merged[1])
    assert b'tp_things_total{kind="select",tenant="t1"} 7.0' in merged[0]


def test_counters_refuse_what_prometheus_client_refuses() -> None:
    counter = FastCounter("tp_things", "Things.", ["kind"], CollectorRegistry())
    with pytest.raises(ValueError):
        counter.labels("a").inc(-1)
    with pytest.raises(ValueError):
        counter.labels("a", "b")
    registry = CollectorRegistry()
    FastCounter("tp_things", "Things.", ["kind"], registry)
    with pytest.raises(ValueError):
        Counter("tp_things", "Again.", ["kind"], registry=registry)
