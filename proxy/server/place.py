"""Where a worker process stands among its siblings, and the settings it runs with."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path

from proxy.config.settings import Settings


@dataclass(frozen=True)
class WorkerPlace:
    index: int
    count: int
    #: The supervisor's private directory holding every worker's control socket.
    rundir: str


def worker_audit_path(path: str, index: int) -> str:
    """Each worker keeps its own audit chain (a chain has one writer):
    ``audit.log`` becomes ``audit-worker0.log``, ``audit-worker1.log``, ..."""
    p = Path(path)
    return str(p.with_name(f"{p.stem}-worker{index}{p.suffix}"))


def worker_settings(settings: Settings, place: WorkerPlace, port: int) -> Settings:
    """The supervisor's settings as one worker applies them: the port the
    supervisor reserved, no HTTP endpoint (the supervisor serves it for all),
    an even share of the client connection limit, its own audit file."""
    limits = replace(settings.limits, max_client_connections=math.ceil(
        settings.limits.max_client_connections / place.count))
    audit = settings.audit and replace(settings.audit,
                                       path=worker_audit_path(settings.audit.path, place.index))
    return replace(settings, listen_port=port, http_listen=None, limits=limits, audit=audit,
                   workers=1)
