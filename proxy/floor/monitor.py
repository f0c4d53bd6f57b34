"""The running proxy's view of the floor: inspect it at start, when the rules
change and every few minutes, over the proxy's own connection as its upstream
role, and report it as on or off (with reasons) in the log, ``/readyz?verbose``
and the ``tenant_proxy_floor_on`` gauge.

The ``floor`` setting decides what an off floor means: ``required`` refuses
to start (and turns readiness false if it goes off later), ``recommended``
starts with a warning, ``off`` does not inspect at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import asyncpg

from proxy.config.settings import KeyStoreSettings, Settings
from proxy.floor.catalog import read_state
from proxy.floor.compare import findings
from proxy.floor.spec import FloorSpec, shared_bypass_roles, upstream_roles
from proxy.observability.metrics import Metrics
from proxy.policy.rules import Rules

log = logging.getLogger("tenant_proxy.floor")

#: How often the catalog is inspected again when nothing changed [seconds].
RECHECK_SECONDS = 300.0
_POLL_SECONDS = 1.0
#: Reasons shown in a one-line report; the log's ``reasons`` field has them all.
_SHOWN_REASONS = 3
_ERRORS = (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError)


@dataclass(frozen=True)
class FloorReport:
    on: bool
    #: Why it is off (empty when on).
    reasons: tuple[str, ...] = ()
    roles: tuple[str, ...] = ()
    #: Differences from what install sets that leave the floor on.
    drift: tuple[str, ...] = ()

    def line(self) -> str:
        if self.on:
            return f"floor: on for {', '.join(self.roles)}"
        more = len(self.reasons) - _SHOWN_REASONS
        return "floor: off: " + "; ".join(self.reasons[:_SHOWN_REASONS]) + (
            f"; and {more} more (the log lists them all)" if more > 0 else "")


class FloorUnavailable(RuntimeError):
    """``floor: required`` and the floor is off: the proxy must not start."""


async def inspect(settings: Settings, rules: Rules | None) -> FloorReport:
    """The floor as the upstream roles of ``rules``' tenant logins meet it."""
    if rules is None:
        return FloorReport(False, ("no rules file (statements pass through)",))
    roles = upstream_roles(rules, settings.upstream)
    if not roles:
        return FloorReport(False, ("the rules have no tenant logins",))
    upstream = settings.upstream
    if not upstream.database:
        return FloorReport(False, ("upstream.database is not set: the floor is inspected "
                                   "in one database",), roles)
    spec = FloorSpec.from_rules(rules, roles)
    # The proxy's own connection, as a role on the upstream's host, database and TLS
    # settings (what a key_store without a url is, too).
    dsn = KeyStoreSettings(user=roles[0]).dsn(upstream)
    try:
        conn = await asyncpg.connect(dsn, timeout=settings.limits.upstream_connect_timeout)
        try:
            state = await read_state(conn, spec)
        finally:
            await conn.close()
    except _ERRORS as exc:
        return FloorReport(False, (f"cannot inspect database {upstream.database} as "
                                   f"{roles[0]}: {exc}",), roles)
    found = findings(spec, state)
    reasons = tuple(str(f) for f in found if f.breaks)
    return FloorReport(not reasons, reasons, roles, tuple(str(f) for f in found if not f.breaks))


def fix_command(settings: Settings, report: FloorReport) -> str:
    rules = settings.rules or "RULES"
    roles = " ".join(f"--role {r}" for r in report.roles) or "--role UPSTREAM_ROLE"
    return (f"tenant-proxy install --rules {rules} --dsn postgresql://ADMIN@"
            f"{settings.upstream.host}:{settings.upstream.port}/"
            f"{settings.upstream.database or 'DATABASE'} {roles}")


def refusal(settings: Settings, report: FloorReport) -> str:
    """Why a proxy with ``floor: required`` does not start, and how to fix it."""
    return (f"floor: required, but {report.line()}. Fix the upstream role and install the "
            f"floor: {fix_command(settings, report)}")


class FloorMonitor:
    def __init__(self, settings: Settings, rules: Callable[[], Rules | None],
                 metrics: Metrics) -> None:
        self.settings = settings
        self.mode = settings.floor
        self._rules = rules
        self._metrics = metrics
        self.report: FloorReport | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Inspect (before serving when required) and keep watching; raises
        FloorUnavailable when the floor is required and off."""
        self._metrics.floor_on.set(0)
        if self.mode == "off":
            return
        rules, checked = self._rules(), -math.inf
        if self.mode == "required":
            await self.refresh(rules)
            assert self.report is not None
            if not self.report.on:
                raise FloorUnavailable(refusal(self.settings, self.report))
            checked = time.monotonic()
        self._task = asyncio.get_running_loop().create_task(self._watch(rules, checked))

    async def _watch(self, rules: Rules | None, checked: float) -> None:
        """Inspect again when the rules object changes (a reload) or every
        RECHECK_SECONDS."""
        while True:
            current = self._rules()
            if current is not rules or time.monotonic() - checked >= RECHECK_SECONDS:
                rules, checked = current, time.monotonic()
                try:
                    await self.refresh(current)
                except Exception:
                    log.exception("inspecting the floor failed (a proxy bug)")
            await asyncio.sleep(_POLL_SECONDS)

    async def refresh(self, rules: Rules | None) -> None:
        report = await inspect(self.settings, rules)
        self._metrics.floor_on.set(1 if report.on else 0)
        if report != self.report:
            self._log(report, rules)
        self.report = report

    def _log(self, report: FloorReport, rules: Rules | None) -> None:
        fields = {"floor": "on" if report.on else "off", "floor_mode": self.mode,
                  "roles": list(report.roles), "reasons": list(report.reasons)}
        if rules is None:  # pass-through: nothing to protect, nothing to warn about
            log.info("%s", report.line(), extra={"fields": fields})
            return
        for drift in report.drift:
            log.info("floor drift: %s", drift)
        if not report.on:
            level = logging.ERROR if self.mode == "required" else logging.WARNING
            log.log(level, "%s (fix: %s)", report.line(), fix_command(self.settings, report),
                    extra={"fields": fields})
            return
        log.info("%s", report.line(), extra={"fields": fields})
        for login, role in shared_bypass_roles(rules, self.settings.upstream).items():
            log.warning("bypass login %s runs as %s, which the floor restricts: its "
                        "statements are filtered too (give it a role with BYPASSRLS)",
                        login, role)

    def describe(self) -> str:
        if self.mode == "off":
            return "floor: not inspected (floor: off)"
        return self.report.line() if self.report else "floor: not inspected yet"

    def problem(self) -> str | None:
        """Why the proxy is not ready: the floor is required and off."""
        if self.mode == "required" and self.report is not None and not self.report.on:
            return self.report.line()
        return None

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
