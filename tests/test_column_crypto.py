"""Sealing and opening values, and decrypting result rows, without sockets."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.crypto import values
from proxy.crypto.cipher import DataCorrupted, key_version
from proxy.crypto.columns import ColumnCrypto, UnreadableValue
from proxy.crypto.keyring import MemoryKeyRing
from proxy.policy.rules import EncryptedColumn, EncryptionRules
from proxy.session.results import ResultDecryptor
from proxy.wire.backend import (
    ColumnDescription,
    CommandComplete,
    DataRow,
    ParameterDescription,
    RowDescription,
)
from proxy.wire.fields import FieldReader
from proxy.wire.frontend import Bind, Describe

SSN = EncryptedColumn("public.p", "ssn", "randomized", "text", "public.p.ssn")
EMAIL = EncryptedColumn("public.p", "email", "deterministic", "text", "email")
AGE = EncryptedColumn("public.p", "age", "deterministic", "integer", "public.p.age")
OID = 16500
ATTRIBUTES = {(OID, 2): SSN, (OID, 3): EMAIL, (OID, 4): AGE}


def crypto(unreadable: str = "error") -> ColumnCrypto:
    rules = EncryptionRules(b"\0" * 32, {"public.p": {"ssn": SSN, "email": EMAIL, "age": AGE}},
                            unreadable)
    return ColumnCrypto(rules, MemoryKeyRing(), ATTRIBUTES, frozenset({"public.p"}))


def bytea_array(data: bytes) -> list[bytes | None]:
    ndim, _, oid = struct.unpack_from("!iiI", data)
    if ndim == 0:
        return []
    assert (ndim, oid) == (1, 17)
    count = struct.unpack_from("!i", data, 12)[0]
    out, offset = [], 20
    for _ in range(count):
        (length,) = struct.unpack_from("!i", data, offset)
        offset += 4
        out.append(None if length < 0 else data[offset:offset + length])
        offset += max(length, 0)
    return out


@given(st.text(max_size=200).filter(lambda t: "\0" not in t))
def test_written_values_open_to_themselves(text: str) -> None:
    c = crypto()
    for column in (SSN, EMAIL):
        sealed = c.seal_param("7", column, False, text.encode(), 0)
        assert sealed is not None
        if len(text.encode()) >= 8:  # shorter ones may occur in random bytes
            assert text.encode() not in sealed
        assert c.open("7", column, sealed, 1, "UTC") == text.encode()
        assert c.open("7", column, b"\\x" + sealed.hex().encode(), 0, "UTC") == text.encode()
        assert c.open("7", column, escaped(sealed), 0, "UTC") == text.encode()


def escaped(data: bytes) -> bytes:
    """bytea in the escape output format (bytea_output = escape)."""
    return b"".join(b"\\\\" if b == 92 else bytes([b]) if 32 <= b < 127 else b"\\%03o" % b
                    for b in data)


def test_deterministic_search_covers_every_live_key() -> None:
    c = crypto()
    keyring = c.keyring
    assert isinstance(keyring, MemoryKeyRing)
    old = c.seal_param("7", EMAIL, False, b"a@b", 0)
    assert old == c.seal_param("7", EMAIL, False, b"a@b", 0)  # deterministic
    assert c.seal_param("7", SSN, False, b"x", 0) != c.seal_param("7", SSN, False, b"x", 0)
    keyring.rotate("7")
    searched = bytea_array(c.seal_param("7", EMAIL, True, b"a@b", 0) or b"")
    assert old in searched and len(searched) == 2
    assert {key_version(s) for s in searched if s} == {1, 2}
    assert bytea_array(c.seal_param("7", EMAIL, True, None, 0) or b"") == [None]
    # Text and binary parameters of one integer seal alike.
    binary = c.seal_param("7", AGE, False, struct.pack("!q", 42), 1, client_type=20)
    assert binary == c.seal_param("7", AGE, False, b" 42 ", 0)
    assert "'\\x" in c.seal_literal("7", AGE, False, "42")


def test_other_tenants_and_columns_do_not_decrypt() -> None:
    c = crypto()
    sealed = c.seal_param("7", EMAIL, False, b"a@b", 0)
    assert sealed is not None
    c.keyring.current("8")
    with pytest.raises(DataCorrupted):
        c.open("8", EMAIL, sealed, 1, "UTC")
    with pytest.raises(DataCorrupted):
        c.open("7", AGE, sealed, 1, "UTC")
    tampered = sealed[:-1] + bytes([sealed[-1] ^ 1])
    with pytest.raises(DataCorrupted):
        c.open("7", EMAIL, tampered, 1, "UTC")


def test_shredded_values_are_an_error_or_null() -> None:
    for unreadable in ("error", "null"):
        c = crypto(unreadable)
        sealed = c.seal_param("7", SSN, False, b"secret", 0)
        assert sealed is not None
        c.keyring.shred("7")  # type: ignore[attr-defined]
        if unreadable == "error":
            with pytest.raises(UnreadableValue, match="shredded"):
                c.open("7", SSN, sealed, 1, "UTC")
        else:
            assert c.open("7", SSN, sealed, 1, "UTC") is None
        assert key_version(c.seal_param("7", SSN, False, b"new", 0) or b"") == 2


def body(message: bytes | None) -> FieldReader:
    assert message
    return FieldReader(message[5:], "message")


def description(format_code: int = 0) -> bytes:
    columns = (ColumnDescription("id", OID, 1, 23, 4, -1, format_code),
               ColumnDescription("ssn", OID, 2, 17, -1, -1, format_code),
               ColumnDescription("age", OID, 4, 17, -1, -1, format_code))
    return RowDescription(columns).encode()[5:]


def test_result_rows_follow_the_requests_that_asked_for_them() -> None:
    c = crypto()
    sealed_params = {"s1": {1: EMAIL}}
    results = ResultDecryptor(lambda: c, lambda: "7", lambda name: sealed_params.get(name, {}),
                              lambda name: name == "s1")
    ssn = c.seal_param("7", SSN, False, b"123-45", 0)
    age = c.seal_param("7", AGE, False, b"33", 0)
    # Parse, Bind and Execute with no Describe: the proxy describes the portal itself,
    # and that answer never reaches the client.
    results.parsed("s1")
    results.bind(Bind("", "s1", (), (), (1,)).encode()[5:])
    assert results.execute("") == Describe("P", "").encode()
    results.sync()
    assert results.backend(b"T"[0], description(1)) == b""
    row = results.backend(b"D"[0], DataRow((b"\0\0\0\1", ssn, age)).encode()[5:])
    assert DataRow.decode(body(row)).values == (b"\0\0\0\1", b"123-45", struct.pack("!i", 33))
    results.backend(b"C"[0], CommandComplete("SELECT 1").encode()[5:])
    results.backend(b"Z"[0], b"I")
    # Statements on tables without encrypted columns are never described by the proxy.
    results.parsed("plain")
    results.bind(Bind("p", "plain", (), (), ()).encode()[5:])
    assert results.execute("p") == b""
    results.sync()
    results.backend(b"Z"[0], b"I")
    # The client's own Describe: logical types, and the proxy adds no Describe of its own.
    results.describe(b"S" + b"s1\0")
    shown = results.backend(b"t"[0], ParameterDescription((17,)).encode()[5:])
    assert shown == ParameterDescription((values.TYPE_OIDS["text"],)).encode()
    rewritten = RowDescription.decode(body(results.backend(b"T"[0], description())))
    assert [c.type_oid for c in rewritten.columns] == [23, 25, 23]
    # Bind with binary results, Execute: rows decrypted into binary integers and text.
    results.bind(Bind("", "s1", (), (), (1,)).encode()[5:])
    assert results.execute("") == b""
    results.sync()
    row = results.backend(b"D"[0], DataRow((b"\0\0\0\1", ssn, age)).encode()[5:])
    assert DataRow.decode(body(row)).values == (b"\0\0\0\1", b"123-45", struct.pack("!i", 33))
    assert results.backend(b"C"[0], CommandComplete("SELECT 1").encode()[5:]) is None
    assert results.backend(b"Z"[0], b"I") is None
    # A value that does not open: an error instead of the row, then silence until done.
    results.bind(Bind("", "s1", (), (), (0,)).encode()[5:])
    results.execute("")
    results.sync()
    bad = (ssn or b"")[:-1] + bytes([(ssn or b"")[-1] ^ 1])
    error = results.backend(b"D"[0], DataRow((b"1", b"\\x" + bad.hex().encode(), None)
                                             ).encode()[5:])
    assert error is not None and error.startswith(b"E") and b"XX001" in error
    assert results.backend(b"D"[0], DataRow((b"2", None, None)).encode()[5:]) == b""
    assert results.backend(b"C"[0], CommandComplete("SELECT 2").encode()[5:]) == b""
    # Simple queries: the RowDescription comes first; unrelated rows pass untouched.
    results.backend(b"Z"[0], b"I")
    results.query()
    plain = RowDescription((ColumnDescription("n", 0, 0, 23, 4, -1, 0),)).encode()[5:]
    assert results.backend(b"T"[0], plain) is None
    assert results.backend(b"D"[0], DataRow((b"5",)).encode()[5:]) is None
