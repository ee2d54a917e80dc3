"""Each avatar provider through the real server: LiveAvatar (the agent's own audio at 24 kHz), HeyGen's realtime mode,
and voice only. The simulators' ledgers are the proof: durations, interruptions, keep-alives, sessions stopped."""

from __future__ import annotations

from typing import Any

import pytest
import trio

from relay.sim.elevenlabs_sim import ALL_CLIENT_EVENTS
from tests.support.harness import running_relay, silence, spoken_sentence

pytestmark = pytest.mark.timeout(60)


def only_session(ledger: dict[str, Any]) -> dict[str, Any]:
    """The one session of an avatar simulator's ledger (fails if there is none yet, or more than one)."""
    (session,) = ledger["sessions"].values()
    return session  # type: ignore[no-any-return]


async def agent_audio_seconds(relay, conversation: int = 0) -> float:  # type: ignore[no-untyped-def]
    ledger = await relay.ledger("elevenlabs")
    return float(ledger["conversations"][conversation]["agent_audio_seconds"])


@pytest.mark.parametrize("agent_format", ["pcm_16000", "pcm_44100", "ulaw_8000"])
async def test_liveavatar_lip_syncs_the_whole_reply_resampled_to_24khz(agent_format: str) -> None:
    async with running_relay(relay_avatar="liveavatar") as relay:
        await relay.faults("elevenlabs", first_message="", agent_output_audio_format=agent_format)
        async with relay.browser() as browser:
            ready = await browser.start()
            assert ready["output_audio"]["sample_rate"] == int(agent_format.split("_")[1])
            await browser.send(type="text", text="please say something of medium length")
            await browser.expect("avatar_state", where=lambda m: m["speaking"])
            await browser.expect("avatar_state", where=lambda m: not m["speaking"], timeout=15)
            await browser.send(type="stop")
            await browser.expect("ended")
        expected = await agent_audio_seconds(relay)
        ledger = await relay.wait_all_sessions_stopped("liveavatar")
        (session,) = ledger["sessions"].values()
        assert len(session["lite"]["events"]) == 1  # one agent turn, one event_id
        assert session["lite"]["audio_seconds"] == pytest.approx(expected, rel=0.05)
        assert session["lite"]["speak_ends"] == 1


async def test_liveavatar_interruption_sends_nothing_of_the_interrupted_turn_after_it() -> None:
    async with running_relay(relay_avatar="liveavatar") as relay:
        await relay.faults("elevenlabs", first_message="", max_reply_s=6.0, chunk_duration_ms=100,
                           client_events=list(ALL_CLIENT_EVENTS))  # corrections are opt-in on a real agent
        async with relay.browser() as browser:
            ready = await browser.start()
            rate = ready["input_audio"]["sample_rate"]
            await browser.send(type="text", text="tell me a long story about the sea and the mountains please")
            await browser.expect("avatar_state", where=lambda m: m["speaking"])
            await browser.stream(spoken_sentence(rate) + silence(1.0, rate))
            await browser.expect("interruption")
            await browser.expect("agent_response_correction")
            # The reply to the interrupting turn reaches the avatar after anything still queued of the interrupted
            # one (one socket, in order): once it is there, a stale chunk would have been counted.
            await relay.wait_for_ledger(
                "liveavatar", lambda ledger: len(only_session(ledger)["lite"]["events"]) >= 2,
                "the reply to the interrupting turn to reach the avatar", timeout=20)
            await browser.send(type="stop")
            await browser.expect("ended")
        ledger = await relay.wait_all_sessions_stopped("liveavatar")
        (session,) = ledger["sessions"].values()
        assert len(session["lite"]["interrupts"]) >= 1
        assert session["lite"]["chunks_after_interrupt"] == 0


async def test_liveavatar_is_kept_alive() -> None:
    async with running_relay(relay_avatar="liveavatar", relay_keep_alive_interval=0.2) as relay:
        async with relay.browser() as browser:
            await browser.start()
            await relay.wait_for_ledger("liveavatar", lambda ledger: only_session(ledger)["lite"]["keep_alives"] >= 3,
                                        "three keep-alives on the LiveAvatar socket")
            await browser.send(type="stop")
            await browser.expect("ended")
        ledger = await relay.wait_all_sessions_stopped("liveavatar")
        (session,) = ledger["sessions"].values()
        assert session["lite"]["keep_alives"] >= 3
        assert session["rest_keep_alives"] >= 3  # and over REST


async def test_liveavatar_socket_closing_mid_conversation_degrades_to_voice_and_stops_the_session() -> None:
    async with running_relay(relay_avatar="liveavatar") as relay:
        await relay.faults("liveavatar", close_ws_after_ms=300)
        await relay.faults("elevenlabs", first_message="")
        async with relay.browser() as browser:
            await browser.start()
            notice = await browser.expect("avatar_unavailable")
            assert notice["reason"] == "session_ended"
            await browser.send(type="text", text="are you still there")
            await browser.expect("agent_response")
            await browser.wait_for_audio()
            await browser.send(type="stop")
            await browser.expect("ended")
        await relay.wait_all_sessions_stopped("liveavatar")


async def test_liveavatar_without_credits_degrades_to_voice() -> None:
    async with running_relay(relay_avatar="liveavatar") as relay:
        await relay.faults("liveavatar", no_credits=True)
        async with relay.browser() as browser:
            await browser.send(type="start")
            notice = await browser.expect("avatar_unavailable")
            assert notice["reason"] == "no_credits"
            assert (await browser.expect("ready"))["avatar"] is None
            await browser.send(type="stop")
            await browser.expect("ended")


async def test_heygen_realtime_mode_lip_syncs_the_agents_own_audio() -> None:
    async with running_relay(relay_avatar="heygen", heygen_mode="realtime") as relay:
        await relay.faults("elevenlabs", first_message="")
        async with relay.browser() as browser:
            await browser.start()
            await browser.send(type="text", text="hello there realtime avatar")
            await browser.expect("avatar_state", where=lambda m: m["speaking"])
            await browser.expect("avatar_state", where=lambda m: not m["speaking"], timeout=15)
            await browser.send(type="stop")
            await browser.expect("ended")
        expected = await agent_audio_seconds(relay)
        ledger = await relay.wait_all_sessions_stopped("heygen")
        (session,) = ledger["sessions"].values()
        assert session["tasks"] == []  # no HeyGen voice: the agent's audio is lip-synced instead
        assert session["realtime"]["audio_seconds"] == pytest.approx(expected, rel=0.05)


async def test_voice_only_sends_the_agents_audio_to_the_browser() -> None:
    async with running_relay(relay_avatar="none") as relay:
        await relay.faults("elevenlabs", first_message="")
        async with relay.browser() as browser:
            ready = await browser.start()
            assert ready["avatar"] is None
            rate = ready["output_audio"]["sample_rate"]
            await browser.send(type="text", text="hello voice only")
            await browser.expect("agent_response")
            with trio.fail_after(15):
                while True:
                    with trio.move_on_after(0.3):
                        while True:
                            await browser.next_message()
                    expected = await agent_audio_seconds(relay)
                    if expected and browser.audio_received == pytest.approx(expected * rate * 2, rel=0.01):
                        break
            await browser.send(type="stop")
            await browser.expect("ended")
