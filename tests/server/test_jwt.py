"""JWT client tokens, with no sockets: per claim and per algorithm, algorithm confusion, `none`, malformed and
oversized tokens, the claims a token may carry, the JWKS document's parsing, and the JWKS cache's bounds (a fake
fetcher, so the flood bound is counted without a network)."""

from __future__ import annotations

import base64
import json
from typing import Any

import jwt
import pytest
import trio
import trio.testing
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from hypothesis import given
from hypothesis import strategies as st

from relay.config import Settings
from relay.server.auth import (
    MAX_TOKEN_CHARS,
    Gate,
    KeySet,
    TokenError,
    jwks_keys,
    mint_jwt,
    verify_jwt,
)
from relay.server.jwks import JwksCache

SECRET = "s3cret-for-tests-that-is-long-enough"
NOW = 1_800_000_000.0
RSA = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC = ec.generate_private_key(ec.SECP256R1())
ED = ed25519.Ed25519PrivateKey.generate()


def settings(**values: Any) -> Settings:
    return Settings(_env_file=None, elevenlabs_agent_id="a", elevenlabs_api_key="xi", liveavatar_api_key="la",  # type: ignore[call-arg]
                    liveavatar_avatar_id="00000000-0000-4000-8000-0000000000e2", **values)


def pem(private: Any) -> str:
    return private.public_key().public_bytes(serialization.Encoding.PEM,
                                             serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def claims(**extra: Any) -> dict[str, Any]:
    return {"sub": "user_42", "exp": int(NOW) + 300, "iat": int(NOW), **extra}


def hs(payload: dict[str, Any], secret: str = SECRET, **headers: Any) -> str:
    return jwt.encode(payload, secret, algorithm="HS256", headers=headers or None)


def keyset(**values: Any) -> KeySet:
    return KeySet.from_settings(settings(**values))


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


# ---------------------------------------------------------------------------------------------------- HS256


def test_an_hs256_token_verifies_and_its_sub_is_the_identity() -> None:
    grant = verify_jwt(hs(claims()), keyset(relay_auth_secret=SECRET), now=NOW)
    assert grant.subject == "user_42" and grant.expires == int(NOW) + 300


def test_the_cli_mints_what_the_relay_accepts() -> None:
    token = mint_jwt(SECRET, ttl=60, subject="alice", now=NOW)
    assert jwt.get_unverified_header(token)["alg"] == "HS256"
    assert verify_jwt(token, keyset(relay_auth_secret=SECRET), now=NOW + 59).subject == "alice"


def test_exp_is_required() -> None:
    with pytest.raises(TokenError, match="exp"):
        verify_jwt(hs({"sub": "x"}), keyset(relay_auth_secret=SECRET), now=NOW)


@pytest.mark.parametrize(("leeway", "offset", "ok"), [(0, 0, False), (0, -1, True), (30, 29, True), (30, 30, False)])
def test_expiry_honours_the_leeway(leeway: float, offset: int, ok: bool) -> None:
    token = hs(claims(exp=int(NOW), iat=int(NOW) - 100))
    keys = keyset(relay_auth_secret=SECRET, relay_auth_leeway=leeway)
    if ok:
        verify_jwt(token, keys, now=NOW + offset)
    else:
        with pytest.raises(TokenError, match="expired"):
            verify_jwt(token, keys, now=NOW + offset)


@pytest.mark.parametrize("claim", ["nbf", "iat"])
def test_a_token_not_yet_valid_is_refused_beyond_the_leeway(claim: str) -> None:
    keys = keyset(relay_auth_secret=SECRET, relay_auth_leeway=10)
    verify_jwt(hs(claims(**{claim: int(NOW) + 10})), keys, now=NOW)
    with pytest.raises(TokenError, match="not valid yet"):
        verify_jwt(hs(claims(**{claim: int(NOW) + 11})), keys, now=NOW)


def test_issuer_and_audience_are_checked_when_set() -> None:
    keys = keyset(relay_auth_secret=SECRET, relay_auth_issuer="https://id.example/", relay_auth_audience="relay")
    verify_jwt(hs(claims(iss="https://id.example/", aud="relay")), keys, now=NOW)
    verify_jwt(hs(claims(iss="https://id.example/", aud=["other", "relay"])), keys, now=NOW)
    with pytest.raises(TokenError, match="issuer"):
        verify_jwt(hs(claims(iss="https://evil.example/", aud="relay")), keys, now=NOW)
    with pytest.raises(TokenError, match="issuer"):
        verify_jwt(hs(claims(aud="relay")), keys, now=NOW)
    with pytest.raises(TokenError, match="audience"):
        verify_jwt(hs(claims(iss="https://id.example/", aud="other")), keys, now=NOW)
    with pytest.raises(TokenError, match="audience"):
        verify_jwt(hs(claims(iss="https://id.example/")), keys, now=NOW)
    # unset: not checked
    verify_jwt(hs(claims(iss="anyone", aud="anything")), keyset(relay_auth_secret=SECRET), now=NOW)


def test_a_token_signed_with_another_secret_is_refused() -> None:
    with pytest.raises(TokenError, match="not valid"):
        verify_jwt(hs(claims(), secret="another-secret-of-enough-length!!"), keyset(relay_auth_secret=SECRET), now=NOW)


# ---------------------------------------------------------------------------------------------------- public keys


@pytest.mark.parametrize(("private", "alg"), [(RSA, "RS256"), (EC, "ES256"), (ED, "EdDSA")])
def test_public_key_algorithms_verify_with_a_static_key(private: Any, alg: str) -> None:
    token = jwt.encode(claims(), private, algorithm=alg)
    assert verify_jwt(token, keyset(relay_auth_public_key=pem(private)), now=NOW).subject == "user_42"
    other = {"RS256": rsa.generate_private_key(public_exponent=65537, key_size=2048),
             "ES256": ec.generate_private_key(ec.SECP256R1()), "EdDSA": ed25519.Ed25519PrivateKey.generate()}[alg]
    with pytest.raises(TokenError, match="not valid"):
        verify_jwt(jwt.encode(claims(), other, algorithm=alg), keyset(relay_auth_public_key=pem(private)), now=NOW)


def test_algorithm_confusion_hs256_signed_with_the_public_key_is_refused() -> None:
    public = pem(RSA)
    header = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = b64(json.dumps(claims()).encode())
    import hashlib
    import hmac
    signature = b64(hmac.new(public.encode(), f"{header}.{body}".encode(), hashlib.sha256).digest())
    with pytest.raises(TokenError):
        verify_jwt(f"{header}.{body}.{signature}", keyset(relay_auth_public_key=public), now=NOW)
    # nor with both a secret and a public key configured: HS256 checks against the secret only
    with pytest.raises(TokenError):
        verify_jwt(f"{header}.{body}.{signature}", keyset(relay_auth_public_key=public, relay_auth_secret=SECRET),
                   now=NOW)


def test_a_key_of_one_type_never_verifies_another_algorithm() -> None:
    token = jwt.encode(claims(), RSA, algorithm="PS256")
    with pytest.raises(TokenError, match="algorithm"):
        verify_jwt(token, keyset(relay_auth_public_key=pem(RSA)), now=NOW)
    with pytest.raises(TokenError, match="algorithm"):
        verify_jwt(hs(claims()), keyset(relay_auth_public_key=pem(RSA)), now=NOW)  # no secret configured


@pytest.mark.parametrize("alg", ["none", "None", "NONE"])
def test_alg_none_is_refused(alg: str) -> None:
    header = b64(json.dumps({"alg": alg, "typ": "JWT"}).encode())
    body = b64(json.dumps(claims()).encode())
    for token in (f"{header}.{body}.", f"{header}.{body}"):
        with pytest.raises(TokenError):
            verify_jwt(token, keyset(relay_auth_secret=SECRET, relay_auth_public_key=pem(RSA)), now=NOW)


@pytest.mark.parametrize("token", ["", "a.b.c", "x" * 50, "eyJ.eyJ.sig", "...", "a.b.c.d.e", "é.é.é",
                                   b64(b"[1]") + "." + b64(b"{}") + ".sig",
                                   b64(b'{"alg":"HS256"}') + "." + b64(b"[1,2]") + ".sig",
                                   b64(b'{"alg":"HS256"}') + "." + b64(b"not json") + ".sig"])
def test_malformed_tokens_are_refused(token: str) -> None:
    with pytest.raises(TokenError):
        verify_jwt(token, keyset(relay_auth_secret=SECRET), now=NOW)


def test_oversized_tokens_are_refused_before_decoding() -> None:
    token = hs(claims(padding="x" * MAX_TOKEN_CHARS))
    with pytest.raises(TokenError, match="too long"):
        verify_jwt(token, keyset(relay_auth_secret=SECRET), now=NOW)


def test_errors_never_echo_the_token() -> None:
    for token in (hs(claims(), secret="another-secret-of-enough-length!!"), hs(claims(exp=1)), "garbage.x.y"):
        with pytest.raises(TokenError) as info:
            verify_jwt(token, keyset(relay_auth_secret=SECRET), now=NOW)
        assert token not in str(info.value) and SECRET not in str(info.value)


@given(st.text(max_size=600))
def test_no_string_crashes_the_verifier(token: str) -> None:
    with pytest.raises(TokenError):
        verify_jwt(token, keyset(relay_auth_secret=SECRET), now=NOW)


# ---------------------------------------------------------------------------------------------------- claims


def test_sub_is_checked_for_a_usable_identity() -> None:
    keys = keyset(relay_auth_secret=SECRET)
    assert verify_jwt(hs(claims(sub="auth0|64f1c2")), keys, now=NOW).subject == "auth0|64f1c2"
    assert verify_jwt(hs(claims(sub=None)), keys, now=NOW).subject == ""
    for bad in ("x" * 200, "a b", "line\nbreak", 42):
        with pytest.raises(TokenError, match="sub"):
            verify_jwt(hs(claims(sub=bad)), keys, now=NOW)


def test_relay_claims_cap_the_duration_and_forbid_overrides() -> None:
    keys = keyset(relay_auth_secret=SECRET)
    default = verify_jwt(hs(claims()), keys, now=NOW)
    assert default.max_duration is None and default.overrides
    capped = verify_jwt(hs(claims(relay_max_duration=120, relay_overrides=False)), keys, now=NOW)
    assert capped.max_duration == 120 and not capped.overrides
    for bad in ({"relay_max_duration": 0}, {"relay_max_duration": "long"}, {"relay_overrides": "no"}):
        with pytest.raises(TokenError, match="relay_"):
            verify_jwt(hs(claims(**bad)), keys, now=NOW)


# ---------------------------------------------------------------------------------------------------- JWKS


def jwk(private: Any, kid: str, **extra: Any) -> dict[str, Any]:
    alg = {rsa.RSAPrivateKey: "RS256", ec.EllipticCurvePrivateKey: "ES256",
           ed25519.Ed25519PrivateKey: "EdDSA"}
    algorithm = next(a for t, a in alg.items() if isinstance(private, t))
    data = json.loads(jwt.get_algorithm_by_name(algorithm).to_jwk(private.public_key()))
    return {**data, "kid": kid, **extra}


def test_a_jwks_document_gives_its_signing_keys_by_kid() -> None:
    doc = {"keys": [jwk(RSA, "r1"), jwk(EC, "e1"), jwk(ED, "d1"), jwk(RSA, "enc", use="enc"),
                    {"kty": "oct", "k": b64(b"secret"), "kid": "sym"}, {"kty": "weird", "kid": "w"},
                    jwk(RSA, "mismatch", alg="HS256")]}
    keys = jwks_keys(json.dumps(doc).encode())
    assert set(keys) == {"r1", "e1", "d1"}
    for bad in (b"not json", b"[]", b'{"keys": 5}', b"{}"):
        with pytest.raises(ValueError):
            jwks_keys(bad)


async def test_jwks_tokens_verify_through_the_cache_and_a_flood_of_forged_kids_fetches_a_bounded_number(
        mock_clock: trio.testing.MockClock) -> None:
    mock_clock.autojump_threshold = 0
    fetches: list[float] = []
    document = {"keys": [jwk(EC, "k1")]}

    async def fetch() -> bytes:
        fetches.append(trio.current_time())
        await trio.sleep(0.05)
        return json.dumps(document).encode()

    cache = JwksCache(fetch, min_interval=60.0, max_age=3600.0, fetch_timeout=5.0)
    gate = Gate(settings(relay_auth_jwks_url="https://id.example/.well-known/jwks.json"), jwks=cache,
                clock=lambda: NOW)
    good = jwt.encode(claims(exp=2**40), EC, algorithm="ES256", headers={"kid": "k1"})
    assert (await gate.verify(good)).subject == "user_42"
    assert len(fetches) == 1

    refused = 0
    mock_clock.jump(61)  # past the interval: the flood may cause one refresh, and only one

    async def forged(i: int) -> None:
        nonlocal refused
        token = jwt.encode(claims(exp=2**40), EC, algorithm="ES256", headers={"kid": f"forged-{i}"})
        try:
            await gate.verify(token)
        except TokenError as exc:
            assert "forged" not in str(exc)
            refused += 1

    async with trio.open_nursery() as nursery:
        for i in range(200):
            nursery.start_soon(forged, i)
        assert (await gate.verify(good)).subject == "user_42"  # a known kid never waits for the flood
    assert refused == 200
    assert len(fetches) == 2  # one refresh for the whole flood, then rate limited
