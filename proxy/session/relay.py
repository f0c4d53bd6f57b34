"""The ready-phase session state machine, sans-IO.

Bytes from the client go in through ``from_client`` and bytes from the
upstream through ``from_upstream``; each returns what to send where. Most
traffic passes through as the same bytes it arrived in; only statements
(for the SQL pipeline), refusals and a few status messages are looked at.

Refusals keep PostgreSQL's own semantics by letting PostgreSQL produce the
error: the refused message is replaced by one that fails at the same point
(a statement that is a single unguessable identifier, hence a syntax error),
and that ErrorResponse is swapped for the refusal on its way back. The
upstream therefore aborts the transaction, skips to Sync and reports the true
transaction status, exactly as if it had raised the refusal itself (I5), and
responses stay in order however deeply the client pipelines.
"""

from __future__ import annotations

import secrets
import struct
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from proxy.errors import ConnectionFailure, PgError, ProtocolViolation, Unsupported
from proxy.session.hooks import PassThrough, StatementHook
from proxy.session.results import BACKEND_KINDS
from proxy.wire.backend import (
    ErrorResponse,
    NotificationResponse,
    ParameterStatus,
    guard_error,
)
from proxy.wire.fields import FieldReader, decode_text, encode_text
from proxy.wire.framing import Frames, MessageFramer
from proxy.wire.frontend import (
    FRONTEND_DECODERS,
    Bind,
    Close,
    CopyData,
    CopyDone,
    CopyFail,
    Execute,
    Flush,
    Parse,
    Query,
)

_Q, _P, _F, _S, _X, _PASSWORD = b"Q"[0], b"P"[0], b"F"[0], b"S"[0], b"X"[0], b"p"[0]
_B, _EXECUTE, _CLOSE, _DESCRIBE = b"B"[0], b"E"[0], b"C"[0], b"D"[0]
_COPY_DATA, _COPY_DONE, _COPY_FAIL = b"d"[0], b"c"[0], b"f"[0]
_LENGTH = struct.Struct("!i")
_Z, _ERROR, _NOTIFICATION, _STATUS = b"Z"[0], b"E"[0], b"A"[0], b"S"[0]
_COMMAND_COMPLETE, _PARSE_COMPLETE, _CLOSE_COMPLETE = b"C"[0], b"1"[0], b"3"[0]
_COPY_IN_RESPONSE = b"G"[0]
_COPY_KINDS = (_COPY_DATA, _COPY_DONE, _COPY_FAIL)
#: Answers that settle a statement's or portal's state (see proxy.session.namespace).
_ANSWERS = frozenset(b"123CIs")
_FLUSH = Flush().encode()


@dataclass(slots=True)
class Output:
    to_upstream: list[bytes] = field(default_factory=list)
    to_client: list[bytes] = field(default_factory=list)
    #: The client sent Terminate: forward what is queued, then close both sides.
    terminate: bool = False


def check_server_parameter(status: ParameterStatus) -> None:
    """The proxy reads SQL as UTF-8 with standard_conforming_strings on; if the
    server ever reads it otherwise, their parses could disagree (I3)."""
    if status.name == "standard_conforming_strings" and status.value != "on":
        raise ConnectionFailure(
            "the server turned standard_conforming_strings off; tenant-proxy closes the "
            "session because it would read strings differently from the server",
            hint="Keep standard_conforming_strings = on for tenant roles.")
    if status.name == "client_encoding" and status.value.upper() not in ("UTF8", "UNICODE"):
        raise ConnectionFailure(
            f"the server's client_encoding is {status.value}; tenant-proxy closes the "
            "session because it would split statements differently from the server",
            hint="Keep client_encoding = UTF8 for tenant roles.")


class Relay:
    """One client session after authentication."""

    def __init__(self, *, max_message_size: int, hook: StatementHook | None = None,
                 on_ready: Callable[[float], None] | None = None,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        self._client = MessageFramer(max_message_size, "client")
        self._upstream = MessageFramer(max_message_size, "server")
        self._hook: StatementHook = hook or PassThrough()
        self._marker = f"tenant_proxy_refused_{secrets.token_hex(8)}_"
        self._refusals: dict[str, PgError] = {}
        self._seq = 0
        #: Transaction status from the last ReadyForQuery: b"I", b"T" or b"E".
        self.status = b"I"
        #: Query/Sync/FunctionCall messages forwarded and not yet answered by ReadyForQuery.
        self.pending = 0
        #: Running totals of those messages and of ReadyForQuery messages received.
        self.sent = 0
        self.received = 0
        #: Called with the seconds from forwarding each Query/Sync to its ReadyForQuery.
        self._on_ready = on_ready
        self._clock = clock
        self._sent_at: deque[float] = deque()
        #: Per Parse/Close forwarded: (Sync epoch, injected by the proxy?).
        self._parse_answers: deque[tuple[int, bool]] = deque()
        self._close_answers: deque[tuple[int, bool]] = deque()
        self.upstream_fatal = False
        #: The client sent Terminate: the upstream closing is expected, not a failure.
        self.terminating = False
        #: Client messages wait in the framer until the server says whether the
        #: statement it runs starts a COPY (CopyData sent ahead of CopyInResponse).
        self._holding = False

    @property
    def busy(self) -> bool:
        """True while the upstream owes the client a ReadyForQuery."""
        return self.pending > 0

    @property
    def hook(self) -> StatementHook:
        return self._hook

    @hook.setter
    def hook(self, hook: StatementHook) -> None:
        self._hook = hook

    # --- client -> upstream -------------------------------------------------

    def from_client(self, data: bytes) -> Output:
        self._client.feed(data)
        out = Output()
        if not self._holding:
            self._from_client(out)
        return out

    def _from_client(self, out: Output) -> None:
        frames = self._client.take()
        if frames is None:
            return
        hook = self._hook
        inspects = hook.inspects
        plain_from = end = 0
        for span in frames.spans:
            kind, end = span[0], span[2]
            if kind not in FRONTEND_DECODERS or kind == _PASSWORD:
                raise ProtocolViolation(f"invalid frontend message type {bytes((kind,))!r}")
            if inspects and hook.copying and kind not in _COPY_KINDS:
                if kind != _S and kind != b"H"[0]:
                    raise ProtocolViolation(f"unexpected message type {bytes((kind,))!r} "
                                            "during COPY from stdin")
                continue  # the server ignores Sync and Flush during COPY
            if inspects and kind in _COPY_KINDS and not hook.copying and hook.executing:
                self._hold(frames, span[1])
                end = span[1]
                out.to_upstream.append(_FLUSH)  # so the server answers what it runs now
                break
            if kind in (_S, _Q, _F):
                self.pending += 1
                self.sent += 1
                if self._on_ready is not None:
                    self._sent_at.append(self._clock())
            results = hook.results
            if results is not None:
                if kind == _DESCRIBE:
                    results.describe(frames.body(span))
                elif kind in (_S, _F):
                    results.sync()
                elif kind == _Q:
                    results.query()
            replacement = None
            if kind == _F:
                replacement = self._refuse(Unsupported(
                    "fastpath function calls are not supported by tenant-proxy",
                    hint="Call the function with a SELECT statement instead."), Query)
            elif kind == _X:
                out.terminate = self.terminating = True
            elif inspects and kind in (_Q, _P, _B, _EXECUTE, _CLOSE):
                if kind == _P:
                    self._parse_answers.append((self.sent, False))
                elif kind == _CLOSE:
                    self._close_answers.append((self.sent, False))
                replacement = self._inspect(frames, span)
            elif inspects and kind in _COPY_KINDS and hook.copying:
                replacement = self._copy(kind, frames.body(span))
            if replacement is not None:
                if span[1] > plain_from:
                    out.to_upstream.append(frames.data[plain_from:span[1]])
                out.to_upstream.append(replacement)
                plain_from = span[2]
            if out.terminate:
                break
        if end > plain_from:
            out.to_upstream.append(frames.data[plain_from:end])

    def _hold(self, frames: Frames, start: int) -> None:
        """Put the client's messages from ``start`` on back in front of the framer."""
        rest = self._client.rest()
        self._client.feed(frames.data[start:] + rest)
        self._holding = True

    def _release(self, out: Output) -> None:
        """Held client messages go on once the server is in COPY or runs nothing."""
        hook = self._hook
        if self._holding and (hook.copying or not hook.executing):
            self._holding = False
            self._from_client(out)

    def _inspect(self, frames: Frames, span: tuple[int, int, int]) -> bytes | None:
        kind, body = span[0], frames.body(span)
        hook = self._hook
        if kind == _Q:
            if not body.endswith(b"\0") or b"\0" in body[:-1]:
                raise ProtocolViolation("invalid Query message: not one NUL-terminated string")
            hook.rfq_due = self.sent
            try:
                new_sql = hook.query(decode_text(body[:-1]))
            except PgError as exc:
                return self._refuse(exc, Query)
            if new_sql is None:
                return None
            raw = encode_text(new_sql)
            return b"Q" + _LENGTH.pack(len(raw) + 5) + raw + b"\0"
        if kind == _P:
            parse = Parse.decode(FieldReader(body, "Parse"))
            hook.rfq_due = self.sent + 1
            if hook.results is not None:
                hook.results.parsed(parse.name)
            try:
                new_parse = hook.parse(parse)
            except PgError as exc:
                return self._refuse(exc, Parse, parse.name)
            return None if new_parse is None else new_parse.encode()
        results = hook.results
        hook.rfq_due = self.sent + 1
        try:
            if kind == _B:
                injected = hook.bind(body)
                bind = injected.pop().encode() if injected and isinstance(injected[-1], Bind) \
                    else None
                if results is not None:
                    results.bind(body if bind is None else bind[5:])
                if injected or bind is not None:
                    return self._inject(injected or []) + (
                        frames.raw(span) if bind is None else bind)
            elif kind == _EXECUTE:
                hook.execute(body)
                if results is not None:
                    describe = results.execute(decode_text(body[:body.index(b"\0")]))
                    if describe:
                        return describe + frames.raw(span)
            else:
                hook.close(body)
                if results is not None:
                    closed = Close.decode(FieldReader(body, "Close"))
                    results.closed(closed.kind, closed.name)
        except PgError as exc:
            if kind == _EXECUTE and results is not None:
                # the marker Execute fails: its answer is an error
                results.execute("", describe=False)
            return self._refuse(exc, Bind if kind == _B else Execute)
        except ValueError as exc:
            raise ProtocolViolation(f"invalid {bytes((kind,))!r} message") from exc
        return None

    def _inject(self, messages: list[Close | Parse | Bind]) -> bytes:
        """Messages of the proxy's own, sent before the client's; their answers are
        swallowed (see ``_answers``)."""
        for message in messages:
            fifo = self._parse_answers if isinstance(message, Parse) else self._close_answers
            fifo.append((self.sent, True))
        return b"".join(m.encode() for m in messages)

    def _swallow(self, fifo: deque[tuple[int, bool]]) -> bool:
        """Whether this ParseComplete/CloseComplete answers a message the proxy injected.

        Answers come in the order of the messages; entries of a Sync epoch that
        already ended were skipped by the server after an error and are dropped.
        """
        while fifo and fifo[0][0] < self.received:
            fifo.popleft()
        return bool(fifo) and fifo.popleft()[1]

    def _copy(self, kind: int, body: bytes) -> bytes:
        """COPY FROM STDIN rows through the hook; a refusal becomes CopyFail, which
        makes the server end the COPY with an error naming the marker."""
        hook = self._hook
        try:
            if kind == _COPY_DATA:
                data = hook.copy_data(body)
                return CopyData(data).encode() if data else b""
            if kind == _COPY_DONE:
                tail = hook.copy_done()
                hook.copy_end()
                return (CopyData(tail).encode() if tail else b"") + CopyDone().encode()
        except PgError as exc:
            hook.copy_end()
            return CopyFail(self._marked(exc)).encode()
        hook.copy_end()
        return CopyFail(CopyFail.decode(FieldReader(body, "CopyFail")).reason).encode()

    def _refuse(self, error: PgError, carrier: type, name: str = "") -> bytes:
        """A message that makes the upstream fail right here, naming a marker.

        Query and Parse carry the marker as a statement (a syntax error); Bind
        names it as a prepared statement and Execute as a portal that do not
        exist, so the server's error message contains it either way.
        """
        marker = self._marked(error)
        if carrier is Query:
            return Query(marker).encode()
        if carrier is Parse:
            return Parse(name, marker).encode()
        if carrier is Bind:
            return Bind("", marker).encode()
        return Execute(marker, 0).encode()

    def _marked(self, error: PgError) -> str:
        """A new marker standing for ``error`` in the server's answer."""
        self._seq += 1
        marker = f"{self._marker}{self._seq}"
        self._refusals[marker] = error
        return marker

    # --- upstream -> client -------------------------------------------------

    def from_upstream(self, data: bytes) -> Output:
        self._upstream.feed(data)
        out = Output()
        frames = self._upstream.take()
        if frames is None:
            return out
        plain_from = 0
        hook = self._hook
        results = hook.results
        for kind, start, end in frames.spans:
            replacement: bytes | None = None
            if hook.inspects:
                if kind in _ANSWERS:
                    hook.answered(kind)
                elif kind == _COPY_IN_RESPONSE:
                    self._copy_begin(out)
            if results is not None and kind in BACKEND_KINDS:
                replacement = results.backend(kind, frames.data[start + 5:end])
            if kind == _Z:
                self.pending = max(0, self.pending - 1)
                self.received += 1
                self.status = frames.data[end - 1:end]
                if self._sent_at:
                    self._on_ready(self._clock() - self._sent_at.popleft())  # type: ignore[misc]
                self._hook.ready(self.status, self.received)
                if not self.pending:
                    # Markers the upstream skipped (after an earlier error) never come back.
                    self._refusals.clear()
                continue
            if kind == _PARSE_COMPLETE and self._parse_answers:
                if self._swallow(self._parse_answers):
                    replacement = b""
            elif kind == _CLOSE_COMPLETE and self._close_answers:
                if self._swallow(self._close_answers):
                    replacement = b""
            elif kind == _COMMAND_COMPLETE and self._hook.inspects:
                tag = frames.data[start + 5:end - 1]
                count = tag.rsplit(b" ", 1)[-1]
                self._hook.completed(int(count) if count.isdigit() and len(count) < 20 else 0)
            elif kind == _ERROR:
                replacement = self._error(frames.data[start + 5:end])
                if hook.inspects:
                    hook.failed()
            elif kind == _STATUS and self._hook.scoped:
                status = ParameterStatus.decode(FieldReader(frames.data[start + 5:end],
                                                            "ParameterStatus"))
                check_server_parameter(status)
                if results is not None and status.name == "TimeZone":
                    results.timezone = status.value
            elif kind == _NOTIFICATION and self._hook.inspects:
                note = NotificationResponse.decode(FieldReader(frames.data[start + 5:end],
                                                               "NotificationResponse"))
                if not self._hook.notification_allowed(note.channel):
                    replacement = b""
            if replacement is not None:
                if start > plain_from:
                    out.to_client.append(frames.data[plain_from:start])
                if replacement:
                    out.to_client.append(replacement)
                plain_from = end
        if plain_from < len(frames.data):
            out.to_client.append(frames.data[plain_from:])
        self._release(out)
        return out

    def _copy_begin(self, out: Output) -> None:
        """CopyInResponse: the statement's rows are checked from here on; a COPY the
        hook has no checker for is failed at once (the client's rows are dropped by
        the server, and its error is the refusal)."""
        try:
            self._hook.copy_begin()
        except PgError as exc:
            self._hook.copy_end()
            out.to_upstream.append(CopyFail(self._marked(exc)).encode())

    def _error(self, body: bytes) -> bytes | None:
        """Swap a refusal marker's syntax error for the refusal, and a tenant guard's cast
        error for the 42501 row-level security gives; note FATALs."""
        if self._marker.encode() not in body:
            fields = ErrorResponse.decode(FieldReader(body, "ErrorResponse")).fields
            if fields.get("V", fields.get("S")) in ("FATAL", "PANIC"):
                self.upstream_fatal = True
            self._hook.server_error(fields.get("C", ""))
            translated = guard_error(fields) if self._hook.scoped else None
            return None if translated is None else ErrorResponse(translated).encode()
        message = ErrorResponse.decode(FieldReader(body, "ErrorResponse")).message
        start = message.find(self._marker)
        end = start + len(self._marker)
        while end < len(message) and message[end].isdigit():
            end += 1
        error = self._refusals.pop(message[start:end], None)
        if error is None:
            return None
        return ErrorResponse(error.fields()).encode()

