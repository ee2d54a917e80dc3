"""LiveAvatarProvider against the LiveAvatar simulator over real loopback sockets.

Proves: audio arrives at 24 kHz with the right length and no seam between chunks, interruption is clean,
keep-alives arrive, every way out of a session stops it, refusals map to the right reason and leave nothing
running, and a server-side close ends the session with AvatarSessionEnded.
"""

from __future__ import annotations

import base64
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx2
import numpy as np
import orjson
import pytest
import trio
import trio_websocket
from pydantic import SecretStr

from relay.avatars import AvatarEvent, AvatarSessionEnded, AvatarStateChanged, AvatarUnavailable
from relay.config import Settings
from relay.liveavatar import LiveAvatarProvider, list_running_ids, stop_by_id
from relay.protocol.audio import AudioFormat
from relay.protocol.liveavatar import SANDBOX_AVATAR_ID
from relay.sim import liveavatar_sim
from tests.support.harness import poll_ledger
from tests.support.simserver import cancel_while_slow, chunks_of, faults, ledger, refusal, served, settings, sine_wave

pytestmark = pytest.mark.timeout(60)

API_KEY = "la-test-key-0123456789"
PCM16K = AudioFormat("pcm", 16000)
ULAW8K = AudioFormat("ulaw", 8000)


@pytest.fixture
async def sim(nursery: trio.Nursery) -> AsyncIterator[str]:
    async with served(nursery, liveavatar_sim.create_app()) as url:
        yield url


def make_settings(base_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "elevenlabs_agent_id": "agent", "liveavatar_api_key": SecretStr(API_KEY), "liveavatar_base_url": base_url,
        "liveavatar_avatar_id": "6f1c1a52-9f0e-4d0c-8a51-2f6f0a3b1c01", "relay_stop_timeout": 3.0,
        "relay_setup_timeout": 5.0,
    }
    values.update(overrides)
    return settings(**values)


async def wait_for_lite(http: httpx2.AsyncClient, base: str, condition: Callable[[dict[str, Any]], bool],
                        what: str) -> dict[str, Any]:
    """Poll the one session's LITE socket ledger until `condition(lite)` holds; return it."""
    def holds(state: dict[str, Any]) -> bool:
        sessions = list(state["sessions"].values())
        return len(sessions) == 1 and condition(sessions[0]["lite"])

    state = await poll_ledger(lambda: ledger(http, base), holds, what)
    return next(iter(state["sessions"].values()))["lite"]  # type: ignore[no-any-return]


async def only_session(http: httpx2.AsyncClient, base: str) -> dict[str, Any]:
    sessions = (await ledger(http, base))["sessions"]
    assert len(sessions) == 1
    return next(iter(sessions.values()))  # type: ignore[no-any-return]


def sine(seconds: float, rate: int, freq: float = 440.0) -> np.ndarray:
    """The sine as PCM16 LE samples."""
    return sine_wave(seconds, rate, freq).astype("<i2")


async def test_a_turn_of_16khz_audio_arrives_as_24khz_with_its_duration_and_no_seams(
        sim: str, http: httpx2.AsyncClient) -> None:
    await faults(http, sim, record_audio=True)
    events: list[AvatarEvent] = []
    turn_played = trio.Event()

    def on_event(event: AvatarEvent) -> None:
        events.append(event)
        if event == AvatarStateChanged(speaking=False, turn=1):
            turn_played.set()

    pcm = sine(1.0, 16000).tobytes()
    with trio.fail_after(10):
        async with LiveAvatarProvider(make_settings(sim), http).open_session(on_event) as session:
            assert session.takes_audio
            assert session.info.provider == "liveavatar"
            assert session.info.simulated
            assert session.info.livekit_url == "wss://livekit.simulated.invalid"
            for chunk in chunks_of(pcm, [3201, 4800, 999, 6400]):  # odd sizes: a split sample too
                await session.speak_audio(chunk, PCM16K, 1)
            await session.end_turn(1)
            await turn_played.wait()  # speak_ended comes after the 1 s of audio has "played"
        record = await only_session(http, sim)
        received = (await http.get(f"{sim}/_sim/audio/{session.info.session_id}/turn-1")).content
    assert events[0] == AvatarStateChanged(speaking=True, turn=1)
    turn = record["lite"]["events"]["turn-1"]
    assert turn["audio_seconds"] == pytest.approx(1.0, rel=0.05)
    assert turn["chunks"] == 2  # the LITE cadence: a first packet of at least 600 ms, then the rest at the turn's end
    # The oracle is the same sine computed at 24 kHz, not the relay's resampler: 1 s is exactly 24000 samples, and
    # away from the filter's start-up and tail every sample is within a few units of the ideal value. A lost or
    # repeated sample at a chunk seam shifts the phase (errors ~ 10^3), a gap or overlap more (~ 10^4).
    got = np.frombuffer(received, dtype="<i2").astype(np.float64)
    assert len(got) == 24000
    ideal = sine_wave(1.0, 24000)
    inner = slice(200, -200)
    assert np.max(np.abs(got[inner] - ideal[inner])) <= 16
    assert np.max(np.abs(got - ideal)) <= 400  # the edges only ring a little
    assert record["stop_reason"] == "USER_DISCONNECTED"


async def test_ulaw_8000_input_arrives_as_24khz_pcm_of_the_same_duration(
        sim: str, http: httpx2.AsyncClient) -> None:
    ulaw = bytes(np.random.default_rng(1).integers(0, 256, 4000, dtype=np.uint8))  # 0.5 s
    with trio.fail_after(10):
        async with LiveAvatarProvider(make_settings(sim), http).open_session(lambda e: None) as session:
            for chunk in chunks_of(ulaw, [800, 333]):
                await session.speak_audio(chunk, ULAW8K, 4)
            await session.end_turn(4)
            # speak_end follows the turn's last chunk on the socket: once it is counted, every chunk is.
            await wait_for_lite(http, sim, lambda lite: lite["speak_ends"] == 1, "the turn's speak_end")
    turn = (await only_session(http, sim))["lite"]["events"]["turn-4"]
    assert turn["audio_seconds"] == pytest.approx(0.5, rel=0.05)


async def test_no_chunk_of_an_interrupted_turn_is_sent_after_the_interrupt(
        sim: str, http: httpx2.AsyncClient) -> None:
    events: list[AvatarEvent] = []
    pcm = sine(0.1, 16000).tobytes()
    with trio.fail_after(10):
        async with LiveAvatarProvider(make_settings(sim), http).open_session(events.append) as session:
            async with trio.open_nursery() as nursery:

                async def keep_speaking() -> None:
                    for _ in range(200):
                        await session.speak_audio(pcm, PCM16K, 2)

                nursery.start_soon(keep_speaking)
                # Interrupt while turn 2 is streaming: the simulator has some of it, and more is on its way.
                await wait_for_lite(http, sim, lambda lite: lite["events"].get("turn-2", {}).get("chunks", 0) >= 1,
                                    "the first chunks of turn 2")
                await session.interrupt(2)
            await session.end_turn(2)  # sends nothing: the turn was interrupted
            await session.speak_audio(pcm, PCM16K, 3)
            await session.end_turn(3)
            # Turn 3's speak_end comes after anything of turn 2 still sent on the socket.
            await wait_for_lite(http, sim, lambda lite: lite["speak_ends"] == 1, "turn 3's speak_end")
    lite = (await only_session(http, sim))["lite"]
    assert lite["interrupts"] == ["turn-2"]
    assert lite["chunks_after_interrupt"] == 0
    assert lite["events"]["turn-2"]["chunks"] >= 1
    assert lite["events"]["turn-3"]["chunks"] >= 1
    assert AvatarStateChanged(speaking=False, turn=2) in events


async def test_keep_alive_reaches_the_simulator_on_the_socket_and_over_rest(
        sim: str, http: httpx2.AsyncClient) -> None:
    settings = make_settings(sim, relay_keep_alive_interval=42.0)
    with trio.fail_after(10):
        async with LiveAvatarProvider(settings, http).open_session(lambda e: None) as session:
            assert session.keep_alive_interval == 42.0
            await session.keep_alive()
            await session.keep_alive()
            await wait_for_lite(http, sim, lambda lite: lite["keep_alives"] >= 2, "two keep-alives on the socket")
    record = await only_session(http, sim)
    assert record["lite"]["keep_alives"] == 2
    assert record["rest_keep_alives"] == 2


async def test_the_session_is_stopped_when_the_body_raises(sim: str, http: httpx2.AsyncClient) -> None:
    with trio.fail_after(10), pytest.raises(KeyError):
        async with LiveAvatarProvider(make_settings(sim), http).open_session(lambda e: None):
            raise KeyError("boom")
    record = await only_session(http, sim)
    assert record["stopped"] is not None
    assert record["stop_reason"] == "SERVER_ERROR"


async def test_the_session_is_stopped_when_the_caller_is_cancelled(sim: str, http: httpx2.AsyncClient) -> None:
    with trio.fail_after(10):
        with trio.CancelScope() as scope:
            async with LiveAvatarProvider(make_settings(sim), http).open_session(lambda e: None):
                scope.cancel()  # the caller is cancelled while the session is open
                await trio.sleep_forever()
    record = await only_session(http, sim)
    assert record["stopped"] is not None
    assert record["stop_reason"] == "USER_DISCONNECTED"


@pytest.mark.parametrize("slow_endpoint", ["token", "start"])
async def test_a_session_created_while_the_caller_is_cancelled_is_still_stopped(
        sim: str, http: httpx2.AsyncClient, slow_endpoint: str) -> None:
    assert not await cancel_while_slow(
        http, sim, slow_endpoint, lambda: LiveAvatarProvider(make_settings(sim), http).open_session(lambda e: None))
    record = await only_session(http, sim)
    assert record["stopped"] is not None
    assert (await ledger(http, sim))["active"] == 0


async def test_stop_is_retried_after_server_errors(sim: str, http: httpx2.AsyncClient) -> None:
    await faults(http, sim, fail={"stop": {"status": 503, "code": 5000, "message": "busy", "times": 2}})
    with trio.fail_after(10):
        async with LiveAvatarProvider(make_settings(sim), http).open_session(lambda e: None):
            pass
    state = await ledger(http, sim)
    assert state["requests"]["stop"] == 3
    assert state["active"] == 0


@pytest.mark.parametrize(
    ("fault", "reason"),
    [
        ({"invalid_keys": [API_KEY]}, "unauthorized"),
        ({"no_credits": True}, "no_credits"),
        ({"fail": {"token": {"status": 503, "code": 5000, "message": "down"}}}, "upstream_error"),
        ({"fail": {"start": {"status": 500, "code": 4000, "message": "Session start failed"}}}, "upstream_error"),
        ({"fail": {"token": {"status": 429, "code": 4290, "message": "slow down", "retry_after": 7}}},
         "rate_limited"),
        ({"fail": {"token": {"status": 200, "code": 4000, "message": "odd"}}}, "upstream_error"),
    ],
)
async def test_a_refused_session_raises_unavailable_with_its_reason_and_leaves_nothing_running(
        sim: str, http: httpx2.AsyncClient, fault: dict[str, Any], reason: str) -> None:
    await faults(http, sim, **fault)
    provider = LiveAvatarProvider(make_settings(sim), http)
    refused = await refusal(http, sim, lambda: provider.open_session(lambda e: None))
    assert refused.reason == reason
    assert API_KEY not in refused.message


async def test_the_concurrency_limit_refuses_the_next_session_with_concurrent_limit(
        sim: str, http: httpx2.AsyncClient) -> None:
    await faults(http, sim, concurrency_limit=1)
    provider = LiveAvatarProvider(make_settings(sim), http)
    with trio.fail_after(10):
        async with provider.open_session(lambda e: None):
            with pytest.raises(AvatarUnavailable) as caught:
                async with provider.open_session(lambda e: None):
                    pytest.fail("the body must not run")
    assert caught.value.reason == "concurrent_limit"
    assert (await ledger(http, sim))["active"] == 0


async def test_a_missing_avatar_in_sandbox_mode_uses_the_sandbox_avatar(
        sim: str, http: httpx2.AsyncClient) -> None:
    settings = make_settings(sim, liveavatar_avatar_id=None, liveavatar_sandbox=True)
    with trio.fail_after(10):
        async with LiveAvatarProvider(settings, http).open_session(lambda e: None):
            pass
    record = await only_session(http, sim)
    assert record["is_sandbox"] is True
    assert record["avatar_id"] == SANDBOX_AVATAR_ID


async def test_a_socket_closed_by_the_server_ends_the_session_and_stops_it(
        sim: str, http: httpx2.AsyncClient) -> None:
    await faults(http, sim, close_ws_after_ms=200)
    with trio.fail_after(10), pytest.raises(AvatarSessionEnded):
        async with LiveAvatarProvider(make_settings(sim), http).open_session(lambda e: None):
            await trio.sleep_forever()
    record = await only_session(http, sim)
    assert record["stopped"] is not None


async def test_an_idle_session_expires_and_surfaces_as_session_ended(sim: str, http: httpx2.AsyncClient) -> None:
    await faults(http, sim, idle_timeout_s=0.3)
    with trio.fail_after(10), pytest.raises(AvatarSessionEnded):
        async with LiveAvatarProvider(make_settings(sim), http).open_session(lambda e: None):
            await trio.sleep_forever()
    record = await only_session(http, sim)
    assert record["end_reason"] == "IDLE_TIMEOUT"
    assert record["expired"] is not None


async def test_the_session_is_handed_over_before_connected_and_holds_speech_until_it_comes(
        sim: str, http: httpx2.AsyncClient) -> None:
    """No wait in the provider (the conversation bounds it): speech given before `connected` is held, not sent
    (the simulator drops commands sent before it, as LiveAvatar's docs warn), and all of it goes out once
    `connected` comes."""
    await faults(http, sim, withhold_connected=True)
    with trio.fail_after(20):
        async with LiveAvatarProvider(make_settings(sim), http).open_session(lambda e: None) as session:
            async with trio.open_nursery() as nursery:
                async def speak() -> None:
                    await session.speak_audio(sine(0.1, 16000).tobytes(), PCM16K, 1)
                    await session.end_turn(1)

                nursery.start_soon(speak)
                await wait_for_lite(http, sim, lambda lite: lite["chunks"] == 0, "the socket open")
                (await http.post(f"{sim}/_sim/connect")).raise_for_status()
                await session.wait_connected()
            await wait_for_lite(http, sim, lambda lite: lite["speak_ends"] == 1, "the turn's speak_end")
    lite = (await only_session(http, sim))["lite"]
    assert lite["chunks"] >= 1
    assert lite["dropped_before_connected"] == 0


async def test_the_operator_can_list_and_stop_leaked_sessions(sim: str, http: httpx2.AsyncClient) -> None:
    headers = {"X-API-KEY": API_KEY}
    body = {"mode": "LITE", "avatar_id": SANDBOX_AVATAR_ID}
    leaked = [(await http.post(f"{sim}/v1/sessions/token", json=body, headers=headers)).json()["data"]["session_id"]
              for _ in range(3)]
    settings = make_settings(sim)
    with trio.fail_after(10):
        assert sorted(await list_running_ids(settings, http)) == sorted(leaked)
        for session_id in leaked:
            await stop_by_id(settings, http, session_id, "ZOMBIE_SESSION_REAP")
        assert await list_running_ids(settings, http) == []
    sessions = (await ledger(http, sim))["sessions"]
    assert {s["stop_reason"] for s in sessions.values()} == {"ZOMBIE_SESSION_REAP"}


async def test_listing_with_a_bad_key_is_unauthorized(sim: str, http: httpx2.AsyncClient) -> None:
    await faults(http, sim, invalid_keys=[API_KEY])
    with trio.fail_after(10), pytest.raises(AvatarUnavailable) as caught:
        await list_running_ids(make_settings(sim), http)
    assert caught.value.reason == "unauthorized"


# ---------------------------------------------------------------------------------------------------------
# The simulator itself (HeyGen's realtime_endpoint reuses its socket), driven with raw requests


async def start_raw_session(http: httpx2.AsyncClient, base: str, **token_body: Any) -> dict[str, Any]:
    body = {"mode": "LITE", "avatar_id": SANDBOX_AVATAR_ID, **token_body}
    token = (await http.post(f"{base}/v1/sessions/token", json=body, headers={"X-API-KEY": API_KEY})).json()
    assert token["code"] == 1000
    started = await http.post(f"{base}/v1/sessions/start",
                              headers={"Authorization": f"Bearer {token['data']['session_token']}"})
    assert started.status_code == 201
    return {**started.json()["data"], "session_token": token["data"]["session_token"]}


async def next_of(ws: Any, kind: str) -> dict[str, Any]:
    while True:
        message = orjson.loads(await ws.get_message())
        if message["type"] == kind:
            return message  # type: ignore[no-any-return]


async def test_the_simulated_socket_speaks_the_lite_event_sequence(sim: str, http: httpx2.AsyncClient) -> None:
    session = await start_raw_session(http, sim)
    audio = base64.b64encode(b"\x00\x00" * 2400).decode()  # 0.1 s at 24 kHz
    with trio.fail_after(5):
        async with trio_websocket.open_websocket_url(session["ws_url"]) as ws:
            seen = [orjson.loads(await ws.get_message()) for _ in range(2)]
            assert [m.get("state") for m in seen] == ["connecting", "connected"]
            for _ in range(2):
                await ws.send_message(orjson.dumps({"type": "agent.speak", "event_id": "e1", "audio": audio}).decode())
            kinds = [orjson.loads(await ws.get_message())["type"] for _ in range(4)]
            assert kinds == ["agent.audio_buffer_appended", "agent.speak_started", "agent.state_updated",
                             "agent.audio_buffer_appended"]
            await ws.send_message('{"type":"agent.speak_end","event_id":"e1"}')
            with trio.fail_after(3):  # 0.2 s of audio: speak_ended follows (a generous bound; never is a bug)
                ended = await next_of(ws, "agent.speak_ended")
            assert ended["event_id"] == "e1"
            assert (await next_of(ws, "agent.state_updated"))["new_state"] == "idle"
            await ws.send_message(orjson.dumps({"type": "agent.speak", "event_id": "e2", "audio": audio}).decode())
            await ws.send_message('{"type":"agent.interrupt","event_id":"e2"}')
            assert (await next_of(ws, "agent.speak_interrupted"))["event_id"] == "e2"
            await next_of(ws, "agent.audio_buffer_cleared")
            await ws.send_message(orjson.dumps({"type": "agent.speak", "event_id": "e2", "audio": audio}).decode())
            await ws.send_message('{"type":"agent.bogus"}')
            assert (await next_of(ws, "error"))["error"]["type"] == "unknown_event"
    lite = (await only_session(http, sim))["lite"]
    assert lite["chunks_after_interrupt"] == 1
    assert lite["events"]["e1"]["audio_seconds"] == pytest.approx(0.2)
    assert lite["speak_ends"] == 1


async def test_speak_ended_waits_for_the_audio_to_play(sim: str, http: httpx2.AsyncClient) -> None:
    session = await start_raw_session(http, sim)
    audio = base64.b64encode(b"\x00\x00" * 12000).decode()  # 0.5 s
    with trio.fail_after(5):
        async with trio_websocket.open_websocket_url(session["ws_url"]) as ws:
            await next_of(ws, "session.state_updated")
            # Timed from before the audio is sent: the simulator starts "playing" it later, never earlier, so the
            # lower bound holds however slow the machine is.
            sent = time.monotonic()
            await ws.send_message(orjson.dumps({"type": "agent.speak", "event_id": "e", "audio": audio}).decode())
            await ws.send_message('{"type":"agent.speak_end","event_id":"e"}')
            await next_of(ws, "agent.audio_buffer_committed")
            await next_of(ws, "agent.speak_ended")
            assert time.monotonic() - sent >= 0.5 - 0.01  # 0.5 s of audio; 10 ms for clock granularity


async def test_a_closed_socket_leaves_the_session_running_until_stopped(sim: str, http: httpx2.AsyncClient) -> None:
    session = await start_raw_session(http, sim)
    with trio.fail_after(5):
        async with trio_websocket.open_websocket_url(session["ws_url"]) as ws:
            await next_of(ws, "session.state_updated")
    assert (await ledger(http, sim))["active"] == 1
    bearer = {"Authorization": f"Bearer {session['session_token']}"}
    for _ in range(2):  # stop is idempotent
        stop = await http.post(f"{sim}/v1/sessions/stop", headers=bearer,
                               json={"session_id": session["session_id"], "reason": "USER_CLOSED"})
        assert stop.json()["code"] == 1000
    record = await only_session(http, sim)
    assert record["stop_reason"] == "USER_CLOSED"
    historic = (await http.get(f"{sim}/v1/sessions", params={"type": "historic"},
                               headers={"X-API-KEY": API_KEY})).json()["data"]
    assert [r["id"] for r in historic["results"]] == [session["session_id"]]
    assert historic["results"][0]["end_reason"] == "USER_CLOSED"


async def test_a_sandbox_session_ends_as_max_duration_reached(sim: str, http: httpx2.AsyncClient) -> None:
    await faults(http, sim, sandbox_duration_s=0.3)
    settings = make_settings(sim, liveavatar_sandbox=True, liveavatar_avatar_id=SANDBOX_AVATAR_ID)
    with trio.fail_after(5), pytest.raises(AvatarSessionEnded):
        async with LiveAvatarProvider(settings, http).open_session(lambda e: None) as session:
            while True:  # activity does not extend a sandbox session
                await session.keep_alive()
                await trio.sleep(0.05)
    assert (await only_session(http, sim))["end_reason"] == "MAX_DURATION_REACHED"


async def test_the_start_answer_grants_the_sandbox_length_and_the_session_carries_it(
        sim: str, http: httpx2.AsyncClient) -> None:
    # The relay rotates before the shorter of what it knows and what the start answer granted (a plan's limit, the
    # sandbox's minute): the simulator's shortened sandbox (`avatar-relay sim --session-limit liveavatar=20`) too.
    await faults(http, sim, sandbox_duration_s=20)
    settings = make_settings(sim, liveavatar_sandbox=True, liveavatar_avatar_id=SANDBOX_AVATAR_ID)
    with trio.fail_after(5):
        async with LiveAvatarProvider(settings, http).open_session(lambda e: None) as session:
            assert session.info.session_seconds == 20.0
    async with LiveAvatarProvider(make_settings(sim, liveavatar_max_session_duration=900), http).open_session(
            lambda e: None) as session:
        assert session.info.session_seconds == 900.0  # not a sandbox session: the length asked


async def test_the_socket_refuses_a_wrong_token(sim: str, http: httpx2.AsyncClient) -> None:
    session = await start_raw_session(http, sim)
    with trio.fail_after(5), pytest.raises(trio_websocket.ConnectionRejected) as caught:
        async with trio_websocket.open_websocket_url(session["ws_url"].split("?")[0] + "?token=nope"):
            pass
    assert caught.value.status_code == 401


async def test_token_validation_answers_422_with_a_detail_list(sim: str, http: httpx2.AsyncClient) -> None:
    answer = await http.post(f"{sim}/v1/sessions/token", json={"is_sandbox": "maybe"},
                             headers={"X-API-KEY": API_KEY})
    assert answer.status_code == 422
    fields = {tuple(d["loc"]) for d in answer.json()["detail"]}
    assert {("body", "mode"), ("body", "avatar_id"), ("body", "is_sandbox")} <= fields


async def test_the_avatar_catalogue_includes_the_active_sandbox_avatar(sim: str, http: httpx2.AsyncClient) -> None:
    headers = {"X-API-KEY": API_KEY}
    listed = (await http.get(f"{sim}/v1/avatars", headers=headers)).json()["data"]["results"]
    assert SANDBOX_AVATAR_ID in [a["id"] for a in listed]
    one = (await http.get(f"{sim}/v1/avatars/{SANDBOX_AVATAR_ID}", headers=headers)).json()
    assert one["code"] == 1000
    assert one["data"]["status"] == "ACTIVE"
    assert (await http.get(f"{sim}/v1/avatars/{SANDBOX_AVATAR_ID}")).status_code == 401


async def test_token_refuses_an_avatar_id_that_is_not_a_uuid_with_422(sim: str, http: httpx2.AsyncClient) -> None:
    answer = await http.post(f"{sim}/v1/sessions/token", json={"mode": "LITE", "avatar_id": "Wayne_20240711"},
                             headers={"X-API-KEY": API_KEY})
    assert answer.status_code == 422
    (detail,) = answer.json()["detail"]
    assert detail["loc"] == ["body", "avatar_id"] and "UUID" in detail["msg"]


async def test_a_session_longer_than_the_plan_allows_is_asked_again_within_the_plans_limit(
        sim: str, http: httpx2.AsyncClient, caplog: pytest.LogCaptureFixture) -> None:
    """L12: the per-plan limits are unpublished; a plan that refuses the 1860 s asked used to send every session
    voice-only (bad_config). The relay asks again without max_session_duration (the plan's own limit applies),
    says so once, and asks without it from then on."""
    await faults(http, sim, tier_max_session_duration_s=1200)
    provider = LiveAvatarProvider(make_settings(sim, relay_max_duration=1800), http)
    for _ in range(2):
        async with provider.open_session(lambda event: None) as session:
            record = (await ledger(http, sim))["sessions"][session.info.session_id]
            assert record["max_session_duration"] <= 1200  # the plan's default, within its limit
    requests = (await ledger(http, sim))["requests"]
    assert requests["token"] == 3  # refused once, then asked without the field: 2 + 1
    refused = [r.getMessage() for r in caplog.records if "refused max_session_duration" in r.getMessage()]
    assert len(refused) == 1 and "RELAY_MAX_DURATION" in refused[0]


async def test_the_default_session_outlasts_the_conversation(sim: str, http: httpx2.AsyncClient) -> None:
    provider = LiveAvatarProvider(make_settings(sim, relay_max_duration=1800), http)
    async with provider.open_session(lambda event: None) as session:
        record = (await ledger(http, sim))["sessions"][session.info.session_id]
        assert record["max_session_duration"] >= 1800


async def test_the_simulator_refuses_a_fault_it_does_not_know(sim: str, http: httpx2.AsyncClient) -> None:
    answer = await http.post(f"{sim}/_sim/faults", json={"sandbox_duration": 5, "concurrency_limit": 0})
    assert answer.status_code == 400  # a typo would otherwise test nothing
    assert "sandbox_duration" in answer.json()["error"] and "sandbox_duration_s" in answer.json()["known"]
    assert (await http.post(f"{sim}/_sim/faults", json={})).json()["concurrency_limit"] is None  # nothing merged


async def test_the_list_call_pages_and_refuses_what_the_reference_refuses(sim: str, http: httpx2.AsyncClient) -> None:
    """`GET /v1/sessions` as the reference's OpenAPI has it: `type` required, 1 <= page_size <= 100, page >= 1."""
    headers = {"X-API-KEY": API_KEY}
    body = {"mode": "LITE", "avatar_id": SANDBOX_AVATAR_ID}
    made = [(await http.post(f"{sim}/v1/sessions/token", json=body, headers=headers)).json()["data"]["session_id"]
            for _ in range(3)]
    for params, field in (({}, "type"), ({"type": "running"}, "type"), ({"type": "active", "page_size": 101},
                                                                           "page_size"),
                          ({"type": "active", "page_size": 0}, "page_size"), ({"type": "active", "page": 0}, "page")):
        refused = await http.get(f"{sim}/v1/sessions", params=params, headers=headers)
        assert refused.status_code == 422, params
        assert refused.json()["detail"][0]["loc"] == ["query", field]
    first = (await http.get(f"{sim}/v1/sessions", params={"type": "active", "page_size": 2},
                            headers=headers)).json()["data"]
    second = (await http.get(f"{sim}/v1/sessions", params={"type": "active", "page_size": 2, "page": 2},
                             headers=headers)).json()["data"]
    assert first["count"] == 3 and first["next"] and second["next"] is None
    assert sorted(r["id"] for r in first["results"] + second["results"]) == sorted(made)
