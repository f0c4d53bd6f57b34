"""A worker's control socket: how the other processes of one proxy talk to it.

Each worker listens on a Unix socket in a private (0700) directory made by the
supervisor. A request is one line of words (``cancel PID SECRET``, ``ready``,
``metrics``, ``floor``); the answer is whatever the handler returns, then the
connection closes. Workers use it to hand CancelRequests to the worker owning
the session; the supervisor uses it to gather readiness, metrics and the state
of the floor (proxy/floor).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path

log = logging.getLogger("tenant_proxy.control")

Handler = Callable[[list[str]], Awaitable[bytes]]

_MAX_REQUEST = 1024
_REQUEST_TIMEOUT = 5.0


def socket_path(rundir: str | Path, worker: int) -> Path:
    return Path(rundir) / f"worker-{worker}.sock"


class ControlServer:
    def __init__(self, path: Path, handlers: Mapping[str, Handler]) -> None:
        self.path = path
        self.handlers = handlers
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)  # left by a worker that died in this slot
        self._server = await asyncio.start_unix_server(self._handle, str(self.path),
                                                       limit=_MAX_REQUEST)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(_REQUEST_TIMEOUT):
                line = await reader.readline()
            words = line.decode("ascii", "replace").split()
            handler = self.handlers.get(words[0]) if words else None
            answer = await handler(words[1:]) if handler else b"unknown command\n"
            writer.write(answer)
            await writer.drain()
        except (TimeoutError, ValueError, ConnectionError) as exc:
            log.warning("control request on %s failed: %s", self.path, exc)
        except Exception:
            log.exception("control request on %s crashed (a proxy bug)", self.path)
        finally:
            writer.close()


async def ask(path: Path, *words: str, timeout: float = _REQUEST_TIMEOUT) -> bytes:
    """Send one request to a control socket and return the whole answer."""
    async with asyncio.timeout(timeout):
        reader, writer = await asyncio.open_unix_connection(str(path))
        try:
            writer.write(" ".join(words).encode("ascii") + b"\n")
            await writer.drain()
            return await reader.read()
        finally:
            writer.close()
