"""relay/avatars/hooks.py: HookedProvider runs every hook set around any provider's sessions, in order, on every way
out (a refused start, an error inside, a normal end), with the fake provider and no sockets."""

from __future__ import annotations

import pytest
import trio

from relay.avatars import AvatarSession, AvatarUnavailable
from relay.avatars.hooks import HookedProvider, MakeHooks, SessionHooks, SessionOutcome
from tests.support.fakes import FakeProvider


def recording(name: str, calls: list[str], outcomes: list[SessionOutcome]) -> SessionHooks:
    async def created(session_id: str) -> None:
        calls.append(f"{name}:created:{session_id}")

    def opened(session: AvatarSession) -> AvatarSession:
        calls.append(f"{name}:opened")
        return session

    async def closed(outcome: SessionOutcome) -> None:
        calls.append(f"{name}:closed")
        outcomes.append(outcome)

    return SessionHooks(on_created=created, on_opened=opened, on_closed=closed)


async def test_each_session_runs_fresh_hooks_in_order_and_the_callers_own_last() -> None:
    calls: list[str] = []
    outcomes: list[SessionOutcome] = []
    made: list[str] = []

    def make(tag: str) -> MakeHooks:
        def hooks(provider_name: str) -> SessionHooks:
            made.append(f"{tag}:{provider_name}")
            return recording(tag, calls, outcomes)
        return hooks

    async def caller_created(session_id: str) -> None:
        calls.append(f"caller:created:{session_id}")

    fake = FakeProvider()
    provider = HookedProvider(fake, [make("journal"), make("metrics")])
    assert provider.name == "fake"
    async with provider.open_session(lambda event: None, on_created=caller_created) as session:
        assert session is fake.sessions[0]
        assert calls == ["journal:created:s1", "metrics:created:s1", "caller:created:s1", "journal:opened",
                         "metrics:opened"]
    assert made == ["journal:fake", "metrics:fake"]
    assert calls[-2:] == ["journal:closed", "metrics:closed"] and fake.stopped == ["s1"]
    assert outcomes == [SessionOutcome(opened=True, error=None, stop_failed=False)] * 2


async def test_a_refused_start_still_closes_every_hook_with_the_error() -> None:
    calls: list[str] = []
    outcomes: list[SessionOutcome] = []
    refusal = AvatarUnavailable("capacity", "no seats")
    provider = HookedProvider(FakeProvider(refuse=refusal), [lambda name: recording("journal", calls, outcomes)])
    with pytest.raises(AvatarUnavailable):
        async with provider.open_session(lambda event: None):
            pass  # pragma: no cover - never opened
    assert calls == ["journal:closed"]
    assert outcomes == [SessionOutcome(opened=False, error=refusal, stop_failed=False)]


async def test_an_error_inside_the_session_is_reported_after_the_stop() -> None:
    calls: list[str] = []
    outcomes: list[SessionOutcome] = []
    fake = FakeProvider()
    provider = HookedProvider(fake, [lambda name: recording("journal", calls, outcomes)])
    with pytest.raises(trio.TooSlowError):
        async with provider.open_session(lambda event: None):
            raise trio.TooSlowError
    assert fake.stopped == ["s1"] and calls[-1] == "journal:closed"
    assert outcomes[0].opened and isinstance(outcomes[0].error, trio.TooSlowError)
