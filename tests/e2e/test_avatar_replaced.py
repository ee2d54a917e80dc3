"""An avatar replaced instead of lost (issue #23 §3), through the real relay on the simulators: when the avatar
session dies mid-conversation — the provider ends it, its socket drops mid-reply, it reports an error — the relay
opens another (the first of the list that starts) while the conversation goes on, tells the browser
`avatar_changed` (the shape of `ready.avatar`), journals the replacement, and every session of either provider ends
stopped. Each way of dying mid-reply, with a room the relay treats as real, also shows the rest of the turn reaching
the browser as voice (the maximum length, and everything as separate processes: tests/faults/
test_avatar_replacement_process.py)."""

from __future__ import annotations

import time
from typing import Any

import pytest

from tests.support.harness import BrowserClient, Relay, running_relay, session_counts

pytestmark = pytest.mark.timeout(60)


async def still_talking(browser: BrowserClient) -> None:
    await browser.send(type="text", text="are you still there")
    await browser.expect("agent_response", where=lambda m: "are you still there" in m["text"])


async def changed(browser: BrowserClient, before: dict[str, Any]) -> dict[str, Any]:
    notice = await browser.expect("avatar_changed")
    assert set(notice["avatar"]) == set(before), notice  # the shape of ready.avatar
    assert notice["avatar"]["session_id"] != before["session_id"]
    assert notice["reason"] in ("session_ended", "session_gone"), notice
    return notice  # type: ignore[no-any-return]


async def all_stopped(relay: Relay) -> None:
    await relay.wait_all_sessions_stopped("liveavatar")
    await relay.wait_for_ledger("simli", lambda ledger: ledger["active"] == 0, "every Simli session ended")
    assert relay.journal_rows() == []


async def test_a_session_the_provider_ends_is_replaced() -> None:
    async with running_relay(relay_avatar="liveavatar") as relay:
        async with relay.browser() as browser:
            first = (await browser.start())["avatar"]
            stop = await relay.http.post(relay.sims.liveavatar + "/v1/sessions/stop", headers={"X-API-KEY": "la-test"},
                                         json={"session_id": first["session_id"], "reason": "USER_CLOSED"})
            assert stop.status_code == 200, stop.text
            notice = await changed(browser, first)
            assert notice["avatar"]["provider"] == "liveavatar"
            assert [row[1] for row in relay.journal_rows()] == [notice["avatar"]["session_id"]]
            await still_talking(browser)
            await browser.send(type="stop")
            await browser.expect("ended")
        assert session_counts(await relay.ledger("liveavatar"))[0] == 2
        await all_stopped(relay)


async def test_a_socket_that_drops_mid_reply_is_replaced_by_the_next_provider() -> None:
    async with running_relay(relay_avatar="simli,liveavatar") as relay:
        async with relay.browser() as browser:
            first = (await browser.start())["avatar"]
            assert first["provider"] == "simli"
            await relay.faults("simli", drop_ws_after_audio_bytes=1, concurrency_limit=1)  # the next socket: refused
            await browser.send(type="text", text="tell me a story")
            notice = await changed(browser, first)
            assert notice["avatar"]["provider"] == "liveavatar"
            await relay.faults("simli", drop_ws_after_audio_bytes=None, concurrency_limit=None)
            await still_talking(browser)
            await browser.send(type="stop")
            await browser.expect("ended")
        await relay.wait_all_sessions_stopped("liveavatar")
        metrics = (await relay.http.get(relay.url + "/metrics")).text
        assert 'avatar_relay_avatar_sessions_created_total{provider="liveavatar"} 1.0' in metrics
        # Simli cannot stop a session whose socket dropped (no stop by id): it is reported, and bounded by
        # SIMLI_MAX_IDLE_TIME (docs/deploy.md); it is still "stopped through the provider's API" once: its socket
        # is closed and nothing else can be called.
        assert 'avatar_relay_avatar_sessions_stop_failed_total{provider="simli"} 1.0' in metrics


async def test_a_session_that_reports_an_error_is_replaced() -> None:
    async with running_relay(relay_avatar="liveavatar,simli") as relay:
        await relay.faults("liveavatar", concurrency_limit=0)
        await relay.faults("simli", terminate_after_ms={"text": "ERROR: BILLING_ERROR", "after_ms": 300})
        async with relay.browser() as browser:
            first = (await browser.start())["avatar"]
            assert first["provider"] == "simli"
            await relay.faults("liveavatar", concurrency_limit=None)
            notice = await changed(browser, first)
            assert notice["avatar"]["provider"] == "liveavatar"
            await still_talking(browser)
        await all_stopped(relay)


async def test_when_no_replacement_can_be_had_the_conversation_goes_on_voice_only() -> None:
    async with running_relay(relay_avatar="liveavatar") as relay:
        async with relay.browser() as browser:
            first = (await browser.start())["avatar"]
            await relay.faults("liveavatar", concurrency_limit=0)
            await relay.http.post(relay.sims.liveavatar + "/v1/sessions/stop", headers={"X-API-KEY": "la-test"},
                                  json={"session_id": first["session_id"], "reason": "USER_CLOSED"})
            notice = await browser.expect("avatar_unavailable")
            assert notice["reason"] == "concurrent_limit"
            await still_talking(browser)
        await all_stopped(relay)


# Each way an avatar dies, mid-reply, with a room that is not `.invalid` (the relay treats the avatar as real: the
# agent's voice goes to it, and to the browser only once it is lost): the agent replies in real time, and the avatar
# is killed once it has received two seconds of the reply.
ROOM = "wss://livekit.replaced-test.example"
LONG = ("tell me a long story about the lighthouse keeper who counted every ship that passed his rock, and about the "
        "storm that came in the winter when the lamp went out")
TURN = 4.0


async def stop_through_the_api(relay: Relay, session_id: str) -> None:
    stop = await relay.http.post(relay.sims.liveavatar + "/v1/sessions/stop", headers={"X-API-KEY": "la-test"},
                                 json={"session_id": session_id, "reason": "USER_CLOSED"})
    assert stop.status_code == 200, stop.text


async def drop_the_socket(relay: Relay, session_id: str) -> None:
    provider = "liveavatar" if session_id in (await relay.ledger("liveavatar"))["sessions"] else "simli"
    await relay.faults(provider, drop_ws_after_audio_bytes=1)  # the next frame of audio closes it, 1011


async def report_an_error(relay: Relay, session_id: str) -> None:
    await relay.faults("simli", max_frame_bytes=1)  # the next frame: `ERROR: AUDIO_CHUNK_TOO_LARGE`, close 1009


def first_audio_at(ledger: dict[str, Any], session_id: str) -> float:
    """When the avatar received its first audio (time.monotonic(), the simulators run in this process)."""
    record = ledger["sessions"][session_id]
    if "lite" in record:
        return min(float(event["first_chunk_at"]) for event in record["lite"]["events"].values())
    return float(record["first_audio"])


def audio_seconds(ledger: dict[str, Any], session_id: str) -> float:
    record = ledger["sessions"].get(session_id) or {}
    return float(record.get("audio_seconds", (record.get("lite") or {}).get("audio_seconds", 0.0)))


@pytest.mark.parametrize(("provider", "kill", "after"), [
    pytest.param("liveavatar", stop_through_the_api, {}, id="liveavatar-the-provider-ends-it"),
    pytest.param("liveavatar", drop_the_socket, {"drop_ws_after_audio_bytes": None}, id="liveavatar-its-socket-drops"),
    pytest.param("simli", drop_the_socket, {"drop_ws_after_audio_bytes": None}, id="simli-its-socket-drops"),
    pytest.param("simli", report_an_error, {"max_frame_bytes": 65_536}, id="simli-it-reports-an-error"),
])
async def test_each_way_an_avatar_dies_mid_reply_the_rest_of_the_turn_is_heard_and_the_new_room_announced(
        provider: str, kill: Any, after: dict[str, Any]) -> None:
    async with running_relay(relay_avatar=provider) as relay:
        await relay.faults(provider, livekit_url=ROOM)
        await relay.faults("elevenlabs", first_message="", reply_pacing="realtime", max_reply_s=TURN)
        async with relay.browser() as browser:
            ready = await browser.start()
            first = ready["avatar"]
            assert first["simulated"] is False
            await browser.send(type="text", text=LONG)
            await relay.wait_for_ledger(provider, lambda led: audio_seconds(led, first["session_id"]) >= 2.0,
                                        "two seconds of the reply at the avatar")
            killed_at = time.monotonic()
            await kill(relay, first["session_id"])
            notice = await changed(browser, first)
            assert notice["avatar"]["provider"] == provider
            await relay.faults(provider, **after)
            said = audio_seconds(await relay.ledger(provider), first["session_id"])
            rate = ready["output_audio"]["sample_rate"]
            # The rest of the turn, as voice: at least what the dead avatar never received.
            await browser.wait_for_audio(int((TURN - said - 0.05) * 2 * rate), timeout=15)
            await relay.wait_for_ledger("elevenlabs", lambda led: led["conversations"][-1]["agent_audio_seconds"] >=
                                        TURN - 0.01, "the whole turn sent", timeout=15)
            await still_talking(browser)  # (once the turn is over: it would interrupt it)
            await browser.send(type="stop")
            await browser.expect("ended")
            # Not repeated from its start: the relay counts what it gave as played from when it gave it, so at least
            # from the avatar's first audio to the kill.
            played = killed_at - first_audio_at(await relay.ledger(provider), first["session_id"])
            voice = browser.audio_received / (2 * rate)
            assert played > 0 and voice <= TURN - played + 0.1, (voice, played)
        second = notice["avatar"]["session_id"]
        if provider == "liveavatar":
            ledger = await relay.wait_all_sessions_stopped("liveavatar")
            by_the_test = 1 if kill is stop_through_the_api else 0
            stops = [ledger["sessions"][sid]["stop_calls"] for sid in (first["session_id"], second)]
            assert stops == [1 + by_the_test, 1]  # the relay stopped each exactly once
        else:
            ledger = await relay.wait_for_ledger("simli", lambda led: led["sessions"][second]["end_reason"] == "DONE",
                                                 "the new session ended by the relay")
            dead = ledger["sessions"][first["session_id"]]
            assert dead["dones"] == 0, dead  # nothing sent to it once it was lost
            # Ended by Simli (the error), or its socket gone: Simli has no stop by id, the session is bounded by
            # SIMLI_MAX_IDLE_TIME (docs/deploy.md) and reported (stop_failed_total).
            assert dead["end_reason"] == "AUDIO_CHUNK_TOO_LARGE" or dead["socket_closed"] is not None, dead
            if dead["end_reason"] is None:  # the journal keeps it for the sweep, which logs its bound
                assert relay.journal_rows() == [("simli", first["session_id"])]
                return
        assert relay.journal_rows() == []
