"""Fuzz targets over the sans-IO protocol pieces, as plain functions of ``bytes``.

Five targets, each with a ``run_*`` function that raises ``PgError`` when the
input ends the session (what the server does with a protocol violation) and
returns a small summary otherwise; ``fuzz_target(name)`` wraps one into the
one-argument callable atheris calls, which swallows ``PgError`` and lets
anything else propagate as a crash:

``startup``
    ``StartupFramer`` + ``decode_startup`` as the server's startup loop drives
    them (SSLRequest/GSSENCRequest answered with N, CancelRequest ends it), then
    the login's own checks and ``open_session`` for the trusted corpus role.
    Oracle: the parameters handed upstream are read as PostgreSQL reads them
    (``options`` split like ``pg_split_opts``, other keys as case-insensitive
    GUC names) and may only set allow-listed settings and the session's tenant.
``frontend`` / ``backend``
    ``MessageFramer`` + ``decode_frontend`` / ``decode_backend`` over a typed
    stream. Oracles: framing does not depend on how the bytes were chunked,
    every decoded message re-encodes to itself, the framer never holds more
    than one message's worth of bytes.
``relay``
    ``Relay`` with the ``PassThrough`` hook, fed client and upstream chunks in
    the order the input gives. Oracles: the output is the input byte for byte
    except for the documented replacements, and the upstream stream stays
    framed.
``relay_sql``
    ``Relay`` with the SQL pipeline (``tests/corpus/rules.yaml``, role
    ``corpus_app``, tenant 1), so Query/Parse/Bind/Execute/Close/CopyData bytes
    go through pglast, sqlglot, the rewriter and COPY row checks. The plan
    cache stays warm between inputs, as in a running proxy. Oracles: the
    upstream stream stays framed, every Query and Parse sent upstream decodes,
    a cached refusal does not grow with each hit.

Relay inputs are a sequence of chunk records ``[ctl:1][n:2 little-endian][n bytes]``
(``ctl & 1``: 0 client, 1 upstream; a short record takes what is left). That
is exactly what ``atheris.FuzzedDataProvider`` yields for ``ConsumeUInt(1)``,
``ConsumeUInt(2)``, ``ConsumeBytes(n)``, so the harness splits with the
provider and the plain split here reads the same seeds the same way.

The proxy fails closed when planning a statement raises (it logs "a
tenant-proxy bug" and refuses); the targets turn such a logged exception into
a crash, since it is one. Bugs already pinned by a failing regression test in
``tests/test_fuzz.py`` are listed in ``KNOWN_BUGS``; with
``FUZZ_IGNORE_KNOWN=1`` (the bounded CI run and the long run set it) they are
not reported again, so a run can still find new ones.
"""

from __future__ import annotations

import logging
import os
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from proxy.config.settings import Limits
from proxy.errors import PgError, ProtocolViolation
from proxy.policy.rules import parse_rules
from proxy.server.session import forwarded_startup, replication_requested
from proxy.session.engine import Engine
from proxy.session.hooks import PassThrough, StatementHook
from proxy.session.relay import Relay
from proxy.session.startup import open_session
from proxy.sql.builtins import SAFE_SETTINGS
from proxy.sql.engine import TENANT_SETTING
from proxy.wire.backend import decode_backend
from proxy.wire.framing import MessageFramer, StartupFramer
from proxy.wire.frontend import (
    CancelRequest,
    GSSENCRequest,
    SSLRequest,
    StartupMessage,
    decode_frontend,
    decode_startup,
)

HERE = Path(__file__).resolve().parent
SEEDS = HERE / "seeds"
CRASHES = HERE / "crashes"
RULES_FILE = HERE.parent / "corpus" / "rules.yaml"

TARGET_NAMES = ("startup", "frontend", "backend", "relay", "relay_sql")
#: libFuzzer dictionaries (``-dict=``): words each target's inputs are made of.
DICTS = {"startup": HERE / "dicts" / "startup.dict",
         "frontend": HERE / "dicts" / "stream.dict",
         "backend": HERE / "dicts" / "stream.dict",
         "relay": HERE / "dicts" / "sql.dict",
         "relay_sql": HERE / "dicts" / "sql.dict"}

#: Small limits so inputs of a few KB reach the limit checks.
MAX_MESSAGE = 2048
MAX_STARTUP_PACKET = 1024
MAX_STARTUP_PARAMETERS = Limits().max_startup_parameters

ROLE = "corpus_app"
TENANT = "1"
SESSION_PARAMS = {"options": f"-c {TENANT_SETTING}={TENANT}"}

CLIENT, UPSTREAM = 0, 1
Chunks = list[tuple[int, bytes]]
Splitter = Callable[[bytes], Chunks]


# --- relay input format --------------------------------------------------------

def split_plain(data: bytes) -> Chunks:
    """Chunk records to (direction, bytes); empty chunks are dropped."""
    out: Chunks = []
    pos, n = 0, len(data)
    while pos < n:
        ctl = data[pos]
        size = int.from_bytes(data[pos + 1:pos + 3], "little")
        pos = min(pos + 3, n)
        chunk = data[pos:pos + size]
        pos += len(chunk)
        if chunk:
            out.append((ctl & 1, chunk))
    return out


def encode_chunks(chunks: Chunks) -> bytes:
    """The inverse of ``split_plain`` (chunks over 65535 bytes are cut)."""
    out = bytearray()
    for direction, data in chunks:
        for i in range(0, len(data), 0xFFFF):
            piece = data[i:i + 0xFFFF]
            out += bytes((direction,)) + len(piece).to_bytes(2, "little") + piece
    return bytes(out)


def split_fdp(data: bytes) -> Chunks:
    """The same split through atheris' FuzzedDataProvider (atheris must be installed)."""
    import atheris  # optional: only the harness and one test need it

    fdp = atheris.FuzzedDataProvider(data)
    out: Chunks = []
    while fdp.remaining_bytes():
        ctl = fdp.ConsumeUInt(1)
        chunk = fdp.ConsumeBytes(fdp.ConsumeUInt(2))
        if chunk:
            out.append((ctl & 1, chunk))
    return out


def _pieces(data: bytes) -> list[bytes]:
    """A second, deterministic chunking of a stream (1 to 17 bytes a piece)."""
    step = 1 + len(data) % 17
    return [data[i:i + step] for i in range(0, len(data), step)]


# --- internal errors the proxy logs instead of raising ---------------------------

class LoggedBug(RuntimeError):
    """The proxy caught an exception of its own, logged it as a bug and failed
    closed; ``__cause__`` is that exception."""


class _Trap(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info and record.exc_info[1] is not None:
            self.records.append(record)


@contextmanager
def trap_logged_bugs() -> Iterator[None]:
    """Raise ``LoggedBug`` if the proxy logged a caught exception meanwhile."""
    logger = logging.getLogger("tenant_proxy")
    trap = _Trap()
    logger.addHandler(trap)
    try:
        yield
    finally:
        logger.removeHandler(trap)
    if trap.records:
        record = trap.records[0]
        assert record.exc_info is not None
        cause = record.exc_info[1]
        assert cause is not None
        story = "".join(traceback.format_exception(cause))
        raise LoggedBug(f"{record.getMessage()}\n--- the exception it caught ---\n{story}") \
            from cause


# --- known bugs ---------------------------------------------------------------------
# Each entry (name -> predicate over the exception a target raised) is a bug with a
# failing regression test in tests/test_fuzz.py, skipped by runs that set
# FUZZ_IGNORE_KNOWN=1 so they can find new ones. The six the first runs found
# (startup key case, COPY encoding, cached-refusal tracebacks, CSV errors,
# 4300-digit integers, non-UTF-8 SQL) are fixed; their regression tests pass.
KNOWN_BUGS: dict[str, Callable[[BaseException], bool]] = {}


def _chain(exc: BaseException) -> Iterator[BaseException]:
    while exc is not None:
        yield exc
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]


def known_bug(exc: BaseException) -> str | None:
    for name, matches in KNOWN_BUGS.items():
        if matches(exc):
            return name
    return None


# --- target (a): startup phase ----------------------------------------------------

@dataclass
class StartupResult:
    packets: list[object] = field(default_factory=list)
    #: "closed" (input ended first), "cancel", "session" or "refused: <sqlstate>".
    outcome: str = "closed"
    upstream: dict[str, str] | None = None


_engine: Engine | None = None


def engine() -> Engine:
    global _engine
    if _engine is None:
        _engine = Engine(parse_rules(RULES_FILE.read_text(), str(RULES_FILE)))
    return _engine


def run_startup(data: bytes) -> StartupResult:
    """The server's startup loop (``Session._startup``) and login checks, sans IO."""
    result = StartupResult()
    framer = StartupFramer(MAX_STARTUP_PACKET)
    cut = len(data) // 2
    pending = [data[:cut], data[cut:]]
    while True:
        body = framer.next_packet()
        if body is None:
            if not pending:
                return result
            framer.feed(pending.pop(0))
            continue
        assert len(body) <= MAX_STARTUP_PACKET, "startup framer returned an oversized packet"
        packet = decode_startup(body, max_parameters=MAX_STARTUP_PARAMETERS)
        result.packets.append(packet)
        if isinstance(packet, CancelRequest):
            result.outcome = "cancel"
            return result
        if isinstance(packet, (SSLRequest, GSSENCRequest)):
            continue  # answered "N": no TLS here
        assert isinstance(packet, StartupMessage)
        assert len(packet.parameters) <= MAX_STARTUP_PARAMETERS
        # decode(encode(x)) == x (duplicate keys collapse, so bytes may differ)
        again = decode_startup(packet.encode()[4:], max_parameters=MAX_STARTUP_PARAMETERS)
        assert again == packet, f"startup packet does not round-trip: {packet!r}"
        if framer.buffered:
            raise ProtocolViolation("unexpected data after the startup packet")
        _login(packet, result)
        return result


def _login(packet: StartupMessage, result: StartupResult) -> None:
    params = packet.parameters
    if not params.get("user"):
        result.outcome = "refused: no user"
        return
    if replication_requested(params):
        result.outcome = "refused: replication"
        return
    forwarded = forwarded_startup(params)
    try:
        hook, upstream = open_session(engine(), ROLE, forwarded)
    except PgError as exc:
        result.outcome = f"refused: {exc.sqlstate}"
        return
    check_upstream_startup(upstream, getattr(hook, "startup_tenant", None))
    result.outcome = "session"
    result.upstream = upstream


_C_SPACE = b" \t\n\r\f\v"
_UTF8_NAMES = ("UTF8", "UNICODE")


def pg_split_opts(options: str) -> list[str]:
    """The ``options`` startup parameter split into words as PostgreSQL's
    ``pg_split_opts`` does: C-locale whitespace separates, backslash escapes."""
    raw = options.encode("utf-8", "surrogateescape")
    words: list[str] = []
    i, n = 0, len(raw)
    while i < n:
        while i < n and raw[i] in _C_SPACE:
            i += 1
        if i >= n:
            break
        word = bytearray()
        escaped = False
        while i < n:
            ch = raw[i]
            if ch in _C_SPACE and not escaped:
                break
            if not escaped and ch == 0x5C:
                escaped = True
            else:
                escaped = False
                word.append(ch)
            i += 1
        words.append(word.decode("utf-8", "surrogateescape"))
    return words


def _encoding_name(value: str) -> str:
    return "".join(c for c in value.upper() if c.isascii() and c.isalnum())


def check_upstream_startup(upstream: dict[str, str], tenant: str | None) -> None:
    """What PostgreSQL will apply from these startup parameters must be allowed.

    PostgreSQL compares ``user``, ``database``, ``options`` and ``replication``
    case-sensitively and applies every other key as a GUC whose name is
    case-insensitive (``postmaster.c`` ``ProcessStartupPacket``).
    """
    settings: list[tuple[str, str]] = []
    for key, value in upstream.items():
        if key in ("user", "database", "application_name"):
            continue
        if key == "options":
            words = pg_split_opts(value)
            assert len(words) % 2 == 0, f"upstream startup options are not -c pairs: {value!r}"
            for flag, setting in zip(words[::2], words[1::2], strict=True):
                assert flag == "-c" and "=" in setting, \
                    f"upstream startup options are not -c pairs: {value!r}"
                name, _, val = setting.partition("=")
                settings.append((name.replace("-", "_").lower(), val))
            continue
        assert key != "replication" and not key.startswith("_pq_."), \
            f"upstream startup parameter {key!r} must not be forwarded"
        name = key.lower()
        if name != key:
            # Checked by the proxy as ``name`` but sent as ``key``: say so.
            assert name in SAFE_SETTINGS or name == "application_name" or (
                name == "client_encoding" and _encoding_name(value) in _UTF8_NAMES), \
                f"upstream startup parameter {key!r}={value!r} is checked ignoring case " \
                f"but PostgreSQL applies it as setting {name}"
        settings.append((name, value))
    for name, value in settings:
        if name == TENANT_SETTING:
            assert value == (tenant or ""), \
                f"upstream startup sets tenant {value!r}, session has {tenant!r}"
        elif name == "client_encoding":
            assert _encoding_name(value) in _UTF8_NAMES, \
                f"upstream startup sets client_encoding {value!r}"
        elif name == "search_path":
            assert value == "public", f"upstream startup sets search_path {value!r}"
        else:
            assert name in SAFE_SETTINGS or name == "application_name", \
                f"upstream startup sets {name}={value!r}, not an allowed setting"


# --- targets (b) and (c): typed streams ---------------------------------------------

@dataclass
class StreamResult:
    messages: list[object] = field(default_factory=list)
    #: Bytes left after the last complete frame.
    rest: int = 0


def _frames(pieces: list[bytes], peer: str) -> tuple[list[tuple[int, bytes]], PgError | None,
                                                      int]:
    framer = MessageFramer(MAX_MESSAGE, peer)
    out: list[tuple[int, bytes]] = []
    try:
        for piece in pieces:
            framer.feed(piece)
            frames = framer.take()
            assert framer.buffered <= MAX_MESSAGE + 4, \
                f"framer holds {framer.buffered} bytes, limit {MAX_MESSAGE}"
            if frames is not None:
                out += [(kind, frames.raw((kind, s, e))) for kind, s, e in frames.spans]
    except PgError as exc:
        return out, exc, framer.buffered
    return out, None, framer.buffered


def _run_stream(data: bytes, peer: str, decode: Callable[[int, bytes], object],
                exact: Callable[[int], bool]) -> StreamResult:
    whole, error, rest = _frames([data], peer)
    chunked, chunk_error, chunk_rest = _frames(_pieces(data), peer)
    assert (error is None) == (chunk_error is None), \
        f"framing depends on chunking: {error!r} vs {chunk_error!r}"
    if error is None:
        assert whole == chunked and rest == chunk_rest, "framing depends on chunking"
    else:
        assert chunked[:len(whole)] == whole, "framing depends on chunking"
    result = StreamResult(rest=rest)
    for kind, raw in whole:
        assert raw[0] == kind and int.from_bytes(raw[1:5], "big") == len(raw) - 1
        message = decode(kind, raw[5:])
        encoded = message.encode()  # type: ignore[attr-defined]
        if exact(kind):
            assert encoded == raw, f"{message!r} re-encodes as {encoded!r}, not {raw!r}"
        assert decode(encoded[0], encoded[5:]) == message, f"{message!r} does not round-trip"
        result.messages.append(message)
    if error is not None:
        raise error
    return result


def run_frontend(data: bytes) -> StreamResult:
    return _run_stream(data, "client", decode_frontend, lambda kind: True)


def run_backend(data: bytes) -> StreamResult:
    result = _run_stream(data, "server", decode_backend, lambda kind: kind not in b"EN")
    for message in result.messages:
        if getattr(message, "code", None) == 10:  # AuthenticationSASL: read the mechanisms
            _ = message.mechanisms  # type: ignore[attr-defined]
    return result


# --- targets (d) and (e): the relay -----------------------------------------------------

@dataclass
class RelayResult:
    to_upstream: bytes = b""
    to_client: bytes = b""
    terminated: bool = False
    chunks: int = 0


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        self.now += 0.001
        return self.now


class _PassThroughCheck:
    """Output must equal input except for fastpath calls (refused) and error
    responses (refusal markers swapped)."""

    def __init__(self, marker: str) -> None:
        self.fed = {CLIENT: bytearray(), UPSTREAM: bytearray()}
        self.pos = {CLIENT: 0, UPSTREAM: 0}
        self.marker = marker.encode()

    def check(self, direction: int, data: bytes, out: list[bytes]) -> None:
        fed = self.fed[direction]
        fed += data
        pos = self.pos[direction]
        for piece in out:
            if fed[pos:pos + len(piece)] == piece:
                pos += len(piece)
                continue
            kind = fed[pos]
            length = int.from_bytes(fed[pos + 1:pos + 5], "big")
            if direction == CLIENT:
                assert kind == ord("F") and piece[:1] == b"Q" and self.marker in piece, \
                    f"client bytes changed at {pos}: {bytes(fed[pos:pos + 16])!r} -> " \
                    f"{piece[:16]!r}"
            else:
                assert kind == ord("E") and piece[:1] == b"E", \
                    f"server bytes changed at {pos}: {bytes(fed[pos:pos + 16])!r} -> " \
                    f"{piece[:16]!r}"
            pos += 1 + length
        assert pos <= len(fed)
        self.pos[direction] = pos


def run_relay(data: bytes, split: Splitter = split_plain,
              hook: StatementHook | None = None) -> RelayResult:
    relay = Relay(max_message_size=MAX_MESSAGE, hook=hook or PassThrough(),
                  on_ready=lambda seconds: None, clock=_Clock())
    passthrough = hook is None
    check = _PassThroughCheck(relay._marker) if passthrough else None
    upstream = MessageFramer(1 << 30, "proxy")  # what the server would read
    result = RelayResult()
    for direction, chunk in split(data):
        result.chunks += 1
        if direction == CLIENT:
            out = relay.from_client(chunk)
            assert not out.to_client, "from_client wrote to the client"
            if check is not None:
                check.check(CLIENT, chunk, out.to_upstream)
        else:
            # The server's answers can release held client messages (COPY data sent
            # before CopyInResponse) or a CopyFail: checked like any upstream bytes.
            out = relay.from_upstream(chunk)
            result.to_client += b"".join(out.to_client)
            if check is not None:
                check.check(UPSTREAM, chunk, out.to_client)
        sent = b"".join(out.to_upstream)
        result.to_upstream += sent
        upstream.feed(sent)
        frames = upstream.take()
        assert upstream.buffered == 0, "the upstream stream is no longer framed"
        if not passthrough and frames is not None:
            _check_statements(frames.data, frames.spans)
        assert relay._client.buffered <= MAX_MESSAGE + 4, "client framer over its limit"
        assert relay._upstream.buffered <= MAX_MESSAGE + 4, "server framer over its limit"
        assert relay.pending >= 0
        if out.terminate:
            result.terminated = True
            break
    return result


def _check_statements(data: bytes, spans: list[tuple[int, int, int]]) -> None:
    """Every Query and Parse the SQL pipeline lets through is well formed (the
    relay checked the client's; rewritten ones are the proxy's own)."""
    for kind, start, end in spans:
        if kind in b"QP":
            decode_frontend(kind, data[start + 5:end])


def run_relay_sql(data: bytes, split: Splitter = split_plain,
                  check_refusals: bool = True) -> RelayResult:
    """The relay with the SQL pipeline. The engine's plan cache stays warm from
    input to input, as in a long-lived proxy (set FUZZ_COLD_CACHE=1 to clear it
    per input): cache hits are the common path, and they are what make the
    target fast enough (about 3x) to be worth fuzzing. A plan is a function of
    the statement text, so a crash still reproduces from its input alone."""
    eng = engine()
    if os.environ.get("FUZZ_COLD_CACHE") == "1":
        eng.cache.clear()
    hook, _ = open_session(eng, ROLE, dict(SESSION_PARAMS))
    result = run_relay(data, split, hook)
    if check_refusals:
        check_cached_refusals(eng)
    return result


#: Frames in one raise of a cached refusal (8 today) plus slack; each hit adds 3.
MAX_REFUSAL_FRAMES = 16


def check_cached_refusals(eng: Engine) -> None:
    """A cached refusal is raised again for every statement that hits it; the
    exception must not keep what each raise went through (memory stays bounded:
    each kept frame keeps its locals, the read buffers included)."""
    grown = []
    for key, plan in list(eng.cache._entries.items()):
        if plan.error is None:
            continue
        depth, tb = 0, plan.error.__traceback__
        while tb is not None:
            depth, tb = depth + 1, tb.tb_next
        if depth > MAX_REFUSAL_FRAMES:
            grown.append((plan.error.message, depth))
            # drop it, so a run that skips this known bug does not run out of memory
            del eng.cache._entries[key]
    assert not grown, \
        f"cached refusal {grown[0][0][:60]!r} has a {grown[0][1]}-frame traceback: " \
        "every cache hit grows it (memory grows without bound)"


# --- the one-argument callables a fuzzer calls ----------------------------------------

RUNNERS: dict[str, Callable[..., object]] = {
    "startup": run_startup,
    "frontend": run_frontend,
    "backend": run_backend,
    "relay": run_relay,
    "relay_sql": run_relay_sql,
}
SPLIT_TARGETS = ("relay", "relay_sql")


def ignore_known() -> bool:
    return os.environ.get("FUZZ_IGNORE_KNOWN", "") == "1"


def signature(exc: BaseException) -> str:
    """Where a crash comes from: the innermost exception's type and the deepest
    frame in the proxy (or in these targets, for an oracle's assertion)."""
    root = exc
    for cause in _chain(exc):
        if not isinstance(cause, LoggedBug):
            root = cause
    frames = traceback.extract_tb(root.__traceback__)
    ours = [f for f in frames if "/proxy/" in f.filename or f.filename == __file__]
    frame = (ours or frames or [None])[-1]
    where = "?" if frame is None else f"{Path(frame.filename).name}:{frame.name}:{frame.lineno}"
    return f"{type(root).__name__}@{where}"


def fuzz_target(name: str, split: Splitter = split_plain,
                skip_known: bool | None = None) -> Callable[[bytes], None]:
    """``name``'s target as a fuzzer calls it: PgError ends the session quietly,
    anything else is a crash. With ``skip_known`` (default: FUZZ_IGNORE_KNOWN=1),
    ``KNOWN_BUGS`` and the signatures in FUZZ_IGNORE_SIGNATURES (comma-separated)
    are skipped; the first hit of each is reported on stderr."""
    runner = RUNNERS[name]
    if skip_known is None:
        skip_known = ignore_known()
    skip_signatures = {s for s in os.environ.get("FUZZ_IGNORE_SIGNATURES", "").split(",") if s}
    reported: set[str] = set()
    started = time.monotonic()
    selftest = os.environ.get("FUZZ_SELFTEST_CRASH", "").encode()

    def target(data: bytes) -> None:
        if selftest and data == selftest:
            raise RuntimeError("FUZZ_SELFTEST_CRASH: the harness must report this")
        try:
            with trap_logged_bugs():
                if name in SPLIT_TARGETS:
                    runner(data, split)
                else:
                    runner(data)
        except PgError:
            return
        except Exception as exc:
            if not skip_known:
                raise
            label = known_bug(exc) or (sig if (sig := signature(exc)) in skip_signatures
                                       else None)
            if label is None:
                raise
            if label not in reported:
                reported.add(label)
                print(f"fuzz: ignored known bug {label} after "
                      f"{time.monotonic() - started:.1f} s (input of {len(data)} bytes)",
                      file=sys.stderr, flush=True)

    target.__name__ = f"fuzz_{name}"
    return target


def seed_files(name: str) -> list[Path]:
    return sorted((SEEDS / name).glob("*.bin"))
