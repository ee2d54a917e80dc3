"""relay/ops/fleet_probe.py against a real redis-server: what one look at RELAY_REDIS_URL finds, and the one line
`serve --workers N` prints when Redis cannot be used at start-up (never the password)."""

from __future__ import annotations

import pytest

from relay.config import load_settings
from relay.ops.fleet import FleetUnavailable
from relay.ops.fleet_probe import MIN_MAJOR_VERSION, RedisProbe, probe, startup_problem
from tests.support.processes import free_port
from tests.support.redis import RedisServer


@pytest.mark.timeout(60)
async def test_a_usable_redis_is_probed_and_left_as_it_was(redis_server: RedisServer) -> None:
    found = await probe(load_settings(relay_redis_url=redis_server.url))
    assert found.version_ok and found.write_problem is None and found.round_trip_ms >= 0
    assert redis_server.command("KEYS", "*").strip() == ""
    assert await startup_problem(load_settings(relay_redis_url=redis_server.url)) is None


@pytest.mark.timeout(60)
async def test_an_unreachable_redis_is_one_redacted_line() -> None:
    settings = load_settings(relay_redis_url=f"redis://:hunter2@127.0.0.1:{free_port()}/0")
    with pytest.raises(FleetUnavailable) as caught:
        await probe(settings)
    assert "hunter2" not in str(caught.value)
    line = await startup_problem(settings)
    assert line is not None and line.startswith("RELAY_REDIS_URL: cannot use Redis at start-up")
    assert "hunter2" not in line and "\n" not in line


@pytest.mark.timeout(60)
async def test_a_redis_this_user_cannot_write_is_a_start_up_problem(redis_server: RedisServer) -> None:
    redis_server.command("ACL", "SETUSER", "reader", "on", ">pw", "~*", "+@read", "+ping", "+info")
    settings = load_settings(relay_redis_url=f"redis://reader:pw@127.0.0.1:{redis_server.port}/0")
    assert (await probe(settings)).write_problem is not None
    line = await startup_problem(settings)
    assert line is not None and line.startswith("RELAY_REDIS_URL: cannot write to Redis") and ":pw@" not in line


def test_the_version_check_reads_the_major_version() -> None:
    def version(text: str) -> bool:
        return RedisProbe("redis://h", text, 0.1, None).version_ok

    assert version(f"{MIN_MAJOR_VERSION}.0.0") and version("7.2.4") and version("unknown")
    assert not version(f"{MIN_MAJOR_VERSION - 1}.0.14")
