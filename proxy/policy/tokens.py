"""Signed tenant tokens for ``SET tenant_proxy.tenant = '<token>'``.

A login role in ``token`` mode may switch tenant, but only to a tenant someone
holding a key vouched for, and only until the token expires (DESIGN.md §3).
The format is deliberately tiny and not JWT: one version prefix, two
algorithms, and no header the client can use to pick how it is checked::

    tp1.<alg>.<payload_b64url>.<sig_b64url>

``alg`` is ``hs256`` or ``ed25519``; the payload is canonical JSON
(``{"exp": <int>, "t": "<tenant>"}`` plus optional ``iat`` and ``role``); the
signature covers the ASCII text ``tp1.<alg>.<payload_b64url>``, so the
algorithm name is signed too.

Error messages reach the client as ErrorResponses and the log, so they name
what is wrong but never repeat the token or any key material.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.serialization import (
    load_pem_private_key,
    load_pem_public_key,
)

__all__ = [
    "MAX_TENANT_LENGTH",
    "MAX_TOKEN_LENGTH",
    "MIN_HMAC_KEY_BYTES",
    "TokenClaims",
    "TokenError",
    "TokenVerifier",
    "load_ed25519_private_key",
    "load_ed25519_public_key",
    "load_hmac_key",
    "mint_ed25519",
    "mint_hs256",
]

PREFIX = "tp1"
HS256 = "hs256"
ED25519 = "ed25519"
MAX_TOKEN_LENGTH = 4096
MAX_TENANT_LENGTH = 200
MIN_HMAC_KEY_BYTES = 32

_SIG_LENGTH = {HS256: 32, ED25519: 64}
_CLAIMS = frozenset({"t", "exp", "iat", "role"})
_B64URL = re.compile(r"[A-Za-z0-9_-]*")
_MALFORMED = "malformed tenant token"
_SHORT_KEY = f"HMAC key must be at least {MIN_HMAC_KEY_BYTES} bytes"


class TokenError(ValueError):
    """A token was refused; the message is safe to show the client."""


@dataclass(frozen=True)
class TokenClaims:
    """What a verified token vouches for; nothing here is trusted before verify()."""

    tenant: str
    expires: int
    role: str | None


def _b64url_encode(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _b64url_decode(text: str) -> bytes:
    """Decode strictly, so each token has exactly one spelling.

    Lenient decoders ignore stray characters and the unused low bits of the
    last character; then a token could be altered without its signature
    breaking, and a "rejected" token could still be replayed in another form.
    """
    if not _B64URL.fullmatch(text) or len(text) % 4 == 1:
        raise TokenError(_MALFORMED)
    raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    if _b64url_encode(raw) != text:
        raise TokenError(_MALFORMED)
    return raw


def _tenant_problem(tenant: object) -> str | None:
    """Why a tenant id is unusable, shared by minting (ValueError) and verifying."""
    if not isinstance(tenant, str) or not tenant:
        return "tenant token has no tenant"
    if len(tenant) > MAX_TENANT_LENGTH:
        return f"tenant token tenant is longer than {MAX_TENANT_LENGTH} characters"
    try:
        tenant.encode("utf-8")
    except UnicodeEncodeError:
        # A lone surrogate cannot travel to PostgreSQL as UTF-8 text.
        return "tenant token tenant is not valid text"
    return None


def _is_int(value: object) -> bool:
    # bool is an int subclass; JSON true must not pass as a timestamp.
    return isinstance(value, int) and not isinstance(value, bool)


def _format_time(seconds: int) -> str:
    try:
        return datetime.fromtimestamp(seconds, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    except (OverflowError, OSError, ValueError):
        return "a time out of range"


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """Two "t" keys would let different parsers see different tenants."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise TokenError(_MALFORMED)
        out[key] = value
    return out


def _reject_constant(_name: str) -> None:
    raise TokenError(_MALFORMED)


def _parse_claims(payload: bytes) -> TokenClaims:
    try:
        claims = json.loads(payload.decode("utf-8"), object_pairs_hook=_reject_duplicates,
                            parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError):
        # TokenError is a ValueError: re-raise ours, replace the decoder's.
        raise TokenError(_MALFORMED) from None
    if not isinstance(claims, dict):
        raise TokenError(_MALFORMED)
    if not claims.keys() <= _CLAIMS:
        # A claim we do not enforce (say "nbf" or "aud") must not be silently ignored.
        raise TokenError("tenant token carries a claim this proxy does not support")
    tenant = claims.get("t")
    problem = _tenant_problem(tenant)
    if problem is not None:
        raise TokenError(problem)
    expires = claims.get("exp")
    if not _is_int(expires):
        raise TokenError("tenant token has no valid expiry")
    if "iat" in claims and not _is_int(claims["iat"]):
        raise TokenError(_MALFORMED)
    role = claims.get("role")
    if "role" in claims and (not isinstance(role, str) or not role):
        raise TokenError(_MALFORMED)
    return TokenClaims(tenant=tenant, expires=expires, role=role)


def _check_hmac_key(key: object) -> bytes:
    if not isinstance(key, bytes | bytearray):
        raise TypeError("HMAC key must be bytes")
    if len(key) < MIN_HMAC_KEY_BYTES:
        raise ValueError(_SHORT_KEY)
    return bytes(key)


class TokenVerifier:
    """Checks tokens against every configured key, so keys can be rotated.

    During a rotation both the old and the new key are configured; a token
    verifies if any key of its own algorithm accepts it. An algorithm with no
    key configured is refused outright, which is what stops a token from
    choosing a weaker way to be checked.
    """

    def __init__(self, hmac_keys: Sequence[bytes] = (),
                 ed25519_public_keys: Sequence[Ed25519PublicKey] = ()) -> None:
        self._hmac_keys = tuple(_check_hmac_key(key) for key in hmac_keys)
        for key in ed25519_public_keys:
            if not isinstance(key, Ed25519PublicKey):
                raise TypeError("Ed25519 keys must be Ed25519PublicKey objects")
        self._ed25519_keys = tuple(ed25519_public_keys)
        if not self._hmac_keys and not self._ed25519_keys:
            raise ValueError("a token verifier needs at least one key")

    def __repr__(self) -> str:
        # Keys stay out of reprs, and so out of logs and tracebacks.
        return (f"TokenVerifier(hmac_keys={len(self._hmac_keys)}, "
                f"ed25519_public_keys={len(self._ed25519_keys)})")

    def _signature_matches(self, alg: str, signed: bytes, signature: bytes) -> bool:
        if alg == HS256:
            matched = False
            for key in self._hmac_keys:
                expected = hmac.new(key, signed, hashlib.sha256).digest()
                # No early exit: which key matched should not show in timing.
                matched |= hmac.compare_digest(expected, signature)
            return matched
        for public_key in self._ed25519_keys:
            try:
                public_key.verify(signature, signed)
            except InvalidSignature:
                continue
            return True
        return False

    def verify(self, token: str, *, now: float | None = None, role: str | None = None,
               leeway: int = 0) -> TokenClaims:
        """Return the claims of a valid token, else raise TokenError.

        The signature is checked before the payload is parsed, so the JSON
        decoder only ever sees bytes a key holder produced. ``leeway`` forgives
        clock skew between minter and proxy; ``role``, when given, must match
        a role the token was restricted to.
        """
        if leeway < 0:
            raise ValueError("leeway must not be negative")
        if not isinstance(token, str):
            raise TokenError(_MALFORMED)
        if len(token) > MAX_TOKEN_LENGTH:
            raise TokenError(f"tenant token is longer than {MAX_TOKEN_LENGTH} characters")
        if not token.isascii():
            raise TokenError(_MALFORMED)
        parts = token.split(".")
        if len(parts) != 4 or parts[0] != PREFIX:
            raise TokenError(_MALFORMED)
        _, alg, payload_b64, sig_b64 = parts
        if alg not in _SIG_LENGTH:
            # The unknown name comes from the token, so it is not repeated.
            raise TokenError("tenant token algorithm is not supported")
        if not (self._hmac_keys if alg == HS256 else self._ed25519_keys):
            raise TokenError(f"tenant token algorithm {alg} is not accepted here")
        if not _B64URL.fullmatch(payload_b64):
            raise TokenError(_MALFORMED)
        signature = _b64url_decode(sig_b64)
        if len(signature) != _SIG_LENGTH[alg]:
            raise TokenError(_MALFORMED)
        signed = f"{PREFIX}.{alg}.{payload_b64}".encode("ascii")
        if not self._signature_matches(alg, signed, signature):
            raise TokenError("tenant token signature does not match")
        claims = _parse_claims(_b64url_decode(payload_b64))
        current = time.time() if now is None else now
        if claims.expires + leeway < current:
            raise TokenError(f"tenant token expired at {_format_time(claims.expires)}")
        if role is not None and claims.role is not None and claims.role != role:
            raise TokenError("tenant token was issued for a different role")
        return claims


def _signing_input(alg: str, tenant: str, ttl: int, now: float | None,
                   role: str | None) -> str:
    problem = _tenant_problem(tenant)
    if problem is not None:
        raise ValueError(problem)
    if not _is_int(ttl) or ttl <= 0:
        raise ValueError("token lifetime must be a positive number of seconds")
    if role is not None and (not isinstance(role, str) or not role):
        raise ValueError("token role must be a non-empty string")
    issued = int(time.time() if now is None else now)
    claims: dict[str, object] = {"t": tenant, "exp": issued + ttl, "iat": issued}
    if role is not None:
        claims["role"] = role
    payload = json.dumps(claims, sort_keys=True, separators=(",", ":"))
    return f"{PREFIX}.{alg}.{_b64url_encode(payload.encode('ascii'))}"


def mint_hs256(key: bytes, tenant: str, ttl: int, *, now: float | None = None,
               role: str | None = None) -> str:
    """Issue a token for deployments where the minter and the proxy share a secret."""
    secret = _check_hmac_key(key)
    signing_input = _signing_input(HS256, tenant, ttl, now, role)
    signature = hmac.new(secret, signing_input.encode("ascii"), hashlib.sha256).digest()
    return f"{signing_input}.{_b64url_encode(signature)}"


def mint_ed25519(private_key: Ed25519PrivateKey, tenant: str, ttl: int, *,
                 now: float | None = None, role: str | None = None) -> str:
    """Issue a token the proxy can verify without holding anything able to mint one."""
    if not isinstance(private_key, Ed25519PrivateKey):
        raise TypeError("private_key must be an Ed25519PrivateKey")
    signing_input = _signing_input(ED25519, tenant, ttl, now, role)
    signature = private_key.sign(signing_input.encode("ascii"))
    return f"{signing_input}.{_b64url_encode(signature)}"


def load_hmac_key(text: str) -> bytes:
    """Read a shared secret as the rules file spells it (from the environment or a file).

    ``base64:`` and ``hex:`` let binary secrets be written as text; anything
    else is taken as the UTF-8 bytes of the text itself. Surrounding
    whitespace is dropped because key files usually end in a newline. Short
    keys are refused: HMAC is only as strong as its key.
    """
    text = text.strip()
    if text.startswith("base64:"):
        try:
            key = base64.b64decode(text.removeprefix("base64:").strip(), validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("HMAC key is not valid base64") from None
    elif text.startswith("hex:"):
        try:
            key = bytes.fromhex(text.removeprefix("hex:").strip())
        except ValueError:
            raise ValueError("HMAC key is not valid hex") from None
    else:
        key = text.encode("utf-8")
    if len(key) < MIN_HMAC_KEY_BYTES:
        raise ValueError(_SHORT_KEY)
    return key


def _as_bytes(data: str | bytes) -> bytes:
    return data.encode("utf-8") if isinstance(data, str) else bytes(data)


def load_ed25519_public_key(pem_or_raw: str | bytes) -> Ed25519PublicKey:
    """Accept a PEM file as tools write it, or the 32 raw bytes in base64 for env vars."""
    data = _as_bytes(pem_or_raw).strip()
    if data.startswith(b"-----BEGIN"):
        try:
            key = load_pem_public_key(data)
        except (ValueError, UnsupportedAlgorithm):
            raise ValueError("Ed25519 public key PEM cannot be read") from None
        if not isinstance(key, Ed25519PublicKey):
            raise ValueError("public key is not an Ed25519 key")
        return key
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("Ed25519 public key is neither PEM nor base64") from None
    if len(raw) != 32:
        raise ValueError("Ed25519 public key must be 32 bytes")
    return Ed25519PublicKey.from_public_bytes(raw)


def load_ed25519_private_key(pem: str | bytes) -> Ed25519PrivateKey:
    """Load the minting key (unencrypted PEM), e.g. for a CLI that issues tokens."""
    try:
        key = load_pem_private_key(_as_bytes(pem).strip(), password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        # The underlying messages are generic, but wrapping keeps key bytes out for sure.
        raise ValueError("Ed25519 private key PEM cannot be read") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError("private key is not an Ed25519 key")
    return key
