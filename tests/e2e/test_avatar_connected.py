"""Set-up never waits on the avatar's `connected`, and the listening pose, through the real relay (hypercorn)
against the simulators (issue 14, items 4 and 6). The simulators withhold `connected` until asked
(`withhold_connected`, `POST /_sim/connect`) and drop every command sent before it, as LiveAvatar's docs warn."""

from __future__ import annotations

from typing import Any

import pytest

from tests.support.harness import Relay, running_relay, silence, spoken_sentence

pytestmark = pytest.mark.timeout(90)

# `ready` must not wait for `connected`: the old relay waited 10 s (LiveAvatar) or failed after the set-up timeout
# (HeyGen realtime). Far above a prompt `ready` on a loaded machine, below those waits.
PROMPT = 8.0


def only_session(ledger: dict[str, Any]) -> dict[str, Any]:
    (session,) = ledger["sessions"].values()
    return session  # type: ignore[no-any-return]


async def release_connected(relay: Relay, name: str) -> None:
    answer = await relay.http.post(str(getattr(relay.sims, name)) + "/_sim/connect")
    assert answer.status_code == 200


async def test_liveavatar_ready_comes_before_connected_and_early_speech_reaches_the_avatar_once_it_comes() -> None:
    async with running_relay(relay_avatar="liveavatar", relay_avatar_connect_timeout=60) as relay:
        await relay.faults("liveavatar", withhold_connected=True)
        await relay.faults("elevenlabs", first_message="")
        async with relay.browser() as browser:
            await browser.send(type="start")
            ready = await browser.expect("ready", timeout=PROMPT)
            assert ready["avatar"]["provider"] == "liveavatar"
            await browser.send(type="text", text="please say something short")
            await browser.expect("agent_response", timeout=15)
            await relay.wait_for_ledger(
                "elevenlabs", lambda ledger: ledger["conversations"][0]["agent_audio_seconds"] > 0,
                "the agent's reply audio", timeout=15)
            session = only_session(await relay.ledger("liveavatar"))
            assert session["lite"]["chunks"] == 0 and session["lite"]["dropped_before_connected"] == 0
            await release_connected(relay, "liveavatar")
            await browser.expect("avatar_state", where=lambda m: not m["speaking"], timeout=20)
            await browser.send(type="stop")
            await browser.expect("ended")
        expected = float((await relay.ledger("elevenlabs"))["conversations"][0]["agent_audio_seconds"])
        ledger = await relay.wait_all_sessions_stopped("liveavatar")
        lite = only_session(ledger)["lite"]
        assert lite["dropped_before_connected"] == 0
        assert lite["audio_seconds"] == pytest.approx(expected, rel=0.05)
        assert lite["speak_ends"] == 1


async def test_liveavatar_that_never_connects_degrades_to_voice_only() -> None:
    async with running_relay(relay_avatar="liveavatar", relay_avatar_connect_timeout=1.0) as relay:
        await relay.faults("liveavatar", withhold_connected=True)
        await relay.faults("elevenlabs", first_message="")
        async with relay.browser() as browser:
            await browser.send(type="start")
            await browser.expect("ready", timeout=PROMPT)
            notice = await browser.expect("avatar_unavailable", timeout=15)
            assert notice["reason"] == "timeout"
            await browser.send(type="text", text="are you still there")
            await browser.expect("agent_response", timeout=15)
            await browser.wait_for_audio()  # the agent's voice now goes to the page
            await browser.send(type="stop")
            ended = await browser.expect("ended")
            assert ended["reason"] == "client_stop"
        ledger = await relay.wait_all_sessions_stopped("liveavatar")
        assert only_session(ledger)["lite"]["dropped_before_connected"] == 0


async def test_heygen_realtime_ready_comes_before_connected_and_speech_waits_for_it() -> None:
    async with running_relay(relay_avatar="heygen", heygen_mode="realtime", relay_setup_timeout=5.0,
                             relay_avatar_connect_timeout=60) as relay:
        await relay.faults("heygen", withhold_connected=True)
        await relay.faults("elevenlabs", first_message="")
        async with relay.browser() as browser:
            await browser.send(type="start")
            await browser.expect("ready", timeout=PROMPT)
            await browser.send(type="text", text="please say something short")
            await browser.expect("agent_response", timeout=15)
            await release_connected(relay, "heygen")
            await browser.expect("avatar_state", where=lambda m: not m["speaking"], timeout=20)
            await browser.send(type="stop")
            await browser.expect("ended")
        ledger = await relay.wait_all_sessions_stopped("heygen")
        realtime = only_session(ledger)["realtime"]
        assert realtime["dropped_before_connected"] == 0
        assert realtime["speak_ends"] == 1


async def test_heygen_realtime_that_never_connects_degrades_to_voice_only() -> None:
    async with running_relay(relay_avatar="heygen", heygen_mode="realtime", relay_setup_timeout=5.0,
                             relay_avatar_connect_timeout=1.0) as relay:
        await relay.faults("heygen", withhold_connected=True)
        async with relay.browser() as browser:
            await browser.send(type="start")
            await browser.expect("ready", timeout=PROMPT)
            notice = await browser.expect("avatar_unavailable", timeout=15)
            assert notice["reason"] == "timeout"
            await browser.send(type="stop")
            assert (await browser.expect("ended"))["reason"] == "client_stop"
        await relay.wait_all_sessions_stopped("heygen")


async def test_liveavatar_listens_while_the_user_speaks_and_stops_for_the_reply() -> None:
    async with running_relay(relay_avatar="liveavatar") as relay:
        await relay.faults("elevenlabs", first_message="")
        async with relay.browser() as browser:
            ready = await browser.start()
            rate = ready["input_audio"]["sample_rate"]
            await browser.stream(spoken_sentence(rate) + silence(1.0, rate))
            await browser.expect("agent_response", timeout=20)
            await relay.wait_for_ledger(
                "liveavatar", lambda ledger: only_session(ledger)["lite"]["listening"][:2] == ["start", "stop"],
                "the listening pose taken while the user spoke and left for the reply", timeout=20)
            await browser.send(type="stop")
            await browser.expect("ended")
        await relay.wait_all_sessions_stopped("liveavatar")


REAL_ROOM = "wss://room.e2e.test"  # not `.invalid`: the relay treats it as a real avatar (no voice to the page)


async def test_a_greeting_held_longer_than_the_hold_plays_in_the_page_and_the_avatar_says_the_next_turn() -> None:
    """M2 through the real relay: the avatar says `connected` only after the greeting was held 0.5 s
    (RELAY_AVATAR_SPEECH_HOLD): the greeting reaches the browser as voice instead of waiting in silence, and the
    avatar, connected by then, says the next reply."""
    async with running_relay(relay_avatar="liveavatar", relay_avatar_speech_hold=0.5) as relay:
        await relay.faults("liveavatar", livekit_url=REAL_ROOM, withhold_connected=True)
        async with relay.browser() as browser:
            await browser.send(type="start")
            await browser.expect("ready", timeout=PROMPT)
            await browser.wait_for_audio(3 * 8000, timeout=15)  # the greeting, in the page (not only its start)
            await release_connected(relay, "liveavatar")
            await browser.send(type="text", text="please say something short")
            await browser.expect("avatar_state", where=lambda m: not m["speaking"], timeout=20)
            await browser.send(type="stop")
            await browser.expect("ended")
        ledger = await relay.wait_all_sessions_stopped("liveavatar")
        lite = only_session(ledger)["lite"]
        assert lite["dropped_before_connected"] == 0
        assert len(lite["events"]) == 1 and lite["speak_ends"] == 1  # the reply only: the greeting was the page's


async def test_a_greeting_held_for_an_avatar_that_never_connects_plays_in_the_page_when_it_degrades() -> None:
    """M2: the avatar never says `connected`; the greeting it was holding is not lost: the browser gets it after
    `avatar_unavailable` (it used to be dropped)."""
    async with running_relay(relay_avatar="liveavatar", relay_avatar_connect_timeout=1.5,
                             relay_avatar_speech_hold=60) as relay:
        await relay.faults("liveavatar", livekit_url=REAL_ROOM, withhold_connected=True)
        async with relay.browser() as browser:
            await browser.send(type="start")
            await browser.expect("ready", timeout=PROMPT)
            await browser.expect("avatar_unavailable", timeout=15)
            greeting = float((await relay.ledger("elevenlabs"))["conversations"][0]["agent_audio_seconds"])
            assert greeting > 0.5
            await browser.wait_for_audio(int(greeting * 32000), timeout=15)  # PCM16 16 kHz: the whole greeting
            await browser.send(type="stop")
            await browser.expect("ended")


async def test_the_avatar_is_stopped_only_after_it_said_the_agents_goodbye() -> None:
    """M4: the agent says goodbye and hangs up right after its last chunk; the avatar renders with its own delay
    after the bytes (`render_delay_ms`): the session is stopped only after its `agent.speak_ended` for that turn
    (the byte-count estimate alone stopped it before, and the tail of the goodbye was never seen)."""
    async with running_relay(relay_avatar="liveavatar", relay_finish_speaking_timeout=15) as relay:
        await relay.faults("liveavatar", render_delay_ms=1500)
        await relay.faults("elevenlabs", first_message="", end_call_after_reply=True)
        async with relay.browser() as browser:
            await browser.send(type="start")
            await browser.expect("ready", timeout=PROMPT)
            await browser.send(type="text", text="thanks, bye")
            ended = await browser.expect("ended", timeout=30)
            assert ended["reason"] == "agent_ended"
        ledger = await relay.wait_all_sessions_stopped("liveavatar")
        session = only_session(ledger)
        (goodbye,) = session["lite"]["events"].values()
        assert goodbye["ended_at"] is not None, "the avatar was stopped before it finished the goodbye"
        assert session["stopped"] >= goodbye["ended_at"]
        assert session["stop_reason"] == "AGENT_HANG_UP"  # L9: LiveAvatar is told who ended it (was USER_DISCONNECTED)
