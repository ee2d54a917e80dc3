"""`avatar-relay doctor`'s Redis check (relay.ops.doctor.check_redis) against a real redis-server: reachable, its
version, the round trip and the lease key writable; unreachable is a problem that never shows the password."""

from __future__ import annotations

import pytest

from relay.config import load_settings
from relay.ops.doctor import check_redis
from tests.support.processes import free_port
from tests.support.redis import RedisServer


@pytest.mark.timeout(60)
async def test_a_reachable_redis_is_reported_with_its_version_and_round_trip(redis_server: RedisServer) -> None:
    findings = await check_redis(load_settings(relay_redis_url=redis_server.url))
    texts = [f.text for f in findings]
    assert all(f.level != "problem" for f in findings), texts
    assert any("round trip" in t for t in texts) and any(t.startswith("version ") for t in texts)
    assert any("lease key can be written" in t for t in texts)
    assert redis_server.command("KEYS", "*").strip() == ""  # it cleaned up after itself


@pytest.mark.timeout(60)
async def test_an_unreachable_redis_is_a_problem_without_the_password() -> None:
    findings = await check_redis(load_settings(relay_redis_url=f"redis://:hunter2@127.0.0.1:{free_port()}/0"))
    assert [f.level for f in findings] == ["problem"]
    assert "unreachable" in findings[0].text and "hunter2" not in findings[0].text and "***" in findings[0].text


@pytest.mark.timeout(60)
async def test_a_read_only_redis_is_a_problem(redis_server: RedisServer) -> None:
    redis_server.command("ACL", "SETUSER", "reader", "on", ">pw", "~*", "+@read", "+ping", "+info")
    findings = await check_redis(load_settings(relay_redis_url=f"redis://reader:pw@127.0.0.1:{redis_server.port}/0"))
    problems = [f.text for f in findings if f.level == "problem"]
    assert len(problems) == 1 and "lease key cannot be written" in problems[0], findings
