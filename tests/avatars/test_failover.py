"""The ordered provider list: the session comes from the first provider that starts; every refusal moves on (a
configuration refusal loudly), the last one is raised; the set-up time is shared; nothing is left open."""

from __future__ import annotations

import logging

import pytest
import trio
import trio.testing

from relay.avatars import AvatarUnavailable, UnavailableReason
from relay.avatars.failover import FailoverProvider
from tests.support.fakes import FakeProvider


def named(name: str, **kwargs: object) -> FakeProvider:
    provider = FakeProvider(**kwargs)  # type: ignore[arg-type]
    provider.name = name  # type: ignore[misc]
    return provider


@pytest.mark.parametrize("reason", ["concurrent_limit", "capacity", "no_credits", "rate_limited", "upstream_error",
                                    "timeout", "unauthorized", "bad_config"])
async def test_every_refusal_moves_on_to_the_next_provider(reason: UnavailableReason,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    first = named("liveavatar", refuse=AvatarUnavailable(reason, "no"))
    second = named("simli")
    moved: list[tuple[str, str]] = []
    failover = FailoverProvider([first, second], 5.0, on_moved_on=lambda n, r: moved.append((n, r)))
    async with failover.open_session(lambda e: None) as session:
        assert session is second.sessions[0]
    assert second.stopped == ["s1"] and first.sessions == []
    assert moved == [("liveavatar", reason)]
    loud = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert bool(loud) == (reason in ("unauthorized", "bad_config"))


async def test_when_every_provider_refuses_the_last_refusal_is_raised() -> None:
    failover = FailoverProvider([named("liveavatar", refuse=AvatarUnavailable("concurrent_limit", "full")),
                                 named("simli", refuse=AvatarUnavailable("no_credits", "empty"))], 5.0)
    with pytest.raises(AvatarUnavailable) as caught:
        async with failover.open_session(lambda e: None):
            pytest.fail("the body must not run")
    assert caught.value.reason == "no_credits"


async def test_the_first_provider_that_starts_is_used_and_the_rest_are_not_asked() -> None:
    first, second = named("liveavatar"), named("simli")
    async with FailoverProvider([first, second], 5.0).open_session(lambda e: None):
        pass
    assert (first.open_calls, second.open_calls) == (1, 0)
    assert first.stopped == ["s1"]


async def test_a_provider_that_does_not_start_in_the_shared_time_gives_way_to_the_next(
        autojump_clock: trio.testing.MockClock) -> None:
    slow, quick = named("liveavatar", open_delay=100.0), named("simli")
    start = trio.current_time()
    async with FailoverProvider([slow, quick], 5.0).open_session(lambda e: None) as session:
        assert session is quick.sessions[0]
        assert trio.current_time() - start == pytest.approx(2.5)  # half the set-up time: the first of two
    assert slow.sessions == []


async def test_when_every_provider_hangs_the_set_up_time_is_kept(autojump_clock: trio.testing.MockClock) -> None:
    first, second = named("liveavatar", open_delay=100.0), named("simli", open_delay=100.0)
    start = trio.current_time()
    with pytest.raises(AvatarUnavailable) as caught:
        async with FailoverProvider([first, second], 5.0).open_session(lambda e: None):
            pytest.fail("the body must not run")
    assert caught.value.reason == "timeout"
    assert trio.current_time() - start == pytest.approx(5.0)
    assert (first.open_calls, second.open_calls) == (1, 1)


async def test_the_callers_cancellation_is_not_taken_for_a_refusal() -> None:
    slow, next_one = named("liveavatar", open_delay=100.0), named("simli")
    with trio.CancelScope() as scope:
        scope.cancel()
        async with FailoverProvider([slow, next_one], 500.0).open_session(lambda e: None):
            pytest.fail("the body must not run")
    assert next_one.open_calls == 0


async def test_the_session_is_stopped_when_the_body_raises() -> None:
    first, second = named("liveavatar", refuse=AvatarUnavailable("rate_limited", "slow")), named("simli")
    with pytest.raises(KeyError):
        async with FailoverProvider([first, second], 5.0).open_session(lambda e: None):
            raise KeyError("boom")
    assert second.stopped == ["s1"]


def test_an_empty_list_is_refused() -> None:
    with pytest.raises(ValueError):
        FailoverProvider([], 5.0)
