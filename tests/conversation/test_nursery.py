"""The conversation nursery with fake sockets: what the browser sees, what the agent and the avatar get, and that
the conversation leaves every avatar session it opened (its context exited, the fake's awaited stop finished)
whatever ends the conversation. That the real providers shield their stop from cancellation is tested with the
providers (tests/e2e/test_heygen_provider.py, test_liveavatar_provider.py), not here."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

from relay import __version__
from relay.avatars import AvatarSessionEnded, AvatarUnavailable
from relay.conversation.speech import TURN_AUDIO_GAP
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


async def test_ready_announces_the_agents_input_rate_and_the_avatar() -> None:
    h = Harness(agent=FakeAgent(metadata(input_format="pcm_22050", output_format="pcm_44100")))

    async def body(h: Harness) -> None:
        ready = await start_and_ready(h, dynamic_variables={"user_name": "Ana"}, user_id="u1")
        assert ready["conversation_id"] == "conv_test"
        assert ready["input_audio"] == {"encoding": "pcm_s16le", "sample_rate": 22050}
        assert ready["output_audio"] == {"encoding": "pcm_s16le", "sample_rate": 44100}
        assert ready["avatar"] == {"provider": "fake", "session_id": "s1", "livekit_url": "wss://room.example",
                                   "access_token": "tok", "simulated": False}
        assert h.agent.initiation == {"type": "conversation_initiation_client_data",
                                      "dynamic_variables": {"user_name": "Ana"}, "user_id": "u1",
                                      "source_info": {"source": "avatar-relay", "version": __version__}}
        await h.browser.send_json(type="stop")

    await with_conversation(h, body)
    assert h.provider.stopped == ["s1"]


async def test_browser_audio_is_forwarded_as_user_audio_chunks() -> None:
    h = Harness()

    async def body(h: Harness) -> None:
        await start_and_ready(h)
        await h.browser.send_raw(b"\x01\x00" * 800)
        await h.browser.send_json(type="audio", audio="AgACAA==")
        await h.browser.send_json(type="stop")

    await with_conversation(h, body)
    assert h.agent.audio_sent() == b"\x01\x00" * 800 + b"\x02\x00\x02\x00"


async def test_client_messages_map_to_agent_messages() -> None:
    h = Harness()

    async def body(h: Harness) -> None:
        await start_and_ready(h)
        await h.browser.send_json(type="text", text="hello")
        await h.browser.send_json(type="context", text="user is on the pricing page")
        await h.browser.send_json(type="activity")
        await h.browser.send_json(type="tool_result", tool_call_id="t1", result={"ok": True})
        await h.browser.send_json(type="feedback", score="like", event_id=3)
        await h.browser.send_json(type="stop")

    await with_conversation(h, body)
    assert h.agent.sent == [
        {"type": "user_message", "text": "hello"},
        {"type": "contextual_update", "text": "user is on the pricing page"},
        {"type": "user_activity"},
        {"type": "client_tool_result", "tool_call_id": "t1", "result": '{"ok":true}', "is_error": False},
        {"type": "feedback", "score": "like", "event_id": 3},
    ]


async def test_agent_events_reach_the_browser_and_replies_reach_the_avatar() -> None:
    h = Harness()

    async def body(h: Harness) -> None:
        await start_and_ready(h)
        await h.agent.emit(el.UserTranscript("hel", 2, final=False))
        await h.agent.emit(el.UserTranscript("hello there", 2, final=True))
        await h.agent.emit(el.AgentResponse("Hi! How can I help?", 3))
        await h.agent.emit(el.ClientToolCall("get_time", "t9", {"tz": "UTC"}, 3))
        assert await h.browser.expect("user_transcript") == {"type": "user_transcript", "text": "hel",
                                                              "event_id": 2, "final": False}
        assert (await h.browser.expect("user_transcript"))["final"] is True
        assert await h.browser.expect("agent_response") == {"type": "agent_response", "text": "Hi! How can I help?",
                                                             "event_id": 3}
        rest = [await h.browser.next_message(), await h.browser.next_message()]
        assert {"type": "avatar_speaking", "text": "Hi! How can I help?", "duration_ms": 950, "event_id": 3} in rest
        assert {"type": "tool_call", "tool_call_id": "t9", "tool_name": "get_time", "parameters": {"tz": "UTC"}} in rest
        await h.browser.send_json(type="stop")

    await with_conversation(h, body)
    assert h.provider.sessions[0].spoken == [("Hi! How can I help?", 3)]


async def test_pings_are_answered_with_pongs_at_once() -> None:
    h = Harness()

    async def body(h: Harness) -> None:
        await start_and_ready(h)
        await h.agent.emit(el.Ping(7, None))
        while not h.agent.sent_of("pong"):
            await trio.sleep(0.001)
        assert h.agent.sent_of("pong") == [{"type": "pong", "event_id": 7}]
        await h.browser.send_json(type="stop")

    await with_conversation(h, body)


async def test_interruption_drops_queued_speech_and_interrupts_the_avatar(
        autojump_clock: trio.testing.MockClock) -> None:
    provider = FakeProvider()
    h = Harness(provider=provider)

    async def body(h: Harness) -> None:
        await start_and_ready(h)
        session = provider.sessions[0]
        session.speak_delay = 20
        await h.agent.emit(el.AgentResponse("first reply, long", 3))
        await h.agent.emit(el.AgentResponse("second reply", 4))
        await session.speech_started.wait()  # the first is in flight (for 20 s), the second queued
        await h.agent.emit(el.Interruption(5))
        assert await h.browser.expect("interruption") == {"type": "interruption", "event_id": 5}
        await h.agent.emit(el.AgentResponseCorrection("first reply, long", "first", 3))
        assert await h.browser.expect("agent_response_correction") == {
            "type": "agent_response_correction", "text": "first", "original": "first reply, long", "event_id": 3}
        provider.sessions[0].speak_delay = 0
        await h.agent.emit(el.AgentResponse("after the interruption", 5))
        await h.browser.expect("avatar_speaking")
        await h.browser.send_json(type="stop")

    await with_conversation(h, body, limit=60)
    session = provider.sessions[0]
    assert session.spoken == [("after the interruption", 5)]
    assert session.interrupts == [4]


async def test_client_interrupt_stops_the_avatar() -> None:
    provider = FakeProvider()
    h = Harness(provider=provider)

    async def body(h: Harness) -> None:
        await start_and_ready(h)
        await h.agent.emit(el.AgentResponse("a reply", 3))
        await h.browser.expect("avatar_speaking")
        await h.browser.send_json(type="interrupt")
        await h.browser.send_json(type="stop")

    await with_conversation(h, body)
    assert provider.sessions[0].interrupts == [3]


async def test_audio_driven_avatar_gets_the_agents_audio_and_turn_ends(autojump_clock: trio.testing.MockClock) -> None:
    provider = FakeProvider(takes_audio=True)
    h = Harness(provider=provider)

    async def body(h: Harness) -> None:
        await start_and_ready(h)
        session = provider.sessions[0]
        await h.agent.emit(el.AgentResponse("hi", 3))
        await h.agent.emit(el.AgentAudio(b"\x00\x01" * 10, 3))
        await h.agent.emit(el.AgentAudio(b"\x00\x02" * 10, 3))
        await trio.sleep(2 * TURN_AUDIO_GAP)  # the agent's silence after the turn's audio ends the turn
        assert session.turn_ends == [3]
        await h.agent.emit(el.AgentAudio(b"\x00\x03" * 10, 4))
        await wait_until(lambda: len(session.audio) == 3)
        await h.agent.emit(el.Interruption(5))
        await h.browser.expect("interruption")
        await h.agent.emit(el.AgentAudio(b"\x00\x04" * 10, 4))  # stale: must not reach the avatar
        await h.agent.emit(el.AgentAudio(b"\x00\x05" * 10, 5))  # comes after the stale chunk, in order
        await wait_until(lambda: len(session.audio) == 4)
        await h.browser.send_json(type="stop")

    await with_conversation(h, body)
    session = provider.sessions[0]
    assert [turn for _, turn in session.audio] == [3, 3, 4, 5]
    assert session.turn_ends == [3]  # turn 4 was interrupted, not ended; turn 5 was cut by the stop
    assert session.interrupts == [4]
    assert provider.stopped == ["s1"]


async def test_setup_opens_agent_and_avatar_concurrently(autojump_clock: trio.testing.MockClock) -> None:
    h = Harness(provider=FakeProvider(open_delay=0.3), agent=FakeAgent(metadata(), connect_delay=0.2))

    async def body(h: Harness) -> None:
        t0 = trio.current_time()
        await start_and_ready(h)
        assert trio.current_time() - t0 == pytest.approx(0.3)
        await h.browser.send_json(type="stop")

    await with_conversation(h, body)


async def test_stop_ends_with_client_stop_and_close_1000() -> None:
    h = Harness()

    async def body(h: Harness) -> None:
        await start_and_ready(h)
        await h.browser.send_json(type="stop")
        assert await h.browser.expect("ended") == {"type": "ended", "reason": "client_stop"}

    await with_conversation(h, body)
    assert h.browser.closed_with == (1000, "client_stop")
    assert h.provider.stopped == ["s1"]
    assert h.agent.closed


@pytest.mark.parametrize("first", [
    '{"type":"text","text":"hi"}', "not json", b"\x00\x00", '{"type":"nope"}', '{"type":"start","user_id":5}'])
async def test_anything_but_start_first_is_a_protocol_error(first: str | bytes) -> None:
    h = Harness()

    async def body(h: Harness) -> None:
        await h.browser.send_raw(first)
        error = await h.browser.expect("error")
        assert error["code"] == "protocol_error"
        assert "start" in error["message"]
        assert await h.browser.expect("ended") == {"type": "ended", "reason": "protocol_error"}

    await with_conversation(h, body)
    assert h.browser.closed_with == (1008, "protocol_error")
    assert h.provider.sessions == []
    assert not h.agent.opened


@pytest.mark.parametrize("frame", ['{"type":"text"}', "[1,2]", '{"type":"feedback","score":"meh","event_id":1}',
                                   b"\x00\x00\x00", '{"type":"start"}'])
async def test_a_bad_frame_mid_conversation_ends_it_with_1008_and_leaves_the_avatar_session(frame: str | bytes) -> None:
    h = Harness()

    async def body(h: Harness) -> None:
        await start_and_ready(h)
        await h.browser.send_raw(frame)
        assert (await h.browser.expect("error"))["code"] == "protocol_error"
        await h.browser.expect("ended")

    await with_conversation(h, body)
    assert h.browser.closed_with is not None and h.browser.closed_with[0] == 1008
    assert h.provider.stopped == ["s1"]


async def test_oversized_frame_is_refused() -> None:
    h = Harness(relay_max_frame_bytes=1000)

    async def body(h: Harness) -> None:
        await start_and_ready(h)
        await h.browser.send_raw(b"\x00" * 1002)
        error = await h.browser.expect("error")
        assert error["code"] == "protocol_error" and "1000 bytes" in error["message"]

    await with_conversation(h, body)
    assert h.provider.stopped == ["s1"]


@pytest.mark.parametrize("code", [1002, 1008, 1011])
async def test_agent_closing_with_an_error_reaches_the_browser_with_its_code(code: int) -> None:
    h = Harness()

    async def body(h: Harness) -> None:
        await start_and_ready(h)
        await h.agent.close_with(code, "llm_timeout")
        error = await h.browser.expect("error")
        assert error["code"] == "agent_error"
        assert error["agent_close_code"] == code and error["agent_close_reason"] == "llm_timeout"
        await h.browser.expect("ended")

    await with_conversation(h, body)
    assert h.browser.closed_with == (1011, "agent_error")
    assert h.provider.stopped == ["s1"]


async def test_agent_ending_normally_ends_the_conversation_normally() -> None:
    h = Harness()

    async def body(h: Harness) -> None:
        await start_and_ready(h)
        await h.agent.close_with(1000, "")
        assert await h.browser.expect("ended") == {"type": "ended", "reason": "agent_ended"}

    await with_conversation(h, body)
    assert h.browser.closed_with == (1000, "agent_ended")
    assert h.provider.stopped == ["s1"]


async def test_agent_refusing_the_conversation_is_upstream_unavailable_and_leaves_the_avatar_session(
        autojump_clock: trio.testing.MockClock) -> None:
    h = Harness(agent=FakeAgent(metadata(), connect_delay=0.5,
                                refuse=el.AgentUnavailable("unauthorized", "ElevenLabs refused (HTTP 401)", 401)),
                provider=FakeProvider(open_delay=0.1))

    async def body(h: Harness) -> None:
        await h.browser.send_json(type="start")
        error = await h.browser.expect("error")
        assert error["code"] == "upstream_unavailable" and "401" in error["message"]

    await with_conversation(h, body)
    assert h.browser.closed_with == (1013, "upstream_unavailable")
    assert h.provider.stopped == ["s1"]  # opened at 0.1 s, before the refusal at 0.5 s


@pytest.mark.parametrize("phase", ["before_start", "during_setup", "mid_conversation", "mid_speech"])
async def test_browser_vanishing_at_any_phase_leaves_the_avatar_session_and_lets_its_stop_finish(
        phase: str, autojump_clock: trio.testing.MockClock) -> None:
    provider = FakeProvider(open_delay=0.1, stop_delay=0.5)
    h = Harness(provider=provider, agent=FakeAgent(metadata(), connect_delay=0.2))

    async def body(h: Harness) -> None:
        if phase != "before_start":
            await h.browser.send_json(type="start")
        if phase == "during_setup":
            await wait_until(lambda: bool(provider.sessions))
            assert not h.agent.opened  # the session exists, the agent is not up yet
        if phase in ("mid_conversation", "mid_speech"):
            await h.browser.expect("ready")
        if phase == "mid_speech":
            provider.sessions[0].speak_delay = 10
            await h.agent.emit(el.AgentResponse("a long reply", 3))
            await provider.sessions[0].speech_started.wait()
        h.cancel_scope.cancel()  # what quart-trio does when the client disconnects

    await with_conversation(h, body)
    if phase == "before_start":
        assert provider.open_calls == 0 and provider.sessions == [] and h.agent.open_calls == 0
    else:
        assert [s.info.session_id for s in provider.sessions] == ["s1"]
        assert provider.stopped == ["s1"]
    assert h.ended is not None and h.ended.reason == "client_gone"


async def test_the_fake_provider_loses_a_stop_it_does_not_shield(autojump_clock: trio.testing.MockClock) -> None:
    """Keeps the checks above honest: the fake's stop is a real awaited step, so a provider that did not shield it
    would be seen losing it when the browser leaves (an unawaited record in a `finally` could never be lost)."""
    provider = FakeProvider(shield_stop=False)
    h = Harness(provider=provider)

    async def body(h: Harness) -> None:
        await start_and_ready(h)
        h.cancel_scope.cancel()

    await with_conversation(h, body)
    assert len(provider.sessions) == 1
    assert provider.stopped == []


async def test_refused_avatar_degrades_to_voice_only() -> None:
    provider = FakeProvider(refuse=AvatarUnavailable("concurrent_limit", "HeyGen: concurrent limit reached"))
    h = Harness(provider=provider)

    async def body(h: Harness) -> None:
        await h.browser.send_json(type="start")
        assert await h.browser.next_message() == {"type": "avatar_unavailable", "reason": "concurrent_limit",
                                                   "message": "HeyGen: concurrent limit reached"}
        ready = await h.browser.expect("ready")
        assert ready["avatar"] is None
        await h.agent.emit(el.AgentAudio(b"\x05\x00" * 100, 3))
        assert await h.browser.next_message(skip_binary=False) == b"\x05\x00" * 100
        await h.browser.send_json(type="stop")

    await with_conversation(h, body)


async def test_refused_avatar_without_degrading_ends_the_conversation() -> None:
    provider = FakeProvider(refuse=AvatarUnavailable("concurrent_limit", "concurrent limit reached"))
    h = Harness(provider=provider, relay_degrade_to_voice=False)

    async def body(h: Harness) -> None:
        await h.browser.send_json(type="start")
        error = await h.browser.expect("error")
        assert error["code"] == "upstream_unavailable" and "concurrent limit" in error["message"]

    await with_conversation(h, body)
    assert h.browser.closed_with == (1013, "upstream_unavailable")
    assert h.agent.closed or not h.agent.opened  # never left open (a refusal that fast can beat its opening)


async def test_avatar_dying_mid_conversation_degrades_to_voice_only() -> None:
    provider = FakeProvider()
    h = Harness(provider=provider)

    async def die(*_: Any) -> None:
        raise AvatarSessionEnded("session_ended", "the avatar session ended")

    async def body(h: Harness) -> None:
        await start_and_ready(h)
        provider.sessions[0].speak_text = die  # type: ignore[method-assign, assignment]
        await h.agent.emit(el.AgentResponse("hello", 3))
        notice = await h.browser.expect("avatar_unavailable")
        assert notice["reason"] == "session_ended"
        await h.agent.emit(el.AgentAudio(b"\x07\x00" * 10, 4))
        assert await h.browser.next_message(skip_binary=False) == b"\x07\x00" * 10
        await h.browser.send_json(type="stop")

    await with_conversation(h, body)
    assert provider.stopped == ["s1"]


async def test_simulated_avatar_also_sends_the_agents_voice_to_the_browser() -> None:
    h = Harness(provider=FakeProvider(simulated=True), agent=FakeAgent(metadata(output_format="ulaw_8000")))

    async def body(h: Harness) -> None:
        ready = await start_and_ready(h)
        assert ready["output_audio"]["sample_rate"] == 8000
        await h.agent.emit(el.AgentAudio(b"\xff" * 80, 3))
        audio = await h.browser.next_message(skip_binary=False)
        assert audio == b"\x00\x00" * 80  # mu-law 0xFF is silence, decoded to PCM16
        await h.browser.send_json(type="stop")

    await with_conversation(h, body)


async def test_idle_browser_times_out(autojump_clock: trio.testing.MockClock) -> None:
    h = Harness(relay_idle_timeout=5)

    async def body(h: Harness) -> None:
        await start_and_ready(h)
        error = await h.browser.expect("error")
        assert error["code"] == "timeout"

    await with_conversation(h, body, limit=30)
    assert h.provider.stopped == ["s1"]


async def test_maximum_duration_ends_the_conversation(autojump_clock: trio.testing.MockClock) -> None:
    h = Harness(relay_max_duration=30, relay_idle_timeout=100)

    async def body(h: Harness) -> None:
        t0 = trio.current_time()  # the duration counts from `start`
        await start_and_ready(h)
        error = await h.browser.expect("error")
        assert error == {"type": "error", "code": "timeout", "message": "maximum conversation duration reached"}
        assert trio.current_time() - t0 == pytest.approx(30)

    await with_conversation(h, body, limit=60)
    assert h.provider.stopped == ["s1"]


async def test_keep_alive_runs_on_its_interval(autojump_clock: trio.testing.MockClock) -> None:
    provider = FakeProvider(keep_alive_interval=10)
    h = Harness(provider=provider, relay_idle_timeout=1000)

    async def body(h: Harness) -> None:
        await start_and_ready(h)
        t0 = trio.current_time()
        await trio.sleep(29.9)
        assert provider.sessions[0].keep_alives == 2  # at 10 s and 20 s, not yet the third
        await trio.sleep_until(t0 + 30.1)
        assert provider.sessions[0].keep_alives == 3
        await h.browser.send_json(type="stop")

    await with_conversation(h, body, limit=100)


async def test_voice_only_without_a_provider() -> None:
    h = Harness()
    h.provider = None  # type: ignore[assignment]

    async def body(h: Harness) -> None:
        ready = await start_and_ready(h)
        assert ready["avatar"] is None
        await h.agent.emit(el.AgentAudio(b"\x09\x00" * 4, 3))
        assert await h.browser.next_message(skip_binary=False) == b"\x09\x00" * 4
        await h.browser.send_json(type="stop")

    await with_conversation(h, body)


async def test_the_interrupt_button_drops_the_rest_of_the_current_turn() -> None:
    """The user presses Interrupt while turn 3's audio is still streaming from the agent: the chunks of turn 3 that
    come after it reach neither the avatar nor the browser; turn 4 is played as usual."""
    provider = FakeProvider(takes_audio=True, simulated=True)  # the avatar speaks the audio, the page plays it too
    h = Harness(provider=provider)
    first, late, later, next_turn = (bytes([n, 0]) * 400 for n in (1, 2, 3, 4))
    browser_audio: list[bytes] = []

    async def body(h: Harness) -> None:
        await start_and_ready(h)
        session = provider.sessions[0]
        await h.agent.emit(el.AgentAudio(first, 3))
        await wait_until(lambda: len(session.audio) == 1)
        await h.browser.send_json(type="interrupt")
        await wait_until(lambda: session.interrupts == [3])
        await h.agent.emit(el.AgentAudio(late, 3))
        await h.agent.emit(el.AgentAudio(later, 3))
        await h.agent.emit(el.AgentAudio(next_turn, 4))
        await wait_until(lambda: any(turn == 4 for _, turn in session.audio))
        browser_audio.extend(f for f in h.browser.drain() if isinstance(f, bytes))
        await h.browser.send_json(type="stop")

    await with_conversation(h, body)
    assert provider.sessions[0].audio == [(first, 3), (next_turn, 4)]
    heard = b"".join(browser_audio)
    assert first in heard and next_turn in heard
    assert late not in heard and later not in heard
