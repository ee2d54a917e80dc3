"""Fleet-wide admission (relay.server.fleet_admission) against a real redis-server: several relays' seat keepers
sharing one Redis, driven from many Trio tasks at once. Exactly the caps are admitted (global, per client, the start
rate, the avatar budget), a seat is released at once, a dead relay's seats expire with its lease, seats are
re-registered when Redis comes back empty, and the outage policy decides what happens while Redis is away."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import pytest
import trio

from relay.config import load_settings
from relay.ops.fleet import Fleet
from relay.server.admission import AdmissionRefused
from relay.server.fleet_admission import FleetSeats, Limits
from tests.support.redis import RedisServer

LEASE = 1.5


def limits(**values: int | dict[str, int] | None) -> Limits:
    """Limits with these values; an `avatar_sessions` number is LiveAvatar's budget."""
    base: dict[str, int | dict[str, int] | None] = {"max_conversations": 7, "max_per_client": 100,
                                                    "starts_per_minute": 1000, "avatar_sessions": {}}
    base.update(values)
    if isinstance(base["avatar_sessions"], int):
        base["avatar_sessions"] = {"liveavatar": base["avatar_sessions"]}
    return Limits(**base)  # type: ignore[arg-type]


@asynccontextmanager
async def keeper(redis: RedisServer, lim: Limits, *, outage: str = "refuse") -> AsyncIterator[FleetSeats]:
    """One relay's fleet membership and seat keeper (its lease renewed, its seats heartbeated) until the block ends;
    then both stop as a killed relay's would (no release): what it held stays until its lease expires."""
    fleet = Fleet.from_settings(load_settings(relay_redis_url=redis.url, relay_fleet_lease=LEASE))
    assert fleet is not None
    seats = FleetSeats(fleet, lim, outage=outage)  # type: ignore[arg-type]
    async with trio.open_nursery() as nursery:
        await nursery.start(fleet.serve)
        nursery.start_soon(seats.serve)
        yield seats
        nursery.cancel_scope.cancel()


def zcard(redis: RedisServer, name: str) -> int:
    return int(redis.command("ZCARD", f"{{avatar-relay}}:{name}").strip())


def redis_ms(redis: RedisServer) -> float:
    seconds, micros = redis.command("TIME").split()
    return int(seconds) * 1000 + int(micros) / 1000


def live_seats(redis: RedisServer) -> int:
    """Seats whose lease has not expired at Redis's own now."""
    return int(redis.command("ZCOUNT", "{avatar-relay}:seats", f"({redis_ms(redis):.0f}", "+inf").strip())


async def wait_until(condition: Callable[[], bool], guard: float = 20.0) -> None:
    with trio.fail_after(guard):
        while not condition():
            await trio.sleep(0.02)


@pytest.mark.timeout(60)
async def test_exactly_the_global_cap_is_admitted_across_relays_from_many_tasks(redis_server: RedisServer) -> None:
    admitted: list[str] = []
    refused: list[str] = []
    async with keeper(redis_server, limits()) as one, keeper(redis_server, limits()) as two:
        async def try_one(index: int) -> None:
            seats = (one, two)[index % 2]
            try:
                await seats.take(f"s{index}", f"10.0.0.{index}")
            except AdmissionRefused as exc:
                assert exc.code == "capacity" and "maximum number of conversations" in str(exc)
                refused.append(f"s{index}")
            else:
                admitted.append(f"s{index}")

        async with trio.open_nursery() as nursery:
            for index in range(60):
                nursery.start_soon(try_one, index)
        assert len(admitted) == 7 and len(refused) == 53
        assert zcard(redis_server, "seats") == 7
        assert len(one.held) + len(two.held) == 7
        # Released at once: another relay admits right after.
        victim = admitted[0]
        owner = one if victim in one.held else two
        await owner.give_back(victim)
        assert zcard(redis_server, "seats") == 6
        await two.take("late", "10.9.9.9")
        with pytest.raises(AdmissionRefused):
            await one.take("later", "10.9.9.8")


@pytest.mark.timeout(60)
async def test_per_client_cap_and_the_move_to_the_tokens_sub_hold_across_relays(redis_server: RedisServer) -> None:
    lim = limits(max_conversations=100, max_per_client=2)
    async with keeper(redis_server, lim) as one, keeper(redis_server, lim) as two:
        results: list[bool] = []

        async def try_one(index: int) -> None:
            try:
                await (one, two)[index % 2].take(f"a{index}", "1.2.3.4")
                results.append(True)
            except AdmissionRefused as exc:
                assert "from your address" in str(exc)
                results.append(False)

        async with trio.open_nursery() as nursery:
            for index in range(20):
                nursery.start_soon(try_one, index)
        assert results.count(True) == 2
        await one.take("x1", "5.5.5.5")
        await two.take("x2", "6.6.6.6")
        await two.take("x3", "7.7.7.7")
        await one.move("x1", "5.5.5.5", "sub:alice")
        await two.move("x2", "6.6.6.6", "sub:alice")
        with pytest.raises(AdmissionRefused, match="for this user"):
            await two.move("x3", "7.7.7.7", "sub:alice")
        assert two.held["x3"] == "7.7.7.7"  # still counted against its address
        await one.take("y", "5.5.5.5")  # the address is free again
        await one.give_back("x1")
        await two.move("x3", "7.7.7.7", "sub:alice")  # alice has room again


@pytest.mark.timeout(60)
async def test_the_start_rate_is_shared_by_the_fleet(redis_server: RedisServer) -> None:
    lim = limits(starts_per_minute=3)
    async with keeper(redis_server, lim) as one, keeper(redis_server, lim) as two:
        allowed: list[bool] = []

        async def try_one(index: int) -> None:
            allowed.append(await (one, two)[index % 2].allow_start("9.9.9.9", 0.0))

        async with trio.open_nursery() as nursery:
            for index in range(30):
                nursery.start_soon(try_one, index)
        assert allowed.count(True) == 3
        assert await one.allow_start("9.9.9.8", 0.0)  # another address has its own bucket


@pytest.mark.timeout(60)
async def test_the_avatar_budget_admits_exactly_its_size(redis_server: RedisServer) -> None:
    lim = limits(avatar_sessions=3)
    async with keeper(redis_server, lim) as one, keeper(redis_server, lim) as two:
        got: list[str] = []

        async def try_one(index: int) -> None:
            if await (one, two)[index % 2].take_avatar(f"v{index}", "liveavatar"):
                got.append(f"v{index}")

        async with trio.open_nursery() as nursery:
            for index in range(40):
                nursery.start_soon(try_one, index)
        assert len(got) == 3 and zcard(redis_server, "avatars:liveavatar") == 3
        owner = one if got[0] in one.avatars else two
        await owner.give_back_avatar(got[0])
        assert await two.take_avatar("again", "liveavatar")
        assert not await one.take_avatar("over", "liveavatar")


@pytest.mark.timeout(60)
async def test_a_dead_relays_seats_expire_with_its_lease_and_live_ones_are_heartbeated(
        redis_server: RedisServer) -> None:
    lim = limits(max_conversations=2, avatar_sessions=1)
    async with keeper(redis_server, lim) as survivor:
        async with keeper(redis_server, lim) as doomed:
            await doomed.take("d1", "1.1.1.1")
            await survivor.take("s1", "2.2.2.2")
            assert await doomed.take_avatar("dv", "liveavatar")
            with pytest.raises(AdmissionRefused):
                await survivor.take("s2", "2.2.2.3")
            first_expiry = float(redis_server.command("ZRANGE", "{avatar-relay}:seats", "-1", "-1",
                                                      "WITHSCORES").split()[1])
            # Past the first lease both seats are still live (ZCOUNT from Redis's now: ZCARD would also count
            # expired members, which only the scripts remove): the heartbeats renewed them.
            await wait_until(lambda: redis_ms(redis_server) > first_expiry + 200, guard=LEASE * 4)
            assert live_seats(redis_server) == 2
        # `doomed` stopped without releasing (a killed relay): its seats go within the lease.
        await wait_until(lambda: zcard(redis_server, "seats") == 1, guard=LEASE * 4)
        await survivor.take("s2", "2.2.2.3")
        assert await survivor.take_avatar("sv", "liveavatar")
        assert zcard(redis_server, "seats") == 2


@pytest.mark.timeout(90)
async def test_seats_are_registered_again_when_redis_comes_back_empty(redis_server: RedisServer) -> None:
    lim = limits(max_conversations=3, avatar_sessions=2)
    async with keeper(redis_server, lim) as one:
        await one.take("a", "1.1.1.1")
        await one.take("b", "1.1.1.2")
        assert await one.take_avatar("av", "liveavatar")
        redis_server.stop()
        await wait_until(lambda: not one.fleet.healthy)
        with pytest.raises(AdmissionRefused) as refused:
            await one.take("c", "1.1.1.3")
        assert refused.value.code == "upstream_unavailable"
        redis_server.start()  # empty: no persistence
        # A pooled connection from before the restart may fail one call (unhealthy until the next heartbeat).
        await wait_until(lambda: zcard(redis_server, "seats") == 2 and zcard(redis_server, "avatars:liveavatar") == 1
                         and one.fleet.healthy)
        await one.take("c", "1.1.1.3")
        with pytest.raises(AdmissionRefused, match="maximum number"):
            await one.take("d", "1.1.1.4")


@pytest.mark.timeout(60)
async def test_the_local_outage_policy_admits_under_this_relays_own_caps(redis_server: RedisServer) -> None:
    lim = limits(max_conversations=2, max_per_client=1, avatar_sessions=1)
    async with keeper(redis_server, lim, outage="local") as one:
        await one.take("a", "1.1.1.1")
        redis_server.stop()
        await wait_until(lambda: not one.fleet.healthy)
        await one.take("b", "1.1.1.2")
        with pytest.raises(AdmissionRefused, match="maximum number"):
            await one.take("c", "1.1.1.3")
        await one.give_back("b")  # Redis is away: forgotten here, it would expire there
        with pytest.raises(AdmissionRefused, match="from your address"):
            await one.take("c", "1.1.1.1")
        assert await one.allow_start("1.1.1.9", 0.0)
        assert await one.take_avatar("v1", "liveavatar")
        assert not await one.take_avatar("v2", "liveavatar")


async def wait_for_redis_clock(redis: RedisServer, past_ms: float) -> None:
    """Wait (polling Redis's own clock, the one its scripts use) until Redis's now is past `past_ms`."""
    await wait_until(lambda: redis_ms(redis) > past_ms)


@pytest.mark.timeout(60)
async def test_the_start_rate_refills_per_minute_not_per_second(redis_server: RedisServer) -> None:
    """30 starts a minute: the bucket, once empty, gains half a start a second. One second later a start is still
    refused; a little over two seconds later exactly one more is allowed."""
    lim = limits(starts_per_minute=30)
    async with keeper(redis_server, lim) as one, keeper(redis_server, lim) as two:
        allowed = [await (one, two)[i % 2].allow_start("9.9.9.9", 0.0) for i in range(31)]
        assert allowed == [True] * 30 + [False]
        emptied = redis_ms(redis_server)
        await wait_for_redis_clock(redis_server, emptied + 1000)
        assert not await two.allow_start("9.9.9.9", 0.0), "refilled faster than 30 a minute"
        await wait_for_redis_clock(redis_server, emptied + 2200)
        assert await one.allow_start("9.9.9.9", 0.0), "not refilled at 30 a minute"
        assert not await two.allow_start("9.9.9.9", 0.0)


@pytest.mark.timeout(60)
async def test_seats_stay_live_across_many_leases_while_their_relay_runs(redis_server: RedisServer) -> None:
    """A running relay's seats are renewed every third of the lease, so for three leases and more they stay live
    and keep counting against the cap: another relay is still refused at the cap, and no seat ever expires."""
    lim = limits(max_conversations=2)
    async with keeper(redis_server, lim) as holder, keeper(redis_server, lim) as other:
        await holder.take("h1", "1.1.1.1")
        await holder.take("h2", "1.1.1.2")
        until = redis_ms(redis_server) + 3 * LEASE * 1000
        lowest = 2
        while redis_ms(redis_server) < until:
            lowest = min(lowest, await trio.to_thread.run_sync(live_seats, redis_server))
            await trio.sleep(0.05)
        assert lowest == 2, "a running relay's seat expired between its renewals"
        with pytest.raises(AdmissionRefused, match="maximum number"):
            await other.take("o1", "3.3.3.3")


@pytest.mark.timeout(60)
async def test_each_provider_has_its_own_budget_in_the_fleet(redis_server: RedisServer) -> None:
    """RELAY_MAX_AVATAR_SESSIONS=liveavatar=1,simli=2 across two relays: LiveAvatar's seat used up does not touch
    Simli's, and each provider's seats are in its own set."""
    lim = limits(avatar_sessions={"liveavatar": 1, "simli": 2})
    async with keeper(redis_server, lim) as one, keeper(redis_server, lim) as two:
        assert await one.avatar_budget("liveavatar").take_avatar("la1")
        assert not await two.avatar_budget("liveavatar").take_avatar("la2")
        assert await two.avatar_budget("simli").take_avatar("sm1")
        assert await one.avatar_budget("simli").take_avatar("sm2")
        assert not await two.avatar_budget("simli").take_avatar("sm3")
        assert await one.avatar_budget("heygen").take_avatar("hg1")  # no budget: never refused
        assert (zcard(redis_server, "avatars:liveavatar"), zcard(redis_server, "avatars:simli")) == (1, 2)
        await one.avatar_budget("simli").give_back_avatar("sm2")
        assert await two.avatar_budget("simli").take_avatar("sm3")
        assert not await one.avatar_budget("liveavatar").take_avatar("la3")


@pytest.mark.timeout(90)
async def test_every_providers_seats_are_registered_again_when_redis_comes_back_empty(
        redis_server: RedisServer) -> None:
    lim = limits(avatar_sessions={"liveavatar": 2, "simli": 2})
    async with keeper(redis_server, lim) as one:
        assert await one.avatar_budget("liveavatar").take_avatar("la")
        assert await one.avatar_budget("simli").take_avatar("sm1")
        assert await one.avatar_budget("simli").take_avatar("sm2")
        redis_server.stop()
        await wait_until(lambda: not one.fleet.healthy)
        redis_server.start()  # empty: no persistence
        await wait_until(lambda: zcard(redis_server, "avatars:liveavatar") == 1
                         and zcard(redis_server, "avatars:simli") == 2 and one.fleet.healthy)
        assert one.fleet_avatars == 3
        assert not await one.avatar_budget("simli").take_avatar("sm3")
