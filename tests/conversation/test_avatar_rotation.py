"""A provider's known session limit (the LiveAvatar sandbox's minute, the configured maximum) is not a death
sentence (issue #23 §3): the conversation rotates to a fresh session between turns before the limit, tells the
browser `avatar_changed` (reason `session_limit`), and stops the old session once. No sockets; the autojump clock."""

from __future__ import annotations

import trio
import trio.testing

from relay.protocol import elevenlabs as el
from tests.support.fakes import FakeProvider, Harness, start_and_ready, wait_until, with_conversation


async def test_the_avatar_is_rotated_between_turns_before_its_session_limit(
        autojump_clock: trio.testing.MockClock) -> None:
    provider = FakeProvider()
    h = Harness(provider=provider)
    h.session_limits = {"fake": 60.0}

    async def body(h: Harness) -> None:
        await start_and_ready(h)
        opened = trio.current_time()
        await h.agent.emit(el.AgentResponse("hello", 1))
        notice = await h.browser.expect("avatar_changed")
        rotated = trio.current_time() - opened
        assert notice["reason"] == "session_limit" and notice["avatar"]["session_id"] == "s2"
        assert 30 <= rotated < 60, rotated  # before the limit, with time left to start the next one
        assert provider.stopped == ["s1"]
        await h.agent.emit(el.AgentResponse("again", 2))
        await wait_until(lambda: provider.sessions[1].spoken == [("again", 2)])
        await h.browser.send_json(type="stop")

    await with_conversation(h, body, limit=200)
    assert provider.stopped == ["s1", "s2"]


async def test_without_a_known_limit_the_avatar_is_never_rotated(autojump_clock: trio.testing.MockClock) -> None:
    provider = FakeProvider()
    h = Harness(provider=provider, relay_max_duration=600)

    async def body(h: Harness) -> None:
        await start_and_ready(h)
        await trio.sleep(300)
        assert len(provider.sessions) == 1
        await h.browser.send_json(type="stop")

    await with_conversation(h, body, limit=400)


async def test_a_session_granted_less_than_its_provider_is_known_for_is_rotated_before_the_grant(
        autojump_clock: trio.testing.MockClock) -> None:
    # LiveAvatar's start answer says the length the plan granted (or the sandbox's): the shorter limit wins.
    provider = FakeProvider(session_seconds=40.0)
    h = Harness(provider=provider)
    h.session_limits = {"fake": 600.0}

    async def body(h: Harness) -> None:
        await start_and_ready(h)
        opened = trio.current_time()
        notice = await h.browser.expect("avatar_changed")
        assert notice["reason"] == "session_limit"
        assert 20 <= trio.current_time() - opened < 40
        assert "session_seconds" not in notice["avatar"]  # server-side only
        assert provider.stopped == ["s1"]
        await h.browser.send_json(type="stop")

    await with_conversation(h, body, limit=200)
    assert provider.stopped == ["s1", "s2"]
