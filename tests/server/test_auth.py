"""Client tokens, the Origin allow-list, the client address behind a proxy and the handshake gate, with no sockets."""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relay.config import Settings
from relay.server.auth import (
    Gate,
    TokenError,
    allowed_origins,
    auth_problem,
    auth_required,
    client_address,
    mint_jwt,
    mint_token,
    origin_allowed,
    verify_token,
)

SECRET = "s3cret-for-tests"
NOW = 1_800_000_000.0


def settings(**values: Any) -> Settings:
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


def real_keys(**values: Any) -> Settings:
    return settings(elevenlabs_agent_id="a", elevenlabs_api_key="xi", liveavatar_api_key="la",
                    liveavatar_avatar_id="00000000-0000-4000-8000-0000000000e2", **values)


def test_a_minted_token_verifies_until_it_expires() -> None:
    token = mint_token(SECRET, ttl=60, subject="user_42", now=NOW)
    claims = verify_token(SECRET, token, now=NOW + 59)
    assert claims.subject == "user_42" and claims.expires == int(NOW + 60)
    with pytest.raises(TokenError, match="expired"):
        verify_token(SECRET, token, now=NOW + 60)


def test_the_documented_format_is_what_a_website_backend_computes_by_hand() -> None:
    expires = int(NOW) + 300
    payload = f"v1.{expires}.alice"
    signature = base64.urlsafe_b64encode(hmac.new(SECRET.encode(), payload.encode(), hashlib.sha256).digest())
    token = payload + "." + signature.rstrip(b"=").decode()
    assert token == mint_token(SECRET, ttl=300, subject="alice", now=NOW)
    assert verify_token(SECRET, token, now=NOW).subject == "alice"


@pytest.mark.parametrize("mutate", [
    lambda t: t[:-1] + ("A" if t[-1] != "A" else "B"),  # signature changed
    lambda t: t.replace(".alice.", ".bob."),  # subject changed
    lambda t: "v1." + str(int(t.split(".")[1]) + 3600) + t[t.index(".", 3):],  # expiry extended
    lambda t: "v2" + t[2:],  # unknown version
    lambda t: t + ".extra",
    lambda t: "",
    lambda t: "x" * 5000,
    lambda t: "v1.123.ä.sig",
])
def test_tampered_or_malformed_tokens_are_refused(mutate: Any) -> None:
    token = mint_token(SECRET, ttl=300, subject="alice", now=NOW)
    with pytest.raises(TokenError):
        verify_token(SECRET, mutate(token), now=NOW)


def test_a_token_signed_with_another_secret_is_refused() -> None:
    with pytest.raises(TokenError, match="not valid"):
        verify_token(SECRET, mint_token("other", now=NOW), now=NOW)


def test_token_errors_never_echo_the_token_or_the_secret() -> None:
    token = mint_token("other", now=NOW)
    with pytest.raises(TokenError) as info:
        verify_token(SECRET, token, now=NOW)
    assert token not in str(info.value) and SECRET not in str(info.value)


@given(st.text(max_size=300))
def test_no_string_crashes_the_verifier(token: str) -> None:
    with pytest.raises(TokenError):
        verify_token(SECRET, token, now=NOW)


def test_auth_is_off_in_demo_mode_and_required_with_real_keys() -> None:
    assert not auth_required(settings())
    assert auth_required(real_keys())
    assert auth_problem(real_keys()) is not None and "RELAY_AUTH_SECRET" in (auth_problem(real_keys()) or "")
    assert auth_problem(real_keys(relay_auth_secret="x")) is None
    assert auth_problem(real_keys(relay_auth="off")) is None
    assert auth_required(settings(relay_auth="token"))


def test_origin_allow_list() -> None:
    allowed = allowed_origins(settings(relay_allowed_origins="https://shop.example, https://www.shop.example/"))
    assert origin_allowed("https://shop.example", "relay.example:443", allowed)
    assert origin_allowed("https://WWW.shop.example", "relay.example", allowed)
    assert not origin_allowed("https://evil.example", "relay.example", allowed)
    assert not origin_allowed("null", "relay.example", allowed)
    assert origin_allowed("http://relay.example:8000", "relay.example:8000", allowed)  # the relay's own page
    assert origin_allowed("https://relay.example", "relay.example", allowed, "https")  # a trusted proxy said https
    assert not origin_allowed("http://relay.example", "relay.example", allowed, "https")
    assert origin_allowed(None, "relay.example", allowed)  # not a browser
    assert origin_allowed("https://evil.example", "relay.example", frozenset({"*"}))


def test_forwarded_for_is_used_only_behind_a_trusted_proxy() -> None:
    header = "6.6.6.6, 203.0.113.7"
    proxy = (ipaddress.ip_network("10.0.0.2/32"),)
    assert client_address("10.0.0.2", header) == "10.0.0.2"
    assert client_address("10.0.0.2", header, proxies=proxy) == "203.0.113.7"
    assert client_address("10.0.0.9", header, proxies=proxy) == "10.0.0.9"  # not the proxy: its header is ignored
    assert client_address("10.0.0.2", None, proxies=proxy) == "10.0.0.2"
    assert client_address(None, None) == "unknown"


async def test_gate_refuses_bad_origin_then_bad_handshake_token_and_defers_to_start() -> None:
    gate = Gate(real_keys(relay_auth_secret=SECRET, relay_max_starts_per_minute=3))
    common: dict[str, Any] = {"host": "relay.example", "remote_addr": "1.2.3.4", "forwarded_for": None, "now": 0.0}
    assert (await gate.check_handshake(origin="https://evil.example", query_token=None, **common)).refuse_status == 403
    assert (await gate.check_handshake(origin=None, query_token="v1.1.x.y", **common)).refuse_status == 401
    deferred = await gate.check_handshake(origin=None, query_token=None, **common)
    assert deferred.refuse_status is None and deferred.check_start
    with pytest.raises(TokenError, match="a client token is required"):
        await gate.verify(None)
    assert (await gate.verify(mint_token(SECRET))).subject == ""  # the deprecated format, still accepted
    long_secret = SECRET * 3  # HS256 keys are at least 32 bytes (PyJWT warns otherwise)
    gate = Gate(real_keys(relay_auth_secret=long_secret, relay_max_starts_per_minute=3))
    assert (await gate.verify(mint_jwt(long_secret, subject="u1"))).subject == "u1"
    accepted = await gate.check_handshake(origin=None, query_token=mint_jwt(long_secret, subject="u1"), **common)
    assert accepted.client == "sub:u1" and accepted.claims is not None and not accepted.check_start
    await gate.check_handshake(origin=None, query_token=None, **common)
    await gate.check_handshake(origin=None, query_token=None, **common)
    over = await gate.check_handshake(origin=None, query_token=mint_token(long_secret), **common)
    assert over.over_rate and over.claims is None


async def test_the_deprecated_format_can_be_switched_off() -> None:
    gate = Gate(real_keys(relay_auth_secret=SECRET, relay_auth_v1=False))
    with pytest.raises(TokenError, match="not valid"):
        await gate.verify(mint_token(SECRET))


async def test_gate_in_demo_mode_checks_no_token() -> None:
    decision = await Gate(settings()).check_handshake(origin=None, host="h", remote_addr="1.2.3.4",
                                                      forwarded_for=None, query_token="garbage", now=0.0)
    assert decision.refuse_status is None and not decision.check_start and decision.claims is None
