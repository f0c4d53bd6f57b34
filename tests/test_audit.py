"""The tamper-evident audit trail: writing, rotating, reopening and verifying, on files only.

Records are forged and tampered with by hand here (plain json/hmac, not the
module's helpers) so the tests pin the on-disk format, not the implementation.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import tempfile
import threading
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.observability.audit import (
    AuditError,
    AuditWriter,
    trail_files,
    verify,
    verify_command,
)

KEY = b"audit-key-" + bytes(range(22))  # 32 bytes, partly unprintable
OTHER_KEY = bytes(range(100, 132))
NOW = 1_795_658_400.1234  # 2026-11-26T02:00:00.123Z
ZEROS = "0" * 64


class Clock:
    """Deterministic time: each call advances by ``step`` seconds."""

    def __init__(self, start: float = NOW, step: float = 0.001) -> None:
        self.now = start
        self.step = step

    def __call__(self) -> float:
        value = self.now
        self.now += self.step
        return value


def decision(i: int) -> dict[str, object]:
    return {
        "who": "alice",
        "tenant": "t1",
        "fingerprint": f"fp-{i:04d}",
        "outcome": "allow",
        "reason": "tenant predicate added",
        "anomaly": 0.25,
    }


def write_trail(path: Path, n: int, start: int = 0, **kwargs: object) -> None:
    kwargs.setdefault("clock", Clock())
    with AuditWriter(path, KEY, **kwargs) as writer:  # type: ignore[arg-type]
        for i in range(start, start + n):
            writer.write(decision(i))


def lines(path: Path) -> list[bytes]:
    """Lines with their newline; only a final piece may lack one."""
    return path.read_bytes().splitlines(keepends=True) if path.exists() else []


def records(path: Path) -> list[dict]:
    return [json.loads(line) for line in lines(path)]


def canonical(obj: object) -> bytes:
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return text.encode("utf-8")


def sign(body: dict, key: bytes = KEY) -> dict:
    return {**body, "mac": hmac.new(key, canonical(body), hashlib.sha256).hexdigest()}


def forge(path: Path, bodies: list[dict]) -> None:
    """Write correctly signed records whose seq/prev/ts are whatever the test says."""
    path.write_bytes(b"".join(canonical(sign(body)) + b"\n" for body in bodies))


# --- format ---------------------------------------------------------------------------


def test_records_are_canonical_signed_and_chained(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    write_trail(path, 2, clock=Clock(step=1.5))

    raw = lines(path)
    first, second = records(path)
    assert raw[0] == canonical(first) + b"\n"
    assert set(first) == {"seq", "ts", "prev", "event", "mac"}
    assert (first["seq"], first["ts"], first["prev"]) == (1, "2026-11-26T02:00:00.123Z", ZEROS)
    assert first["event"] == decision(0)
    assert first == sign({k: v for k, v in first.items() if k != "mac"})
    assert (second["seq"], second["prev"]) == (2, first["mac"])
    assert second["ts"] == "2026-11-26T02:00:01.623Z"
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert KEY.hex() not in path.read_text() and "audit-key" not in path.read_text()


def test_event_values_round_trip_and_lines_stay_lines(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    event = {"fp": 'a\u2028b\nc"d', "tags": ("x", "y"), "n": None, "deep": {"k": [1, True]}}
    with AuditWriter(path, KEY, clock=Clock()) as writer:
        writer.write(event)

    assert path.read_bytes().count(b"\n") == 1
    assert records(path)[0]["event"] == {**event, "tags": ["x", "y"]}
    assert verify([path], KEY).ok


@pytest.mark.parametrize(
    ("event", "error"),
    [
        ({"x": object()}, TypeError),
        ({"x": {1, 2}}, TypeError),
        ({"x": b"SELECT 1"}, TypeError),
        ({"x": {"n": [1, object()]}}, TypeError),
        ({"x": {2: "a"}}, TypeError),
        ({1: "a"}, TypeError),
        (["not", "a", "mapping"], TypeError),
        ({"_seq": 1}, ValueError),
        ({"x": float("nan")}, ValueError),
        ({"x": float("inf")}, ValueError),
        ({"x": "\ud800"}, ValueError),
        ({"x": ["ok", "\udfff"]}, ValueError),
        ({"x": [1, object()]}, TypeError),
    ],
)
def test_bad_events_are_rejected_without_touching_the_trail(
    tmp_path: Path, event: object, error: type[Exception]
) -> None:
    path = tmp_path / "audit.log"
    with AuditWriter(path, KEY, clock=Clock()) as writer:
        with pytest.raises(error):
            writer.write(event)  # type: ignore[arg-type]
        writer.write(decision(0))

    assert [r["seq"] for r in records(path)] == [1]
    assert verify([path], KEY).ok


class Label(str):
    """A str subclass (as an enum member would be): written as the plain string."""


@pytest.mark.parametrize(
    ("given", "written"),
    [
        ({"k": Label("v"), "n": 3}, {"k": "v", "n": 3}),
        (
            {"tags": ("x", "y"), "o": {"b": 1, "a": [0.5, None]}},
            {"tags": ["x", "y"], "o": {"a": [0.5, None], "b": 1}},
        ),
        (
            {"f": 0.1, "big": 10**30, "t": True, "s": ["é", "\u2028"]},
            {"f": 0.1, "big": 10**30, "t": True, "s": ["é", "\u2028"]},
        ),
    ],
)
def test_any_event_shape_is_written_as_canonical_json(
    tmp_path: Path, given: dict[str, object], written: dict[str, object]
) -> None:
    """Flat plain events take a fast path, others are cleaned first: same bytes either way."""
    fast, slow = tmp_path / "fast.log", tmp_path / "slow.log"
    with AuditWriter(fast, KEY, clock=Clock()) as writer:
        writer.write(written)
    with AuditWriter(slow, KEY, clock=Clock()) as writer:
        writer.write(given)

    assert fast.read_bytes() == slow.read_bytes()
    record = records(fast)[0]
    assert record["event"] == written
    assert lines(fast)[0] == canonical(record) + b"\n"
    assert record == sign({k: v for k, v in record.items() if k != "mac"})


def test_timestamps_follow_the_clock_across_seconds(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    clock = Clock(start=1_795_658_399.9985, step=0.001)
    with AuditWriter(path, KEY, clock=clock) as writer:
        for i in range(4):
            writer.write(decision(i))

    assert [r["ts"] for r in records(path)] == [
        "2026-11-26T01:59:59.998Z",
        "2026-11-26T01:59:59.999Z",
        "2026-11-26T02:00:00.000Z",
        "2026-11-26T02:00:00.001Z",
    ]
    assert verify([path], KEY).ok


def test_closed_writer_refuses_to_write(tmp_path: Path) -> None:
    writer = AuditWriter(tmp_path / "audit.log", KEY)
    writer.close()
    writer.close()
    with pytest.raises(AuditError, match="closed"):
        writer.write(decision(0))


@pytest.mark.parametrize("kwargs", [{"keep": 0}, {"max_bytes": 0}])
def test_settings_that_would_break_the_chain_are_refused(
    tmp_path: Path, kwargs: dict[str, int]
) -> None:
    with pytest.raises(ValueError):
        AuditWriter(tmp_path / "audit.log", KEY, **kwargs)
    with pytest.raises(ValueError):
        AuditWriter(tmp_path / "audit.log", b"")


# --- verify: clean and tampered trails --------------------------------------------------


def test_clean_trail_verifies(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    write_trail(path, 5)

    assert verify([path], KEY) == verify([str(path)], KEY)
    report = verify([path], KEY)
    assert (report.ok, report.records, report.first_bad, report.reason) == (True, 5, None, None)
    assert not report.starts_mid_chain


def test_editing_a_field_of_a_middle_record_is_detected_at_that_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "audit.log"
    write_trail(path, 5)
    raw = lines(path)
    record = json.loads(raw[2])
    record["event"]["outcome"] = "deny"  # canonical again, but the mac no longer fits
    raw[2] = canonical(record) + b"\n"
    path.write_bytes(b"".join(raw))

    report = verify([path], KEY)
    assert not report.ok
    assert report.first_bad == f"{path}:3"
    assert report.reason is not None and "mac does not match" in report.reason
    assert report.records == 2

    assert verify_command([str(path)], KEY) == 1
    assert capsys.readouterr().out.startswith(f"BAD at {path}:3: mac does not match")


def test_a_non_canonical_spelling_of_a_record_is_detected(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    write_trail(path, 3)
    raw = lines(path)
    raw[1] = b"{ " + raw[1][1:]  # same JSON value, so the mac alone would not notice
    path.write_bytes(b"".join(raw))

    report = verify([path], KEY)
    assert (report.ok, report.first_bad) == (False, f"{path}:2")
    assert report.reason is not None and "canonical" in report.reason


def test_deleting_a_record_is_detected(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    write_trail(path, 5)
    raw = lines(path)
    del raw[2]
    path.write_bytes(b"".join(raw))

    report = verify([path], KEY)
    assert (report.ok, report.first_bad) == (False, f"{path}:3")
    assert report.reason == "seq 4 after 2 (records removed?)"


def test_swapping_two_records_is_detected(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    write_trail(path, 5)
    raw = lines(path)
    raw[1], raw[3] = raw[3], raw[1]
    path.write_bytes(b"".join(raw))

    report = verify([path], KEY)
    assert (report.ok, report.first_bad) == (False, f"{path}:2")
    assert report.reason is not None and report.reason.startswith("seq 4 after 1")


def test_deleting_the_first_record_shows_as_a_mid_chain_start(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The chain alone cannot tell this from "only a later file was given": the report says so.
    path = tmp_path / "audit.log"
    write_trail(path, 3)
    path.write_bytes(b"".join(lines(path)[1:]))

    report = verify([path], KEY)
    assert (report.ok, report.records, report.starts_mid_chain) == (True, 2, True)
    assert verify_command([str(path)], KEY) == 0
    out = capsys.readouterr().out
    assert out.startswith("OK: 2 records verified\n") and "earlier chain" in out


def test_truncating_mid_line_is_detected_and_not_extended(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    write_trail(path, 4)
    path.write_bytes(path.read_bytes()[:-20])

    report = verify([path], KEY)
    assert (report.ok, report.records, report.first_bad) == (False, 3, f"{path}:4")
    assert report.reason is not None and "truncated" in report.reason
    with pytest.raises(AuditError, match=rf"{path}:4: truncated"):
        AuditWriter(path, KEY)


def test_wrong_key_fails(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    write_trail(path, 3)

    report = verify([path], OTHER_KEY)
    assert (report.ok, report.first_bad, report.records) == (False, f"{path}:1", 0)
    assert report.reason is not None and "mac does not match" in report.reason
    with pytest.raises(AuditError, match=rf"{path}:3: mac does not match"):
        AuditWriter(path, OTHER_KEY)


def test_a_signed_record_with_the_wrong_prev_is_detected(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    ts = "2026-11-26T02:00:00.000Z"
    first = {"seq": 1, "ts": ts, "prev": ZEROS, "event": {}}
    forge(path, [first, {"seq": 2, "ts": ts, "prev": "ab" * 32, "event": {}}])

    report = verify([path], KEY)
    assert (report.ok, report.first_bad) == (False, f"{path}:2")
    assert report.reason is not None and report.reason.startswith("prev does not match")


def test_ts_going_backwards_is_detected(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    first = sign({"seq": 1, "ts": "2026-11-26T02:00:00.500Z", "prev": ZEROS, "event": {}})
    second = {"seq": 2, "ts": "2026-11-26T02:00:00.499Z", "prev": first["mac"], "event": {}}
    forge(path, [{k: v for k, v in first.items() if k != "mac"}, second])

    report = verify([path], KEY)
    assert (report.ok, report.first_bad, report.reason) == (False, f"{path}:2", "ts goes backwards")


def test_a_chain_start_must_have_seq_1(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    forge(path, [{"seq": 7, "ts": "2026-11-26T02:00:00.000Z", "prev": ZEROS, "event": {}}])

    report = verify([path], KEY)
    assert (report.ok, report.first_bad) == (False, f"{path}:1")


def test_verify_command_reports_ok_and_unreadable_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "audit.log"
    write_trail(path, 3)
    assert verify_command([str(path)], KEY) == 0
    assert capsys.readouterr().out == "OK: 3 records verified\n"

    missing = tmp_path / "nope.log"
    assert verify_command([str(missing)], KEY) == 1
    assert capsys.readouterr().out.startswith(f"BAD at {missing}:0: cannot read file")
    assert verify_command([], KEY) == 1


# --- writer: reopening, tampered tails, clocks, threads --------------------------------


def test_reopening_continues_the_chain(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    write_trail(path, 3, clock=Clock(start=NOW + 60))
    write_trail(path, 2, start=3, clock=Clock(start=NOW))  # clock stepped back a minute

    recs = records(path)
    assert [r["seq"] for r in recs] == [1, 2, 3, 4, 5]
    assert recs[3]["prev"] == recs[2]["mac"]
    assert recs[3]["ts"] == recs[2]["ts"]  # held, not moved backwards
    report = verify([path], KEY)
    assert (report.ok, report.records) == (True, 5)


def test_refuses_to_extend_a_trail_whose_last_record_was_tampered(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    write_trail(path, 4)
    raw = lines(path)
    raw[-1] = raw[-1].replace(b'"outcome":"allow"', b'"outcome":"deny"')
    path.write_bytes(b"".join(raw))
    before = path.read_bytes()

    with pytest.raises(AuditError, match=rf"{path}:4: mac does not match.*refusing"):
        AuditWriter(path, KEY)
    assert path.read_bytes() == before


def test_concurrent_writes_keep_one_valid_chain(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    writer = AuditWriter(path, KEY, max_bytes=4096, keep=100)

    def work(t: int) -> None:
        for i in range(40):
            writer.write(decision(t * 100 + i))

    threads = [threading.Thread(target=work, args=(t,)) for t in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    writer.close()

    report = verify(trail_files(path), KEY)
    assert (report.ok, report.records) == (True, 240)


# --- rotation --------------------------------------------------------------------------


def line_size(tmp_path: Path) -> int:
    probe = tmp_path / "probe.log"
    write_trail(probe, 1)
    return probe.stat().st_size


def test_rotation_keeps_one_chain_across_files(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    max_bytes = 2 * line_size(tmp_path) + 10  # two records per file
    write_trail(path, 9, max_bytes=max_bytes)

    files = trail_files(path)
    assert files == [tmp_path / f"audit.log.{n}" for n in (4, 3, 2, 1)] + [path]
    assert all(0 < f.stat().st_size <= max_bytes for f in files)
    assert [r["seq"] for f in files for r in records(f)] == list(range(1, 10))
    assert records(path)[0]["prev"] == records(files[-2])[-1]["mac"]
    report = verify(files, KEY)
    assert (report.ok, report.records, report.starts_mid_chain) == (True, 9, False)

    later = verify(files[2:], KEY)  # only .2, .1 and the live file
    assert (later.ok, later.records, later.starts_mid_chain) == (True, 5, True)


def test_removing_a_rotated_middle_file_is_detected(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    write_trail(path, 9, max_bytes=2 * line_size(tmp_path) + 10)
    (tmp_path / "audit.log.2").unlink()

    report = verify(trail_files(path), KEY)
    assert (report.ok, report.first_bad) == (False, f"{tmp_path / 'audit.log.1'}:1")
    assert report.reason == "seq 7 after 4 (records removed?)"


def test_emptying_the_oldest_file_is_detected(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    write_trail(path, 6, max_bytes=2 * line_size(tmp_path) + 10)
    (tmp_path / "audit.log.2").write_bytes(b"")

    report = verify(trail_files(path), KEY)
    assert (report.ok, report.first_bad) == (False, f"{tmp_path / 'audit.log.1'}:1")


def test_keep_deletes_the_oldest_files(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    max_bytes = line_size(tmp_path) + 10  # one record per file
    write_trail(path, 6, keep=4, max_bytes=max_bytes)
    assert sorted(p.name for p in tmp_path.glob("audit.log*")) == [
        "audit.log", "audit.log.1", "audit.log.2", "audit.log.3", "audit.log.4",
    ]  # fmt: skip
    write_trail(path, 4, start=6, keep=2, max_bytes=max_bytes)  # a lower keep prunes more

    files = trail_files(path)
    assert [f.name for f in files] == ["audit.log.2", "audit.log.1", "audit.log"]
    assert [r["seq"] for f in files for r in records(f)] == [8, 9, 10]
    report = verify(files, KEY)
    assert (report.ok, report.records, report.starts_mid_chain) == (True, 3, True)


@pytest.mark.parametrize("live_file", ["missing", "empty"])
def test_restart_right_after_rotation_continues_from_the_newest_rotated_file(
    tmp_path: Path, live_file: str
) -> None:
    path = tmp_path / "audit.log"
    write_trail(path, 3)
    path.rename(tmp_path / "audit.log.1")
    if live_file == "empty":
        path.write_bytes(b"")
    assert trail_files(path)[0] == tmp_path / "audit.log.1"

    write_trail(path, 2, start=3)

    assert [r["seq"] for r in records(path)] == [4, 5]
    assert records(path)[0]["prev"] == records(tmp_path / "audit.log.1")[-1]["mac"]
    assert verify(trail_files(path), KEY) == verify([tmp_path / "audit.log.1", path], KEY)
    assert verify(trail_files(path), KEY).records == 5


def test_restart_refuses_a_tampered_rotated_tail(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    write_trail(path, 2)
    rotated = tmp_path / "audit.log.1"
    path.rename(rotated)
    rotated.write_bytes(rotated.read_bytes().replace(b"alice", b"mallo"))

    with pytest.raises(AuditError, match=rf"{rotated}:2: mac does not match"):
        AuditWriter(path, KEY)


# --- property: any single mutation is caught at the right place -------------------------

field_names = st.text(alphabet="abcdefghij", min_size=1, max_size=6)
field_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**9), 10**9),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(alphabet=st.characters(exclude_categories=("Cs",)), max_size=24),
)
events = st.dictionaries(field_names, field_values, max_size=4)


def string_value_bytes(line: bytes) -> list[int]:
    """Offsets of the bytes inside JSON string values (not keys) of one line."""
    offsets: list[int] = []
    i = 0
    while i < len(line):
        if line[i] != ord('"'):
            i += 1
            continue
        j = i + 1
        while line[j] != ord('"'):
            j += 2 if line[j] == ord("\\") else 1
        if line[j + 1 : j + 2] != b":":
            offsets.extend(range(i + 1, j))
        i = j + 1
    return offsets


@settings(max_examples=120, deadline=None)
@given(
    evs=st.lists(events, min_size=3, max_size=10),
    max_bytes=st.sampled_from([250, 600, 10**6]),
    mutation=st.sampled_from(["edit", "delete", "swap", "duplicate"]),
    data=st.data(),
)
def test_any_single_mutation_is_detected_at_or_before_it(
    evs: list[dict[str, object]], max_bytes: int, mutation: str, data: st.DataObject
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "audit.log"
        with AuditWriter(path, KEY, max_bytes=max_bytes, keep=100, clock=Clock()) as writer:
            for event in evs:
                writer.write(event)
        files = trail_files(path)
        assert verify(files, KEY).ok

        # The whole trail as one list of (file index, line), mutated as one sequence.
        flat = [(k, line) for k, f in enumerate(files) for line in lines(f)]
        n = len(flat)
        if mutation == "edit":
            g = data.draw(st.integers(0, n - 1), label="line")
            k, line = flat[g]
            at = data.draw(st.sampled_from(string_value_bytes(line)), label="byte")
            new = data.draw(st.integers(0x20, 0x7E).filter(lambda b: b != line[at]))
            flat[g] = (k, line[:at] + bytes([new]) + line[at + 1 :])
            expected = {g}
        elif mutation == "delete":
            # Not the first line (that reads as a mid-chain start, see the test above) nor
            # the last (cutting the tail leaves a valid chain: the documented limit).
            g = data.draw(st.integers(1, n - 2), label="line")
            del flat[g]
            expected = {g}
        elif mutation == "swap":
            g = data.draw(st.integers(0, n - 2), label="line")
            (k1, l1), (k2, l2) = flat[g], flat[g + 1]
            flat[g], flat[g + 1] = (k1, l2), (k2, l1)
            expected = {g, g + 1}
        else:
            g = data.draw(st.integers(0, n - 1), label="line")
            flat.insert(g + 1, flat[g])
            expected = {g + 1}

        where: dict[str, int] = {}
        for k, f in enumerate(files):
            mine = [(g, line) for g, (owner, line) in enumerate(flat) if owner == k]
            f.write_bytes(b"".join(line for _, line in mine))
            where.update({f"{f}:{i}": g for i, (g, _) in enumerate(mine, 1)})

        report = verify(files, KEY)
        assert not report.ok
        assert report.first_bad in where, report
        assert where[report.first_bad] in expected, (report, expected)
