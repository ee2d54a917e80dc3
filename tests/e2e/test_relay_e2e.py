"""The relay end to end: real hypercorn server, real simulators, real sockets on loopback.

Every test ends by checking the avatar simulator's ledger: every session the relay created was stopped. The relay
runs with its production defaults, the session journal included.
"""

from __future__ import annotations

from typing import Any

import pytest
import trio

from relay.sim.elevenlabs_sim import ALL_CLIENT_EVENTS
from tests.support.harness import running_relay, silence, spoken_sentence

pytestmark = pytest.mark.timeout(60)


def only_session(ledger: dict[str, Any]) -> dict[str, Any]:
    """The one session of a HeyGen simulator ledger (fails if there is not exactly one)."""
    (session,) = ledger["sessions"].values()
    return session  # type: ignore[no-any-return]


async def test_a_spoken_turn_reaches_the_agent_and_the_avatar_speaks_the_reply() -> None:
    async with running_relay() as relay:
        await relay.faults("elevenlabs", first_message="")
        async with relay.browser() as browser:
            ready = await browser.start()
            assert ready["avatar"]["provider"] == "heygen"
            assert ready["avatar"]["simulated"] is True
            rate = ready["input_audio"]["sample_rate"]
            await browser.stream(spoken_sentence(rate) + silence(1.0, rate))
            tentative = await browser.expect("user_transcript")
            final = await browser.expect("user_transcript", where=lambda m: m["final"])
            assert tentative["event_id"] == final["event_id"]
            reply = await browser.expect("agent_response")
            speaking = await browser.expect("avatar_speaking")
            assert speaking["text"] == reply["text"] and speaking["duration_ms"] > 0
            await browser.send(type="stop")
            assert await browser.expect("ended") == {"type": "ended", "reason": "client_stop"}
        ledger = await relay.wait_all_sessions_stopped("heygen")
        (session,) = ledger["sessions"].values()
        assert [(t["text"], t["task_type"]) for t in session["tasks"]] == [(reply["text"], "repeat")]
        agent = await relay.ledger("elevenlabs")
        (conversation,) = agent["conversations"]
        assert conversation["user_audio_seconds"] == pytest.approx(
            (len(spoken_sentence(rate)) + len(silence(1.0, rate))) / 2 / rate, rel=0.01)


async def test_a_typed_message_gets_a_spoken_reply() -> None:
    async with running_relay() as relay:
        await relay.faults("elevenlabs", first_message="")
        async with relay.browser() as browser:
            await browser.start()
            await browser.send(type="text", text="what are your opening hours?")
            reply = await browser.expect("agent_response")
            assert "opening hours" in reply["text"]
            await browser.expect("avatar_speaking")
            await browser.send(type="stop")
            await browser.expect("ended")
        ledger = await relay.wait_all_sessions_stopped("heygen")
        (session,) = ledger["sessions"].values()
        assert session["tasks"][0]["text"] == reply["text"]
        with trio.fail_after(5):
            while (await relay.ledger("elevenlabs"))["conversations"][0]["closed_at"] is None:
                await trio.sleep(0.05)
        (conversation,) = (await relay.ledger("elevenlabs"))["conversations"]
        assert conversation["closed_by"] == "client"  # quart-trio never shows the app a client close code


async def test_stop_mid_greeting_is_answered_with_ended_and_stops_the_session() -> None:
    async with running_relay() as relay:
        async with relay.browser() as browser:
            await browser.start()
            await browser.expect("avatar_speaking")
            await browser.send(type="stop")
            assert await browser.expect("ended") == {"type": "ended", "reason": "client_stop"}
        ledger = await relay.wait_all_sessions_stopped("heygen")
        assert only_session(ledger)["stop_requests"] == 1


async def test_talking_over_the_reply_interrupts_the_avatar() -> None:
    async with running_relay() as relay:
        await relay.faults("elevenlabs", first_message="", max_reply_s=6.0,
                           client_events=list(ALL_CLIENT_EVENTS))  # corrections are opt-in on a real agent
        async with relay.browser() as browser:
            ready = await browser.start()
            rate = ready["input_audio"]["sample_rate"]
            await browser.send(type="text", text="tell me a long story about the sea and the mountains please")
            await browser.expect("avatar_speaking")
            await browser.stream(spoken_sentence(rate) + silence(1.0, rate))
            interruption = await browser.expect("interruption")
            correction = await browser.expect("agent_response_correction")
            assert correction["event_id"] < interruption["event_id"]
            assert len(correction["text"]) < len(correction["original"])
            await browser.send(type="stop")
            await browser.expect("ended")
        ledger = await relay.wait_all_sessions_stopped("heygen")
        (session,) = ledger["sessions"].values()
        assert session["interrupts"]["count"] >= 1


async def test_the_browser_interrupt_button_reaches_the_avatar() -> None:
    async with running_relay() as relay:
        async with relay.browser() as browser:
            await browser.start()
            await browser.expect("avatar_speaking")  # the greeting
            await browser.send(type="interrupt")
            await relay.wait_for_ledger("heygen", lambda ledger: only_session(ledger)["interrupts"]["count"] >= 1,
                                        "the interrupt to reach the HeyGen simulator")
            await browser.send(type="stop")
            await browser.expect("ended")
        ledger = await relay.wait_all_sessions_stopped("heygen")
        (session,) = ledger["sessions"].values()
        assert session["interrupts"]["count"] == 1


async def test_a_client_tool_call_round_trip() -> None:
    async with running_relay() as relay:
        await relay.faults("elevenlabs", first_message="",
                           client_events=list(ALL_CLIENT_EVENTS))  # client tool calls are opt-in on a real agent
        async with relay.browser() as browser:
            await browser.start()
            await browser.send(type="text", text="use the tool to get the time")
            call = await browser.expect("tool_call")
            await browser.send(type="tool_result", tool_call_id=call["tool_call_id"], result="12:34")
            reply = await browser.expect("agent_response")
            assert "12:34" in reply["text"]
            await browser.send(type="stop")
            await browser.expect("ended")
        await relay.wait_all_sessions_stopped("heygen")


async def test_liveavatar_gets_the_agents_own_audio_at_24khz() -> None:
    async with running_relay(relay_avatar="liveavatar") as relay:
        await relay.faults("elevenlabs", first_message="")
        async with relay.browser() as browser:
            ready = await browser.start()
            assert ready["avatar"]["provider"] == "liveavatar"
            await browser.send(type="text", text="hello there avatar")
            await browser.expect("avatar_state", where=lambda m: m["speaking"])
            await browser.expect("avatar_state", where=lambda m: not m["speaking"], timeout=15)
            await browser.send(type="stop")
            await browser.expect("ended")
        agent = await relay.ledger("elevenlabs")
        reply_seconds = agent["conversations"][0]["agent_audio_seconds"]
        ledger = await relay.ledger("liveavatar")
        (session,) = ledger["sessions"].values()
        assert session["stopped"] is not None
        assert session["lite"]["audio_seconds"] == pytest.approx(reply_seconds, rel=0.05)
        assert session["lite"]["chunks_after_interrupt"] == 0


@pytest.mark.parametrize("phase", ["before_start", "during_new", "during_start", "after_ready", "mid_speech"])
async def test_browser_vanishing_at_each_phase_leaves_no_session_running(phase: str) -> None:
    async with running_relay() as relay:
        # The slow answers hold the conversation in its phase while the browser leaves; the waits below make sure
        # the phase was reached, and the ledger checks at the end that it was not passed.
        if phase == "during_new":
            await relay.faults("heygen", latency_ms={"streaming.new": 1500})
        if phase == "during_start":
            await relay.faults("heygen", latency_ms={"streaming.start": 1500})
        async with relay.browser() as browser:
            if phase != "before_start":
                await browser.send(type="start")
            if phase == "during_new":  # the simulator creates the session, then delays the answer
                await relay.wait_for_ledger("heygen", lambda ledger: ledger["totals"]["created"] == 1,
                                            "streaming.new in flight")
            if phase == "during_start":
                await relay.wait_for_ledger("heygen", lambda ledger: ledger["totals"]["started"] == 1,
                                            "streaming.start in flight")
            if phase in ("after_ready", "mid_speech"):
                await browser.expect("ready")
            if phase == "mid_speech":
                await browser.expect("avatar_speaking")
            await browser.ws.aclose()
        # A session whose `streaming.new` answer arrives after the browser left is stopped too.
        ledger = await relay.wait_all_sessions_stopped("heygen")
        if phase == "before_start":
            assert ledger["totals"]["created"] == 0
            assert (await relay.ledger("elevenlabs"))["conversations"] == []
            return
        session = only_session(ledger)
        if phase == "during_new":
            assert session["started_at"] is None  # nothing more was asked of a session nobody waits for
        if phase in ("during_new", "during_start"):
            assert session["tasks"] == []  # the browser left before the greeting could be spoken
        if phase == "mid_speech":
            assert len(session["tasks"]) >= 1


@pytest.mark.parametrize("code", [1002, 1008, 1011])
async def test_agent_closing_with_an_error_ends_with_agent_error_and_stops_the_avatar(code: int) -> None:
    async with running_relay() as relay:
        await relay.faults("elevenlabs", close_code=code, close_reason="llm_timeout", close_after_ms=300)
        async with relay.browser() as browser:
            await browser.start()
            error = await browser.expect("error")
            assert error["code"] == "agent_error"
            assert error["agent_close_code"] == code and error["agent_close_reason"] == "llm_timeout"
            assert await browser.expect("ended") == {"type": "ended", "reason": "agent_error"}
        await relay.wait_all_sessions_stopped("heygen")


async def test_agent_refusing_the_handshake_is_upstream_unavailable_and_stops_the_avatar() -> None:
    async with running_relay() as relay:
        await relay.faults("elevenlabs", refuse_handshake_status=403)
        async with relay.browser() as browser:
            await browser.send(type="start")
            error = await browser.expect("error")
            assert error["code"] == "upstream_unavailable" and "403" in error["message"]
        ledger = await relay.wait_all_sessions_stopped("heygen")
        assert ledger["totals"]["created"] == 1


async def test_concurrent_limit_degrades_to_voice_only() -> None:
    async with running_relay() as relay:
        await relay.faults("heygen", concurrency_limit=0)
        async with relay.browser() as browser:
            await browser.send(type="start")
            notice = await browser.expect("avatar_unavailable")
            assert notice["reason"] == "concurrent_limit"
            ready = await browser.expect("ready")
            assert ready["avatar"] is None
            await browser.send(type="text", text="can you hear me")
            await browser.expect("agent_response")
            await browser.wait_for_audio()
            await browser.send(type="stop")
            await browser.expect("ended")
        ledger = await relay.ledger("heygen")
        assert ledger["totals"]["created"] == 0


async def test_concurrent_limit_without_degrading_is_upstream_unavailable() -> None:
    async with running_relay(relay_degrade_to_voice=False) as relay:
        await relay.faults("heygen", concurrency_limit=0)
        async with relay.browser() as browser:
            await browser.send(type="start")
            error = await browser.expect("error")
            assert error["code"] == "upstream_unavailable"
            assert "concurrent" in error["message"]


async def test_heygen_dying_mid_conversation_is_replaced() -> None:
    """The session expired (idle): the relay finds it gone when it speaks, and replaces it (#23 §3)."""
    async with running_relay() as relay:
        await relay.faults("elevenlabs", first_message="")
        async with relay.browser() as browser:
            await browser.start()
            await relay.faults("heygen", idle_timeout_s=0.2)
            await relay.wait_for_ledger("heygen", lambda ledger: ledger["totals"]["expired"] == 1,
                                        "the simulator to expire the idle session")
            await browser.send(type="text", text="are you still there")
            notice = await browser.expect("avatar_changed")
            assert notice["reason"] == "session_gone" and notice["avatar"]["provider"] == "heygen"
            await relay.faults("heygen", idle_timeout_s=120)
            await browser.send(type="text", text="and now")
            await browser.expect("agent_response", where=lambda m: "and now" in m["text"])
            await browser.send(type="stop")
            await browser.expect("ended")


async def test_many_conversations_at_once_all_end_with_their_sessions_stopped() -> None:
    async with running_relay() as relay:
        async def one(i: int) -> None:
            async with relay.browser() as browser:
                await browser.start(user_id=f"user-{i}")
                await browser.send(type="text", text=f"hello number {i}")
                await browser.expect("agent_response", where=lambda m: f"number {i}" in m["text"])
                if i % 2:
                    await browser.send(type="stop")
                    await browser.expect("ended")
                # the others just vanish

        async with trio.open_nursery() as nursery:
            for i in range(20):
                nursery.start_soon(one, i)
        ledger = await relay.wait_all_sessions_stopped("heygen")
        assert ledger["totals"]["created"] == 20


async def test_the_journal_holds_a_running_session_and_forgets_it_once_stopped() -> None:
    async with running_relay() as relay:
        async with relay.browser() as browser:
            await browser.start()
            ledger = await relay.ledger("heygen")
            (session_id,) = ledger["sessions"]
            with trio.fail_after(10):  # the row is written on a worker thread, alongside streaming.start
                while relay.journal_rows() != [("heygen", session_id)]:
                    await trio.sleep(0.02)
            await browser.send(type="stop")
            await browser.expect("ended")
        await relay.wait_all_sessions_stopped("heygen")
        with trio.fail_after(10):
            while relay.journal_rows():
                await trio.sleep(0.02)


@pytest.mark.parametrize("journal", [True, False], ids=["journaled", "unjournaled"])
async def test_a_failing_streaming_start_degrades_to_voice_and_stops_the_created_session(journal: bool) -> None:
    async with running_relay(relay_journal=journal) as relay:
        await relay.faults("heygen", fail={"streaming.start": {"status": 500, "code": 500, "message": "down"}})
        await relay.faults("elevenlabs", first_message="")
        async with relay.browser() as browser:
            await browser.send(type="start")
            notice = await browser.expect("avatar_unavailable")
            assert notice["reason"] == "upstream_error"
            assert (await browser.expect("ready"))["avatar"] is None
            await browser.send(type="text", text="can you hear me")
            await browser.expect("agent_response")
            await browser.wait_for_audio()
            await browser.send(type="stop")
            assert await browser.expect("ended") == {"type": "ended", "reason": "client_stop"}
        ledger = await relay.wait_all_sessions_stopped("heygen")
        assert ledger["totals"]["created"] == 1
