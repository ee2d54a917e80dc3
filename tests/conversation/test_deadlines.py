"""Conversation timers not asserted elsewhere, each as a deadline on Trio's autojump clock: the send watchdog (a
browser that stops reading mid-conversation is ended RELAY_SEND_TIMEOUT after its send blocked, checked four times
per time-out) and the agent's silence while the conversation waits in the agent's queue. (The idle, set-up,
agent-silence, finish-speaking, avatar-connect, keep-alive and maximum-duration timers are asserted in
test_endings.py, test_finish_speaking.py, test_avatar_connect.py and test_nursery.py; docs/testing.md lists them.)"""

from __future__ import annotations

import pytest
import trio
import trio.testing

from relay.protocol import elevenlabs as el
from tests.support.fakes import FakeProvider, Harness, start_and_ready, wait_until, with_conversation


async def test_a_browser_that_stops_reading_is_ended_within_the_send_timeout_plus_one_check(
        autojump_clock: trio.testing.MockClock) -> None:
    h = Harness(relay_send_timeout=8, relay_idle_timeout=5000, relay_agent_silence_timeout=5000)
    times: dict[str, float] = {}

    async def body(h: Harness) -> None:
        started = trio.current_time()  # the watchdog starts with the conversation, checking every 2 s from here
        await start_and_ready(h)
        await trio.sleep_until(started + 4.1)  # just after a check
        h.browser.stall()
        await h.agent.emit(el.UserTranscript("are you there?", 3, final=True))
        await h.browser.send_blocked.wait()
        times["blocked"] = trio.current_time()
        await wait_until(lambda: h.ended is not None)
        times["ended"] = trio.current_time()

    await with_conversation(h, body, limit=100)
    assert h.ended is not None and (h.ended.reason, h.ended.error) == ("timeout", "timeout")
    assert h.ended.message == "the browser stopped reading; conversation ended"
    assert h.provider.stopped == ["s1"]
    # The watchdog fired at its first check at least 8 s after the send blocked (checks every 2 s: within 8..10 s),
    # then the relay tried for 1 s to tell the stalled browser.
    fired_after = times["ended"] - times["blocked"] - 1.0
    assert 8.0 <= fired_after < 8.0 + 8 / 4 + 0.01, f"ended {fired_after:.3f} s after the send blocked"


async def test_an_agent_silent_while_the_conversation_waits_in_its_queue_ends_it_after_the_silence_timeout(
        autojump_clock: trio.testing.MockClock) -> None:
    h = Harness(provider=FakeProvider(open_delay=0.5), relay_agent_silence_timeout=20, relay_idle_timeout=5000)
    times: dict[str, float] = {}

    async def body(h: Harness) -> None:
        await h.agent.emit(el.QueueStatus("waiting"))
        await h.browser.send_json(type="start")
        assert await h.browser.next_message() == {"type": "queue_status", "status": "waiting"}
        await trio.sleep(7)
        await h.agent.emit(el.Ping(4, None))  # a sign of life restarts the silence
        await wait_until(lambda: bool(h.agent.sent_of("pong")))
        times["last_event"] = trio.current_time()
        error = await h.browser.expect("error")
        times["ended"] = trio.current_time()
        assert error == {"type": "error", "code": "agent_error",
                         "message": "the agent sent nothing for 20 s while the conversation waited in its queue"}

    await with_conversation(h, body, limit=200)
    assert times["ended"] - times["last_event"] == pytest.approx(20.0, abs=0.01)
    assert h.provider.stopped == ["s1"]
