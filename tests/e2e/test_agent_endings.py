"""How conversations with a real-like ElevenLabs agent end, through the real relay (hypercorn) and the simulators:
the agent hanging up right after its goodbye (streamed ahead of real time), max duration, set-up refusals, a busy
agent, malformed events, and a μ-law (telephony) agent. Each asserts what the browser sees (messages, close code)
and what the upstream simulators' ledgers recorded."""

from __future__ import annotations

from typing import Any

import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families
from trio_websocket import ConnectionClosed

from tests.support.harness import BrowserClient, Relay, poll_ledger, running_relay, spoken_sentence

pytestmark = pytest.mark.timeout(90)


async def until_closed(browser: BrowserClient) -> tuple[list[dict[str, Any]], int | None]:
    """Every text message up to the close, and the close code."""
    messages: list[dict[str, Any]] = []
    with trio.fail_after(30):
        try:
            while True:
                messages.append(await browser.next_message())
        except ConnectionClosed as closed:
            return messages, closed.reason.code


async def upstream_errors(relay: Relay, upstream: str) -> float:
    response = await relay.http.get(relay.url + "/metrics")
    return sum(sample.value for family in text_string_to_metric_families(response.text)
               for sample in family.samples
               if sample.name == "avatar_relay_upstream_errors_total" and sample.labels.get("upstream") == upstream)


async def test_a_goodbye_then_close_1000_reaches_the_liveavatar_avatar_whole() -> None:
    """The agent streams a ~5 s goodbye in one burst and closes 1000 right after its last chunk (end_call): the
    avatar gets all of it and has time to say it before its session is stopped; the browser gets `ended
    agent_ended`, no error, close 1000. (Before: the session was stopped well under a second after the goodbye's
    first chunk.)"""
    async with running_relay(relay_avatar="liveavatar") as relay:
        await relay.faults("elevenlabs", first_message="", end_call_after_reply=True)
        async with relay.browser() as browser:
            await browser.start()
            await browser.send(type="text", text="that is all, thank you")
            messages, code = await until_closed(browser)
        assert code == 1000
        assert [m for m in messages if m["type"] in ("error", "ended")] == [{"type": "ended", "reason": "agent_ended"}]
        (agent,) = (await relay.ledger("elevenlabs"))["conversations"]
        assert (agent["close_code"], agent["closed_by"]) == (1000, "agent")
        goodbye_seconds = agent["agent_audio_seconds"]
        assert goodbye_seconds >= 5.0
        ledger = await relay.wait_all_sessions_stopped("liveavatar")
        (session,) = ledger["sessions"].values()
        assert session["lite"]["audio_seconds"] == pytest.approx(goodbye_seconds, abs=0.05)  # all of it arrived
        (event,) = session["lite"]["events"].values()
        # ... and was given the time to be said before the stop (its real-time duration from its first chunk).
        assert session["stopped"] - event["first_chunk_at"] >= 0.9 * goodbye_seconds


async def test_max_duration_ends_as_a_normal_end() -> None:
    async with running_relay(relay_avatar="none") as relay:
        await relay.faults("elevenlabs", first_message="", max_duration_s=1.0)
        async with relay.browser() as browser:
            await browser.start()
            messages, code = await until_closed(browser)
        assert code == 1000
        assert [m for m in messages if m["type"] in ("error", "ended")] == [{"type": "ended",
                                                                             "reason": "max_duration"}]
        assert await upstream_errors(relay, "elevenlabs") == 0


@pytest.mark.parametrize(("faults", "start", "words"), [
    ({"required_dynamic_variables": ["name"]}, {}, "Missing required dynamic variables in first message: {'name'}"),
    ({}, {"overrides": {"agent": {"first_message": "Hi"}}}, "does not allow the overrides this page sent"),
])
async def test_a_set_up_refusal_reaches_the_browser_with_the_services_reason(
        faults: dict[str, Any], start: dict[str, Any], words: str) -> None:
    # the relay lets the page override the greeting; the agent does not
    async with running_relay(relay_avatar="none", relay_client_overrides="agent.first_message") as relay:
        await relay.faults("elevenlabs", **faults)
        async with relay.browser() as browser:
            await browser.send(type="start", **start)
            messages, code = await until_closed(browser)
        assert code == 1008
        error, ended = messages[-2:]
        assert error["type"] == "error" and error["code"] == "agent_refused" and words in error["message"]
        assert ended == {"type": "ended", "reason": "agent_refused"}
        assert await upstream_errors(relay, "elevenlabs") == 1  # a real failure: counted


async def test_a_queue_timeout_says_the_agent_is_busy() -> None:
    async with running_relay(relay_avatar="none") as relay:
        await relay.faults("elevenlabs", queue_wait_ms=50, queue_times_out=True)
        async with relay.browser() as browser:
            await browser.send(type="start")
            messages, code = await until_closed(browser)
        assert code == 1013
        error = next(m for m in messages if m["type"] == "error")
        assert error["code"] == "agent_busy" and "busy" in error["message"]


async def test_known_events_with_odd_fields_do_not_end_the_conversation() -> None:
    async with running_relay(relay_avatar="none") as relay:
        await relay.faults("elevenlabs", first_message="", odd_fields=True, ping_interval_s=0.2)
        async with relay.browser() as browser:
            await browser.start()
            await browser.send(type="text", text="are you still there?")
            reply = await browser.expect("agent_response")
            assert reply["text"] == "You said: are you still there?"
            await browser.send(type="stop")
            assert await browser.expect("ended") == {"type": "ended", "reason": "client_stop"}


async def test_a_mu_law_agent_hears_the_browser_and_answers() -> None:
    """A telephony agent (`ulaw_8000` both ways): the browser sends PCM16 at 8 kHz, the relay encodes μ-law; the
    agent's VAD hears the speech and answers; its μ-law voice reaches the browser as PCM16 at 8 kHz."""
    async with running_relay(relay_avatar="none") as relay:
        await relay.faults("elevenlabs", first_message="", user_input_audio_format="ulaw_8000",
                           agent_output_audio_format="ulaw_8000")
        async with relay.browser() as browser:
            ready = await browser.start()
            assert ready["input_audio"]["sample_rate"] == 8000 and ready["output_audio"]["sample_rate"] == 8000
            await browser.stream(spoken_sentence(rate=8000) + bytes(8000 * 2), chunk_bytes=1600)
            transcript = await browser.expect("user_transcript", where=lambda m: m.get("final", True))
            assert "s of speech" in transcript["text"]
            await browser.expect("agent_response")
            await browser.wait_for_audio(8000)  # PCM16 at 8 kHz: 0.5 s
            await browser.send(type="stop")
            await browser.expect("ended")
        conversation = await poll_ledger(lambda: relay.ledger("elevenlabs"),
                                         lambda ledger: ledger["conversations"][0]["closed_at"] is not None,
                                         "the agent's conversation closed")
        record = conversation["conversations"][0]
        assert record["user_audio_seconds"] > 1.0  # μ-law: one byte per sample at 8 kHz
