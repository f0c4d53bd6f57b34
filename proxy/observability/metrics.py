"""Prometheus metrics. Every metric is documented in README.md ("Metrics").

Label cardinality stays bounded: tenants beyond ``tenant_label_limit``
distinct values are reported as ``other``, and refusal reasons are a fixed
vocabulary of codes, never message text.
"""

from __future__ import annotations

import threading

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025,
                    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None,
                 tenant_label_limit: int = 100) -> None:
        self.registry = registry or CollectorRegistry()
        self._tenant_limit = tenant_label_limit
        self._tenants: set[str] = set()
        self._lock = threading.Lock()
        r = self.registry
        self.statements = Counter(
            "tenant_proxy_statements", "Statements by kind, tenant, role and outcome "
            "(forwarded, rewritten, refused, flagged).",
            ["kind", "tenant", "role", "outcome"], registry=r)
        self.refusals = Counter("tenant_proxy_refusals", "Refused statements by reason code.",
                                ["reason"], registry=r)
        self.plan_seconds = Histogram(
            "tenant_proxy_plan_seconds", "Time to plan a statement on a plan-cache miss "
            "(parse, policy, rewrite).", buckets=_LATENCY_BUCKETS, registry=r)
        self.pipeline_seconds = Histogram(
            "tenant_proxy_pipeline_seconds", "Time the SQL pipeline spent on a statement, "
            "cache hits and misses alike.", buckets=_LATENCY_BUCKETS, registry=r)
        self.statement_seconds = Histogram(
            "tenant_proxy_statement_seconds", "End-to-end time from forwarding a Query or "
            "Sync to the server's ReadyForQuery.", buckets=_LATENCY_BUCKETS, registry=r)
        self.cache_lookups = Counter("tenant_proxy_plan_cache_lookups",
                                     "Plan-cache lookups by result (hit, miss).", ["result"],
                                     registry=r)
        self.cache_evictions = Counter("tenant_proxy_plan_cache_evictions",
                                       "Plans evicted from the full cache.", registry=r)
        self.cache_entries = Gauge("tenant_proxy_plan_cache_entries",
                                   "Plans in the cache.", registry=r)
        self.client_connections = Gauge("tenant_proxy_client_connections",
                                        "Open client connections.", registry=r)
        self.upstream_connections = Gauge("tenant_proxy_upstream_connections",
                                          "Open upstream (PostgreSQL) connections.",
                                          registry=r)
        self.bytes = Counter("tenant_proxy_bytes", "Bytes relayed, by direction "
                             "(client_to_server, server_to_client).", ["direction"],
                             registry=r)
        self.upstream_errors = Counter("tenant_proxy_upstream_errors",
                                       "Upstream failures by SQLSTATE (connect, startup, "
                                       "lost connections).", ["sqlstate"], registry=r)
        self.anomaly_score = Histogram("tenant_proxy_anomaly_score",
                                       "Anomaly scores of statements.",
                                       buckets=(0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9,
                                                0.95, 0.99, 1.0), registry=r)
        self.rules_info = Gauge("tenant_proxy_rules_version_info",
                                "Version (content hash) of the rules in force.", ["version"],
                                registry=r)
        self.rules_reloads = Counter("tenant_proxy_rules_reloads",
                                     "Rules reloads by result (ok, failed).", ["result"],
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
#: version is 1 in every worker that has it, so it takes the maximum.
GAUGE_MERGE = {"tenant_proxy_rules_version_info": "max"}


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
