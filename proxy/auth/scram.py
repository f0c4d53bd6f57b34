"""SCRAM-SHA-256 (RFC 5802/7677) as PostgreSQL speaks it, sans-IO.

The proxy authenticates clients against stored verifiers in PostgreSQL's own
format (``SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>``), so a
plaintext password never has to sit in a config file, and authenticates to the
upstream as an ordinary SCRAM client. Channel binding is not offered.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from dataclasses import dataclass

from proxy.errors import InvalidAuthorization, InvalidPassword, ProtocolViolation

MECHANISM = "SCRAM-SHA-256"
DEFAULT_ITERATIONS = 4096


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def _unb64(text: str) -> bytes:
    return base64.b64decode(text, validate=True)


def _hmac(key: bytes, msg: bytes) -> bytes:
    return hmac.digest(key, msg, "sha256")


def _salted_password(password: str, salt: bytes, iterations: int) -> bytes:
    return hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)


def _parse_attributes(message: str, what: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for part in message.split(","):
        if len(part) < 2 or part[1] != "=":
            raise ProtocolViolation(f"malformed SCRAM {what} message")
        out[part[0]] = part[2:]
    return out


@dataclass(frozen=True, slots=True)
class ScramVerifier:
    iterations: int
    salt: bytes
    stored_key: bytes
    server_key: bytes

    @classmethod
    def parse(cls, text: str) -> ScramVerifier:
        """Parse PostgreSQL's verifier format; a ValueError names what is wrong."""
        try:
            mechanism, params, keys = text.split("$")
            iterations, salt = params.split(":")
            stored, server = keys.split(":")
            verifier = cls(int(iterations), _unb64(salt), _unb64(stored), _unb64(server))
        except ValueError as exc:
            raise ValueError(
                "not a SCRAM-SHA-256 verifier (expected "
                "SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>)") from exc
        if mechanism != MECHANISM or verifier.iterations < 1:
            raise ValueError(f"not a {MECHANISM} verifier")
        if len(verifier.stored_key) != 32 or len(verifier.server_key) != 32:
            raise ValueError("SCRAM-SHA-256 keys must be 32 bytes")
        return verifier

    def __str__(self) -> str:
        return (f"{MECHANISM}${self.iterations}:{_b64(self.salt)}$"
                f"{_b64(self.stored_key)}:{_b64(self.server_key)}")


def make_verifier(password: str, iterations: int = DEFAULT_ITERATIONS,
                  salt: bytes | None = None) -> ScramVerifier:
    salt = salt if salt is not None else secrets.token_bytes(16)
    salted = _salted_password(password, salt, iterations)
    client_key = _hmac(salted, b"Client Key")
    return ScramVerifier(iterations, salt, hashlib.sha256(client_key).digest(),
                         _hmac(salted, b"Server Key"))


class ScramServer:
    """Server side of one exchange: ``first`` answers client-first, ``final``
    checks the proof and returns server-final, raising InvalidPassword."""

    def __init__(self, user: str, verifier: ScramVerifier | None) -> None:
        self._user = user
        # An unknown user runs the exchange against a random verifier so its
        # timing and messages match a wrong password (no user enumeration).
        self._verifier = verifier or make_verifier(secrets.token_hex(16), DEFAULT_ITERATIONS)
        self._known = verifier is not None
        self._client_first_bare = ""
        self._server_first = ""
        self._nonce = ""

    def first(self, mechanism: str, client_first: bytes) -> bytes:
        if mechanism != MECHANISM:
            raise InvalidAuthorization(f"SASL mechanism {mechanism!r} is not supported",
                                       hint=f"Use {MECHANISM}.")
        text = client_first.decode("utf-8", "replace")
        if text.startswith("p="):
            raise InvalidAuthorization("SCRAM channel binding is not supported by the proxy")
        if not (text.startswith("n,") or text.startswith("y,")):
            raise ProtocolViolation("malformed SCRAM client-first message")
        header_end = text.find(",", 2)
        if header_end < 0:
            raise ProtocolViolation("malformed SCRAM client-first message")
        self._client_first_bare = text[header_end + 1:]
        attrs = _parse_attributes(self._client_first_bare, "client-first")
        client_nonce = attrs.get("r")
        if not client_nonce:
            raise ProtocolViolation("SCRAM client-first message has no nonce")
        self._nonce = client_nonce + _b64(secrets.token_bytes(18))
        v = self._verifier
        self._server_first = f"r={self._nonce},s={_b64(v.salt)},i={v.iterations}"
        return self._server_first.encode()

    def final(self, client_final: bytes) -> bytes:
        text = client_final.decode("utf-8", "replace")
        without_proof, sep, proof_b64 = text.rpartition(",p=")
        if not sep:
            raise ProtocolViolation("SCRAM client-final message has no proof")
        attrs = _parse_attributes(without_proof, "client-final")
        if attrs.get("r") != self._nonce:
            raise ProtocolViolation("SCRAM nonce mismatch")
        try:
            proof = _unb64(proof_b64)
        except ValueError as exc:
            raise ProtocolViolation("malformed SCRAM proof") from exc
        auth_message = f"{self._client_first_bare},{self._server_first},{without_proof}".encode()
        v = self._verifier
        signature = _hmac(v.stored_key, auth_message)
        if len(proof) != len(signature):
            raise ProtocolViolation("malformed SCRAM proof")
        client_key = bytes(a ^ b for a, b in zip(proof, signature, strict=True))
        ok = hmac.compare_digest(hashlib.sha256(client_key).digest(), v.stored_key)
        if not (ok and self._known):
            raise InvalidPassword(f'password authentication failed for user "{self._user}"')
        return f"v={_b64(_hmac(v.server_key, auth_message))}".encode()


class ScramClient:
    """Client side, for the proxy's upstream connections."""

    def __init__(self, password: str) -> None:
        self._password = password
        self._nonce = _b64(secrets.token_bytes(18))
        self._client_first_bare = f"n=,r={self._nonce}"
        self._server_signature = b""

    def first(self) -> bytes:
        return f"n,,{self._client_first_bare}".encode()

    def final(self, server_first: bytes) -> bytes:
        text = server_first.decode()
        attrs = _parse_attributes(text, "server-first")
        nonce, salt, iterations = attrs.get("r", ""), attrs.get("s", ""), attrs.get("i", "")
        if not nonce.startswith(self._nonce) or not salt or not iterations.isdigit():
            raise ProtocolViolation("invalid SCRAM server-first message from upstream")
        salted = _salted_password(self._password, _unb64(salt), int(iterations))
        client_key = _hmac(salted, b"Client Key")
        without_proof = f"c=biws,r={nonce}"
        auth_message = f"{self._client_first_bare},{text},{without_proof}".encode()
        signature = _hmac(hashlib.sha256(client_key).digest(), auth_message)
        proof = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
        self._server_signature = _hmac(_hmac(salted, b"Server Key"), auth_message)
        return f"{without_proof},p={_b64(proof)}".encode()

    def verify(self, server_final: bytes) -> None:
        attrs = _parse_attributes(server_final.decode(), "server-final")
        if "e" in attrs:
            raise InvalidPassword(f"upstream rejected SCRAM authentication: {attrs['e']}")
        if not hmac.compare_digest(_unb64(attrs.get("v", "")), self._server_signature):
            raise ProtocolViolation("upstream SCRAM server signature does not match")


def md5_password(user: str, password: str, salt: bytes) -> bytes:
    """The response to AuthenticationMD5Password."""
    inner = hashlib.md5((password + user).encode()).hexdigest()
    return b"md5" + hashlib.md5(inner.encode() + salt).hexdigest().encode()
