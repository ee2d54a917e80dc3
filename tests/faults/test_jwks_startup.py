"""RELAY_AUTH=token with a JWKS that cannot be fetched at start-up: the relay starts, `/readyz` answers 503 and says
why (the URL and the error) instead of every browser getting `unauthorized` with no hint, one WARNING line names the
URL and the error, and the relay becomes ready by itself once the identity provider answers."""

from __future__ import annotations

import logging
import threading

import pytest
import trio
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.faults.matrix import running_fault_relay
from tests.faults.test_jwt_auth import Provider, converse, jwks_settings
from tests.support.httpserver import answering


@pytest.mark.timeout(60)
async def test_a_jwks_that_cannot_be_fetched_makes_the_relay_not_ready_and_says_why() -> None:
    provider = Provider()
    provider.add_key("k1", rsa.generate_private_key(public_exponent=65537, key_size=2048))
    broken = threading.Event()
    broken.set()

    def answer() -> tuple[str, bytes]:
        return ("text/html", b"<html>maintenance</html>") if broken.is_set() else \
            ("application/json", provider.document())

    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.INFO)
    handler.emit = records.append  # type: ignore[method-assign]
    logging.getLogger("relay.server.jwks").addHandler(handler)  # the relay's loggers do not propagate to caplog
    with answering(answer) as port, trio.fail_after(45):
        url = f"http://127.0.0.1:{port}/.well-known/jwks.json"
        async with running_fault_relay(**jwks_settings(url)) as relay:
            while True:  # the first fetch is under way at start-up
                answer_ = await relay.http.get(relay.url + "/readyz")
                if "why" in answer_.json():
                    break
                await trio.sleep(0.02)
            body = answer_.json()
            assert answer_.status_code == 503 and body["checks"]["jwks"] is False and body["ready"] is False
            assert url in body["why"]["jwks"] and "ValueError" in body["why"]["jwks"]
            broken.clear()  # the identity provider is back: the relay retries by itself
            while (await relay.http.get(relay.url + "/readyz")).status_code != 200:
                await trio.sleep(0.05)
            assert "why" not in (await relay.http.get(relay.url + "/readyz")).json()
            await converse(relay, provider.token("k1"))
    logging.getLogger("relay.server.jwks").removeHandler(handler)
    warnings = [r.getMessage() for r in records if r.levelno == logging.WARNING and "JWKS" in r.getMessage()]
    assert len(warnings) == 1, warnings
    assert url in warnings[0] and "ValueError" in warnings[0]


@pytest.mark.timeout(60)
async def test_without_tokens_required_an_unreachable_jwks_does_not_make_the_relay_unready() -> None:
    with answering(lambda: ("text/html", b"down")) as port, trio.fail_after(45):
        url = f"http://127.0.0.1:{port}/jwks.json"
        async with running_fault_relay(**jwks_settings(url, relay_auth="off")) as relay:
            answer_ = await relay.http.get(relay.url + "/readyz")
            assert answer_.status_code == 200 and "jwks" not in answer_.json()["checks"]
