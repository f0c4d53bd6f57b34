"""What a session records of each statement: a stable fingerprint of its shape
and its audit event (never values)."""

from __future__ import annotations

import hashlib

from proxy.anomaly.detector import Verdict
from proxy.errors import PgError
from proxy.observability.audit import AuditWriter
from proxy.sql.normalize import normalize


def text_fingerprint(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()[:16]


def fingerprint(sql: str) -> str:
    """A stable id for a statement's shape: its literals and comments never show."""
    norm = normalize(sql)
    return text_fingerprint(norm.key if norm is not None else sql)


def audit_statement(audit: AuditWriter, role: str, tenant: str | None, kind: str,
                    fingerprint: str, outcome: str, error: PgError | None,
                    relations: tuple[str, ...], verdict: Verdict | None = None) -> None:
    """One audit record: who, tenant, fingerprint, outcome, reason; never values."""
    event: dict[str, object] = {"role": role, "tenant": tenant, "kind": kind,
                                "fingerprint": fingerprint, "outcome": outcome,
                                "relations": sorted(set(relations))}
    if error is not None:
        event.update(reason=error.reason, sqlstate=error.sqlstate)
    if verdict is not None:
        event["anomaly_score"] = round(verdict.score, 4)
        if verdict.top:
            event["anomaly_top"] = [name for name, _ in verdict.top]
    audit.write(event)
