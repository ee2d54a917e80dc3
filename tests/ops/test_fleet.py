"""The fleet's connection and lease (relay.ops.fleet) against a real redis-server: the URL forms, the lease key that
says a relay is alive, an outage noticed and the rebuild callbacks run once Redis is back, a clear error at start-up."""

from __future__ import annotations

import pytest
import trio

from relay.config import load_settings
from relay.ops.fleet import Fleet, FleetUnavailable, parse_redis_url
from tests.support.redis import RedisServer


def test_urls_of_every_kind_are_read_and_never_show_the_password() -> None:
    plain = parse_redis_url("redis://:s3cret@10.0.0.5:6379/2")
    assert plain.kind == "standalone" and "s3cret" not in plain.redacted and "***" in plain.redacted
    assert parse_redis_url("rediss://cache:6380/0").tls
    sentinel = parse_redis_url("redis+sentinel://user:pw@s1:26379,s2:26380/mymaster/3")
    assert sentinel.kind == "sentinel" and sentinel.sentinels == (("s1", 26379), ("s2", 26380))
    assert (sentinel.service, sentinel.db, sentinel.username, sentinel.password) == ("mymaster", 3, "user", "pw")
    assert "pw" not in sentinel.redacted
    cluster = parse_redis_url("redis+cluster://node1:7000")
    assert cluster.kind == "cluster" and cluster.url == "redis://node1:7000"
    for bad in ("node1:6379", "http://x", "redis+sentinel://s1:26379", "redis+sentinel://s1/mymaster"):
        with pytest.raises(ValueError, match="RELAY_REDIS_URL"):
            parse_redis_url(bad)


def test_no_url_no_fleet() -> None:
    assert Fleet.from_settings(load_settings()) is None


@pytest.mark.timeout(60)
async def test_lease_outage_and_rebuild(redis_server: RedisServer) -> None:
    fleet = Fleet.from_settings(load_settings(relay_redis_url=redis_server.url, relay_fleet_lease=1.5))
    assert fleet is not None
    rebuilt = trio.Event()

    async def rebuild() -> None:
        rebuilt.set()

    fleet.on_reconnect(rebuild)
    async with trio.open_nursery() as nursery:
        await nursery.start(fleet.serve)
        assert fleet.healthy
        assert redis_server.command("EXISTS", fleet.relay_key).strip() == "1"
        ttl = int(redis_server.command("PTTL", fleet.relay_key))
        assert 0 < ttl <= 1500
        redis_server.stop()
        with trio.fail_after(20):
            while fleet.healthy:
                await trio.sleep(0.05)
        with pytest.raises(FleetUnavailable, match=r"127\.0\.0\.1"):
            await fleet.run(lambda r: r.ping())
        redis_server.start()
        with trio.fail_after(20):
            await rebuilt.wait()
        assert fleet.healthy
        assert redis_server.command("EXISTS", fleet.relay_key).strip() == "1"
        nursery.cancel_scope.cancel()
    assert redis_server.command("EXISTS", fleet.relay_key).strip() == "0", "the lease is given up on the way out"


@pytest.mark.timeout(60)
async def test_unreachable_at_start_up_is_a_clear_error() -> None:
    from tests.support.processes import free_port

    fleet = Fleet.from_settings(load_settings(relay_redis_url=f"redis://:pw@127.0.0.1:{free_port()}/0"))
    assert fleet is not None
    with pytest.raises(FleetUnavailable, match="cannot use Redis at start-up") as caught, trio.fail_after(30):
        await fleet.serve()  # fails before it would report started
    assert "pw" not in str(caught.value)
