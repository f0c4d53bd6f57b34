"""Tenant tokens: minting, verification and key loading, without sockets or a database.

Forged tokens are built here by hand (not with the module's helpers) so the
tests pin the wire format rather than whatever the implementation happens to do.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from proxy.policy.tokens import (
    MAX_TOKEN_LENGTH,
    TokenClaims,
    TokenError,
    TokenVerifier,
    load_ed25519_private_key,
    load_ed25519_public_key,
    load_hmac_key,
    mint_ed25519,
    mint_hs256,
)

NOW = 1_795_658_400  # 2026-11-26T02:00:00Z
KEY = b"k" * 16 + bytes(range(16))  # 32 bytes, partly unprintable
OTHER_KEY = bytes(range(100, 132))
ED_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
ED_OTHER = Ed25519PrivateKey.from_private_bytes(bytes(range(1, 33)))

tenants = st.text(alphabet=st.characters(exclude_categories=("Cs",)), min_size=1, max_size=200)


def b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def forge_hs256(payload: bytes | str, key: bytes = KEY, alg: str = "hs256") -> str:
    """A correctly signed hs256 token around an arbitrary payload."""
    body = payload if isinstance(payload, str) else b64url(payload)
    signing_input = f"tp1.{alg}.{body}"
    sig = hmac.new(key, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64url(sig)}"


def claims_json(**claims: object) -> bytes:
    return json.dumps(claims, sort_keys=True, separators=(",", ":")).encode()


def hs_verifier(*keys: bytes) -> TokenVerifier:
    return TokenVerifier(hmac_keys=keys or (KEY,))


def ed_verifier(*private: Ed25519PrivateKey) -> TokenVerifier:
    return TokenVerifier(ed25519_public_keys=[k.public_key() for k in private or (ED_KEY,)])


def both_verifier() -> TokenVerifier:
    return TokenVerifier(hmac_keys=[KEY], ed25519_public_keys=[ED_KEY.public_key()])


# --- round trips and the wire format -------------------------------------------------------


def test_hs256_round_trip_and_format() -> None:
    token = mint_hs256(KEY, "acme", 60, now=NOW)
    prefix, alg, payload, sig = token.split(".")
    assert (prefix, alg) == ("tp1", "hs256")
    assert unb64url(payload) == b'{"exp":1795658460,"iat":1795658400,"t":"acme"}'
    expected = hmac.new(KEY, f"tp1.hs256.{payload}".encode(), hashlib.sha256).digest()
    assert unb64url(sig) == expected
    assert "=" not in token and "+" not in token and "/" not in token
    assert hs_verifier().verify(token, now=NOW) == TokenClaims("acme", NOW + 60, None)


def test_ed25519_round_trip_and_format() -> None:
    token = mint_ed25519(ED_KEY, "acme", 60, now=NOW, role="app")
    prefix, alg, payload, sig = token.split(".")
    assert (prefix, alg) == ("tp1", "ed25519")
    assert json.loads(unb64url(payload)) == {"t": "acme", "exp": NOW + 60, "iat": NOW,
                                             "role": "app"}
    ED_KEY.public_key().verify(unb64url(sig), f"tp1.ed25519.{payload}".encode())
    assert ed_verifier().verify(token, now=NOW) == TokenClaims("acme", NOW + 60, "app")


def test_verifier_with_both_algorithms_accepts_both() -> None:
    verifier = both_verifier()
    assert verifier.verify(mint_hs256(KEY, "a", 5, now=NOW), now=NOW).tenant == "a"
    assert verifier.verify(mint_ed25519(ED_KEY, "b", 5, now=NOW), now=NOW).tenant == "b"


def test_default_now_is_the_clock() -> None:
    token = mint_hs256(KEY, "acme", 300)
    assert hs_verifier().verify(token).tenant == "acme"
    with pytest.raises(TokenError, match="expired"):
        hs_verifier().verify(mint_hs256(KEY, "acme", 1, now=0))


@given(tenant=tenants)
def test_any_tenant_round_trips(tenant: str) -> None:
    hs = mint_hs256(KEY, tenant, 60, now=NOW)
    ed = mint_ed25519(ED_KEY, tenant, 60, now=NOW)
    assert both_verifier().verify(hs, now=NOW).tenant == tenant
    assert both_verifier().verify(ed, now=NOW).tenant == tenant


# --- tampering ------------------------------------------------------------------------------

VALID_TOKENS = [
    mint_hs256(KEY, "acme", 60, now=NOW),
    mint_hs256(KEY, "tenant-ünïcode-☃", 60, now=NOW, role="app"),
    mint_ed25519(ED_KEY, "acme", 60, now=NOW),
    mint_ed25519(ED_KEY, "x" * 200, 60, now=NOW, role="app"),
]


@settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow])
@given(token=st.sampled_from(VALID_TOKENS), data=st.data(), replacement=st.characters())
def test_any_single_character_mutation_is_rejected(token: str, data: st.DataObject,
                                                   replacement: str) -> None:
    index = data.draw(st.integers(0, len(token) - 1), label="index")
    assume(token[index] != replacement)
    mutated = token[:index] + replacement + token[index + 1:]
    with pytest.raises(TokenError):
        both_verifier().verify(mutated, now=NOW)


@pytest.mark.parametrize("token", VALID_TOKENS)
def test_last_signature_character_has_no_slack(token: str) -> None:
    """The final base64 character carries unused bits; flipping only those must still fail."""
    head, last = token[:-1], token[-1]
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    same_bytes = [c for c in alphabet if c != last and unb64url(token.split(".")[3][:-1] + c)
                  == unb64url(token.split(".")[3])]
    assert same_bytes, "expected some aliases of the last character"
    for alias in same_bytes:
        with pytest.raises(TokenError, match="malformed"):
            both_verifier().verify(head + alias, now=NOW)


@pytest.mark.parametrize("token", [
    "",
    "tp1",
    "tp1.hs256",
    "tp1.hs256.e30",
    "tp1.hs256.e30.AAAA.AAAA",
    "tp2.hs256.e30.AAAA",
    "TP1.hs256.e30.AAAA",
    " " + VALID_TOKENS[0],
    VALID_TOKENS[0] + "\n",
    VALID_TOKENS[0] + "=",
    VALID_TOKENS[0].replace(".", "..", 1),
])
def test_wrong_shape_is_malformed(token: str) -> None:
    with pytest.raises(TokenError, match=r"^malformed tenant token$"):
        both_verifier().verify(token, now=NOW)


def test_non_string_token_is_malformed() -> None:
    with pytest.raises(TokenError, match="malformed"):
        both_verifier().verify(VALID_TOKENS[0].encode(), now=NOW)  # type: ignore[arg-type]


def test_padded_or_standard_base64_is_rejected_even_when_signed() -> None:
    payload = claims_json(t="acme??>", exp=NOW + 60)
    padded = base64.urlsafe_b64encode(payload).decode()
    standard = base64.b64encode(payload).decode().rstrip("=")
    assert "=" in padded and ("+" in standard or "/" in standard)
    for body in (padded, standard):
        with pytest.raises(TokenError, match="malformed"):
            hs_verifier().verify(forge_hs256(body), now=NOW)
    assert hs_verifier().verify(forge_hs256(payload), now=NOW).tenant == "acme??>"


@pytest.mark.parametrize("payload,message", [
    (b"not json", "malformed"),
    (b"\xff\xfe", "malformed"),
    (b"[]", "malformed"),
    (b'"acme"', "malformed"),
    (b'{"t":"a","t":"b","exp":9999999999}', "malformed"),
    (b'{"t":"a","exp":NaN}', "malformed"),
    (claims_json(exp=NOW + 60), "no tenant"),
    (claims_json(t="", exp=NOW + 60), "no tenant"),
    (claims_json(t=7, exp=NOW + 60), "no tenant"),
    (claims_json(t=None, exp=NOW + 60), "no tenant"),
    (claims_json(t=["a"], exp=NOW + 60), "no tenant"),
    (claims_json(t="x" * 201, exp=NOW + 60), "longer than 200"),
    (b'{"t":"\\ud800","exp":9999999999}', "not valid text"),
    (claims_json(t="a"), "no valid expiry"),
    (claims_json(t="a", exp="9999999999"), "no valid expiry"),
    (claims_json(t="a", exp=9999999999.0), "no valid expiry"),
    (claims_json(t="a", exp=True), "no valid expiry"),
    (claims_json(t="a", exp=None), "no valid expiry"),
    (claims_json(t="a", exp=NOW + 60, iat="now"), "malformed"),
    (claims_json(t="a", exp=NOW + 60, role=5), "malformed"),
    (claims_json(t="a", exp=NOW + 60, role=""), "malformed"),
    (claims_json(t="a", exp=NOW + 60, nbf=NOW), "claim this proxy does not support"),
])
def test_bad_payloads_are_rejected_even_when_signed(payload: bytes, message: str) -> None:
    with pytest.raises(TokenError, match=message):
        hs_verifier().verify(forge_hs256(payload), now=NOW)


def test_hand_built_token_with_iat_and_role_verifies() -> None:
    """The positive control for the forged-payload tests above."""
    token = forge_hs256(claims_json(t="a", exp=NOW + 60, iat=NOW, role="app"))
    assert hs_verifier().verify(token, now=NOW, role="app") == TokenClaims("a", NOW + 60, "app")


def test_tenant_of_exactly_200_characters_is_accepted() -> None:
    token = forge_hs256(claims_json(t="é" * 200, exp=NOW + 60))
    assert hs_verifier().verify(token, now=NOW).tenant == "é" * 200


# --- expiry ---------------------------------------------------------------------------------


def test_expired_token_is_rejected_with_the_time() -> None:
    token = mint_hs256(KEY, "acme", 60, now=NOW)
    assert hs_verifier().verify(token, now=NOW + 60).tenant == "acme"  # last valid second
    with pytest.raises(TokenError, match=r"^tenant token expired at 2026-11-26T02:01:00Z$"):
        hs_verifier().verify(token, now=NOW + 60.5)


def test_leeway_accepts_recently_expired_tokens() -> None:
    token = mint_ed25519(ED_KEY, "acme", 60, now=NOW)
    assert ed_verifier().verify(token, now=NOW + 90, leeway=30).tenant == "acme"
    with pytest.raises(TokenError, match="expired"):
        ed_verifier().verify(token, now=NOW + 91, leeway=30)
    with pytest.raises(ValueError, match="leeway"):
        ed_verifier().verify(token, now=NOW, leeway=-1)


def test_expiry_far_out_of_range_still_gives_a_message() -> None:
    token = forge_hs256(claims_json(t="a", exp=-(10**30)))
    with pytest.raises(TokenError, match="expired at a time out of range"):
        hs_verifier().verify(token, now=NOW)


# --- keys and algorithms --------------------------------------------------------------------


def test_wrong_key_is_rejected() -> None:
    with pytest.raises(TokenError, match=r"^tenant token signature does not match$"):
        hs_verifier(OTHER_KEY).verify(mint_hs256(KEY, "acme", 60, now=NOW), now=NOW)
    with pytest.raises(TokenError, match=r"^tenant token signature does not match$"):
        ed_verifier(ED_OTHER).verify(mint_ed25519(ED_KEY, "acme", 60, now=NOW), now=NOW)


def test_hs256_token_to_an_ed25519_only_verifier_is_refused() -> None:
    token = mint_hs256(KEY, "acme", 60, now=NOW)
    with pytest.raises(TokenError, match=r"^tenant token algorithm hs256 is not accepted here$"):
        ed_verifier().verify(token, now=NOW)
    token = mint_ed25519(ED_KEY, "acme", 60, now=NOW)
    with pytest.raises(TokenError, match=r"^tenant token algorithm ed25519 is not accepted here$"):
        hs_verifier().verify(token, now=NOW)


def test_public_key_bytes_as_hmac_secret_do_not_forge_ed25519() -> None:
    """The classic confusion: sign with HMAC keyed by the (public) Ed25519 key."""
    public_raw = ED_KEY.public_key().public_bytes(serialization.Encoding.Raw,
                                                  serialization.PublicFormat.Raw)
    forged = forge_hs256(claims_json(t="victim", exp=NOW + 60), key=public_raw, alg="ed25519")
    with pytest.raises(TokenError):
        ed_verifier().verify(forged, now=NOW)
    relabelled = forge_hs256(claims_json(t="victim", exp=NOW + 60), key=public_raw)
    with pytest.raises(TokenError, match="not accepted here"):
        ed_verifier().verify(relabelled, now=NOW)


def test_changing_the_alg_field_is_rejected() -> None:
    hs = mint_hs256(KEY, "acme", 60, now=NOW)
    ed = mint_ed25519(ED_KEY, "acme", 60, now=NOW)
    verifier = both_verifier()
    with pytest.raises(TokenError):
        verifier.verify(hs.replace(".hs256.", ".ed25519.", 1), now=NOW)
    with pytest.raises(TokenError):
        verifier.verify(ed.replace(".ed25519.", ".hs256.", 1), now=NOW)
    for alg in ("HS256", "none", "rs256", ""):
        with pytest.raises(TokenError, match=r"^tenant token algorithm is not supported$"):
            verifier.verify(hs.replace(".hs256.", f".{alg}.", 1), now=NOW)


def test_key_rotation_accepts_any_configured_key() -> None:
    verifier = hs_verifier(KEY, OTHER_KEY)
    assert verifier.verify(mint_hs256(OTHER_KEY, "new", 60, now=NOW), now=NOW).tenant == "new"
    assert verifier.verify(mint_hs256(KEY, "old", 60, now=NOW), now=NOW).tenant == "old"
    with pytest.raises(TokenError, match="signature"):
        verifier.verify(mint_hs256(b"z" * 32, "stranger", 60, now=NOW), now=NOW)
    ed = ed_verifier(ED_KEY, ED_OTHER)
    assert ed.verify(mint_ed25519(ED_OTHER, "new", 60, now=NOW), now=NOW).tenant == "new"


def test_verifier_construction_checks_keys() -> None:
    with pytest.raises(ValueError, match="at least one key"):
        TokenVerifier()
    with pytest.raises(ValueError, match="at least 32 bytes"):
        TokenVerifier(hmac_keys=[b"short"])
    with pytest.raises(TypeError):
        TokenVerifier(hmac_keys=["a string, not bytes, of more than 32 chars"])  # type: ignore[list-item]
    with pytest.raises(TypeError):
        TokenVerifier(ed25519_public_keys=[ED_KEY])  # type: ignore[list-item]


# --- roles ----------------------------------------------------------------------------------


def test_role_must_match_when_both_sides_name_one() -> None:
    token = mint_hs256(KEY, "acme", 60, now=NOW, role="app")
    assert hs_verifier().verify(token, now=NOW, role="app").role == "app"
    with pytest.raises(TokenError, match=r"^tenant token was issued for a different role$"):
        hs_verifier().verify(token, now=NOW, role="reporting")


def test_role_is_only_checked_when_present_and_expected() -> None:
    unrestricted = mint_hs256(KEY, "acme", 60, now=NOW)
    assert hs_verifier().verify(unrestricted, now=NOW, role="app").role is None
    restricted = mint_hs256(KEY, "acme", 60, now=NOW, role="app")
    assert hs_verifier().verify(restricted, now=NOW).role == "app"


# --- what error messages may say ------------------------------------------------------------


def _refusals() -> list[tuple[TokenVerifier, str]]:
    hs = mint_hs256(KEY, "secret-tenant", 60, now=NOW, role="app")
    ed = mint_ed25519(ED_KEY, "secret-tenant", 60, now=NOW)
    payload = hs.split(".")[2]
    return [
        (hs_verifier(OTHER_KEY), hs),                                 # wrong key
        (hs_verifier(), hs[:-3] + "AAA"),                             # bad signature
        (ed_verifier(), hs),                                          # alg not accepted
        (hs_verifier(), hs.replace("hs256", "Xs256")),                # unknown alg
        (hs_verifier(), hs + "."),                                    # shape
        (hs_verifier(), f"tp1.hs256.{payload}.***"),                 # bad base64
        (hs_verifier(), forge_hs256(b"secret-tenant not json")),      # bad JSON
        (hs_verifier(), forge_hs256(claims_json(t="secret-tenant"))),  # no exp
        (hs_verifier(), mint_hs256(KEY, "secret-tenant", 60, now=NOW - 3600)),  # expired
        (ed_verifier(ED_OTHER), ed),                                  # wrong Ed25519 key
        (hs_verifier(), hs + "A" * MAX_TOKEN_LENGTH),                 # oversized
        (hs_verifier(), hs),                                          # role mismatch
    ]


def test_error_messages_never_echo_the_token_or_the_key() -> None:
    key_forms = [KEY, OTHER_KEY]
    key_texts = [f(k) for k in key_forms for f in (bytes.hex, lambda b: base64.b64encode(b)
                                                    .decode(), b64url, repr)]
    seen = set()
    for verifier, token in _refusals():
        with pytest.raises(TokenError) as caught:
            verifier.verify(token, now=NOW, role="reporting")
        message = str(caught.value)
        seen.add(message)
        assert message and token not in message
        for part in token.split("."):
            if len(part) > 8:
                assert part not in message
        assert "secret-tenant" not in message
        for text in key_texts:
            assert text not in message
        for key in key_forms:
            assert key.decode("latin-1") not in message
    assert len(seen) == 8, seen  # the refusals really are different failures
    assert "secret" not in repr(hs_verifier(KEY, OTHER_KEY))
    assert KEY.hex() not in repr(hs_verifier(KEY)) and repr(KEY) not in repr(hs_verifier(KEY))


def test_oversized_token_is_rejected_before_decoding() -> None:
    token = mint_hs256(KEY, "acme", 60, now=NOW)
    # Not even the prefix is valid: only the length check can produce this message.
    huge = "x" * (MAX_TOKEN_LENGTH + 1)
    with pytest.raises(TokenError, match=f"longer than {MAX_TOKEN_LENGTH} characters"):
        hs_verifier().verify(huge, now=NOW)
    padded_payload = forge_hs256(claims_json(t="acme", exp=NOW + 60, role="r" * 2900))
    assert len(padded_payload) <= MAX_TOKEN_LENGTH
    assert hs_verifier().verify(padded_payload, now=NOW).tenant == "acme"
    with pytest.raises(TokenError, match="longer than"):
        hs_verifier().verify(token + "A" * (MAX_TOKEN_LENGTH + 1 - len(token)), now=NOW)


# --- minting arguments ----------------------------------------------------------------------


@pytest.mark.parametrize("tenant", ["", "x" * 201, "\ud800"])
def test_mint_refuses_tenants_verify_would_refuse(tenant: str) -> None:
    with pytest.raises(ValueError):
        mint_hs256(KEY, tenant, 60, now=NOW)
    with pytest.raises(ValueError):
        mint_ed25519(ED_KEY, tenant, 60, now=NOW)


def test_mint_checks_ttl_key_and_role() -> None:
    for ttl in (0, -5, 1.5, True):
        with pytest.raises(ValueError, match="lifetime"):
            mint_hs256(KEY, "acme", ttl, now=NOW)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="at least 32 bytes"):
        mint_hs256(b"x" * 31, "acme", 60, now=NOW)
    with pytest.raises(ValueError, match="role"):
        mint_hs256(KEY, "acme", 60, now=NOW, role="")
    with pytest.raises(TypeError):
        mint_ed25519(ED_KEY.public_key(), "acme", 60, now=NOW)  # type: ignore[arg-type]


# --- key loading ----------------------------------------------------------------------------


def test_load_hmac_key_forms() -> None:
    raw = bytes(range(32, 72))
    assert load_hmac_key("base64:" + base64.b64encode(raw).decode()) == raw
    assert load_hmac_key("hex:" + raw.hex()) == raw
    assert load_hmac_key("hex:" + raw.hex().upper() + "\n") == raw
    text = "correct horse battery staple, really"
    assert load_hmac_key(text + "\n") == text.encode()
    assert load_hmac_key("ü" * 16) == "ü".encode() * 16  # 32 bytes though 16 characters


@pytest.mark.parametrize("text", [
    "short",
    "x" * 31,
    "base64:" + base64.b64encode(b"x" * 31).decode(),
    "hex:" + (b"x" * 31).hex(),
    "",
])
def test_short_hmac_keys_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match=r"^HMAC key must be at least 32 bytes$"):
        load_hmac_key(text)


@pytest.mark.parametrize("text,message", [
    ("base64:" + "!" * 44, "not valid base64"),
    ("hex:" + "zz" * 32, "not valid hex"),
])
def test_malformed_hmac_keys_are_refused_without_echo(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as caught:
        load_hmac_key(text)
    assert text.split(":")[1] not in str(caught.value)
    assert caught.value.__cause__ is None and caught.value.__suppress_context__


def test_load_ed25519_keys_pem_and_raw() -> None:
    private_pem = ED_KEY.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption())
    public = ED_KEY.public_key()
    public_pem = public.public_bytes(serialization.Encoding.PEM,
                                     serialization.PublicFormat.SubjectPublicKeyInfo)
    public_raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    loaded_private = load_ed25519_private_key(private_pem.decode())
    token = mint_ed25519(loaded_private, "acme", 60, now=NOW)
    for form in (public_pem, public_pem.decode(), base64.b64encode(public_raw).decode() + "\n"):
        verifier = TokenVerifier(ed25519_public_keys=[load_ed25519_public_key(form)])
        assert verifier.verify(token, now=NOW).tenant == "acme"
    assert load_ed25519_private_key(private_pem).public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw) == public_raw


def test_load_ed25519_keys_refuse_other_things() -> None:
    from cryptography.hazmat.primitives.asymmetric import ec

    ec_key = ec.generate_private_key(ec.SECP256R1())
    ec_private_pem = ec_key.private_bytes(serialization.Encoding.PEM,
                                          serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption())
    ec_public_pem = ec_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    with pytest.raises(ValueError, match="not an Ed25519 key"):
        load_ed25519_private_key(ec_private_pem)
    with pytest.raises(ValueError, match="not an Ed25519 key"):
        load_ed25519_public_key(ec_public_pem)
    with pytest.raises(ValueError, match="32 bytes"):
        load_ed25519_public_key(base64.b64encode(b"x" * 31).decode())
    with pytest.raises(ValueError, match="neither PEM nor base64"):
        load_ed25519_public_key("not a key!")
    with pytest.raises(ValueError, match="cannot be read") as caught:
        load_ed25519_private_key(b"-----BEGIN PRIVATE KEY-----\nSECRETSTUFF\n"
                                 b"-----END PRIVATE KEY-----\n")
    assert "SECRETSTUFF" not in str(caught.value)
