"""The edges around authentication, with no sockets: the Origin allow-list is an exact match (not a prefix), and the
JWKS cache's keys go stale after `max_age`, so a key the identity provider withdrew stops verifying (autojump clock).
"""

from __future__ import annotations

import json
from typing import Any

import jwt
import pytest
import trio
import trio.testing
from cryptography.hazmat.primitives.asymmetric import ec

from relay.config import Settings
from relay.server.auth import Gate, TokenError, allowed_origins, jwks_keys, origin_allowed
from relay.server.jwks import JwksCache

NOW = 1_800_000_000.0
OLD = ec.generate_private_key(ec.SECP256R1())
NEW = ec.generate_private_key(ec.SECP256R1())


def settings(**values: Any) -> Settings:
    return Settings(_env_file=None, elevenlabs_agent_id="a", elevenlabs_api_key="xi", liveavatar_api_key="la",  # type: ignore[call-arg]
                    liveavatar_avatar_id="00000000-0000-4000-8000-0000000000e2", **values)


@pytest.mark.parametrize("origin", [
    "https://shop.example.evil.net",  # the listed origin as a prefix of another host
    "https://shop.example:8443",  # another port of the listed host
    "https://shop.examplex",
    "http://shop.example",  # another scheme
    "https://evil.net/https://shop.example",
])
def test_the_origin_allow_list_is_an_exact_match_not_a_prefix(origin: str) -> None:
    allowed = allowed_origins(settings(relay_allowed_origins="https://shop.example"))
    assert origin_allowed("https://shop.example", "relay.example", allowed)
    assert not origin_allowed(origin, "relay.example", allowed)


def jwk(private: Any, kid: str) -> dict[str, Any]:
    return {**json.loads(jwt.get_algorithm_by_name("ES256").to_jwk(private.public_key())), "kid": kid}


def token(private: Any, kid: str) -> str:
    return jwt.encode({"sub": "user_42", "exp": 2**40, "iat": int(NOW)}, private, algorithm="ES256",
                      headers={"kid": kid})


async def test_a_key_withdrawn_from_the_jwks_stops_verifying_once_the_cache_is_max_age_old(
        autojump_clock: trio.testing.MockClock) -> None:
    document = {"keys": [jwk(OLD, "old"), jwk(NEW, "new")]}

    async def fetch() -> bytes:
        return json.dumps(document).encode()

    assert set(jwks_keys(json.dumps(document).encode())) == {"old", "new"}
    cache = JwksCache(fetch, min_interval=1.0, max_age=60.0, fetch_timeout=5.0)
    gate = Gate(settings(relay_auth_jwks_url="https://id.example/.well-known/jwks.json"), jwks=cache,
                clock=lambda: NOW)
    await trio.sleep(100.0)  # the relay has been up a while before the first token
    fetched_at = trio.current_time()
    assert (await gate.verify(token(OLD, "old"))).subject == "user_42"
    document = {"keys": [jwk(NEW, "new")]}  # the provider withdraws the old key

    await trio.sleep_until(fetched_at + 59.9)  # within max_age the cached set is still trusted, not fetched again
    assert (await gate.verify(token(OLD, "old"))).subject == "user_42"
    assert cache.fetches == 1
    await trio.sleep_until(fetched_at + 60.0)  # max_age old: the next token refreshes the set
    with pytest.raises(TokenError):
        await gate.verify(token(OLD, "old"))
    assert (await gate.verify(token(NEW, "new"))).subject == "user_42"
    assert cache.fetches == 2


async def test_a_token_without_kid_verifies_only_against_a_set_of_one_key(
        autojump_clock: trio.testing.MockClock) -> None:
    def no_kid(private: Any) -> str:
        return jwt.encode({"sub": "user_42", "exp": 2**40, "iat": int(NOW)}, private, algorithm="ES256")

    for keys, ok in (([jwk(OLD, "only")], True), ([jwk(OLD, "a"), jwk(NEW, "b")], False)):
        document = json.dumps({"keys": keys}).encode()

        async def fetch(document: bytes = document) -> bytes:
            return document

        gate = Gate(settings(relay_auth_jwks_url="https://id.example/.well-known/jwks.json"),
                    jwks=JwksCache(fetch, min_interval=1.0, max_age=60.0, fetch_timeout=5.0), clock=lambda: NOW)
        if ok:
            assert (await gate.verify(no_kid(OLD))).subject == "user_42"
        else:
            with pytest.raises(TokenError):  # which key? none is guessed
                await gate.verify(no_kid(OLD))
