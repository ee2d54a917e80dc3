"""What one client token buys (relay.server.token_uses), kept by each keeper the relay can run with: this process,
the machine's workers (the shared seats file, two workers' views of one file), and the fleet (a real
redis-server, two relays): one conversation at a time, the allowed number in all, records gone with the token."""

from __future__ import annotations

import os

import pytest
import trio

from relay.server.admission import AdmissionRefused
from relay.server.seats import Seats, create_seats_file
from relay.server.token_uses import LocalTokenUses, SharedTokenUses, TokenUses, token_use, use_key
from tests.server.test_fleet_admission import LEASE, keeper, limits, redis_ms
from tests.support.redis import RedisServer

KEY = use_key("token-a", "jti-1", "https://id.example/")


async def spend(uses: TokenUses, key: str = KEY, allowed: int = 1, expires: float = 2e9) -> str:
    """Open and close one conversation on `key`; the refusal's message, or "ok"."""
    try:
        async with token_use(uses, key, expires, allowed):
            return "ok"
    except AdmissionRefused as exc:
        assert exc.code == "unauthorized"
        return str(exc)


async def one_at_a_time_then_used_up(first: TokenUses, second: TokenUses) -> None:
    async with token_use(first, KEY, 2e9, 2):
        assert "already in use" in await spend(second, allowed=2)
    assert await spend(second, allowed=2) == "ok"  # the second of two
    assert "used for its conversation" in await spend(first, allowed=2)
    assert await spend(first, key=use_key("token-b", None, None)) == "ok"  # another token


def test_a_token_is_known_by_its_issuer_and_jti_else_by_itself() -> None:
    assert use_key("x", "j", "iss") == use_key("y", "j", "iss") != use_key("x", "j", "other")
    assert use_key("x", None, None) != use_key("y", None, None)


async def test_this_process_keeps_one_at_a_time_and_the_allowed_number() -> None:
    uses = LocalTokenUses()
    await one_at_a_time_then_used_up(uses, uses)


async def test_an_expired_tokens_record_is_forgotten() -> None:
    now = [1000.0]
    uses = LocalTokenUses(clock=lambda: now[0])
    assert await spend(uses, expires=1010) == "ok"
    now[0] = 1011
    assert await spend(uses, expires=1010) == "ok"  # (a relay never sees it again: its token has expired)
    assert len(uses.records) == 1


async def test_the_machines_workers_share_the_records_and_a_dead_workers_open_conversation_is_released() -> None:
    fd = create_seats_file(2)
    try:
        one, two = Seats(fd, 2, 0, 0), Seats(fd, 2, 1, 0)
        await one_at_a_time_then_used_up(SharedTokenUses(one), SharedTokenUses(two))
        key = use_key("token-c", None, None)
        assert await SharedTokenUses(one).begin_use("u1", key, 2e9, 5) == "ok"  # worker 0 dies holding it
        assert await SharedTokenUses(two).begin_use("u2", key, 2e9, 5) == "busy"
        Seats(fd, 2, 0, 0).clear(0)  # the supervisor, once worker 0 has exited
        assert await SharedTokenUses(two).begin_use("u3", key, 2e9, 5) == "ok"
    finally:
        os.close(fd)


@pytest.mark.timeout(60)
async def test_the_fleet_keeps_them_across_relays(redis_server: RedisServer) -> None:
    async with keeper(redis_server, limits()) as first, keeper(redis_server, limits()) as second:
        await one_at_a_time_then_used_up(first, second)


@pytest.mark.timeout(60)
async def test_a_dead_relays_open_conversation_on_a_token_expires_with_its_lease(redis_server: RedisServer) -> None:
    async with keeper(redis_server, limits()) as dying:
        assert await dying.begin_use("u1", KEY, 2e9, 3) == "ok"
    async with keeper(redis_server, limits()) as other:
        assert await other.begin_use("u2", KEY, 2e9, 3) == "busy"
        with trio.fail_after(20):
            while await other.begin_use("u3", KEY, 2e9, 3) != "ok":
                await trio.sleep(0.1)


@pytest.mark.timeout(60)
async def test_a_live_relay_keeps_its_open_conversation_on_a_token_past_the_lease(redis_server: RedisServer) -> None:
    async with keeper(redis_server, limits()) as holder, keeper(redis_server, limits()) as other:
        assert await holder.begin_use("u1", KEY, 2e9, 3) == "ok"
        until = redis_ms(redis_server) + 3 * LEASE * 1000
        with trio.fail_after(30):
            while redis_ms(redis_server) < until:  # three leases by Redis's own clock: renewed, not expired
                await trio.sleep(0.1)
        assert await other.begin_use("u2", KEY, 2e9, 3) == "busy"
        await holder.end_use("u1")
        assert await other.begin_use("u3", KEY, 2e9, 3) == "ok"
