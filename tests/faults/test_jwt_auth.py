"""JWT client tokens on a real relay, with an identity provider's JWKS served on loopback: its key rotates mid-run
(old tokens verify until they expire, the new `kid` is fetched once), a flood of forged `kid`s makes a bounded
number of JWKS requests and never stalls a conversation, and no refused token causes an upstream call (the
simulators' ledgers). Also: the page's security headers on every page and static file."""

from __future__ import annotations

import json
import secrets
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import jwt
import pytest
import trio
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from trio_websocket import ConnectionRejected, open_websocket_url

from tests.faults.matrix import FaultRelay, running_fault_relay
from tests.faults.test_security import close_code
from tests.support.harness import BrowserClient
from tests.support.httpserver import answering

ISSUER = "https://id.example/"
AUDIENCE = "avatar-relay"


class Provider:
    """A JWKS endpoint: the public keys published, and how many times it was asked."""

    def __init__(self) -> None:
        self.private: dict[str, Any] = {}
        self.published: list[str] = []
        self.requests = 0
        self.lock = threading.Lock()

    def add_key(self, kid: str, private: Any) -> None:
        self.private[kid] = private
        self.published.insert(0, kid)

    def document(self) -> bytes:
        keys = []
        for kid in self.published:
            private = self.private[kid]
            algorithm = "RS256" if isinstance(private, rsa.RSAPrivateKey) else "ES256"
            keys.append({**json.loads(jwt.get_algorithm_by_name(algorithm).to_jwk(private.public_key())),
                         "kid": kid, "use": "sig", "alg": algorithm})
        return json.dumps({"keys": keys}).encode()

    def token(self, kid: str, ttl: int = 300, **claims: Any) -> str:
        private = self.private[kid]
        algorithm = "RS256" if isinstance(private, rsa.RSAPrivateKey) else "ES256"
        now = int(time.time())
        payload = {"sub": "auth0|user-1", "iss": ISSUER, "aud": AUDIENCE, "iat": now, "exp": now + ttl,
                   "jti": secrets.token_hex(8), **claims}  # each token buys one conversation: one per try
        return jwt.encode(payload, private, algorithm=algorithm, headers={"kid": kid})


@contextmanager
def serving(provider: Provider) -> Iterator[str]:
    """`provider`'s JWKS document at an HTTP URL on loopback, each request counted."""
    def answer() -> tuple[str, bytes]:
        with provider.lock:
            provider.requests += 1
            return "application/json", provider.document()

    with answering(answer) as port:
        yield f"http://127.0.0.1:{port}/.well-known/jwks.json"


def jwks_settings(url: str, **extra: Any) -> dict[str, Any]:
    return {"relay_auth": "token", "relay_auth_jwks_url": url, "relay_auth_issuer": ISSUER,
            "relay_auth_audience": AUDIENCE, "relay_auth_jwks_min_interval": 3600.0,
            "relay_max_starts_per_minute": 1000, **extra}


async def upstream_calls(relay: FaultRelay) -> int:
    agent = await relay.ledger("elevenlabs")
    avatar = await relay.ledger("heygen")
    return len(agent["conversations"]) + sum(avatar.get("requests", {}).values())


async def converse(relay: FaultRelay, token: str) -> None:
    async with relay.browser() as browser:
        assert (await browser.start(token=token))["type"] == "ready"
        await browser.send(type="stop")
        await browser.expect("ended")


async def refused_at_handshake(relay: FaultRelay, token: str) -> int:
    with pytest.raises(ConnectionRejected) as refused:
        async with open_websocket_url(relay.ws_url + "?token=" + token):
            pass
    return int(refused.value.status_code)


@pytest.mark.timeout(90)
async def test_the_providers_key_rotates_mid_run() -> None:
    provider = Provider()
    provider.add_key("old", rsa.generate_private_key(public_exponent=65537, key_size=2048))
    with serving(provider) as url, trio.fail_after(60):
        async with running_fault_relay(**jwks_settings(url, relay_auth_jwks_min_interval=1.0)) as relay:
            old_token = provider.token("old")
            await converse(relay, old_token)
            assert provider.requests == 1
            provider.add_key("new", ec.generate_private_key(ec.SECP256R1()))  # rotation: both published
            # A new kid within RELAY_AUTH_JWKS_MIN_INTERVAL of the last fetch waits for the interval (refused meanwhile)
            while True:
                try:
                    async with open_websocket_url(relay.ws_url + "?token=" + provider.token("new")):
                        break
                except ConnectionRejected as refused:
                    assert refused.status_code == 401
                    await trio.sleep(0.1)
            for _ in range(3):
                await converse(relay, provider.token("new"))
            assert provider.requests == 2  # the new kid, fetched once
            await converse(relay, provider.token("old"))  # the old key still verifies until it is unpublished
            async with open_websocket_url(relay.ws_url + "?token=" + provider.token("new")) as ws:
                assert (await BrowserClient(ws).start())["type"] == "ready"
            assert provider.requests == 2


@pytest.mark.timeout(90)
async def test_a_flood_of_forged_kids_makes_a_bounded_number_of_jwks_requests_and_stalls_no_one() -> None:
    provider = Provider()
    provider.add_key("k1", ec.generate_private_key(ec.SECP256R1()))
    forger = ec.generate_private_key(ec.SECP256R1())
    with serving(provider) as url, trio.fail_after(60):
        async with running_fault_relay(**jwks_settings(url)) as relay:
            await converse(relay, provider.token("k1"))
            statuses: list[int] = []

            async def forged(i: int) -> None:
                token = jwt.encode({"sub": f"x{i}", "iss": ISSUER, "aud": AUDIENCE, "exp": int(time.time()) + 60},
                                   forger, algorithm="ES256", headers={"kid": f"forged-{i}"})
                statuses.append(await refused_at_handshake(relay, token))

            async with trio.open_nursery() as nursery:
                for i in range(60):
                    nursery.start_soon(forged, i)
                await converse(relay, provider.token("k1"))  # during the flood
            assert statuses == [401] * 60
            assert provider.requests == 1  # the first token's fetch; the flood is within the interval


@pytest.mark.timeout(90)
async def test_intruders_never_cause_an_upstream_call() -> None:
    provider = Provider()
    provider.add_key("k1", rsa.generate_private_key(public_exponent=65537, key_size=2048))
    stranger = Provider()
    stranger.add_key("k1", rsa.generate_private_key(public_exponent=65537, key_size=2048))
    secret = "hs256-secret-for-tests-0123456789abcdef"
    with serving(provider) as url, trio.fail_after(60):
        async with running_fault_relay(**jwks_settings(url, relay_auth_secret=secret)) as relay:
            now = int(time.time())
            intruders = [
                stranger.token("k1"),  # another key, same kid
                provider.token("k1", ttl=-60),  # expired
                provider.token("k1", nbf=now + 600),  # not valid yet
                provider.token("k1", iss="https://evil.example/"),
                provider.token("k1", aud="someone-else"),
                jwt.encode({"sub": "x", "exp": now + 60, "iss": ISSUER, "aud": AUDIENCE},
                           "wrong-secret-0123456789abcdef0123", algorithm="HS256"),
                jwt.encode({"sub": "x", "exp": now + 60}, None, algorithm="none"),
                "not-a-token",
                "x" * 5000,
            ]
            for token in intruders:
                async with relay.browser() as browser:
                    await browser.send(type="start", token=token)
                    error = await browser.expect("error")
                    assert error["code"] == "unauthorized" and token not in error["message"]
                    assert await close_code(browser) == 1008
                assert await refused_at_handshake(relay, token[:4000]) == 401
            assert await upstream_calls(relay) == 0
            # what a token may do: no overrides
            async with relay.browser() as browser:
                await browser.send(type="start", token=provider.token("k1", relay_overrides=False),
                                   overrides={"agent": {"first_message": "hi"}})
                assert (await browser.expect("error"))["code"] == "unauthorized"
            assert await upstream_calls(relay) == 0
            await converse(relay, provider.token("k1"))
            await converse(relay, jwt.encode({"sub": "u", "exp": now + 60, "iss": ISSUER, "aud": AUDIENCE}, secret,
                                             algorithm="HS256"))


@pytest.mark.timeout(90)
async def test_sub_is_the_client_for_the_per_client_cap_and_claims_limit_the_conversation() -> None:
    provider = Provider()
    provider.add_key("k1", ec.generate_private_key(ec.SECP256R1()))
    with serving(provider) as url, trio.fail_after(60):
        async with running_fault_relay(**jwks_settings(url, relay_max_conversations_per_client=1)) as relay:
            alice = provider.token("k1", sub="alice")
            async with open_websocket_url(relay.ws_url + "?token=" + alice) as first:
                assert (await BrowserClient(first).start())["type"] == "ready"
                # same address, another user: a conversation of its own (in `start`, moved to its sub)
                async with relay.browser() as bob:
                    assert (await bob.start(token=provider.token("k1", sub="bob")))["type"] == "ready"
                    # the same user again, from the handshake and from `start`: over its cap of one
                    async with open_websocket_url(relay.ws_url + "?token=" + alice) as again:
                        client = BrowserClient(again)
                        await client.send(type="start")
                        error = await client.expect("error")
                        assert error["code"] == "capacity" and "for this user" in error["message"]
                    async with relay.browser() as again:
                        await again.send(type="start", token=alice)
                        error = await again.expect("error")
                        assert error == {"type": "error", "code": "capacity",
                                         "message": "too many conversations for this user; try again later"}
                        assert await close_code(again) == 1013
            async with relay.browser() as short:
                await short.start(token=provider.token("k1", sub="carol", relay_max_duration=0.5))
                error = await short.expect("error")
                assert error["code"] == "timeout" and "maximum conversation duration" in error["message"]


@pytest.mark.timeout(60)
async def test_every_page_and_static_file_carries_the_security_headers() -> None:
    async with running_fault_relay(relay_frame_ancestors="'self' https://shop.example") as relay:
        for path in ("/", "/static/app.js", "/static/widget.css", "/static/capture-worklet.js", "/client-config.json",
                     "/static/missing.js"):
            headers = (await relay.http.get(relay.url + path)).headers
            assert "frame-ancestors 'self' https://shop.example" in headers["content-security-policy"], path
            assert headers["x-content-type-options"] == "nosniff", path
            assert headers["referrer-policy"] == "no-referrer", path
            assert headers["permissions-policy"].startswith('microphone=(self "https://shop.example")'), path
