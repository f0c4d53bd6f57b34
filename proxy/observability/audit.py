"""Tamper-evident audit trail: one signed, hash-chained JSON line per statement decision.

Why: the proxy's allow/deny decisions are evidence. An operator (or an auditor)
must be able to show later that the trail was not edited, shortened in the
middle, or reordered, without trusting whoever had write access to the disk.

What goes in: callers pass *who* (user/role), *tenant*, the statement
*fingerprint* (normalized, literals stripped), the *outcome*, a *reason* and an
*anomaly score*. Never literal SQL, parameter values, passwords or keys: this
module writes what it is given verbatim, so keeping secrets out of the trail is
the caller's job.

Each line is canonical JSON (sorted keys, no spaces, UTF-8)::

    {"event":{...},"mac":"<hex>","prev":"<hex>","seq":n,"ts":"2026-01-02T03:04:05.678Z"}

where ``mac = HMAC-SHA256(key, canonical_json(record without "mac"))`` and
``prev`` is the previous record's mac (64 zeros for the first record of a
chain). ``seq`` starts at 1 and keeps counting across rotated files: the chain
never restarts, so ``verify(trail_files(path), key)`` checks a whole trail.

What the chain cannot show on its own:

* Records cut from the *end* of the trail (the file truncated after a complete
  line) leave a valid chain. Anchor the last ``seq``/``mac`` elsewhere (a log
  shipper, a metric) if that matters.
* Nothing before the first file checked is checked. ``VerifyReport.starts_mid_chain``
  says when the first record continues an earlier chain: normal once ``keep``
  has deleted the oldest files, but also what removing the first records looks like.
* One writer process per trail: the writer keeps ``seq``/``prev`` in memory.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import os
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, NamedTuple

__all__ = [
    "ZERO_MAC",
    "AuditError",
    "AuditWriter",
    "VerifyReport",
    "canonical_json",
    "trail_files",
    "verify",
    "verify_command",
]

#: ``prev`` of the very first record of a chain.
ZERO_MAC = "0" * 64

_FIELDS = frozenset({"seq", "ts", "prev", "event", "mac"})
_HEX64 = re.compile(r"[0-9a-f]{64}\Z")
_TS = re.compile(r"(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})\.(\d{3})Z\Z")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_CHUNK = 64 * 1024


class AuditError(Exception):
    """The trail cannot be extended safely (broken tail, closed or failed writer)."""


_ENCODER = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
)


def canonical_json(obj: object) -> str:
    """The one serialization the mac covers, so a record has exactly one valid spelling."""
    return _ENCODER.encode(obj)


def _mac(key: bytes, body: Mapping[str, object]) -> str:
    return hmac.new(key, canonical_json(body).encode("utf-8"), hashlib.sha256).hexdigest()


def _format_ts(ms: int) -> str:
    """RFC 3339 UTC with milliseconds, fixed width so it sorts as text too."""
    moment = _EPOCH + timedelta(milliseconds=ms)
    return moment.strftime("%Y-%m-%dT%H:%M:%S") + f".{ms % 1000:03d}Z"


def _parse_ts(text: str) -> int | None:
    """Milliseconds since the epoch, or None unless ``text`` is exactly what _format_ts writes."""
    match = _TS.match(text)
    if match is None:
        return None
    year, month, day, hour, minute, second, milli = (int(g) for g in match.groups())
    try:
        moment = datetime(year, month, day, hour, minute, second, tzinfo=UTC)
    except ValueError:
        return None
    return (moment - _EPOCH) // timedelta(milliseconds=1) + milli


# --- event validation ---------------------------------------------------------------


def _check_text(text: str, where: str) -> str:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(
            f"audit event {where}: string is not valid Unicode (lone surrogate)"
        ) from None
    return str.__str__(text)  # a plain str even for str subclasses such as enums


def _clean_value(value: object, where: str) -> object:
    """A plain-JSON copy of ``value``; TypeError for anything JSON cannot carry as is."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"audit event {where}: {value} is not a JSON number")
        return float(value)
    if isinstance(value, str):
        return _check_text(value, where)
    if isinstance(value, list | tuple):
        return [_clean_value(item, f"{where}[{i}]") for i, item in enumerate(value)]
    if isinstance(value, Mapping):
        out: dict[str, object] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"audit event {where}: key {key!r} is not a string")
            out[_check_text(key, where)] = _clean_value(item, f"{where}.{key}")
        return out
    raise TypeError(
        f"audit event {where}: {type(value).__name__} is not JSON "
        "(use str, int, float, bool, None, list or dict)"
    )


def _clean_event(event: Mapping[str, object]) -> dict[str, object]:
    """Validate before anything is written, so a bad event leaves the trail untouched.

    Keys starting with "_" are reserved for the trail itself (ValueError).
    """
    if not isinstance(event, Mapping):
        raise TypeError(f"audit event must be a mapping, not {type(event).__name__}")
    out: dict[str, object] = {}
    for key, value in event.items():
        if not isinstance(key, str):
            raise TypeError(f"audit event key {key!r} is not a string")
        if key.startswith("_"):
            raise ValueError(f"audit event key {key!r} is reserved (keys starting with '_')")
        out[_check_text(key, key)] = _clean_value(value, key)
    return out


_PLAIN = frozenset({str, int, bool, type(None)})


def _event_bytes(event: Mapping[str, object]) -> bytes:
    """Canonical UTF-8 JSON of a valid event.

    Events the proxy builds (a flat dict of plain str/int/bool/None, finite
    floats and lists of str) are serialized as they are; anything else, and any
    event the encoder rejects, goes through ``_clean_event`` for its checks and
    precise errors. Both paths give the same bytes for the same valid event.
    """
    if type(event) is dict:
        for key, value in event.items():
            kind = type(value)
            if not (
                type(key) is str
                and key[:1] != "_"
                and (
                    kind in _PLAIN
                    or (kind is float and math.isfinite(value))  # type: ignore[arg-type]
                    or (kind is list and all(type(i) is str for i in value))  # type: ignore[attr-defined]
                )
            ):
                break
        else:
            try:
                return _ENCODER.encode(event).encode("utf-8")
            except UnicodeEncodeError:
                pass  # a lone surrogate: _clean_event names where
    return _ENCODER.encode(_clean_event(event)).encode("utf-8")


# --- reading records ----------------------------------------------------------------


class _Record(NamedTuple):
    seq: int
    ts_ms: int
    prev: str
    mac: str


def _reject_constant(name: str) -> object:
    raise ValueError(f"{name} is not JSON")


def _parse_line(raw: bytes, key: bytes) -> tuple[_Record | None, str | None]:
    """Check one line (without its newline) on its own: (record, None) or (None, reason)."""
    try:
        obj = json.loads(raw.decode("utf-8"), parse_constant=_reject_constant)
        canonical = canonical_json(obj)  # ValueError for 1e999, which parses as inf
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None, "not valid JSON"
    if not isinstance(obj, dict) or obj.keys() != _FIELDS:
        return None, "not an audit record (expected exactly seq, ts, prev, event, mac)"
    seq, ts, prev, event, mac = (obj[k] for k in ("seq", "ts", "prev", "event", "mac"))
    if type(seq) is not int or seq < 1:
        return None, "seq is not a positive integer"
    ts_ms = _parse_ts(ts) if isinstance(ts, str) else None
    if ts_ms is None:
        return None, "ts is not an RFC 3339 UTC time with milliseconds"
    if not isinstance(prev, str) or not _HEX64.match(prev):
        return None, "prev is not 64 hex digits"
    if not isinstance(mac, str) or not _HEX64.match(mac):
        return None, "mac is not 64 hex digits"
    if not isinstance(event, dict):
        return None, "event is not an object"
    body = {"seq": seq, "ts": ts, "prev": prev, "event": event}
    if not hmac.compare_digest(_mac(key, body), mac):
        return None, "mac does not match (record edited, or wrong key?)"
    if canonical.encode("utf-8") != raw:
        return None, "not in canonical form (line edited?)"
    return _Record(seq, ts_ms, prev, mac), None


def _tail(f: IO[bytes], end: int) -> tuple[bytes, int]:
    """The last line of a non-empty file (with its newline, if any) and its offset."""
    buf = b""
    pos = end
    while True:
        start = max(0, pos - _CHUNK)
        f.seek(start)
        buf = f.read(pos - start) + buf
        pos = start
        # The file's final byte never starts a line, so leave it out of the search.
        cut = buf.rfind(b"\n", 0, len(buf) - 1)
        if cut >= 0:
            return buf[cut + 1 :], pos + cut + 1
        if pos == 0:
            return buf, 0


def _line_number(f: IO[bytes], offset: int) -> int:
    """1-based number of the line starting at ``offset`` (only computed for error messages)."""
    f.seek(0)
    count = 0
    remaining = offset
    while remaining > 0:
        chunk = f.read(min(_CHUNK, remaining))
        if not chunk:
            break
        count += chunk.count(b"\n")
        remaining -= len(chunk)
    return count + 1


def _last_record(path: Path, key: bytes) -> _Record | None:
    """The verified last record of ``path``; None if it is missing or empty.

    Raises AuditError naming file:line if that record does not verify: a writer
    must not sign new records on top of a tail someone edited or cut.
    """
    try:
        f = path.open("rb")
    except FileNotFoundError:
        return None
    with f:
        end = f.seek(0, os.SEEK_END)
        if end == 0:
            return None
        line, offset = _tail(f, end)
        if line.endswith(b"\n"):
            record, reason = _parse_line(line[:-1], key)
        else:
            record, reason = None, "truncated last line (no trailing newline)"
        if record is None:
            raise AuditError(
                f"{path}:{_line_number(f, offset)}: {reason}; refusing to extend a broken "
                "audit trail (check it with verify)"
            )
        return record


def _numbered(path: Path, n: int) -> Path:
    return path.with_name(f"{path.name}.{n}")


def _rotated_files(path: Path) -> dict[int, Path]:
    """Existing ``path.N`` files by N (N >= 1 written without leading zeros)."""
    prefix = path.name + "."
    found: dict[int, Path] = {}
    try:
        entries = list(os.scandir(path.parent))
    except FileNotFoundError:
        return found
    for entry in entries:
        suffix = entry.name[len(prefix) :]
        if (
            entry.name.startswith(prefix)
            and suffix.isascii()
            and suffix.isdigit()
            and not suffix.startswith("0")
        ):
            found[int(suffix)] = path.parent / entry.name
    return found


def trail_files(path: str | Path) -> list[Path]:
    """``[path.N, ..., path.1, path]`` for the files that exist, oldest first (chain order).

    ``path`` itself is left out only when it is missing and rotated files exist
    (a crash between rotating and the next write); a missing trail gives ``[path]``
    so verify reports it rather than passing over nothing.
    """
    path = Path(path)
    rotated = _rotated_files(path)
    files = [rotated[n] for n in sorted(rotated, reverse=True)]
    if path.exists() or not files:
        files.append(path)
    return files


# --- writing ------------------------------------------------------------------------


class AuditWriter:
    """Appends signed, chained records to ``path``, rotating it by size.

    Opening an existing trail continues its chain (seq and prev) after checking
    the mac of its last record. Rotation keeps the chain too: the first record
    of a fresh file has the mac of the last record of ``path.1`` as its prev.
    """

    def __init__(
        self,
        path: str | Path,
        key: bytes,
        *,
        max_bytes: int = 100 * 1024 * 1024,
        keep: int = 10,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not key:
            raise ValueError("audit key must not be empty")
        if max_bytes < 1:
            raise ValueError("max_bytes must be positive")
        if keep < 1:
            # keep=0 would delete the only copy of the chain's last mac at each
            # rotation, so a restart could not continue the chain.
            raise ValueError("keep must be at least 1")
        self._path = Path(path)
        self._key = bytes(key)
        self._max_bytes = max_bytes
        self._keep = keep
        self._clock = clock
        self._lock = threading.Lock()
        self._broken = False

        last = _last_record(self._path, self._key)
        if last is None:
            rotated = _rotated_files(self._path)
            if rotated:
                newest = rotated[min(rotated)]
                last = _last_record(newest, self._key)
                if last is None:
                    raise AuditError(f"{newest}: rotated audit file is empty; cannot continue")
        self._seq = last.seq if last else 0
        self._prev = last.mac if last else ZERO_MAC
        self._last_ms = last.ts_ms if last else None
        self._ts_second: int | None = None
        self._ts_prefix = ""
        self._fd: int | None = self._open()
        self._size = os.fstat(self._fd).st_size

    def _open(self) -> int:
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
        return os.open(self._path, flags, 0o600)

    def write(self, event: Mapping[str, object]) -> None:
        """Append one record for ``event`` and hand it to the OS (no fsync per record).

        ``event`` holds fingerprints and decisions, never literal SQL or values.
        TypeError for values JSON cannot carry; ValueError for reserved keys
        ("_" prefix), NaN/infinity and lone surrogates. Nothing is written then.
        """
        event_json = _event_bytes(event)
        with self._lock:
            if self._fd is None:
                raise AuditError(f"{self._path}: audit writer is closed")
            if self._broken:
                raise AuditError(f"{self._path}: an earlier write failed half-way")
            ms = math.floor(self._clock() * 1000)
            if self._last_ms is not None and ms < self._last_ms:
                ms = self._last_ms  # a clock stepped back must not break "ts non-decreasing"
            seq = self._seq + 1
            # canonical_json of the record, spelled out: keys in sorted order, and prev,
            # seq and ts need no escaping (hex, digits, the fixed ts format).
            tail = b'","prev":"%s","seq":%d,"ts":"%s"}' % (
                self._prev.encode(),
                seq,
                self._ts(ms).encode(),
            )
            mac = hmac.digest(self._key, b'{"event":' + event_json + tail[1:], "sha256").hex()
            line = b'{"event":' + event_json + b',"mac":"' + mac.encode() + tail + b"\n"
            if self._size and self._size + len(line) > self._max_bytes:
                self._rotate()
            self._append(line)
            self._seq, self._prev, self._last_ms = seq, mac, ms

    def _ts(self, ms: int) -> str:
        """``_format_ts(ms)``, formatting the date and time once per second."""
        second, milli = divmod(ms, 1000)
        if second != self._ts_second:
            self._ts_second = second
            self._ts_prefix = _format_ts(second * 1000)[:-4]
        return f"{self._ts_prefix}{milli:03d}Z"

    def _append(self, line: bytes) -> None:
        assert self._fd is not None
        done = 0
        try:
            while done < len(line):
                n = os.write(self._fd, line[done:])
                if n <= 0:
                    raise OSError("os.write wrote nothing")
                done += n
        except OSError as exc:
            if done == 0:
                raise  # nothing reached the file: the chain is intact, the caller may retry
            # A partial line is on disk; appending after it would bury the damage.
            self._broken = True
            raise AuditError(f"{self._path}: partial audit record written: {exc}") from exc
        finally:
            self._size += done

    def _rotate(self) -> None:
        """``path.N`` -> ``path.N+1`` (deleting N >= keep), then ``path`` -> ``path.1``."""
        assert self._fd is not None
        try:
            os.fsync(self._fd)
            os.close(self._fd)
            self._fd = None
            rotated = _rotated_files(self._path)
            for n in sorted(rotated, reverse=True):
                if n >= self._keep:
                    rotated[n].unlink(missing_ok=True)
                else:
                    os.replace(rotated[n], _numbered(self._path, n + 1))
            os.replace(self._path, _numbered(self._path, 1))
        finally:
            # Whatever happened, keep appending somewhere the chain can be followed.
            if self._fd is None:
                self._fd = self._open()
                self._size = os.fstat(self._fd).st_size

    def close(self) -> None:
        """Flush to disk and close; later writes raise AuditError. Safe to call twice."""
        with self._lock:
            if self._fd is None:
                return
            fd, self._fd = self._fd, None
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def __enter__(self) -> AuditWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- verifying ----------------------------------------------------------------------


@dataclass(frozen=True)
class VerifyReport:
    """Outcome of verify; ``first_bad`` is ``"file:line"`` (line 0: the file as a whole)."""

    ok: bool
    records: int  # records that verified (before the first bad one)
    first_bad: str | None
    reason: str | None
    starts_mid_chain: bool = False  # first record continues a chain from files not given


def verify(paths: Sequence[str | Path], key: bytes) -> VerifyReport:
    """Check files given in chain order (oldest first) and report the first bad record.

    Every line must be a canonical record whose mac matches; ``prev`` must be the
    previous record's mac, ``seq`` the previous plus one and ``ts`` must not go
    back. The first record must start a chain (prev of 64 zeros, seq 1) unless it
    is the first line of the first file, which may continue a chain from files not
    given (``starts_mid_chain``). A last line without a newline is bad.
    """
    if isinstance(paths, str | Path):
        raise TypeError("verify takes a sequence of paths, not one path")
    if not paths:
        raise ValueError("no audit files given")
    records = 0
    last: _Record | None = None
    mid_chain = False

    def bad(where: str, reason: str) -> VerifyReport:
        return VerifyReport(False, records, where, reason, mid_chain)

    for index, name in enumerate(paths):
        path = Path(name)
        try:
            f = path.open("rb")
        except OSError as exc:
            return bad(f"{path}:0", f"cannot read file ({exc.strerror or exc})")
        with f:
            for lineno, raw in enumerate(f, 1):
                where = f"{path}:{lineno}"
                if not raw.endswith(b"\n"):
                    return bad(where, "truncated line (no trailing newline)")
                record, reason = _parse_line(raw[:-1], key)
                if record is None:
                    return bad(where, reason or "bad record")
                if last is None:
                    if record.prev == ZERO_MAC:
                        if record.seq != 1:
                            return bad(where, f"seq {record.seq} at the start of a chain")
                    elif index == 0 and lineno == 1:
                        mid_chain = True
                    else:
                        return bad(
                            where,
                            "prev does not match the previous record "
                            "(earlier records or files removed?)",
                        )
                elif record.seq != last.seq + 1:
                    hint = "removed" if record.seq > last.seq else "reordered or duplicated"
                    return bad(where, f"seq {record.seq} after {last.seq} (records {hint}?)")
                elif record.prev != last.mac:
                    return bad(
                        where,
                        "prev does not match the previous record (record removed or reordered?)",
                    )
                elif record.ts_ms < last.ts_ms:
                    return bad(where, "ts goes backwards")
                last = record
                records += 1
    return VerifyReport(True, records, None, None, mid_chain)


def verify_command(paths: list[str], key: bytes) -> int:
    """``tenant-proxy audit verify FILE...``: print the verdict; 0 if the trail is intact.

    Checks exactly the files given, oldest first; pass ``trail_files(FILE)`` to
    check a whole rotated trail.
    """
    if not paths:
        print("BAD: no audit files given")
        return 1
    report = verify(paths, key)
    if not report.ok:
        print(f"BAD at {report.first_bad}: {report.reason}")
        return 1
    print(f"OK: {report.records} records verified")
    if report.starts_mid_chain:
        print("note: the first record continues an earlier chain; earlier files were not checked")
    return 0
