"""The ways a conversation ends that the happy-path tests do not reach: formats the relay cannot relay, a browser
that never starts or stops reading, an agent that goes silent or breaks the protocol, a refused token, a shutdown,
a browser that leaves while a send is failing. Each test asserts what the browser is told (error, ended, close code)
and what reached the upstreams. Timeouts run on the autojump clock."""

from __future__ import annotations

import logging
from typing import Any

import pytest
import trio
import trio.testing

from relay.conversation.outbox import OUTBOX_FRAMES
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


async def expect_ending(h: Harness) -> tuple[dict[str, Any], dict[str, Any]]:
    """The `error` and `ended` messages that end the conversation (nothing else is skipped but audio)."""
    error = await h.browser.next_message()
    assert isinstance(error, dict) and error["type"] == "error", error
    ended = await h.browser.next_message()
    assert isinstance(ended, dict)
    return error, ended


# ---- formats the relay cannot relay (z1) ---------------------------------------------------------------------------


async def test_a_mu_law_agent_gets_the_browsers_pcm_mu_law_encoded() -> None:
    """Telephony agents announce `ulaw_8000` input: the browser is told to send PCM16 at 8 kHz and the relay encodes
    it to G.711 μ-law (one byte per sample). (This used to be refused as "only PCM input is supported".)"""
    h = Harness(agent=FakeAgent(metadata(input_format="ulaw_8000", output_format="ulaw_8000")))

    async def body(h: Harness) -> None:
        ready = await start_and_ready(h)
        assert ready["input_audio"]["sample_rate"] == 8000
        pcm = (0).to_bytes(2, "little", signed=True) + (-1000).to_bytes(2, "little", signed=True) \
            + (32767).to_bytes(2, "little", signed=True) + (100).to_bytes(2, "little", signed=True)
        await h.browser.send_raw(pcm)
        await wait_until(lambda: len(h.agent.audio_sent()) == 4)
        assert h.agent.audio_sent() == bytes([0xFF, 0x4E, 0x80, 0xF2])
        await h.browser.send_json(type="stop")
        await h.browser.expect("ended")

    await with_conversation(h, body)
    assert h.browser.closed_with == (1000, "client_stop")


@pytest.mark.parametrize(("input_format", "output_format", "bad"), [
    ("pcm_16000", "mp3_44100", "mp3_44100"), ("pcm_16000", "ulaw_16000", "ulaw_16000"), ("opus_48000", "pcm_16000",
                                                                                          "opus_48000")])
async def test_an_agent_announcing_an_unknown_format_is_refused_before_ready(
        input_format: str, output_format: str, bad: str) -> None:
    h = Harness(agent=FakeAgent(metadata(input_format=input_format, output_format=output_format)))

    async def body(h: Harness) -> None:
        await h.browser.send_json(type="start")
        error, ended = await expect_ending(h)
        assert error == {"type": "error", "code": "agent_error",
                         "message": f"the agent announced an unsupported format: unknown audio format '{bad}'"}
        assert ended == {"type": "ended", "reason": "agent_error"}

    await with_conversation(h, body)
    assert h.browser.closed_with == (1011, "agent_error")
    assert h.provider.stopped == ["s1"]


# ---- a browser that connects and never sends `start` (z2) ---------------------------------------------------------


async def test_a_browser_that_never_sends_start_is_ended_after_the_start_timeout(
        autojump_clock: trio.testing.MockClock) -> None:
    h = Harness(relay_idle_timeout=600, relay_start_timeout=7)
    t0 = trio.current_time()

    async def body(h: Harness) -> None:
        error, ended = await expect_ending(h)
        assert trio.current_time() - t0 == pytest.approx(7)
        assert error == {"type": "error", "code": "timeout", "message": "no 'start' message received within 7 s"}
        assert ended == {"type": "ended", "reason": "timeout"}

    await with_conversation(h, body, limit=100)
    assert h.browser.closed_with == (1000, "timeout")
    assert h.provider.open_calls == 0 and h.agent.open_calls == 0
    assert h.ended is not None and h.ended.reason == "timeout"


# ---- a browser that stops reading (z4) -----------------------------------------------------------------------------


async def test_a_full_outbox_ends_the_conversation_at_once(autojump_clock: trio.testing.MockClock) -> None:
    # The send watchdog would end it only after relay_send_timeout (1000 s): the full queue must end it first.
    h = Harness(relay_send_timeout=1000, relay_idle_timeout=5000)

    async def body(h: Harness) -> None:
        await start_and_ready(h)
        h.browser.stall()
        t0 = trio.current_time()
        for n in range(OUTBOX_FRAMES + 2):  # one is blocked in the socket's send, OUTBOX_FRAMES wait in the queue
            await h.agent.emit(el.UserTranscript(f"words {n}", n, final=True))
        await wait_until(lambda: h.ended is not None)
        # at once, then 1 s trying to tell the browser (give or take one poll step)
        assert trio.current_time() - t0 == pytest.approx(1.0, abs=0.002)

    await with_conversation(h, body, limit=100)
    assert h.ended is not None
    assert (h.ended.reason, h.ended.error) == ("timeout", "timeout")
    assert h.ended.message == "the browser stopped reading; conversation ended"
    assert h.provider.stopped == ["s1"]


async def test_a_browser_behind_on_audio_loses_audio_not_the_conversation(
        autojump_clock: trio.testing.MockClock) -> None:
    h = Harness(relay_send_timeout=1000, relay_idle_timeout=5000)
    h.provider = None  # type: ignore[assignment]

    async def body(h: Harness) -> None:
        await start_and_ready(h)
        h.browser.stall()
        for _ in range(OUTBOX_FRAMES + 50):  # more audio than the outbox holds
            await h.agent.emit(el.AgentAudio(b"\x01\x00" * 160, 3))
        await h.agent.emit(el.Ping(9, None))
        await wait_until(lambda: bool(h.agent.sent_of("pong")))  # the agent pump is still going
        assert h.ended is None
        h.browser.stalled = False  # it reads again (the send blocked meanwhile is not resumed)
        await h.browser.send_json(type="stop")
        assert await h.browser.expect("ended") == {"type": "ended", "reason": "client_stop"}

    await with_conversation(h, body, limit=100)
    assert h.record is not None and h.record.reason == "client_stop"


# ---- the agent's side ----------------------------------------------------------------------------------------------


async def test_an_agent_that_goes_silent_ends_as_agent_error(autojump_clock: trio.testing.MockClock) -> None:
    h = Harness(relay_agent_silence_timeout=30, relay_idle_timeout=1000)

    async def body(h: Harness) -> None:
        await start_and_ready(h)
        t0 = trio.current_time()
        error, ended = await expect_ending(h)
        assert trio.current_time() - t0 == pytest.approx(30, abs=5)  # the deadline moves lazily, by up to 1/8
        assert error == {"type": "error", "code": "agent_error", "message": "the agent sent nothing for 30 s"}
        assert ended == {"type": "ended", "reason": "agent_error"}

    await with_conversation(h, body, limit=200)
    assert h.browser.closed_with == (1011, "agent_error")
    assert h.provider.stopped == ["s1"]


async def test_the_agents_error_message_is_carried_to_the_browser() -> None:
    h = Harness()

    async def body(h: Harness) -> None:
        await start_and_ready(h)
        await h.agent.emit(el.AgentErrorEvent(1011, "internal error in the LLM", "internal"))
        await h.agent.close_with(1011, "internal_error")
        error, ended = await expect_ending(h)
        assert error == {"type": "error", "code": "agent_error",
                         "message": "the agent closed the conversation (1011 internal_error): "
                                    "internal error in the LLM",
                         "agent_close_code": 1011, "agent_close_reason": "internal_error"}
        assert ended == {"type": "ended", "reason": "agent_error"}

    await with_conversation(h, body)
    assert h.browser.closed_with == (1011, "agent_error")


async def test_a_normal_close_after_an_earlier_error_event_is_still_a_normal_end() -> None:
    """An earlier, non-fatal error event does not taint the agent's later close 1000 (it used to become
    `agent_error`, close 1011)."""
    h = Harness()

    async def body(h: Harness) -> None:
        await start_and_ready(h)
        await h.agent.emit(el.AgentErrorEvent(1002, "received 1002 (protocol error) a hiccup", None))
        await h.agent.close_with(1000, "")
        assert await h.browser.next_message() == {"type": "ended", "reason": "agent_ended"}

    await with_conversation(h, body)
    assert h.browser.closed_with == (1000, "agent_ended")


async def test_max_duration_ends_as_a_normal_end_with_its_own_reason() -> None:
    """ElevenLabs sends `error` (max_duration_exceeded, code 1000) then closes 1000: a normal end (it used to be
    `error agent_error` and close 1011)."""
    h = Harness()

    async def body(h: Harness) -> None:
        await start_and_ready(h)
        await h.agent.emit(el.AgentErrorEvent(1000, "Max duration exceeded", "max_duration_exceeded"))
        await h.agent.close_with(1000, "max_duration_exceeded")
        assert await h.browser.next_message() == {"type": "ended", "reason": "max_duration"}

    await with_conversation(h, body)
    assert h.browser.closed_with == (1000, "max_duration")
    assert h.ended is not None and h.ended.error is None


async def test_a_queue_timeout_says_the_agent_is_busy() -> None:
    h = Harness()

    async def body(h: Harness) -> None:
        await start_and_ready(h)
        await h.agent.close_with(3008, "too many concurrent connections")
        error, ended = await expect_ending(h)
        assert error["code"] == "agent_busy" and "busy" in error["message"]
        assert ended == {"type": "ended", "reason": "agent_busy"}

    await with_conversation(h, body)
    assert h.browser.closed_with == (1013, "agent_busy")


async def test_malformed_known_events_are_skipped_and_the_conversation_goes_on() -> None:
    h = Harness()

    async def body(h: Harness) -> None:
        await start_and_ready(h)
        await h.agent.emit(el.MalformedEvent("audio", "audio: missing or invalid 'event_id'"))
        await h.agent.emit(el.MalformedEvent(None, "frame is not valid JSON"))
        await h.agent.emit(el.AgentResponse("still here", 3))
        assert await h.browser.expect("agent_response") == {"type": "agent_response", "text": "still here",
                                                            "event_id": 3}
        await h.browser.send_json(type="stop")
        await h.browser.expect("ended")

    await with_conversation(h, body)
    assert h.browser.closed_with == (1000, "client_stop")


async def test_malformed_frames_alone_do_not_keep_a_silent_agent_alive(
        autojump_clock: trio.testing.MockClock) -> None:
    h = Harness(relay_agent_silence_timeout=30, relay_idle_timeout=1000)

    async def body(h: Harness) -> None:
        await start_and_ready(h)

        async def garbage() -> None:
            while True:
                await trio.sleep(1)
                await h.agent.emit(el.MalformedEvent(None, "frame is not valid JSON"))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(garbage)
            error, _ended = await expect_ending(h)
            nursery.cancel_scope.cancel()
        assert error["message"] == "the agent sent nothing for 30 s"

    await with_conversation(h, body, limit=200)


@pytest.mark.parametrize(("refusal", "code", "message", "extra"), [
    (el.AgentClosed(1008, "override_error"), "agent_refused",
     "the agent does not allow the overrides this page sent (enable them in the agent's security settings)",
     {"agent_close_code": 1008, "agent_close_reason": "override_error"}),
    (el.AgentRefused(el.classify_close(1008, "missing_dynamic_variable", el.AgentErrorEvent(
        1008, "Missing required dynamic variables in first message: {'name'}", "missing_dynamic_variable"),
        during_setup=True), error_type="missing_dynamic_variable", code=1008, close_code=1008,
        close_reason="missing_dynamic_variable"), "agent_refused",
     "the agent needs a dynamic variable the page did not send (or sent with the wrong type): "
     "Missing required dynamic variables in first message: {'name'}",
     {"agent_error_type": "missing_dynamic_variable", "agent_close_code": 1008,
      "agent_close_reason": "missing_dynamic_variable"}),
    (el.AgentRefused(el.classify_close(3008, "queue timeout", during_setup=True), close_code=3008,
                     close_reason="queue timeout"), "agent_busy",
     "the agent is busy: too many conversations at once, and the wait in its queue timed out; try again shortly",
     {"agent_close_code": 3008, "agent_close_reason": "queue timeout"}),
    (el.AgentProtocolError("first message was not conversation_initiation_metadata"), "agent_error",
     "the agent broke the protocol: first message was not conversation_initiation_metadata", {}),
    (el.AgentUnavailable("rate_limited", "ElevenLabs refused (HTTP 429)", 429), "upstream_unavailable",
     "the voice agent is unavailable: ElevenLabs refused (HTTP 429)", {}),
])
async def test_an_agent_failing_during_set_up_is_explained_to_the_browser(
        refusal: Exception, code: str, message: str, extra: dict[str, Any],
        autojump_clock: trio.testing.MockClock) -> None:
    h = Harness(agent=FakeAgent(metadata(), connect_delay=1, refuse=refusal))

    async def body(h: Harness) -> None:
        await h.browser.send_json(type="start")
        error, ended = await expect_ending(h)
        assert error == {"type": "error", "code": code, "message": message, **extra}
        assert ended == {"type": "ended", "reason": code}

    await with_conversation(h, body)
    assert h.browser.closed_with == ({"agent_error": 1011, "agent_refused": 1008}.get(code, 1013), code)
    assert h.provider.stopped == ["s1"]


async def test_a_set_up_slower_than_the_setup_timeout_is_upstream_unavailable(
        autojump_clock: trio.testing.MockClock) -> None:
    h = Harness(agent=FakeAgent(metadata(), connect_delay=60), relay_setup_timeout=10)
    t0 = trio.current_time()

    async def body(h: Harness) -> None:
        await h.browser.send_json(type="start")
        error, ended = await expect_ending(h)
        assert trio.current_time() - t0 == pytest.approx(10)
        assert error == {"type": "error", "code": "upstream_unavailable",
                         "message": "the upstream services took too long to set up"}
        assert ended == {"type": "ended", "reason": "upstream_unavailable"}

    await with_conversation(h, body, limit=100)
    assert h.browser.closed_with == (1013, "upstream_unavailable")
    assert h.provider.stopped == ["s1"]
    assert not h.agent.opened


async def test_an_unexpected_failure_is_an_internal_error_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    h = Harness(agent=FakeAgent(metadata(), refuse=KeyError("bug")))

    async def body(h: Harness) -> None:
        await h.browser.send_json(type="start")
        error, ended = await expect_ending(h)
        assert error == {"type": "error", "code": "internal", "message": "internal error"}  # no detail leaks
        assert ended == {"type": "ended", "reason": "internal"}

    with caplog.at_level(logging.ERROR, logger="relay.conversation"):
        await with_conversation(h, body)
    assert h.browser.closed_with == (1011, "internal")
    assert [r.getMessage().startswith("internal error in conversation") for r in caplog.records] == [True]


# ---- refused token (m4): checked before the conversation exists, tests/server/test_opening.py ----------------------


# ---- stale audio after an interruption (m3c) -----------------------------------------------------------------------


@pytest.mark.parametrize("avatar", ["voice_only", "simulated_text_avatar", "simulated_audio_avatar"])
async def test_stale_audio_of_an_interrupted_turn_is_not_sent_to_the_browser(avatar: str) -> None:
    provider = None if avatar == "voice_only" else FakeProvider(simulated=True,
                                                                takes_audio=avatar == "simulated_audio_avatar")
    h = Harness(provider=provider)
    h.provider = provider  # type: ignore[assignment]

    async def body(h: Harness) -> None:
        await start_and_ready(h)
        await h.agent.emit(el.AgentAudio(b"\x03\x00" * 8, 3))
        await h.agent.emit(el.Interruption(4))
        await h.agent.emit(el.AgentAudio(b"\x33\x00" * 8, 3))  # stale: turn 3 was interrupted
        await h.agent.emit(el.AgentAudio(b"\x04\x00" * 8, 4))
        received: list[Any] = []
        while b"\x04\x00" * 8 not in received:
            received.append(await h.browser.next_message(skip_binary=False))
        assert received == [b"\x03\x00" * 8, {"type": "interruption", "event_id": 4}, b"\x04\x00" * 8]
        await h.browser.send_json(type="stop")

    await with_conversation(h, body)


# ---- the relay shutting down, the browser leaving --------------------------------------------------------------


async def test_a_shutdown_ends_the_conversation_with_shutdown_and_1001() -> None:
    h = Harness()

    async def body(h: Harness) -> None:
        await start_and_ready(h)
        h.shutdown_scope.cancel()  # what the registry's drain does
        error, ended = await expect_ending(h)
        assert error == {"type": "error", "code": "shutdown", "message": "the relay is shutting down"}
        assert ended == {"type": "ended", "reason": "shutdown"}

    await with_conversation(h, body)
    assert h.browser.closed_with == (1001, "shutdown")
    assert h.provider.stopped == ["s1"]
    assert h.record is not None and h.record.reason == "shutdown"


@pytest.mark.parametrize("phase", ["before_start", "ready"])
async def test_a_conversation_cancelled_by_the_server_tells_its_browser_shutdown_before_the_cancellation_goes_on(
        phase: str) -> None:
    """The server cancels the handler (hypercorn at the end of its grace period) while the browser is still there:
    it gets `error` `shutdown`, `ended` `shutdown` and close 1001, the avatar session is stopped, and the
    cancellation still goes on up (the handler does not return as if nothing happened)."""
    h = Harness()
    h.browser_left = lambda: False

    async def body(h: Harness) -> None:
        if phase == "ready":
            await start_and_ready(h)
        h.cancel_scope.cancel()  # the server's scope, not the browser leaving
        error, ended = await expect_ending(h)
        assert error == {"type": "error", "code": "shutdown", "message": "the relay is shutting down"}
        assert ended == {"type": "ended", "reason": "shutdown"}

    await with_conversation(h, body)
    assert h.cancel_scope.cancelled_caught
    assert h.record is None
    assert h.browser.closed_with == (1001, "shutdown")
    assert h.ended is not None and h.ended.reason == "shutdown"
    assert h.provider.stopped == (["s1"] if phase == "ready" else [])


async def test_a_cancellation_after_the_browser_left_sends_nothing() -> None:
    """The same cancellation once the browser is known to be gone: no send is attempted on its socket."""
    h = Harness()
    left = False
    h.browser_left = lambda: left

    async def body(h: Harness) -> None:
        nonlocal left
        await start_and_ready(h)
        left = True
        h.cancel_scope.cancel()

    await with_conversation(h, body)
    assert h.browser.closed_with is None
    assert h.browser.drain() == []
    assert h.ended is not None and h.ended.reason == "client_gone"
    assert h.provider.stopped == ["s1"]


async def test_a_browser_leaving_while_a_send_fails_ends_quietly_as_client_gone(
        caplog: pytest.LogCaptureFixture) -> None:
    h = Harness()

    async def body(h: Harness) -> None:
        await start_and_ready(h)
        h.browser.stall()
        h.browser.breaks_when_cancelled = True  # the blocked send fails as the socket dies
        await h.agent.emit(el.AgentResponse("a reply the browser never reads", 3))
        await h.browser.send_blocked.wait()
        h.cancel_scope.cancel()  # the browser left

    with caplog.at_level(logging.ERROR, logger="relay.conversation"):
        await with_conversation(h, body)  # neither the send's failure nor a group of it escapes
    assert h.cancel_scope.cancelled_caught
    assert h.record is None  # nothing returned: the cancellation went on up
    assert h.ended is not None and h.ended.reason == "client_gone"
    assert h.provider.stopped == ["s1"]
    assert caplog.records == []  # not logged as a server error
