"""SimliProvider against the Simli simulator over real loopback sockets.

Proves: the agent's audio arrives at 16 kHz with its duration and no seams, an interruption clears the buffer and
nothing of the interrupted turn follows it, speech is held until `START`, quiet sessions get keep-alive silence,
every way out of a session ends it (`SKIP`, `DONE`, the server's close), refusals map to the right reason and leave
nothing billed, the server's ends (idle, maximum length, room not joined, a termination message, a dropped socket)
surface as AvatarSessionEnded, and a session whose socket is gone is bounded by `maxIdleTime`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx2
import numpy as np
import orjson
import pytest
import trio
import trio.lowlevel
import trio_websocket
from pydantic import SecretStr

from relay.avatars import AvatarEvent, AvatarSessionEnded, AvatarStateChanged, AvatarUnavailable
from relay.config import Settings
from relay.protocol.audio import AudioFormat
from relay.sim import simli_sim
from relay.simli import SimliProvider, active_session_count, list_running_ids, stop_by_id
from tests.support.harness import poll_ledger
from tests.support.simserver import cancel_while_slow, chunks_of, faults, ledger, refusal, served, settings, sine_wave

pytestmark = pytest.mark.timeout(60)

API_KEY = "simli-test-key-0123456789"
FACE = "cace3ef7-a4c4-425d-a8cf-a5358eb0c427"
PCM16K = AudioFormat("pcm", 16000)
PCM24K = AudioFormat("pcm", 24000)
ULAW8K = AudioFormat("ulaw", 8000)


@pytest.fixture
async def sim(nursery: trio.Nursery) -> AsyncIterator[str]:
    async with served(nursery, simli_sim.create_app()) as url:
        yield url


def make_settings(base_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "elevenlabs_agent_id": "agent", "simli_api_key": SecretStr(API_KEY), "simli_base_url": base_url,
        "simli_face_id": FACE, "relay_avatar": "simli", "relay_stop_timeout": 3.0, "relay_setup_timeout": 5.0,
    }
    values.update(overrides)
    return settings(**values)


async def wait_for_session(http: httpx2.AsyncClient, base: str, condition: Callable[[dict[str, Any]], bool],
                           what: str) -> dict[str, Any]:
    """Poll until the one session's ledger satisfies `condition`; return it."""
    def holds(state: dict[str, Any]) -> bool:
        sessions = list(state["sessions"].values())
        return len(sessions) == 1 and condition(sessions[0])

    state = await poll_ledger(lambda: ledger(http, base), holds, what)
    return next(iter(state["sessions"].values()))  # type: ignore[no-any-return]


async def only_session(http: httpx2.AsyncClient, base: str) -> tuple[str, dict[str, Any]]:
    sessions = (await ledger(http, base))["sessions"]
    assert len(sessions) == 1
    return next(iter(sessions.items()))  # type: ignore[no-any-return]


def ended_by_the_relay(record: dict[str, Any]) -> bool:
    return record["end_reason"] == "DONE" and record["dones"] == 1 and record["skips"] >= 1


# ---------------------------------------------------------------------------------------------------------------------
# Audio


async def test_a_turn_of_24khz_audio_arrives_as_16khz_with_its_duration_and_no_seams(
        sim: str, http: httpx2.AsyncClient) -> None:
    await faults(http, sim, record_audio=True)
    pcm = sine_wave(1.0, 24000).astype("<i2").tobytes()
    with trio.fail_after(10):
        async with SimliProvider(make_settings(sim), http).open_session(lambda e: None) as session:
            assert session.takes_audio
            assert session.info.provider == "simli"
            assert session.info.simulated
            assert session.info.livekit_url == "wss://livekit.simulated.invalid"
            assert session.info.access_token and session.info.access_token.startswith("sim-viewer.")
            for chunk in chunks_of(pcm, [4801, 7200, 999, 9600]):  # odd sizes: a split sample too
                await session.speak_audio(chunk, PCM24K, 1)
            await session.end_turn(1)
            await wait_for_session(http, sim, lambda s: s["audio_seconds"] >= 0.99, "the whole turn")
        session_id, record = await only_session(http, sim)
        received = (await http.get(f"{sim}/_sim/audio/{session_id}/0")).content
    assert session.info.session_id == session_id  # Simli's own id, from its `destination` message
    assert record["audio_seconds"] == pytest.approx(1.0, abs=0.002)
    assert record["dropped_before_start"] == 0
    # The oracle is the same sine computed at 16 kHz: 1 s is exactly 16000 samples; a lost or repeated sample at
    # a chunk seam shifts the phase (errors ~ 10^3), a gap or an overlap more.
    got = np.frombuffer(received, dtype="<i2").astype(np.float64)
    assert len(got) == 16000
    ideal = sine_wave(1.0, 16000)
    inner = slice(200, -200)
    assert np.max(np.abs(got[inner] - ideal[inner])) <= 16
    assert ended_by_the_relay(record)


async def test_16khz_audio_goes_through_untouched_in_frames_of_at_most_6000_bytes(
        sim: str, http: httpx2.AsyncClient) -> None:
    await faults(http, sim, record_audio=True, max_frame_bytes=6000)
    pcm = np.arange(-8000, 8000, dtype="<i2").tobytes()  # 1 s, every sample distinct
    with trio.fail_after(10):
        async with SimliProvider(make_settings(sim), http).open_session(lambda e: None) as session:
            await session.speak_audio(pcm[:20000], PCM16K, 1)
            await session.speak_audio(pcm[20000:], PCM16K, 1)
            await session.end_turn(1)
            await wait_for_session(http, sim, lambda s: s["audio_seconds"] == 1.0, "the whole turn")
        session_id, record = await only_session(http, sim)
        received = (await http.get(f"{sim}/_sim/audio/{session_id}/0")).content
    assert received == pcm
    assert record["frames"] == 6  # 6000+6000+6000+2000, 6000+6000 (a longer frame would end the session)
    assert record["end_reason"] == "DONE"


async def test_ulaw_8000_input_arrives_as_16khz_pcm_of_the_same_duration(
        sim: str, http: httpx2.AsyncClient) -> None:
    ulaw = bytes(np.random.default_rng(1).integers(0, 256, 4000, dtype=np.uint8))  # 0.5 s
    with trio.fail_after(10):
        async with SimliProvider(make_settings(sim), http).open_session(lambda e: None) as session:
            for chunk in chunks_of(ulaw, [800, 333]):
                await session.speak_audio(chunk, ULAW8K, 4)
            await session.end_turn(4)
            record = await wait_for_session(http, sim, lambda s: s["audio_seconds"] >= 0.49, "the turn")
    assert record["audio_seconds"] == pytest.approx(0.5, abs=0.01)


async def test_speaking_and_silent_reach_the_conversation_with_the_turn(sim: str, http: httpx2.AsyncClient) -> None:
    events: list[AvatarEvent] = []
    silent = trio.Event()

    def on_event(event: AvatarEvent) -> None:
        events.append(event)
        if event == AvatarStateChanged(speaking=False, turn=3):
            silent.set()

    with trio.fail_after(10):
        async with SimliProvider(make_settings(sim), http).open_session(on_event) as session:
            await session.speak_audio(sine_wave(0.2, 16000).astype("<i2").tobytes(), PCM16K, 3)
            await session.end_turn(3)
            await silent.wait()  # SILENT comes once the 0.2 s have "played"
    assert events[0] == AvatarStateChanged(speaking=True, turn=3)


async def test_an_interruption_clears_the_buffer_and_nothing_of_the_interrupted_turn_follows(
        sim: str, http: httpx2.AsyncClient) -> None:
    await faults(http, sim, record_audio=True)
    turn2 = np.full(1600, 1000, dtype="<i2").tobytes()  # 0.1 s of a value only turn 2 has
    turn3 = np.full(1600, -1000, dtype="<i2").tobytes()
    with trio.fail_after(10):
        async with SimliProvider(make_settings(sim), http).open_session(lambda e: None) as session:
            async with trio.open_nursery() as nursery:

                async def keep_speaking() -> None:
                    for _ in range(200):
                        await session.speak_audio(turn2, PCM16K, 2)

                nursery.start_soon(keep_speaking)
                # Interrupt while turn 2 is streaming: the simulator has some of it, and more is on its way.
                await wait_for_session(http, sim, lambda s: s["frames"] >= 1, "the first frames of turn 2")
                await session.interrupt(2)
            await session.end_turn(2)  # sends nothing: the turn was interrupted
            await session.speak_audio(turn3, PCM16K, 3)
            await session.end_turn(3)
            await wait_for_session(http, sim, lambda s: s["segments"][-1] >= 0.1, "turn 3 after the SKIP")
        session_id, record = await only_session(http, sim)
        before = np.frombuffer((await http.get(f"{sim}/_sim/audio/{session_id}/0")).content, dtype="<i2")
        after = np.frombuffer((await http.get(f"{sim}/_sim/audio/{session_id}/1")).content, dtype="<i2")
    assert record["skips"] == 2  # the interruption's, then the end's
    assert len(before) >= 1 and set(before.tolist()) == {1000}
    assert len(after) == 1600 and set(after.tolist()) == {-1000}


async def test_speech_is_held_until_start_and_none_is_lost(sim: str, http: httpx2.AsyncClient) -> None:
    """The session is handed over once the room is known; audio given before the server's `START` (the room
    joined) waits, in order, and goes out after it (the simulator drops audio that comes before `START`)."""
    await faults(http, sim, withhold_join=True)
    with trio.fail_after(20):
        async with SimliProvider(make_settings(sim), http).open_session(lambda e: None) as session:
            async with trio.open_nursery() as nursery:

                async def speak() -> None:
                    await session.speak_audio(sine_wave(0.1, 16000).astype("<i2").tobytes(), PCM16K, 1)
                    await session.end_turn(1)

                nursery.start_soon(speak)
                await wait_for_session(http, sim, lambda s: s["started"] is not None, "the socket open")
                assert (await http.post(f"{sim}/_sim/join")).json() == {"joined": 1}
                await session.wait_connected()
            record = await wait_for_session(http, sim, lambda s: s["audio_seconds"] >= 0.1, "the turn")
    assert record["dropped_before_start"] == 0
    assert record["joined"] is not None


async def test_a_quiet_session_gets_keep_alive_silence_and_a_speaking_one_does_not(
        sim: str, http: httpx2.AsyncClient) -> None:
    settings = make_settings(sim, simli_max_idle_time=30, relay_keep_alive_interval=60.0)
    with trio.fail_after(10):
        async with SimliProvider(settings, http).open_session(lambda e: None) as session:
            assert session.keep_alive_interval == 10.0  # a third of maxIdleTime, below RELAY_KEEP_ALIVE_INTERVAL
            await session.speak_audio(sine_wave(0.05, 16000).astype("<i2").tobytes(), PCM16K, 1)
            await session.keep_alive()  # audio just went out: nothing to add
            await wait_for_session(http, sim, lambda s: s["frames"] == 1, "the turn's frame")
    _, record = await only_session(http, sim)
    assert record["silent_frames"] == 0

    quiet = make_settings(sim, relay_keep_alive_interval=0.01)
    with trio.fail_after(10):
        async with SimliProvider(quiet, http).open_session(lambda e: None) as session:
            await session.wait_connected()

            state: dict[str, Any] = {}
            with trio.move_on_after(5):
                while not any(s["silent_frames"] for s in state.get("sessions", {}).values()):
                    await session.keep_alive()
                    state = await ledger(http, sim)
    fed_sessions = [s for s in state["sessions"].values() if s["silent_frames"]]
    assert len(fed_sessions) == 1
    assert fed_sessions[0]["speak_events"] == 0  # silence does not make the avatar "speak"


# ---------------------------------------------------------------------------------------------------------------------
# Every way out ends the session


async def test_a_normal_exit_ends_the_session_with_skip_and_done(sim: str, http: httpx2.AsyncClient) -> None:
    with trio.fail_after(10):
        async with SimliProvider(make_settings(sim), http).open_session(lambda e: None):
            pass
    _, record = await only_session(http, sim)
    assert ended_by_the_relay(record)
    assert (await ledger(http, sim))["active"] == 0


async def test_the_session_is_ended_when_the_body_raises(sim: str, http: httpx2.AsyncClient) -> None:
    with trio.fail_after(10), pytest.raises(KeyError):
        async with SimliProvider(make_settings(sim), http).open_session(lambda e: None):
            raise KeyError("boom")
    _, record = await only_session(http, sim)
    assert ended_by_the_relay(record)


async def test_the_session_is_ended_when_the_caller_is_cancelled(sim: str, http: httpx2.AsyncClient) -> None:
    with trio.fail_after(10):
        with trio.CancelScope() as scope:
            async with SimliProvider(make_settings(sim), http).open_session(lambda e: None) as session:
                await session.speak_audio(sine_wave(2.0, 16000).astype("<i2").tobytes(), PCM16K, 1)
                scope.cancel()  # the caller is cancelled while the avatar has 2 s left to say
                await trio.sleep_forever()
    _, record = await only_session(http, sim)
    assert ended_by_the_relay(record)
    assert record["billed_seconds"] < 2.0  # SKIP first: DONE does not wait for the buffer to play out


@pytest.mark.parametrize("slow_endpoint", ["token", "ws_connect"])
async def test_a_session_opened_while_the_caller_is_cancelled_is_still_ended(
        sim: str, http: httpx2.AsyncClient, slow_endpoint: str) -> None:
    assert not await cancel_while_slow(
        http, sim, slow_endpoint, lambda: SimliProvider(make_settings(sim), http).open_session(lambda e: None))
    _, record = await only_session(http, sim)
    assert ended_by_the_relay(record)
    assert (await ledger(http, sim))["active"] == 0


async def test_a_setup_timeout_still_ends_an_opened_socket(sim: str, http: httpx2.AsyncClient) -> None:
    await faults(http, sim, latency_ms={"ws_connect": 1500})
    with trio.fail_after(10), pytest.raises(AvatarUnavailable) as caught:
        async with SimliProvider(make_settings(sim, relay_setup_timeout=1.0), http).open_session(lambda e: None):
            pytest.fail("the body must not run")
    assert caught.value.reason == "timeout"
    state = await poll_ledger(lambda: ledger(http, sim),
                              lambda s: all(r["ended"] is not None or r["started"] is None
                                            for r in s["sessions"].values()), "nothing billed")
    assert state["active"] == 0


# ---------------------------------------------------------------------------------------------------------------------
# Refusals


@pytest.mark.parametrize(
    ("fault", "settings_update", "reason"),
    [
        ({"invalid_keys": [API_KEY]}, {}, "unauthorized"),
        ({"no_credits": True}, {}, "no_credits"),
        ({}, {"simli_face_id": "00000000-0000-4000-8000-000000000000"}, "bad_config"),
        ({}, {"simli_face_id": FACE + "/00000000-0000-4000-8000-000000000000"}, "bad_config"),
        ({"fail": {"token": {"status": 503, "detail": "down"}}}, {}, "upstream_error"),
        ({"fail": {"token": {"status": 429, "detail": "slow down", "retry_after": 7}}}, {}, "rate_limited"),
        ({"fail": {"token": {"status": 200, "body": {"nope": 1}}}}, {}, "upstream_error"),
        ({"fail": {"ws_connect": {"status": 500}}}, {}, "upstream_error"),
        ({"fail": {"ws_connect": {"status": 403}}}, {}, "unauthorized"),
    ],
)
async def test_a_refused_session_raises_unavailable_with_its_reason_and_leaves_nothing_billed(
        sim: str, http: httpx2.AsyncClient, fault: dict[str, Any], settings_update: dict[str, Any],
        reason: str) -> None:
    await faults(http, sim, **fault)
    provider = SimliProvider(make_settings(sim, **settings_update), http)
    refused = await refusal(http, sim, lambda: provider.open_session(lambda e: None))
    assert refused.reason == reason
    assert API_KEY not in refused.message


async def test_the_concurrency_limit_refuses_the_next_session_on_its_socket(
        sim: str, http: httpx2.AsyncClient) -> None:
    await faults(http, sim, concurrency_limit=1)
    provider = SimliProvider(make_settings(sim), http)
    with trio.fail_after(10):
        async with provider.open_session(lambda e: None):
            with pytest.raises(AvatarUnavailable) as caught:
                async with provider.open_session(lambda e: None):
                    pytest.fail("the body must not run")
    assert caught.value.reason == "concurrent_limit"
    assert caught.value.upstream_code == "RATE"
    state = await ledger(http, sim)
    assert state["active"] == 0
    assert state["tokens"] == 2
    assert [s["end_reason"] for s in state["sessions"].values()] == ["DONE"]  # the refused socket billed nothing
    assert [r["detail"] for r in state["refusals"]] == ["RATE"]


# ---------------------------------------------------------------------------------------------------------------------
# The server's ends


@pytest.mark.parametrize(
    ("fault", "end_reason"),
    [
        ({"max_idle_time_s": 0.3}, "IDLE_TIMEOUT"),
        ({"withhold_join": True, "join_deadline_s": 0.3}, "JOIN_TIMEOUT"),
        ({"terminate_after_ms": {"text": "ERROR: BILLING_ERROR", "after_ms": 100}}, "TERMINATED"),
    ],
)
async def test_a_session_the_server_ends_surfaces_as_session_ended(
        sim: str, http: httpx2.AsyncClient, fault: dict[str, Any], end_reason: str) -> None:
    await faults(http, sim, **fault)
    failed: list[str] = []

    async def on_stop_failed(session_id: str) -> None:
        failed.append(session_id)

    async def on_created(session_id: str) -> None:
        pass

    with trio.fail_after(10), pytest.raises(AvatarSessionEnded) as caught:
        async with SimliProvider(make_settings(sim), http).open_session(
                lambda e: None, on_created=on_created, on_stop_failed=on_stop_failed):
            await trio.sleep_forever()
    assert caught.value.reason == "session_ended"
    _, record = await only_session(http, sim)
    assert record["end_reason"] == end_reason
    assert failed == []  # the server said it ended the session: nothing left to stop


async def test_the_maximum_length_ends_even_a_session_kept_alive(sim: str, http: httpx2.AsyncClient) -> None:
    await faults(http, sim, max_session_length_s=0.5)
    with trio.fail_after(10), pytest.raises(AvatarSessionEnded) as caught:
        async with SimliProvider(make_settings(sim), http).open_session(lambda e: None) as session:
            while True:
                await session.speak_audio(np.zeros(800, dtype="<i2").tobytes(), PCM16K, 1)
                await trio.sleep(0.05)
    assert "MAX_SESSION_LENGTH" in caught.value.message
    _, record = await only_session(http, sim)
    assert record["end_reason"] == "MAX_SESSION_LENGTH"


async def test_a_socket_dropped_mid_reply_is_reported_unstoppable_and_ends_within_max_idle_time(
        sim: str, http: httpx2.AsyncClient) -> None:
    """The connection dies while the avatar speaks, with no word from the server: the relay cannot send `DONE`,
    says so (`on_stop_failed`, for the journal), and the session bills on until `maxIdleTime` — the bound."""
    await faults(http, sim, drop_ws_after_audio_bytes=16000, max_idle_time_s=0.5)
    created: list[str] = []
    failed: list[str] = []

    async def on_created(session_id: str) -> None:
        created.append(session_id)

    async def on_stop_failed(session_id: str) -> None:
        failed.append(session_id)

    with trio.fail_after(10), pytest.raises(AvatarSessionEnded) as caught:
        async with SimliProvider(make_settings(sim), http).open_session(
                lambda e: None, on_created=on_created, on_stop_failed=on_stop_failed) as session:
            while True:
                await session.speak_audio(sine_wave(0.1, 16000).astype("<i2").tobytes(), PCM16K, 1)
                await trio.lowlevel.checkpoint()
    assert caught.value.upstream_code == 1011
    assert failed == created and len(created) == 1
    record = await wait_for_session(http, sim, lambda s: s["ended"] is not None, "the idle end")
    assert record["end_reason"] == "IDLE_TIMEOUT"
    assert record["ended"] > record["socket_closed"]  # the session outlived its socket
    assert record["ended"] >= record["last_audio"] + 0.5
    assert record["dones"] == 0


async def test_a_crashed_relays_session_is_bounded_by_max_idle_time(sim: str, http: httpx2.AsyncClient) -> None:
    """What a relay killed mid-conversation leaves: a socket closed without `DONE`. Simli has no stop by id, so
    `stop_by_id` can do nothing; the session ends `maxIdleTime` after its last audio (docs/deploy.md)."""
    await faults(http, sim, max_idle_time_s=0.5)
    token = (await http.post(f"{sim}/compose/token", headers={"x-simli-api-key": API_KEY},
                             json={"faceId": FACE, "maxIdleTime": 60, "maxSessionLength": 600})).json()
    ws_url = sim.replace("http", "ws") + f"/compose/webrtc/livekit?session_token={token['session_token']}"
    with trio.fail_after(10):
        async with trio_websocket.open_websocket_url(ws_url) as ws:
            while await ws.get_message() != "START":
                pass
            await ws.send_message(b"\x01\x00" * 1600)
    record = await wait_for_session(http, sim, lambda s: s["socket_closed"] is not None, "the socket gone")
    assert record["ended"] is None  # still billed: closing the socket did not end it
    session_id, _ = await only_session(http, sim)
    await stop_by_id(make_settings(sim), http, session_id)  # nothing to call: it only logs
    record = await wait_for_session(http, sim, lambda s: s["ended"] is not None, "the idle end")
    assert record["end_reason"] == "IDLE_TIMEOUT"
    assert record["ended"] >= record["last_audio"] + 0.5
    assert (await ledger(http, sim))["active"] == 0


# ---------------------------------------------------------------------------------------------------------------------
# Operator calls


async def test_simli_cannot_list_sessions_but_can_count_them(sim: str, http: httpx2.AsyncClient) -> None:
    settings = make_settings(sim)
    with trio.fail_after(10):
        assert await active_session_count(settings, http) == 0
        async with SimliProvider(settings, http).open_session(lambda e: None):
            assert await active_session_count(settings, http) == 1
            assert await list_running_ids(settings, http) == []
    await faults(http, sim, invalid_keys=[API_KEY])
    with pytest.raises(AvatarUnavailable) as caught:
        await active_session_count(settings, http)
    assert caught.value.reason == "unauthorized"


# ---------------------------------------------------------------------------------------------------------------------
# The simulator itself, driven with raw requests


async def raw_socket_url(http: httpx2.AsyncClient, base: str, **body: Any) -> str:
    answer = await http.post(f"{base}/compose/token", headers={"x-simli-api-key": API_KEY},
                             json={"faceId": FACE, **body})
    assert answer.status_code == 200
    return base.replace("http", "ws") + f"/compose/webrtc/livekit?session_token={answer.json()['session_token']}"


async def test_the_simulated_socket_speaks_simlis_sequence(sim: str, http: httpx2.AsyncClient) -> None:
    url = await raw_socket_url(http, sim)
    with trio.fail_after(5):
        async with trio_websocket.open_websocket_url(url) as ws:
            first = [await ws.get_message() for _ in range(4)]
            assert orjson.loads(first[0])["session_id"]
            assert "video_metadata" in orjson.loads(first[1])
            assert set(orjson.loads(first[2])) == {"livekit_url", "livekit_token"}
            assert first[3] == "START"
            await ws.send_message(np.full(3200, 500, dtype="<i2").tobytes())  # 0.2 s
            assert await ws.get_message() == "SPEAK"
            assert await ws.get_message() == "SILENT"  # after the 0.2 s have played
            await ws.send_message(np.full(16000, 500, dtype="<i2").tobytes())  # 1 s
            assert await ws.get_message() == "SPEAK"
            await ws.send_message("SKIP")
            assert {await ws.get_message(), await ws.get_message()} == {"SILENT", "ACK"}
            await ws.send_message("BOGUS")
            assert (await ws.get_message()).startswith("ERROR: UNKNOWN_MESSAGE")
            await ws.send_message("DONE")
            with pytest.raises(trio_websocket.ConnectionClosed) as closed:
                await ws.get_message()
            assert closed.value.reason.code == 1000
    _, record = await only_session(http, sim)
    assert record["end_reason"] == "DONE"
    assert record["segments"] == [pytest.approx(1.2), 0.0]


async def test_done_lets_the_buffer_play_before_the_session_ends(sim: str, http: httpx2.AsyncClient) -> None:
    url = await raw_socket_url(http, sim)
    with trio.fail_after(5):
        async with trio_websocket.open_websocket_url(url) as ws:
            while await ws.get_message() != "START":
                pass
            await ws.send_message(np.full(8000, 500, dtype="<i2").tobytes())  # 0.5 s
            await ws.send_message("DONE")
            with pytest.raises(trio_websocket.ConnectionClosed):
                while True:
                    await ws.get_message()
    _, record = await only_session(http, sim)
    assert record["end_reason"] == "DONE"
    assert record["ended"] >= record["last_audio"] + 0.5


async def test_a_token_opens_one_socket_only(sim: str, http: httpx2.AsyncClient) -> None:
    url = await raw_socket_url(http, sim)
    with trio.fail_after(5):
        async with trio_websocket.open_websocket_url(url) as ws:
            await ws.get_message()
            async with trio_websocket.open_websocket_url(url) as again:
                assert await again.get_message() == "ERROR: INVALID_SESSION_TOKEN"


async def test_token_refusals_have_simlis_shapes(sim: str, http: httpx2.AsyncClient) -> None:
    headers = {"x-simli-api-key": API_KEY}
    missing = await http.post(f"{sim}/compose/token", headers=headers, json={"maxIdleTime": "soon"})
    assert missing.status_code == 422
    assert {tuple(d["loc"]) for d in missing.json()["detail"]} == {("body", "faceId"), ("body", "maxIdleTime")}
    unknown = await http.post(f"{sim}/compose/token", headers=headers, json={"faceId": "nobody"})
    assert (unknown.status_code, unknown.json()) == (400, {"session_token": "FAIL_TOKEN",
                                                           "detail": "INVALID_FACE_ID"})
    keyless = await http.post(f"{sim}/compose/token", json={"faceId": FACE})
    assert (keyless.status_code, keyless.json()["detail"]) == (401, "INVALID_API_KEY")
    wrong_format = await http.post(f"{sim}/compose/token", headers=headers,
                                   json={"faceId": FACE, "audioInputFormat": "mp3"})
    assert wrong_format.status_code == 422
    assert (await http.get(f"{sim}/faces", headers=headers)).json()[0]["id"] == simli_sim.ACCOUNT_FACES[0]


async def test_an_unknown_fault_is_refused_with_the_known_ones(sim: str, http: httpx2.AsyncClient) -> None:
    answer = await http.post(f"{sim}/_sim/faults", json={"withold_join": True})
    assert answer.status_code == 400
    assert "withhold_join" in answer.json()["known"]


async def test_a_room_the_pages_csp_does_not_allow_is_named_in_the_log(
        sim: str, http: httpx2.AsyncClient, caplog: pytest.LogCaptureFixture) -> None:
    await faults(http, sim, livekit_url="wss://rooms.simli.example")
    with trio.fail_after(10):
        async with SimliProvider(make_settings(sim), http).open_session(lambda e: None) as session:
            assert not session.info.simulated
    assert "Simli's room is on rooms.simli.example, which RELAY_PAGE_CONNECT_SRC does not allow" in caplog.text
    caplog.clear()
    allowed = make_settings(sim, relay_page_connect_src="wss://*.simli.example https://*.simli.example")
    async with SimliProvider(allowed, http).open_session(lambda e: None):
        pass
    assert "RELAY_PAGE_CONNECT_SRC" not in caplog.text
