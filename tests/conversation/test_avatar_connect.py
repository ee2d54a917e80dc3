"""Set-up never waits on the avatar's `connected`, and the listening pose follows the user's turns (issue 14, items
4 and 6): with fake sockets, on the autojump clock."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
import trio
import trio.testing

from relay.avatars import AvatarStateChanged
from relay.nursery import QUEUE_NOTICE
from relay.protocol import elevenlabs as el
from tests.support.fakes import (
    FakeAgent,
    FakeProvider,
    Harness,
    metadata,
    start_and_ready,
    wait_until,
    with_conversation,
)


def drained_of(h: Harness, kind: str) -> list[dict[str, Any]]:
    """The messages of type `kind` among those the relay sent to the browser and the test has not read."""
    messages = [orjson.loads(frame) for frame in h.browser.drain() if isinstance(frame, str)]
    return [m for m in messages if m.get("type") == kind]


async def test_ready_does_not_wait_for_connected_and_speech_waits_for_it(
        autojump_clock: trio.testing.MockClock) -> None:
    provider = FakeProvider(takes_audio=True, withhold_connected=True)
    h = Harness(provider=provider, relay_avatar_connect_timeout=30, relay_avatar_speech_hold=20)

    async def body(h: Harness) -> None:
        t0 = trio.current_time()
        ready = await start_and_ready(h)
        assert trio.current_time() <= t0 + QUEUE_NOTICE  # no wait for `connected` (the agent said nothing yet)
        assert ready["avatar"]["provider"] == "fake"
        session = provider.sessions[0]
        await h.agent.emit(el.AgentAudio(b"\x00\x01" * 10, 1))
        await trio.sleep(10)  # the avatar is still not connected: nothing given up, nothing reported
        assert not drained_of(h, "avatar_unavailable")
        session.connected.set()
        await wait_until(lambda: len(session.audio) == 1)
        await trio.sleep(30)  # past the bound: connected came in time, the avatar stays
        assert not drained_of(h, "avatar_unavailable")
        await h.browser.send_json(type="stop")

    await with_conversation(h, body, limit=100)
    assert provider.stopped == ["s1"]


async def test_an_avatar_that_never_connects_degrades_to_voice_after_the_bound(
        autojump_clock: trio.testing.MockClock) -> None:
    provider = FakeProvider(takes_audio=True, withhold_connected=True)
    h = Harness(provider=provider, relay_avatar_connect_timeout=7)

    async def body(h: Harness) -> None:
        await start_and_ready(h)
        t0 = trio.current_time()
        notice = await h.browser.expect("avatar_unavailable")
        assert trio.current_time() - t0 == 7
        assert notice["reason"] == "timeout"
        assert "connected" in notice["message"]
        await h.agent.emit(el.AgentAudio(b"\x07\x00" * 10, 2))  # the conversation goes on, voice-only
        assert await h.browser.next_message(skip_binary=False) == b"\x07\x00" * 10
        await h.browser.send_json(type="stop")

    await with_conversation(h, body, limit=100)
    assert h.ended is not None and h.ended.reason == "client_stop" and h.ended.degraded
    assert provider.stopped == ["s1"]


async def test_listening_pose_follows_the_users_turn(autojump_clock: trio.testing.MockClock) -> None:
    provider = FakeProvider(takes_audio=True)
    h = Harness(provider=provider)

    async def body(h: Harness) -> None:
        await start_and_ready(h)
        session = provider.sessions[0]
        await h.agent.emit(el.UserTranscript("hel", 1, final=False))
        await h.agent.emit(el.UserTranscript("hello", 1, final=False))
        await h.agent.emit(el.VadScore(0.9))
        await wait_until(lambda: session.listening == [True])
        await h.agent.emit(el.UserTranscript("hello", 1, final=True))
        await h.agent.emit(el.AgentAudio(b"\x00\x01" * 10, 2))
        await wait_until(lambda: len(session.audio) == 1)
        assert session.listening == [True, False]  # left before the reply's first audio
        await h.agent.emit(el.AgentAudio(b"\x00\x01" * 10, 2))
        await h.agent.emit(el.VadScore(0.1))  # not speaking: no pose
        await h.agent.emit(el.VadScore(0.8))  # the user speaks again
        await wait_until(lambda: session.listening == [True, False, True])
        await h.browser.send_json(type="stop")

    await with_conversation(h, body)


async def test_text_avatar_leaves_the_listening_pose_on_the_reply(autojump_clock: trio.testing.MockClock) -> None:
    provider = FakeProvider(takes_audio=False)
    h = Harness(provider=provider, agent=FakeAgent(metadata()))

    async def body(h: Harness) -> None:
        await start_and_ready(h)
        session = provider.sessions[0]
        await h.agent.emit(el.UserTranscript("hi", 1, final=False))
        await wait_until(lambda: session.listening == [True])
        await h.agent.emit(el.AgentResponse("hello there", 2))
        await wait_until(lambda: len(session.spoken) == 1)
        assert session.listening == [True, False]
        await h.browser.send_json(type="stop")

    await with_conversation(h, body)


async def binary_frames(h: Harness, count: int) -> list[bytes]:
    """The next `count` binary frames the browser gets (text frames in between are skipped)."""
    frames: list[bytes] = []
    while len(frames) < count:
        frame = await h.browser.next_message(skip_binary=False)
        if isinstance(frame, bytes):
            frames.append(frame)
    return frames


async def test_held_speech_plays_in_the_browser_when_the_avatar_never_connects(
        autojump_clock: trio.testing.MockClock) -> None:
    """M2: the greeting held for an avatar that never says `connected` is not lost: when the conversation degrades
    to voice, the browser gets it, in order, before newer speech (it used to be dropped)."""
    provider = FakeProvider(takes_audio=True, withhold_connected=True)
    h = Harness(provider=provider, relay_avatar_connect_timeout=7, relay_avatar_speech_hold=60)

    async def body(h: Harness) -> None:
        await start_and_ready(h)
        greeting = [bytes([n, 0]) * 10 for n in range(1, 4)]
        for chunk in greeting:
            await h.agent.emit(el.AgentAudio(chunk, 1))
        await h.browser.expect("avatar_unavailable")
        await h.agent.emit(el.AgentAudio(b"\x09\x00" * 10, 2))
        assert await binary_frames(h, 4) == [*greeting, b"\x09\x00" * 10]
        await h.browser.send_json(type="stop")

    await with_conversation(h, body, limit=100)
    assert provider.sessions[0].audio == []


async def test_speech_held_longer_than_the_hold_plays_as_voice_and_the_avatar_takes_the_next_turn(
        autojump_clock: trio.testing.MockClock) -> None:
    """M2: the browser does not sit in silence until the connect time-out: after RELAY_AVATAR_SPEECH_HOLD the held
    greeting (and the rest of its turn) plays as voice; the avatar, connected later, says only the next turn."""
    provider = FakeProvider(takes_audio=True, withhold_connected=True)
    h = Harness(provider=provider, relay_avatar_connect_timeout=30, relay_avatar_speech_hold=3)

    async def body(h: Harness) -> None:
        await start_and_ready(h)
        session = provider.sessions[0]
        t0 = trio.current_time()
        await h.agent.emit(el.AgentAudio(b"\x01\x00" * 10, 1))
        await h.agent.emit(el.AgentAudio(b"\x02\x00" * 10, 1))
        assert await binary_frames(h, 2) == [b"\x01\x00" * 10, b"\x02\x00" * 10]
        assert trio.current_time() - t0 == pytest.approx(3)
        await h.agent.emit(el.AgentAudio(b"\x03\x00" * 10, 1))  # the rest of the turn: the browser's too
        assert await binary_frames(h, 1) == [b"\x03\x00" * 10]
        session.connected.set()
        await h.agent.emit(el.AgentAudio(b"\x04\x00" * 10, 2))
        await wait_until(lambda: session.audio == [(b"\x04\x00" * 10, 2)])
        await h.browser.send_json(type="stop")

    await with_conversation(h, body, limit=100)
    assert not [m for m in h.browser.drain() if isinstance(m, bytes)]  # the avatar's turn never reached the browser


async def test_the_avatar_listens_again_after_it_reports_the_end_of_its_turn(
        autojump_clock: trio.testing.MockClock) -> None:
    """L4, the LITE guide's turn cycle: start when the user starts, stop when the user's turn is final, start
    again after `agent.speak_ended` of the avatar's last turn."""
    provider = FakeProvider(takes_audio=True)
    h = Harness(provider=provider)

    async def body(h: Harness) -> None:
        await start_and_ready(h)
        session = provider.sessions[0]
        await h.agent.emit(el.UserTranscript("hel", 1, final=False))
        await wait_until(lambda: session.listening == [True])
        await h.agent.emit(el.UserTranscript("hello", 1, final=True))
        await wait_until(lambda: session.listening == [True, False])  # the user stopped: before any reply
        await h.agent.emit(el.AgentAudio(b"\x00\x01" * 10, 2))
        await wait_until(lambda: session.turn_ends == [2])
        session.on_event(AvatarStateChanged(speaking=True, turn=2))
        session.on_event(AvatarStateChanged(speaking=False, turn=2))
        await wait_until(lambda: session.listening == [True, False, True])
        await h.browser.send_json(type="stop")

    await with_conversation(h, body)
