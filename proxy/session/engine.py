"""The state every session of a process shares: the current rules, the plan
cache and the token verifier; a rules reload swaps it atomically. Simple-query
texts share one plan across literal values (templates).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import replace

from proxy.anomaly.runtime import AnomalyRuntime
from proxy.crypto.columns import ColumnCrypto
from proxy.observability.audit import AuditWriter
from proxy.observability.metrics import METRICS, Metrics
from proxy.policy.rules import Rules
from proxy.policy.tokens import TokenVerifier
from proxy.session.records import text_fingerprint
from proxy.sql.engine import plan_statement
from proxy.sql.normalize import MARKER, check_template, normalize, splice
from proxy.sql.plan import Plan, PlanCache
from proxy.sql.splice import TENANT_SENTINEL


class Engine:
    """The current rules and everything derived from them, shared by sessions."""

    def __init__(self, rules: Rules, cache_size: int = 10_000,
                 metrics: Metrics = METRICS, audit: AuditWriter | None = None) -> None:
        self.cache = PlanCache(cache_size)
        self.metrics = metrics
        self.audit = audit
        self.anomaly = AnomalyRuntime(rules.anomaly) if rules.anomaly.mode != "off" else None
        # Bound once: labels() costs more than the increment it feeds.
        self._hits = metrics.cache_lookups.labels("hit")
        self._misses = metrics.cache_lookups.labels("miss")
        self.rules = rules
        self.verifier = self._verifier(rules)
        #: Set by the server once the key store and catalog are loaded.
        self.crypto: ColumnCrypto | None = None
        metrics.set_rules_version(rules.version)

    @staticmethod
    def _verifier(rules: Rules) -> TokenVerifier | None:
        keys = rules.tokens
        if not keys.hmac and not keys.ed25519_public:
            return None
        return TokenVerifier(keys.hmac, keys.ed25519_public)

    def swap(self, rules: Rules) -> None:
        """Install new rules; statements already planned finish under the old ones."""
        self.verifier = self._verifier(rules)
        if rules.anomaly.mode == "off":
            self.anomaly = None
        elif self.anomaly is None or self.anomaly.rule.state != rules.anomaly.state:
            self.anomaly = AnomalyRuntime(rules.anomaly)
        else:
            self.anomaly.update(rules.anomaly)
        self.rules = rules
        self.cache.clear()
        self.metrics.set_rules_version(rules.version)
        self.metrics.cache_entries.set(0)

    def plan_query(self, sql: str) -> tuple[Plan, tuple[str, ...] | None]:
        """The plan for a simple-protocol Query, shared across literal values.

        Returns the plan and, when it is a template, the statement's literals. The
        literal normalizer makes ``aid = 1`` and ``aid = 2`` one cache entry; the
        plan is made once from the text with each literal as a parameter, so its
        checks see them as values to verify, never as SQL. Anything the
        normalizer or that planning cannot handle falls back to exact text.
        """
        if TENANT_SENTINEL in sql:
            return self.plan(sql, extended=False), None
        norm = normalize(sql)
        if norm is None or not norm.literals or _PARAMETER.search(norm.key):
            return self.plan(sql, extended=False), None
        rules = self.rules
        key = (rules.version, "N", norm.key)
        plan = self._cached(key)
        if plan is None:
            plan = self._store(key, lambda: _template_plan(norm.key, rules))
        if plan is _EXACT:
            return self.plan(sql, extended=False), None
        return plan, norm.literals

    def plan(self, sql: str, *, extended: bool) -> Plan:
        rules = self.rules
        key = (rules.version, "P" if extended else "Q", sql)
        plan = self._cached(key)
        if plan is None:
            plan = self._store(key, lambda: plan_statement(sql, rules, extended=extended))
        return plan

    def _cached(self, key: tuple[str, str, str]) -> Plan | None:
        plan = self.cache.get(key)
        (self._misses if plan is None else self._hits).inc()
        return plan

    def _store(self, key: tuple[str, str, str], make: Callable[[], Plan]) -> Plan:
        start = time.perf_counter()
        plan = make()
        if plan is not _EXACT:
            plan = replace(plan, fingerprint=text_fingerprint(key[2]))
        self.metrics.plan_seconds.observe(time.perf_counter() - start)
        if plan.identity is None:  # never keep token text in the cache
            evicted = self.cache.evictions
            self.cache.put(key, plan)
            if self.cache.evictions > evicted:
                self.metrics.cache_evictions.inc(self.cache.evictions - evicted)
            self.metrics.cache_entries.set(len(self.cache))
        return plan


_PARAMETER = re.compile(r"\$\d")
_SLOT = re.compile(r"\$(\d+)")
#: Cached under a normalized key: plan this statement by its exact text instead.
_EXACT = Plan()


def _template_plan(key: str, rules: Rules) -> Plan:
    parts = key.split(MARKER)
    text = splice(parts, [f"${i}" for i in range(1, len(parts))])
    plan = plan_statement(text, rules)
    if plan.error is not None or plan.identity is not None or plan.sql_object is not None \
            or plan.copy_in is not None or plan.channels or plan.tenant_literals or \
            (plan.sealing is not None and plan.sealing.literals):
        return _EXACT
    if plan.parts is None:
        return plan  # forwarded as written: only the decision is shared
    rewritten = TENANT_SENTINEL.join(plan.parts)
    if [int(n) for n in _SLOT.findall(rewritten)] != list(range(1, len(parts))):
        return _EXACT
    template = tuple(_SLOT.split(rewritten)[::2])
    if not check_template(template, key):
        return _EXACT
    return replace(plan, parts=None, template=template)
