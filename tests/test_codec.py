"""The sans-IO wire codec: round trips, byte-at-a-time framing, hostile bytes."""

from __future__ import annotations

import contextlib
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.errors import ProtocolViolation
from proxy.wire import backend as be
from proxy.wire import frontend as fe
from proxy.wire.fields import FieldReader
from proxy.wire.framing import MessageFramer, StartupFramer

text = st.text(st.characters(exclude_characters="\0", exclude_categories=("Cs",)), max_size=40)
names = st.text(st.characters(exclude_characters="\0", exclude_categories=("Cs",)), max_size=12)
int16 = st.integers(-(2**15), 2**15 - 1)
int32 = st.integers(-(2**31), 2**31 - 1)
uint32 = st.integers(0, 2**32 - 1)
values = st.one_of(st.none(), st.binary(max_size=30))
fmt = st.sampled_from([0, 1])


def _bind() -> st.SearchStrategy[fe.Bind]:
    def build(params: list[bytes | None], one_format: bool, formats: list[int],
              portal: str, stmt: str, results: list[int]) -> fe.Bind:
        pf = tuple(formats[:1]) if one_format else tuple(
            (formats * len(params))[:len(params)]) if formats else ()
        return fe.Bind(portal, stmt, pf, tuple(params), tuple(results))

    return st.builds(build, st.lists(values, max_size=6), st.booleans(),
                     st.lists(fmt, max_size=6), names, names, st.lists(fmt, max_size=4))


frontend_messages = st.one_of(
    st.builds(fe.Query, text),
    st.builds(fe.Parse, names, text, st.lists(uint32, max_size=5).map(tuple)),
    _bind(),
    st.builds(fe.Describe, st.sampled_from("SP"), names),
    st.builds(fe.Close, st.sampled_from("SP"), names),
    st.builds(fe.Execute, names, int32),
    st.just(fe.Sync()), st.just(fe.Flush()), st.just(fe.Terminate()),
    st.builds(fe.CopyData, st.binary(max_size=50)), st.just(fe.CopyDone()),
    st.builds(fe.CopyFail, text),
    st.builds(fe.FunctionCall, uint32, st.lists(fmt, max_size=1).map(tuple),
              st.lists(values, max_size=3).map(tuple), fmt),
    st.builds(fe.PasswordMessage, st.binary(max_size=30)),
)

column = st.builds(be.ColumnDescription, names, uint32, int16, uint32, int16, int32, fmt)
error_fields = st.dictionaries(st.sampled_from("SVCMDHPpqWstcdnFLR"), text, min_size=1)
backend_messages = st.one_of(
    st.builds(be.Authentication, st.sampled_from([0, 2, 3, 7, 9])),
    st.builds(be.Authentication, st.just(5), st.binary(min_size=4, max_size=4)),
    st.builds(be.Authentication, st.sampled_from([8, 11, 12]), st.binary(max_size=40)),
    st.builds(be.Authentication.sasl, st.lists(names.filter(bool), max_size=3)),
    st.builds(be.BackendKeyData, int32, int32),
    *(st.just(cls()) for cls in (be.ParseComplete, be.BindComplete, be.CloseComplete,
                                 be.NoData, be.EmptyQueryResponse, be.PortalSuspended,
                                 be.CopyDone)),
    st.builds(be.CommandComplete, text),
    st.builds(be.CopyData, st.binary(max_size=50)),
    *(st.builds(cls, fmt, st.lists(fmt, max_size=5).map(tuple))
      for cls in (be.CopyInResponse, be.CopyOutResponse, be.CopyBothResponse)),
    st.builds(be.DataRow, st.lists(values, max_size=6).map(tuple)),
    st.builds(be.ErrorResponse, error_fields),
    st.builds(be.NoticeResponse, error_fields),
    st.builds(be.FunctionCallResponse, values),
    st.builds(be.NegotiateProtocolVersion, st.integers(0, 5),
              st.lists(names, max_size=3).map(tuple)),
    st.builds(be.NotificationResponse, int32, text, text),
    st.builds(be.ParameterDescription, st.lists(uint32, max_size=5).map(tuple)),
    st.builds(be.ParameterStatus, text, text),
    st.builds(be.ReadyForQuery, st.sampled_from([b"I", b"T", b"E"])),
    st.builds(be.RowDescription, st.lists(column, max_size=4).map(tuple)),
)


def _split(data: bytes, framer: MessageFramer, byte_at_a_time: bool) -> list[tuple[int, bytes]]:
    out = []
    chunks = [data[i:i + 1] for i in range(len(data))] if byte_at_a_time else [data]
    for chunk in chunks:
        framer.feed(chunk)
        frames = framer.take()
        if frames is not None:
            out.extend((kind, frames.body((kind, s, e))) for kind, s, e in frames.spans)
    return out


@settings(max_examples=300)
@given(st.lists(frontend_messages, min_size=1, max_size=5), st.booleans())
def test_frontend_round_trip(messages: list, byte_at_a_time: bool) -> None:
    wire = b"".join(m.encode() for m in messages)
    frames = _split(wire, MessageFramer(1 << 20, "client"), byte_at_a_time)
    assert [fe.decode_frontend(kind, body) for kind, body in frames] == messages


@settings(max_examples=300)
@given(st.lists(backend_messages, min_size=1, max_size=5), st.booleans())
def test_backend_round_trip(messages: list, byte_at_a_time: bool) -> None:
    wire = b"".join(m.encode() for m in messages)
    frames = _split(wire, MessageFramer(1 << 20, "server"), byte_at_a_time)
    assert [be.decode_backend(kind, body) for kind, body in frames] == messages


startup_packets = st.one_of(
    st.builds(fe.StartupMessage, st.dictionaries(names.filter(bool), text, max_size=6)),
    st.just(fe.SSLRequest()), st.just(fe.GSSENCRequest()),
    st.builds(fe.CancelRequest, int32, int32),
)


@given(startup_packets, st.booleans())
def test_startup_round_trip(packet: fe.StartupPacket, byte_at_a_time: bool) -> None:
    wire = packet.encode()
    framer = StartupFramer(10_000)
    chunks = [wire[i:i + 1] for i in range(len(wire))] if byte_at_a_time else [wire]
    bodies = []
    for chunk in chunks:
        framer.feed(chunk)
        body = framer.next_packet()
        if body is not None:
            bodies.append(body)
    assert [fe.decode_startup(b, max_parameters=64) for b in bodies] == [packet]


@settings(max_examples=500)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_only_raise_protocol_violation(data: bytes) -> None:
    for decode, peer in ((fe.decode_frontend, "client"), (be.decode_backend, "server")):
        framer = MessageFramer(1024, peer)
        try:
            for kind, body in _split(data, framer, False):
                decode(kind, body)
        except ProtocolViolation:
            pass
    startup = StartupFramer(10_000)
    startup.feed(data)
    try:
        body = startup.next_packet()
        if body is not None:
            fe.decode_startup(body, max_parameters=64)
    except ProtocolViolation:
        pass


@given(st.integers(0, 255), st.binary(max_size=64))
def test_any_typed_body_only_raises_protocol_violation(kind: int, body: bytes) -> None:
    for decode in (fe.decode_frontend, be.decode_backend):
        with contextlib.suppress(ProtocolViolation):
            decode(kind, body)


@pytest.mark.parametrize("length", [-1, 0, 3, -(2**31)])
def test_invalid_lengths_are_refused(length: int) -> None:
    framer = MessageFramer(1024, "client")
    framer.feed(b"Q" + struct.pack("!i", length))
    with pytest.raises(ProtocolViolation, match="invalid message length"):
        framer.take()


def test_oversized_length_refused_before_buffering() -> None:
    framer = MessageFramer(1024, "client")
    framer.feed(b"Q" + struct.pack("!i", 1_000_000))  # only the header has arrived
    with pytest.raises(ProtocolViolation, match="exceeds the limit of 1024 bytes"):
        framer.take()


def test_startup_limits() -> None:
    framer = StartupFramer(10_000)
    framer.feed(struct.pack("!i", 20_000))
    with pytest.raises(ProtocolViolation, match="invalid length of startup packet"):
        framer.next_packet()
    many = fe.StartupMessage({f"k{i}": "v" for i in range(10)}).encode()[4:]
    with pytest.raises(ProtocolViolation, match="more than 5 parameters"):
        fe.decode_startup(many, max_parameters=5)
    with pytest.raises(ProtocolViolation, match=r"unsupported frontend protocol 2\.0"):
        fe.decode_startup(struct.pack("!i", 2 << 16) + b"\0", max_parameters=5)


def test_bind_validation() -> None:
    with pytest.raises(ProtocolViolation, match="2 parameter formats but 3 parameters"):
        fe.Bind("", "", (0, 1), (b"a", b"b", b"c"))
    with pytest.raises(ProtocolViolation, match="unsupported format code 7"):
        fe.Bind("", "", (7,), (b"a",))
    assert fe.Bind("", "", (1,), (b"a", b"b")).param_format(1) == 1


def test_field_reader_reports_truncation() -> None:
    with pytest.raises(ProtocolViolation, match="invalid Query message: unterminated string"):
        fe.Query.decode(FieldReader(b"SELECT 1", "Query"))
    with pytest.raises(ProtocolViolation, match="trailing bytes"):
        fe.Sync.decode(FieldReader(b"x", "Sync"))
