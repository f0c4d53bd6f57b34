"""The ready-phase byte pump: asyncio protocols around the sans-IO relay.

After login both sockets switch from streams to these protocols, so each
chunk of bytes goes from ``data_received`` through the relay straight to the
other transport, with no task switch or await per message. Backpressure is
transport flow control: when one side's write buffer fills, the other side
stops reading, so a client that never reads its results costs at most the
buffer limits in memory (I7).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from proxy.errors import ConnectionFailure, PgError
from proxy.session.relay import Output, Relay

#: Write-buffer high-water mark per transport; reading the other side pauses above it.
WRITE_BUFFER_HIGH = 256 * 1024


class _Side(asyncio.Protocol):
    def __init__(self, pump: Pump, on_data: Callable[[bytes], None],
                 on_closed: Callable[[], None]) -> None:
        self.pump = pump
        self.on_data = on_data
        self.on_closed = on_closed
        self.peer: asyncio.Transport | None = None

    def data_received(self, data: bytes) -> None:
        self.on_data(data)

    def eof_received(self) -> bool:
        self.on_closed()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.on_closed()

    def pause_writing(self) -> None:
        if self.peer is not None:
            self.peer.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None and not self.peer.is_closing():
            self.peer.resume_reading()


class Pump:
    """Moves one session's bytes until either side ends; ``done`` carries the
    error to report to the client (None for a normal end)."""

    def __init__(self, relay: Relay, client: asyncio.Transport, upstream: asyncio.Transport,
                 count_in: Callable[[float], None], count_out: Callable[[float], None]) -> None:
        self.relay = relay
        self.client = client
        self.upstream = upstream
        self._count_in, self._count_out = count_in, count_out
        self.done: asyncio.Future[PgError | None] = asyncio.get_running_loop().create_future()

    def start(self, client_leftover: bytes, upstream_leftover: bytes) -> None:
        client_side = _Side(self, self._from_client, self.on_client_closed)
        upstream_side = _Side(self, self._from_upstream, self.on_upstream_closed)
        client_side.peer, upstream_side.peer = self.upstream, self.client
        for transport, side in ((self.client, client_side), (self.upstream, upstream_side)):
            transport.set_protocol(side)
            transport.set_write_buffer_limits(high=WRITE_BUFFER_HIGH)
            transport.resume_reading()
        if upstream_leftover:
            self._from_upstream(upstream_leftover)
        if client_leftover:
            self._from_client(client_leftover)

    def _finish(self, error: PgError | None) -> None:
        if not self.done.done():
            self.done.set_result(error)

    def _from_client(self, data: bytes) -> None:
        if self.done.done():
            return
        self._count_in(len(data))
        try:
            out = self.relay.from_client(data)
        except PgError as exc:
            self._finish(exc)
            return
        self._send(out)
        if out.terminate:
            self._finish(None)

    def _from_upstream(self, data: bytes) -> None:
        if self.done.done():
            return
        self._count_out(len(data))
        try:
            out = self.relay.from_upstream(data)
        except PgError as exc:
            self._finish(exc)
            return
        self._send(out)  # held client messages and CopyFail may go upstream too
        if out.terminate:
            self._finish(None)

    def _send(self, out: Output) -> None:
        if out.to_client:
            self.client.writelines(out.to_client)
        if out.to_upstream:
            if self.upstream.is_closing():
                self.on_upstream_closed()
                return
            self.upstream.writelines(out.to_upstream)

    def on_client_closed(self) -> None:
        self._finish(None)

    def on_upstream_closed(self) -> None:
        if self.relay.upstream_fatal or self.relay.terminating:
            self._finish(None)
        else:
            self._finish(ConnectionFailure("server closed the connection unexpectedly",
                                           hint="The upstream server terminated abnormally "
                                                "or the network failed."))
