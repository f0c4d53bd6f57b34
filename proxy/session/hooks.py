"""The seam between the wire relay and the SQL pipeline.

The relay hands each Query text and Parse to a ``StatementHook``; the hook
returns what to forward (``None`` for unchanged) or raises a ``PgError`` to
refuse it. Bind, Execute and Close bodies, ReadyForQuery and notifications
are reported too, so a hook can keep prepared statements and portals from
crossing a tenant switch. Keeping this an interface lets the relay stay
ignorant of rules, rewriting and encryption.
"""

from __future__ import annotations

from typing import Protocol

from proxy.session.results import ResultDecryptor
from proxy.wire.frontend import Bind, Close, Parse


class StatementHook(Protocol):
    #: False lets the relay forward everything without decoding it at all.
    inspects: bool
    #: True when the hook enforces tenant isolation (and so needs the server to read
    #: SQL the way the proxy does).
    scoped: bool
    #: Set by the relay before ``query``/``parse``: the sequence number of the
    #: ReadyForQuery that will answer the message.
    rfq_due: int
    #: Rewrites result messages for encrypted columns; None lets them pass untouched.
    results: ResultDecryptor | None

    async def warm(self) -> None:
        """Once, after login: load what the first statements will need (tenant keys)."""

    def query(self, sql: str) -> str | None:
        """A simple-protocol Query (possibly several statements)."""

    def parse(self, message: Parse) -> Parse | None:
        """An extended-protocol Parse."""

    def bind(self, body: bytes) -> list[Close | Parse | Bind] | None:
        """A Bind message body; raise to refuse it, or return messages to send
        upstream before it (their answers are not passed to the client). A Bind
        last in the list replaces the client's."""

    def execute(self, body: bytes) -> None:
        """An Execute message body; raise to refuse it."""

    def close(self, body: bytes) -> None:
        """A Close message body."""

    def ready(self, status: bytes, number: int) -> None:
        """The upstream's ReadyForQuery number ``number`` with its status."""

    def notification_allowed(self, channel: str) -> bool:
        """Whether a NotificationResponse on ``channel`` may reach the client."""

    def completed(self, rows: int) -> None:
        """A CommandComplete from the server, with its row count (0 if none)."""

    def server_error(self, sqlstate: str) -> None:
        """An ErrorResponse from the server (refusals are not reported here)."""

    def answered(self, kind: int) -> None:
        """The server answered a message: ParseComplete, BindComplete, CloseComplete,
        or the end of an execution (CommandComplete, EmptyQueryResponse, PortalSuspended)."""

    def failed(self) -> None:
        """An ErrorResponse (refusals included): the server skips the rest up to Sync."""

    @property
    def executing(self) -> bool:
        """True while a Query or Execute sent upstream is unanswered (it may start a COPY)."""

    #: True while the server is in COPY FROM STDIN: client rows go through ``copy_data``.
    copying: bool

    def copy_begin(self) -> None:
        """A CopyInResponse for the statement running now; raise to fail the COPY."""

    def copy_data(self, data: bytes) -> bytes:
        """The CopyData payload to forward instead of ``data``; raise to refuse."""

    def copy_done(self) -> bytes:
        """Rows still buffered when the client sends CopyDone; raise to refuse."""

    def copy_end(self) -> None:
        """COPY input ended (CopyDone, CopyFail or a refusal)."""


class PassThrough:
    """Forwards every statement unchanged (no rules, or a bypass role)."""

    inspects = False
    scoped = False
    rfq_due = 0
    results: ResultDecryptor | None = None

    async def warm(self) -> None:
        return None

    def query(self, sql: str) -> str | None:
        return None

    def parse(self, message: Parse) -> Parse | None:
        return None

    def bind(self, body: bytes) -> list[Close | Parse | Bind] | None:
        return None

    def execute(self, body: bytes) -> None:
        return None

    def close(self, body: bytes) -> None:
        return None

    def ready(self, status: bytes, number: int) -> None:
        return None

    def notification_allowed(self, channel: str) -> bool:
        return True

    def answered(self, kind: int) -> None:
        return None

    def failed(self) -> None:
        return None

    executing = False

    def copy_begin(self) -> None:
        return None

    def completed(self, rows: int) -> None:
        return None

    def server_error(self, sqlstate: str) -> None:
        return None

    copying = False

    def copy_data(self, data: bytes) -> bytes:
        return data

    def copy_done(self) -> bytes:
        return b""

    def copy_end(self) -> None:
        return None
