"""A minimal blocking protocol client for tests that need exact bytes on the wire."""

from __future__ import annotations

import socket
from dataclasses import dataclass, field

from proxy.auth.scram import MECHANISM, ScramClient
from proxy.wire import backend as be
from proxy.wire import frontend as fe
from proxy.wire.framing import MessageFramer


@dataclass
class RawClient:
    sock: socket.socket
    framer: MessageFramer = field(default_factory=lambda: MessageFramer(1 << 24, "server"))
    queue: list[be.BackendMessage] = field(default_factory=list)

    @classmethod
    def connect(cls, port: int, timeout: float = 10.0) -> RawClient:
        sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        return cls(sock)

    def send(self, *messages: object) -> None:
        self.sock.sendall(b"".join(m.encode() for m in messages))  # type: ignore[attr-defined]

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def recv(self) -> be.BackendMessage | None:
        """The next backend message, or None when the proxy closed the connection."""
        while not self.queue:
            frames = self.framer.take()
            if frames is not None:
                self.queue.extend(be.decode_backend(k, frames.body((k, s, e)))
                                  for k, s, e in frames.spans)
                break
            try:
                data = self.sock.recv(65536)
            except ConnectionResetError:
                data = b""
            if not data:
                return None
            self.framer.feed(data)
        return self.queue.pop(0)

    def recv_until_ready(self) -> list[be.BackendMessage]:
        out: list[be.BackendMessage] = []
        while True:
            msg = self.recv()
            if msg is None:
                return out
            out.append(msg)
            if isinstance(msg, be.ReadyForQuery):
                return out

    def login(self, user: str, password: str, database: str,
              protocol: int = fe.PROTOCOL_3_0, **params: str) -> list[be.BackendMessage]:
        """Startup plus SCRAM; returns every message up to the first ReadyForQuery."""
        self.send(fe.StartupMessage({"user": user, "database": database, **params}, protocol))
        seen: list[be.BackendMessage] = []
        scram = ScramClient(password)
        while True:
            msg = self.recv()
            if msg is None:
                return seen
            seen.append(msg)
            if isinstance(msg, be.Authentication):
                if msg.code == be.AUTH_SASL:
                    self.send(fe.SASLInitialResponse(MECHANISM, scram.first()))
                elif msg.code == be.AUTH_SASL_CONTINUE:
                    self.send(fe.PasswordMessage(scram.final(msg.data)))
                elif msg.code == be.AUTH_SASL_FINAL:
                    scram.verify(msg.data)
            elif isinstance(msg, (be.ReadyForQuery, be.ErrorResponse)):
                return seen

    def query(self, sql: str) -> list[be.BackendMessage]:
        self.send(fe.Query(sql))
        return self.recv_until_ready()

    def close(self) -> None:
        self.sock.close()


def errors(messages: list[be.BackendMessage]) -> list[be.ErrorResponse]:
    return [m for m in messages if isinstance(m, be.ErrorResponse)]
