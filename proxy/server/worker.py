"""A worker process: ``python -m proxy.server.worker``, started by the supervisor.

The supervisor writes a pickled :class:`WorkerSpec` to the worker's stdin (its
own settings, already resolved, so every worker and every restart runs with
exactly the same ones) and waits for the "listening" line on its stdout.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import pickle
import signal
import sys
from dataclasses import dataclass

from proxy.config.settings import Settings
from proxy.observability.logs import configure_logging
from proxy.server.place import WorkerPlace

log = logging.getLogger("tenant_proxy.worker")

_PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class WorkerSpec:
    settings: Settings
    place: WorkerPlace
    supervisor_pid: int
    log_level: str
    log_format: str


def drain_when_orphaned(supervisor_pid: int) -> bool:
    """Get SIGTERM (and drain) if the supervisor dies, so no worker outlives it.
    False if it is gone already."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    return os.getppid() == supervisor_pid


def main() -> int:
    # Until serve() installs its handlers: Ctrl-C in a terminal reaches every
    # process and the supervisor passes it on as SIGTERM; a SIGHUP now is moot
    # (the rules are read at start) and must not kill the worker.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    spec: WorkerSpec = pickle.load(sys.stdin.buffer)
    configure_logging(spec.log_level, spec.log_format, worker=spec.place.index)
    if not drain_when_orphaned(spec.supervisor_pid):
        log.warning("the supervisor exited before worker %d started", spec.place.index)
        return 1
    from proxy.server.run import install_uvloop, serve  # after logging: it loads the engine

    install_uvloop()
    return asyncio.run(serve(spec.settings, spec.place))


if __name__ == "__main__":
    sys.exit(main())
