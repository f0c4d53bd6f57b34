"""Hot reload of the rules file: a file watch and SIGHUP.

A reload that fails validation keeps the old rules and logs why; a good one
swaps the engine's rules in one assignment, so statements already being
planned finish under the rules they started with and no connection drops.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from pathlib import Path

from proxy.config.yamlsource import ConfigError
from proxy.policy.rules import load_rules
from proxy.session.engine import Engine

log = logging.getLogger("tenant_proxy.rules")


class RulesWatcher:
    def __init__(self, path: str, engine: Engine, interval: float = 1.0) -> None:
        self.path = Path(path)
        self.engine = engine
        self.interval = interval
        self.reloads = 0
        self.failures = 0
        self.last_error: str | None = None
        self._stamp = self._stat()
        self._task: asyncio.Task[None] | None = None

    def _stat(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return st.st_ino, st.st_mtime_ns, st.st_size

    def reload(self) -> bool:
        """Load the file now; True if the new rules are in force."""
        try:
            rules = load_rules(self.path)
        except (ConfigError, OSError) as exc:
            self.failures += 1
            self.engine.metrics.rules_reloads.labels("failed").inc()
            self.last_error = str(exc)
            log.error("rules reload failed, keeping version %s: %s",
                      self.engine.rules.version, exc)
            return False
        if rules.digest != self.engine.rules.digest:
            self.engine.swap(rules)
            self.reloads += 1
            self.engine.metrics.rules_reloads.labels("ok").inc()
            log.info("rules reloaded from %s: version %s", self.path, rules.version)
        self.last_error = None
        return True

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            stamp = self._stat()
            if stamp != self._stamp and stamp is not None:
                self._stamp = stamp
                self.reload()

    def start(self) -> None:
        if self.interval > 0:
            self._task = asyncio.get_running_loop().create_task(self._watch())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
