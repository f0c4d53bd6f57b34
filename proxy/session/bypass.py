"""Bypass roles (migrations): forwarded unrewritten, but still audited."""

from __future__ import annotations

from dataclasses import dataclass

from proxy.session.engine import Engine
from proxy.session.hooks import PassThrough
from proxy.session.records import audit_statement, fingerprint
from proxy.wire.frontend import Parse


@dataclass
class BypassSession(PassThrough):
    """A bypass role: forwarded unrewritten, but still audited."""

    engine: Engine
    role: str
    inspects: bool = True

    def query(self, sql: str) -> str | None:
        self._audit(sql)
        return None

    def parse(self, message: Parse) -> Parse | None:
        self._audit(message.sql)
        return None

    def _audit(self, sql: str) -> None:
        self.engine.metrics.statements.labels("bypass", "none", self.role, "forwarded").inc()
        if self.engine.audit is not None:
            audit_statement(self.engine.audit, self.role, None, "bypass", fingerprint(sql),
                            "forwarded", None, ())
