"""The ready-phase relay as a pure state machine: no sockets."""

from __future__ import annotations

import pytest

from proxy.errors import ProtocolViolation, Refused
from proxy.session.hooks import PassThrough
from proxy.session.relay import Relay
from proxy.wire import backend as be
from proxy.wire import frontend as fe
from proxy.wire.fields import FieldReader
from proxy.wire.framing import MessageFramer


class RefuseDrop(PassThrough):
    """Refuses any statement mentioning DROP; rewrites 'ping' to 'pong'."""

    inspects = True

    def query(self, sql: str) -> str | None:
        if "DROP" in sql:
            raise Refused("DROP is not allowed", hint="Ask an operator.")
        return sql.replace("ping", "pong") if "ping" in sql else None

    def parse(self, message: fe.Parse) -> fe.Parse | None:
        if "DROP" in message.sql:
            raise Refused("DROP is not allowed")
        return None


def _decode_frontend(chunks: list[bytes]) -> list[object]:
    framer = MessageFramer(1 << 20, "client")
    framer.feed(b"".join(chunks))
    frames = framer.take()
    assert frames is not None
    return [fe.decode_frontend(k, frames.body((k, s, e))) for k, s, e in frames.spans]


def _decode_backend(chunks: list[bytes]) -> list[object]:
    framer = MessageFramer(1 << 20, "server")
    framer.feed(b"".join(chunks))
    frames = framer.take()
    return [] if frames is None else [be.decode_backend(k, frames.body((k, s, e)))
                                      for k, s, e in frames.spans]


def test_pass_through_is_byte_identical_and_tracks_status() -> None:
    relay = Relay(max_message_size=1 << 20)
    wire = b"".join(m.encode() for m in (
        fe.Parse("s1", "SELECT $1", (23,)), fe.Bind("", "s1", (), (b"1",)),
        fe.Execute("", 0), fe.Sync(), fe.Query("BEGIN")))
    out = relay.from_client(wire[:7])  # partial: nothing complete yet
    assert out.to_upstream == []
    out = relay.from_client(wire[7:])
    assert b"".join(out.to_upstream) == wire
    assert relay.pending == 2 and relay.busy
    answer = b"".join(m.encode() for m in (
        be.ParseComplete(), be.BindComplete(), be.DataRow((b"1",)),
        be.CommandComplete("SELECT 1"), be.ReadyForQuery(b"I"),
        be.CommandComplete("BEGIN"), be.ReadyForQuery(b"T")))
    back = relay.from_upstream(answer)
    assert b"".join(back.to_client) == answer
    assert relay.status == b"T" and not relay.busy


def test_refused_query_becomes_a_server_error_at_the_same_position() -> None:
    relay = Relay(max_message_size=1 << 20, hook=RefuseDrop())
    out = relay.from_client(fe.Query("SELECT 1").encode() + fe.Query("DROP TABLE x").encode()
                            + fe.Query("SELECT ping").encode())
    sent = _decode_frontend(out.to_upstream)
    assert sent[0] == fe.Query("SELECT 1") and sent[2] == fe.Query("SELECT pong")
    marker = sent[1].sql
    assert marker.startswith("tenant_proxy_refused_") and "DROP" not in marker
    # PostgreSQL answers the marker with a syntax error; the client sees the refusal.
    server_error = be.ErrorResponse({"S": "ERROR", "V": "ERROR", "C": "42601",
                                     "M": f'syntax error at or near "{marker}"', "P": "1"})
    back = relay.from_upstream(b"".join(m.encode() for m in (
        be.CommandComplete("SELECT 1"), be.ReadyForQuery(b"T"),
        server_error, be.ReadyForQuery(b"E"))))
    got = _decode_backend(back.to_client)
    assert got[0] == be.CommandComplete("SELECT 1")
    assert isinstance(got[2], be.ErrorResponse)
    assert got[2].fields == {"S": "ERROR", "V": "ERROR", "C": "42501",
                             "M": "DROP is not allowed", "H": "Ask an operator."}
    assert got[3] == be.ReadyForQuery(b"E")
    assert relay.status == b"E"


def test_refused_parse_keeps_statement_name_and_real_errors_pass() -> None:
    relay = Relay(max_message_size=1 << 20, hook=RefuseDrop())
    out = relay.from_client(fe.Parse("stmt", "DROP TABLE t").encode() + fe.Sync().encode())
    sent = _decode_frontend(out.to_upstream)
    assert isinstance(sent[0], fe.Parse) and sent[0].name == "stmt"
    assert sent[0].sql.startswith("tenant_proxy_refused_")
    real = be.ErrorResponse({"S": "ERROR", "C": "42P01", "M": 'relation "t" does not exist'})
    assert relay.from_upstream(real.encode()).to_client == [real.encode()]


def test_forged_marker_without_the_session_nonce_is_not_rewritten() -> None:
    relay = Relay(max_message_size=1 << 20, hook=RefuseDrop())
    fake = be.ErrorResponse({"S": "ERROR", "C": "42601",
                             "M": 'syntax error at or near "tenant_proxy_refused_0000_1"'})
    assert relay.from_upstream(fake.encode()).to_client == [fake.encode()]


def test_function_call_is_refused_with_0A000() -> None:
    relay = Relay(max_message_size=1 << 20)
    out = relay.from_client(fe.FunctionCall(1234, (), (), 0).encode())
    (sent,) = _decode_frontend(out.to_upstream)
    assert isinstance(sent, fe.Query) and sent.sql.startswith("tenant_proxy_refused_")
    err = be.ErrorResponse({"S": "ERROR", "C": "42601",
                            "M": f'syntax error at or near "{sent.sql}"'})
    (got,) = _decode_backend(relay.from_upstream(err.encode()).to_client)
    assert isinstance(got, be.ErrorResponse) and got.sqlstate == "0A000"
    assert "fastpath function calls" in got.message


@pytest.mark.parametrize("wire", [b"\x01\x00\x00\x00\x04", fe.PasswordMessage(b"x").encode()])
def test_unknown_or_misplaced_messages_are_protocol_violations(wire: bytes) -> None:
    relay = Relay(max_message_size=1 << 20)
    with pytest.raises(ProtocolViolation, match="invalid frontend message type"):
        relay.from_client(wire)


def test_terminate_stops_reading() -> None:
    relay = Relay(max_message_size=1 << 20)
    out = relay.from_client(fe.Terminate().encode() + fe.Query("SELECT 1").encode())
    assert out.terminate and out.to_upstream == [fe.Terminate().encode()]
    assert relay.terminating  # the upstream closing next is expected, not a failure


def test_fatal_upstream_error_is_noted() -> None:
    relay = Relay(max_message_size=1 << 20)
    fatal = be.ErrorResponse({"S": "FATAL", "V": "FATAL", "C": "57P01",
                              "M": "terminating connection due to administrator command"})
    relay.from_upstream(fatal.encode())
    assert relay.upstream_fatal
    assert be.ErrorResponse.decode(FieldReader(fatal.encode()[5:], "E")).sqlstate == "57P01"


class Reprepare(PassThrough):
    """Prepares statement "s" again before every Bind of it."""

    inspects = True

    def bind(self, body: bytes) -> list[fe.Close | fe.Parse] | None:
        return [fe.Close("S", "s"), fe.Parse("s", "SELECT 2")] if b"\0s\0" in body else None


def test_injected_messages_answers_are_swallowed_in_order() -> None:
    relay = Relay(max_message_size=1 << 20, hook=Reprepare())
    out = relay.from_client(b"".join(m.encode() for m in (
        fe.Parse("mine", "SELECT 1"), fe.Bind("", "s", (), ()), fe.Execute("", 0), fe.Sync())))
    sent = _decode_frontend(out.to_upstream)
    assert [type(m) for m in sent] == [fe.Parse, fe.Close, fe.Parse, fe.Bind, fe.Execute,
                                       fe.Sync]
    answers = [be.ParseComplete(), be.CloseComplete(), be.ParseComplete(), be.BindComplete(),
               be.DataRow((b"2",)), be.CommandComplete("SELECT 1"), be.ReadyForQuery(b"I")]
    got = _decode_backend(relay.from_upstream(b"".join(m.encode() for m in answers)).to_client)
    assert got == [be.ParseComplete(), be.BindComplete(), be.DataRow((b"2",)),
                   be.CommandComplete("SELECT 1"), be.ReadyForQuery(b"I")]


def test_answers_skipped_after_an_error_do_not_shift_the_accounting() -> None:
    relay = Relay(max_message_size=1 << 20, hook=Reprepare())
    # The server fails the client's first Parse and skips the rest until Sync.
    relay.from_client(b"".join(m.encode() for m in (
        fe.Parse("bad", "SELEC"), fe.Bind("", "s", (), ()), fe.Sync())))
    error = be.ErrorResponse({"S": "ERROR", "C": "42601", "M": "syntax error"})
    first = _decode_backend(relay.from_upstream(error.encode() +
                                                be.ReadyForQuery(b"I").encode()).to_client)
    assert first == [error, be.ReadyForQuery(b"I")]
    # Next batch: only the client's own ParseComplete reaches it.
    relay.from_client(fe.Parse("ok", "SELECT 1").encode() + fe.Sync().encode())
    second = _decode_backend(relay.from_upstream(be.ParseComplete().encode() +
                                                 be.ReadyForQuery(b"I").encode()).to_client)
    assert second == [be.ParseComplete(), be.ReadyForQuery(b"I")]
