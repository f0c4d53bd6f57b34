"""Prometheus metrics. Every metric is documented in README.md ("Metrics").

Label cardinality stays bounded: tenants beyond ``tenant_label_limit``
distinct values are reported as ``other``, and refusal reasons are a fixed
vocabulary of codes, never message text.
"""

from __future__ import annotations

import bisect
import math
import threading
import time
from collections.abc import Iterator, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.metrics_core import Metric
from prometheus_client.utils import floatToGoString

_LATENCY_BUCKETS = (0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025,
                    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class _Series:
    """One labelled counter series."""

    __slots__ = ("created", "value")

    def __init__(self) -> None:
        self.value = 0.0
        self.created = time.time()

    def inc(self, amount: float = 1.0) -> None:
        if amount < 0:
            raise ValueError("counters can only be incremented by non-negative amounts")
        self.value += amount


class FastCounter:
    """A labelled counter for the statement path: a float add per increment.

    prometheus_client's counters take a lock per increment, several times per
    statement. These are only written from the worker's event-loop thread; the
    /metrics thread reads them, which the GIL keeps safe. Exposed exactly as a
    prometheus_client Counter (``_total`` and ``_created`` samples).
    """

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str],
                 registry: CollectorRegistry) -> None:
        self._name, self._doc, self._labelnames = name, documentation, tuple(labelnames)
        self._series: dict[tuple[str, ...], _Series] = {}
        registry.register(self)

    def labels(self, *values: str) -> _Series:
        if len(values) != len(self._labelnames):
            raise ValueError(f"{self._name} takes labels {self._labelnames}")
        key = tuple(str(v) for v in values)
        series = self._series.get(key)
        if series is None:
            series = self._series[key] = _Series()
        return series

    def describe(self) -> Iterator[Metric]:
        yield Metric(self._name, self._doc, "counter")

    def collect(self) -> Iterator[Metric]:
        metric = Metric(self._name, self._doc, "counter")
        for key, series in list(self._series.items()):
            labels = dict(zip(self._labelnames, key, strict=True))
            metric.add_sample(self._name + "_total", labels, series.value)
            metric.add_sample(self._name + "_created", labels, series.created)
        yield metric


class FastHistogram:
    """An unlabelled histogram for the statement path: a bisect and two adds per
    observation (see FastCounter). ``_count`` is the +Inf bucket, so the buckets
    and the count always agree; a scrape racing an observation may see ``_sum``
    without it. Exposed exactly as a prometheus_client Histogram."""

    def __init__(self, name: str, documentation: str, buckets: Sequence[float],
                 registry: CollectorRegistry) -> None:
        self._name, self._doc = name, documentation
        self._bounds = tuple(float(b) for b in buckets if b != math.inf)
        self._counts = [0] * (len(self._bounds) + 1)
        self._sum = 0.0
        self._created = time.time()
        registry.register(self)

    def observe(self, value: float) -> None:
        self._counts[bisect.bisect_left(self._bounds, value)] += 1
        self._sum += value

    def describe(self) -> Iterator[Metric]:
        yield Metric(self._name, self._doc, "histogram")

    def collect(self) -> Iterator[Metric]:
        metric = Metric(self._name, self._doc, "histogram")
        counts, total = list(self._counts), self._sum
        cumulative = 0.0
        for bound, count in zip((*self._bounds, math.inf), counts, strict=True):
            cumulative += count
            metric.add_sample(self._name + "_bucket", {"le": floatToGoString(bound)}, cumulative)
        metric.add_sample(self._name + "_count", {}, cumulative)
        metric.add_sample(self._name + "_sum", {}, total)
        metric.add_sample(self._name + "_created", {}, self._created)
        yield metric


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None,
                 tenant_label_limit: int = 100) -> None:
        self.registry = registry or CollectorRegistry()
        self._tenant_limit = tenant_label_limit
        self._tenants: set[str] = set()
        self._lock = threading.Lock()
        r = self.registry
        self.statements = FastCounter(
            "tenant_proxy_statements", "Statements by kind, tenant, role and outcome "
            "(forwarded, rewritten, refused, flagged).",
            ["kind", "tenant", "role", "outcome"], r)
        self.refusals = FastCounter("tenant_proxy_refusals", "Refused statements by reason code.",
                                    ["reason"], r)
        self.plan_seconds = FastHistogram(
            "tenant_proxy_plan_seconds", "Time to plan a statement on a plan-cache miss "
            "(parse, policy, rewrite).", _LATENCY_BUCKETS, r)
        self.pipeline_seconds = FastHistogram(
            "tenant_proxy_pipeline_seconds", "Time the SQL pipeline spent on a statement, "
            "cache hits and misses alike.", _LATENCY_BUCKETS, r)
        self.statement_seconds = FastHistogram(
            "tenant_proxy_statement_seconds", "End-to-end time from forwarding a Query or "
            "Sync to the server's ReadyForQuery.", _LATENCY_BUCKETS, r)
        self.cache_lookups = FastCounter("tenant_proxy_plan_cache_lookups",
                                         "Plan-cache lookups by result (hit, miss).",
                                         ["result"], r)
        self.cache_evictions = Counter("tenant_proxy_plan_cache_evictions",
                                       "Plans evicted from the full cache.", registry=r)
        self.cache_entries = Gauge("tenant_proxy_plan_cache_entries",
                                   "Plans in the cache.", registry=r)
        self.client_connections = Gauge("tenant_proxy_client_connections",
                                        "Open client connections.", registry=r)
        self.upstream_connections = Gauge("tenant_proxy_upstream_connections",
                                          "Open upstream (PostgreSQL) connections.",
                                          registry=r)
        self.bytes = FastCounter("tenant_proxy_bytes", "Bytes relayed, by direction "
                                 "(client_to_server, server_to_client).", ["direction"], r)
        self.upstream_errors = Counter("tenant_proxy_upstream_errors",
                                       "Upstream failures by SQLSTATE (connect, startup, "
                                       "lost connections).", ["sqlstate"], registry=r)
        self.anomaly_score = FastHistogram("tenant_proxy_anomaly_score",
                                           "Anomaly scores of statements.",
                                           (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9,
                                            0.95, 0.99, 1.0), r)
        self.rules_info = Gauge("tenant_proxy_rules_version_info",
                                "Version (content hash) of the rules in force.", ["version"],
                                registry=r)
        self.rules_reloads = Counter("tenant_proxy_rules_reloads",
                                     "Rules reloads by result (ok, failed).", ["result"],
                                     registry=r)
        self.floor_on = Gauge(
            "tenant_proxy_floor_on", "1 when PostgreSQL enforces tenant isolation under the "
            "proxy (row-level security and grants for the upstream role: the floor), else 0.",
            registry=r)
        self.cancel_requests = Counter(
            "tenant_proxy_cancel_requests", "CancelRequests by result (delivered, forwarded "
            "to the owning worker, unknown).", ["result"], registry=r)

    def tenant_label(self, tenant: str | None) -> str:
        if tenant is None:
            return "none"
        if tenant in self._tenants:
            return tenant
        with self._lock:
            if len(self._tenants) < self._tenant_limit:
                self._tenants.add(tenant)
                return tenant
        return "other"

    def set_rules_version(self, version: str) -> None:
        self.rules_info.clear()
        self.rules_info.labels(version).set(1)


#: How the supervisor merges each gauge across workers (default: sum). The rules
#: version is 1 in every worker that has it, so it takes the maximum; the floor is
#: on only if every worker sees it on.
GAUGE_MERGE = {"tenant_proxy_rules_version_info": "max", "tenant_proxy_floor_on": "min"}


class SupervisorMetrics:
    """The supervisor's own metrics, shown next to the workers' merged ones."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.workers = Gauge("tenant_proxy_workers", "Worker processes running.",
                             registry=self.registry)
        self.worker_restarts = Counter("tenant_proxy_worker_restarts",
                                       "Worker processes restarted after they exited.",
                                       registry=self.registry)


#: The process-wide metrics; tests make their own registry.
METRICS = Metrics()
