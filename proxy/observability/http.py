"""The operator's HTTP endpoint: /metrics, /healthz and /readyz.

A deliberately tiny HTTP/1.0-style server on asyncio (GET only, one request
per connection, bounded reads), so probes and scrapes share the proxy's event
loop and see exactly its state. What the pages say comes from callables: one
process renders its own registry, the supervisor of several workers asks them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

log = logging.getLogger("tenant_proxy.http")

#: None when healthy (ready), else the reason why not.
Probe = Callable[[], Awaitable[str | None]]
Exposition = Callable[[], Awaitable[bytes]]
#: Lines ``/readyz?verbose`` adds after the verdict (such as the floor's state).
Details = Callable[[], Awaitable[list[str]]]


async def _alive() -> None:
    return None


async def _no_details() -> list[str]:
    return []


def registry_exposition(registry: CollectorRegistry) -> Exposition:
    async def render() -> bytes:
        return generate_latest(registry)
    return render


class OpsServer:
    def __init__(self, host: str, port: int, exposition: Exposition, readiness: Probe,
                 liveness: Probe = _alive, details: Details = _no_details) -> None:
        self.host, self._port = host, port
        self.exposition = exposition
        self.readiness = readiness
        self.liveness = liveness
        self.details = details
        self._server: asyncio.Server | None = None

    @property
    def port(self) -> int:
        assert self._server is not None
        return self._server.sockets[0].getsockname()[1]

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, self.host, self._port)
        log.info("metrics and health on http://%s:%d", self.host, self.port)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(5):
                request = await reader.readuntil(b"\r\n\r\n")
            method, _, rest = request.split(b"\r\n", 1)[0].decode("latin-1").partition(" ")
            path, _, query = rest.split(" ", 1)[0].partition("?")
            status, ctype, body = await self._route(method, path, "verbose" in query.split("&"))
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                ConnectionError):
            writer.close()
            return
        head = (f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}"
                "\r\nConnection: close\r\n\r\n").encode()
        with contextlib.suppress(ConnectionError):
            writer.write(head + body)
            await writer.drain()
        writer.close()

    async def _route(self, method: str, path: str, verbose: bool) -> tuple[str, str, bytes]:
        if method != "GET":
            return "405 Method Not Allowed", "text/plain", b"GET only\n"
        if path == "/metrics":
            return "200 OK", CONTENT_TYPE_LATEST, await self.exposition()
        if path == "/healthz":
            problem = await self.liveness()
            if problem is None:
                return "200 OK", "text/plain", b"ok\n"
            return "503 Service Unavailable", "text/plain", f"not alive: {problem}\n".encode()
        if path == "/readyz":
            problem = await self.readiness()
            body = "ready\n" if problem is None else f"not ready: {problem}\n"
            if verbose:  # /readyz?verbose: the verdict, then what else probes may want to see
                body += "".join(f"{line}\n" for line in await self.details())
            status = "200 OK" if problem is None else "503 Service Unavailable"
            return status, "text/plain", body.encode()
        return "404 Not Found", "text/plain", b"not found\n"
