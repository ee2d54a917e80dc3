"""The way in, without sockets: a socket's `start` is read and its token verified while it holds only a pre-start
slot; the slots are capped per client and in all (the oldest waiting socket makes room); IPv6 clients count per
/64. (The same on a real relay process: tests/faults/test_attacks.py.)"""

from __future__ import annotations

from typing import Any

import pytest
import trio

from relay.nursery import Upstreams
from relay.server.admission import AdmissionRefused
from relay.server.auth import Gate, HandshakeDecision, client_address, mint_jwt
from relay.server.opening import read_opening
from relay.server.pending import PendingPool
from tests.support.fakes import FakeBrowser, make_settings

SECRET = "opening-tests-secret-0123456789abcdef"


def upstreams(**settings: Any) -> Upstreams:
    return Upstreams(settings=make_settings(**settings), http=None, provider=None)  # type: ignore[arg-type]


def token_gate() -> Gate:
    return Gate(make_settings(relay_auth="token", relay_auth_secret=SECRET))


async def test_a_refused_token_is_refused_before_the_conversation_exists() -> None:
    browser = FakeBrowser()
    pending = PendingPool(4, 4)
    await browser.send_json(type="start", token="forged")
    with pytest.raises(Exception, match="malformed") as refused:
        await read_opening(browser, HandshakeDecision("10.0.0.1", check_start=True), token_gate(), pending,
                           upstreams())
    assert getattr(refused.value, "error", None) == "unauthorized"
    assert pending.waiting == 0


async def test_an_accepted_token_names_the_client_by_its_subject() -> None:
    browser = FakeBrowser()
    await browser.send_json(type="start", token=mint_jwt(SECRET, subject="alice"))
    opening = await read_opening(browser, HandshakeDecision("10.0.0.1", check_start=True), token_gate(),
                                 PendingPool(4, 4), upstreams())
    assert opening.client == "sub:alice" and opening.claims is not None


async def test_a_socket_that_never_starts_times_out_with_its_own_short_timeout(
        autojump_clock: trio.testing.MockClock) -> None:
    t0 = trio.current_time()
    with pytest.raises(Exception, match="within 4 s") as refused:
        await read_opening(FakeBrowser(), HandshakeDecision("10.0.0.1"), token_gate(), PendingPool(4, 4),
                           upstreams(relay_start_timeout=4, relay_idle_timeout=600))
    assert getattr(refused.value, "error", None) == "timeout"
    assert trio.current_time() - t0 == pytest.approx(4)


async def test_a_client_holds_at_most_its_share_of_waiting_sockets() -> None:
    pending = PendingPool(10, 2)
    with pending.hold("a"), pending.hold("a"):
        with pytest.raises(AdmissionRefused, match="waiting to start"):
            with pending.hold("a"):
                pass
        with pending.hold("b"):
            assert pending.waiting == 3
    assert pending.waiting == 0 and not pending.per_client


async def test_when_every_slot_is_taken_the_oldest_waiting_socket_makes_room() -> None:
    pending = PendingPool(2, 5)
    with pending.hold("a") as oldest, pending.hold("b") as second:
        with pending.hold("c") as newest:
            assert oldest.cancel_called and pending.was_pushed_out(oldest)
            assert not second.cancel_called and not newest.cancel_called
            assert pending.waiting == 2
    assert pending.waiting == 0 and not pending.per_client and not pending.pushed_out


@pytest.mark.parametrize(("peer", "counted_as"), [
    ("2001:db8:1:2:aaaa::1", "2001:db8:1:2::/64"),
    ("2001:db8:1:2:ffff:ffff:ffff:ffff", "2001:db8:1:2::/64"),
    ("::ffff:192.0.2.7", "192.0.2.7"),
    ("192.0.2.7", "192.0.2.7"),
    (None, "unknown"),
])
def test_ipv6_clients_count_per_64(peer: str | None, counted_as: str) -> None:
    assert client_address(peer, None) == counted_as


def test_the_ipv6_prefix_is_configurable() -> None:
    assert client_address("2001:db8:1:2:3::1", None, ipv6_prefix=48) == "2001:db8:1::/48"
    assert client_address("2001:db8::1", None, ipv6_prefix=128) == "2001:db8::1"
