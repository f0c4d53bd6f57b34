"""One serving process from start to drain: the whole proxy with one worker,
or one of several workers under the supervisor."""

from __future__ import annotations

import asyncio
import signal
import sys

from proxy.config.settings import Settings
from proxy.server.listener import ProxyServer
from proxy.server.loop import install_uvloop
from proxy.server.place import WorkerPlace

__all__ = ["install_uvloop", "serve"]


async def serve(settings: Settings, worker: WorkerPlace | None = None) -> int:
    """Run until SIGINT or SIGTERM, then drain; SIGHUP reloads the rules.

    The "listening" line on stdout says the process accepts connections (the
    supervisor waits for it from each worker). Returns the exit status.
    """
    server = ProxyServer(settings, worker=worker)
    try:
        await server.start()
    except OSError as exc:
        print(f"tenant-proxy: cannot listen on {settings.listen_host}:{settings.listen_port}: "
              f"{exc}", file=sys.stderr, flush=True)
        await server.close()
        return 1
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    if server.watcher is not None:
        loop.add_signal_handler(signal.SIGHUP, server.watcher.reload)
    else:
        loop.add_signal_handler(signal.SIGHUP, lambda: None)  # nothing to reload; don't die
    print(f"tenant-proxy listening on {settings.listen_host}:{server.port}", flush=True)
    await stop.wait()
    await server.drain()
    return 0
