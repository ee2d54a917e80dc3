"""HeyGenProvider against the HeyGen simulator, on loopback with real sockets.

Every test ends by reading the simulator's ledger: the provider must leave no session running, whatever
happened (normal exit, an exception in the body, cancellation mid-`streaming.new` or mid-`streaming.start`,
upstream failures). The ledger is the simulator's own record, so these tests prove behaviour on the wire.
"""

from __future__ import annotations

import math
import time
from collections.abc import AsyncIterator
from functools import partial
from typing import Any

import httpx2
import pytest
import trio
from hypercorn.config import Config
from hypercorn.trio import serve
from pydantic import SecretStr

from relay.avatars import (
    AvatarEvent,
    AvatarSessionEnded,
    AvatarSpeaking,
    AvatarStateChanged,
    AvatarUnavailable,
)
from relay.config import Settings
from relay.heygen import HeyGenProvider, list_sessions, stop_by_id
from relay.protocol.audio import AudioFormat
from relay.sim import heygen_sim
from tests.support.harness import poll_ledger
from tests.support.simcontrol import SimControl

pytestmark = pytest.mark.timeout(60)

API_KEY = "hg-test-key-0123456789abcdef"


class Sim(SimControl):
    """The simulator's base URL plus its control endpoints."""

    async def only_session(self) -> dict[str, Any]:
        sessions = (await self.ledger())["sessions"]
        assert len(sessions) == 1, sessions
        return next(iter(sessions.values()))


@pytest.fixture
async def sim(nursery: trio.Nursery, http: httpx2.AsyncClient) -> AsyncIterator[Sim]:
    config = Config()
    config.bind = ["127.0.0.1:0"]
    config.accesslog = None
    config.errorlog = None
    config.graceful_timeout = 0.5
    shutdown = trio.Event()
    urls = await nursery.start(partial(serve, heygen_sim.create_app(), config, shutdown_trigger=shutdown.wait))
    yield Sim(urls[0], http)
    shutdown.set()


def make_settings(sim: Sim, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "elevenlabs_agent_id": "agent",
        "relay_avatar": "heygen",
        "heygen_api_key": SecretStr(API_KEY),
        "heygen_base_url": sim.url,
        "heygen_avatar_id": "Wayne_20240711",
        "heygen_voice_id": "voice-1",
        "heygen_idle_timeout": 60,
        "relay_setup_timeout": 3.0,
        "relay_stop_timeout": 3.0,
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


def provider(sim: Sim, **overrides: Any) -> HeyGenProvider:
    return HeyGenProvider(make_settings(sim, **overrides), sim.http)


async def assert_nothing_left_running(sim: Sim) -> dict[str, Any]:
    ledger = await sim.ledger()
    totals = ledger["totals"]
    assert totals["open"] == 0, ledger
    assert totals["expired"] == 0, ledger
    assert totals["stopped"] == totals["created"], ledger
    return ledger


async def test_open_session_starts_it_and_normal_exit_stops_it(sim: Sim) -> None:
    with trio.fail_after(10):
        async with provider(sim).open_session(lambda event: None) as session:
            entry = await sim.only_session()
            assert entry["status"] == "connected"
            assert entry["started_at"] is not None
            assert session.info.session_id == entry["session_id"]
            assert session.info.provider == "heygen"
            assert session.info.livekit_url == "wss://livekit.simulated.invalid"
            assert session.info.access_token
            assert session.info.simulated is True
            assert session.takes_audio is False
            assert session.keep_alive_interval <= 30
        entry = await sim.only_session()
    assert entry["status"] == "closed"
    assert entry["stopped_at"] >= entry["started_at"] >= entry["created_at"]
    assert entry["avatar_id"] == "Wayne_20240711"
    assert entry["sent_avatar_id"] and entry["sent_avatar_name"]
    assert entry["voice_id"] == "voice-1"
    assert entry["version"] == "v2"
    assert entry["activity_idle_timeout"] == 60
    await assert_nothing_left_running(sim)


async def test_speak_text_queues_a_repeat_task_and_reports_its_duration(sim: Sim) -> None:
    events: list[AvatarEvent] = []
    with trio.fail_after(10):
        async with provider(sim).open_session(events.append) as session:
            await session.speak_text("Hello there, how can I help?", turn=1)
            await session.speak_text("   ", turn=2)
            ledger_entry = await sim.only_session()
    tasks = ledger_entry["tasks"]
    assert [(t["text"], t["task_type"], t["task_mode"]) for t in tasks] == [
        ("Hello there, how can I help?", "repeat", "async")
    ]
    assert events == [AvatarSpeaking(text="Hello there, how can I help?", duration_ms=tasks[0]["duration_ms"],
                                     turn=1)]
    assert tasks[0]["duration_ms"] > 0
    await assert_nothing_left_running(sim)


async def test_interrupt_and_keep_alive_reach_heygen(sim: Sim) -> None:
    with trio.fail_after(10):
        async with provider(sim).open_session(lambda event: None) as session:
            await session.speak_text("A long answer", turn=1)
            await session.interrupt(1)
            await session.keep_alive()
            await session.keep_alive()
            entry = await sim.only_session()
    assert entry["interrupts"]["count"] == 1
    assert entry["interrupts"]["at"][0] >= entry["tasks"][0]["received_at"]
    assert entry["keep_alives"]["count"] == 2
    await assert_nothing_left_running(sim)


async def test_session_is_stopped_when_the_body_raises(sim: Sim) -> None:
    with trio.fail_after(10), pytest.raises(RuntimeError, match="boom"):
        async with provider(sim).open_session(lambda event: None):
            raise RuntimeError("boom")
    await assert_nothing_left_running(sim)


async def test_session_created_while_the_caller_is_cancelled_is_stopped_once_its_answer_arrives(sim: Sim) -> None:
    await sim.faults(latency_ms={"streaming.new": 600})
    entered = False
    with trio.fail_after(10):
        with trio.move_on_after(0.1) as cancelled:
            async with provider(sim).open_session(lambda event: None):
                entered = True
    assert cancelled.cancelled_caught and not entered
    ledger = await assert_nothing_left_running(sim)
    assert ledger["totals"]["created"] == 1
    # The provider waited for the answer (shielded) instead of walking away from a billed session: it could only
    # ask to stop the session once the answer, sent 0.6 s after the creation, had named it (simulator clock).
    (entry,) = ledger["sessions"].values()
    assert entry["stopped_at"] - entry["created_at"] >= 0.6


async def test_session_is_stopped_when_the_caller_is_cancelled_during_start(sim: Sim) -> None:
    await sim.faults(latency_ms={"streaming.start": 2000})
    entered = False

    async def open_it() -> None:
        nonlocal entered
        async with provider(sim).open_session(lambda event: None):
            entered = True

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(open_it)
            # Cancelled once streaming.start is in flight (the simulator marks the session started, then waits).
            await poll_ledger(sim.ledger, lambda ledger: ledger["totals"]["started"] == 1, "streaming.start")
            nursery.cancel_scope.cancel()
    assert not entered
    ledger = await assert_nothing_left_running(sim)
    assert ledger["totals"]["created"] == 1
    assert ledger["requests"]["streaming.start"] == 1


async def test_concurrent_limit_gives_avatar_unavailable_and_leaves_nothing_running(sim: Sim) -> None:
    await sim.faults(concurrency_limit=1)
    with trio.fail_after(10):
        async with provider(sim).open_session(lambda event: None):
            with pytest.raises(AvatarUnavailable) as raised:
                async with provider(sim).open_session(lambda event: None):
                    pytest.fail("the body must not run")
    assert raised.value.reason == "concurrent_limit"
    assert raised.value.upstream_code == 10007
    ledger = await assert_nothing_left_running(sim)
    assert ledger["totals"]["created"] == 1


async def test_invalid_key_gives_unauthorized_without_the_key_in_the_message(sim: Sim) -> None:
    await sim.faults(invalid_keys=[API_KEY])
    with trio.fail_after(10), pytest.raises(AvatarUnavailable) as raised:
        async with provider(sim).open_session(lambda event: None):
            pytest.fail("the body must not run")
    assert raised.value.reason == "unauthorized"
    assert API_KEY not in str(raised.value) and API_KEY not in raised.value.message
    assert (await sim.ledger())["totals"]["created"] == 0


async def test_server_error_on_new_gives_upstream_error(sim: Sim) -> None:
    await sim.faults(fail={"streaming.new": {"status": 503, "code": 503, "message": "unavailable"}})
    with trio.fail_after(10), pytest.raises(AvatarUnavailable) as raised:
        async with provider(sim).open_session(lambda event: None):
            pytest.fail("the body must not run")
    assert raised.value.reason == "upstream_error"
    ledger = await sim.ledger()
    assert ledger["totals"]["created"] == 0
    # streaming.new is never retried, even after a 5xx.
    assert ledger["requests"]["streaming.new"] == 1


async def test_failed_start_stops_the_created_session_before_raising(sim: Sim) -> None:
    await sim.faults(fail={"streaming.start": {"status": 500, "code": 500, "message": "start failed"}})
    with trio.fail_after(10), pytest.raises(AvatarUnavailable) as raised:
        async with provider(sim).open_session(lambda event: None):
            pytest.fail("the body must not run")
    assert raised.value.reason == "upstream_error"
    ledger = await assert_nothing_left_running(sim)
    assert ledger["totals"]["created"] == 1


async def test_new_that_never_answers_gives_timeout(sim: Sim) -> None:
    await sim.faults(hang=["streaming.new"])
    started = time.monotonic()
    with trio.fail_after(10), pytest.raises(AvatarUnavailable) as raised:
        async with provider(sim, relay_setup_timeout=0.5).open_session(lambda event: None):
            pytest.fail("the body must not run")
    assert raised.value.reason == "timeout"
    # Not before the setup timeout (timed from before the call, so a slow machine cannot break it); the upper bound
    # is the fail_after above.
    assert time.monotonic() - started >= 0.5 - 0.01
    assert (await sim.ledger())["totals"]["created"] == 0


@pytest.mark.parametrize(
    ("failure", "min_wait"),
    [
        ({"status": 429, "code": 400123, "message": "exceed rate limit", "retry_after": 0.4}, 0.4),
        ({"status": 503, "code": 503, "message": "service unavailable"}, 0.0),
    ],
    ids=["429-with-retry-after", "503"],
)
async def test_stop_is_retried_after_a_transient_failure(sim: Sim, failure: dict[str, Any],
                                                         min_wait: float) -> None:
    with trio.fail_after(10):
        async with provider(sim).open_session(lambda event: None):
            await sim.faults(fail={"streaming.stop": {**failure, "times": 1}})
            left_at = time.monotonic()
        stopped_in = time.monotonic() - left_at
    ledger = await assert_nothing_left_running(sim)
    assert ledger["requests"]["streaming.stop"] == 2
    assert stopped_in >= min_wait


async def test_expired_session_ends_the_conversation_on_the_next_task(sim: Sim) -> None:
    await sim.faults(idle_timeout_s=0.2)
    with trio.fail_after(10), pytest.raises(AvatarSessionEnded):
        async with provider(sim).open_session(lambda event: None) as session:
            await poll_ledger(sim.ledger, lambda ledger: ledger["totals"]["expired"] == 1,
                              "the simulator to expire the idle session")
            await session.speak_text("Are you still there?", turn=1)
    entry = await sim.only_session()
    assert entry["status"] == "expired"
    assert entry["tasks"] == []
    # The provider still tried to stop it on the way out (HeyGen answered that it was closed).
    assert entry["stop_requests"] == 1


async def test_a_single_failed_task_is_dropped_and_the_next_one_is_spoken(sim: Sim) -> None:
    events: list[AvatarEvent] = []
    await sim.faults(fail={"streaming.task": {"status": 500, "code": 500, "message": "oops", "times": 1}})
    with trio.fail_after(10):
        async with provider(sim).open_session(events.append) as session:
            await session.speak_text("first", turn=1)
            await session.speak_text("second", turn=2)
            entry = await sim.only_session()
    assert [t["text"] for t in entry["tasks"]] == ["second"]
    assert [e.text for e in events if isinstance(e, AvatarSpeaking)] == ["second"]
    await assert_nothing_left_running(sim)


async def test_keep_alive_is_retried_after_a_rate_limit(sim: Sim) -> None:
    with trio.fail_after(10):
        async with provider(sim).open_session(lambda event: None) as session:
            await sim.faults(fail={"streaming.keep_alive": {"status": 429, "code": 400123, "retry_after": 0.1,
                                                            "message": "exceed rate limit", "times": 1}})
            await session.keep_alive()
            entry = await sim.only_session()
    assert entry["keep_alives"]["count"] == 1
    await assert_nothing_left_running(sim)


def sine_pcm16(seconds: float, rate: int, freq: float = 220.0) -> bytes:
    samples = int(seconds * rate)
    return b"".join(
        int(8000 * math.sin(2 * math.pi * freq * n / rate)).to_bytes(2, "little", signed=True)
        for n in range(samples)
    )


async def test_realtime_mode_speaks_agent_audio_at_24_khz_through_the_realtime_endpoint(sim: Sim) -> None:
    events: list[AvatarEvent] = []
    stopped = trio.Event()

    def on_event(event: AvatarEvent) -> None:
        events.append(event)
        if isinstance(event, AvatarStateChanged) and not event.speaking:
            stopped.set()

    audio = sine_pcm16(0.5, 16_000)
    fmt = AudioFormat("pcm", 16_000)
    with trio.fail_after(10):
        async with provider(sim, heygen_mode="realtime").open_session(on_event) as session:
            assert session.takes_audio is True
            for start in range(0, len(audio), 3200):  # 100 ms chunks, as the agent sends them
                await session.speak_audio(audio[start:start + 3200], fmt, turn=3)
            await session.end_turn(3)
            await session.keep_alive()
            await stopped.wait()
            entry = await sim.only_session()
    realtime = entry["realtime"]
    assert realtime["connections"] == 1
    assert realtime["errors_sent"] == 0
    # 0.5 s of 16 kHz audio arrives as 0.5 s of 24 kHz audio (not 0.33 s: it was resampled).
    assert realtime["audio_seconds"] == pytest.approx(0.5, abs=0.02)
    assert realtime["speak_ends"] == 1
    assert realtime["keep_alives"] == 1
    assert realtime["events"]["turn-3"]["audio_seconds"] == pytest.approx(0.5, abs=0.02)
    assert AvatarStateChanged(speaking=True, turn=3) in events
    assert AvatarStateChanged(speaking=False, turn=3) in events
    await assert_nothing_left_running(sim)


async def test_realtime_socket_closing_ends_the_session_and_it_is_still_stopped(sim: Sim) -> None:
    with trio.fail_after(10), pytest.raises(AvatarSessionEnded):
        async with provider(sim, heygen_mode="realtime").open_session(lambda event: None):
            await sim.faults(idle_timeout_s=0.2)
            await trio.sleep_forever()  # until the provider cancels it (the fail_after above guards a hang)
    entry = await sim.only_session()
    assert entry["status"] == "expired"
    assert entry["stop_requests"] == 1


async def test_operator_can_list_all_running_sessions_across_pages_and_stop_one_by_id(sim: Sim) -> None:
    settings = make_settings(sim)
    with trio.fail_after(10):
        async with provider(sim).open_session(lambda e: None) as a, \
                provider(sim).open_session(lambda e: None) as b, \
                provider(sim).open_session(lambda e: None) as c:
            listed = await list_sessions(settings, sim.http, page_size=2)
            assert {s["session_id"] for s in listed} == {a.info.session_id, b.info.session_id, c.info.session_id}
            assert (await sim.ledger())["requests"]["v2/streaming.list"] == 2
            await stop_by_id(settings, sim.http, b.info.session_id)
            listed = await list_sessions(settings, sim.http, page_size=2)
            assert {s["session_id"] for s in listed} == {a.info.session_id, c.info.session_id}
            # Stopping a session that is already stopped is not an error.
            await stop_by_id(settings, sim.http, b.info.session_id)
    await assert_nothing_left_running(sim)


async def test_operator_list_falls_back_to_v1_when_v2_fails(sim: Sim) -> None:
    settings = make_settings(sim)
    await sim.faults(fail={"v2/streaming.list": {"status": 404, "code": 404, "message": "Not Found"}})
    with trio.fail_after(10):
        async with provider(sim).open_session(lambda e: None) as session:
            listed = await list_sessions(settings, sim.http)
    assert [s["session_id"] for s in listed] == [session.info.session_id]
    assert (await sim.ledger())["requests"]["streaming.list"] == 1


# -- the simulator's own fidelity ----------------------------------------------------------------------------


async def test_simulator_rejects_a_body_without_json_content_type(sim: Sim) -> None:
    response = await sim.http.post(sim.url + "/v1/streaming.new", content=b"{}",
                                   headers={"x-api-key": API_KEY})
    assert response.status_code == 415
    assert "application/json' is required" in response.json()["detail"]


async def test_simulator_answers_unknown_sessions_and_wrong_states_with_heygen_codes(sim: Sim) -> None:
    headers = {"x-api-key": API_KEY}
    missing = await sim.http.post(sim.url + "/v1/streaming.task", headers=headers,
                                  json={"session_id": "nope", "text": "hi"})
    assert missing.status_code == 400
    assert missing.json()["code"] == 400004
    await sim.faults(unknown_session_code=10006)
    missing = await sim.http.post(sim.url + "/v1/streaming.stop", headers=headers, json={"session_id": "nope"})
    assert missing.json()["code"] == 10006
    new = await sim.http.post(sim.url + "/v1/streaming.new", headers=headers, json={"version": "v2"})
    assert new.json()["code"] == 100
    sid = new.json()["data"]["session_id"]
    early = await sim.http.post(sim.url + "/v1/streaming.task", headers=headers,
                                json={"session_id": sid, "text": "hi"})
    assert (early.status_code, early.json()["code"]) == (400, 10001)
    await sim.http.post(sim.url + "/v1/streaming.stop", headers=headers, json={"session_id": sid})
    late = await sim.http.post(sim.url + "/v1/streaming.task", headers=headers,
                               json={"session_id": sid, "text": "hi"})
    assert (late.status_code, late.json()["code"]) == (400, 10005)
    unauthorized = await sim.http.post(sim.url + "/v1/streaming.new", json={"version": "v2"})
    assert (unauthorized.status_code, unauthorized.json()["code"]) == (401, 40102)
    token = await sim.http.post(sim.url + "/v1/streaming.create_token", headers=headers, json={})
    assert token.json()["error"] is None and token.json()["data"]["token"]


async def test_realtime_interrupt_reaches_the_avatar_and_no_later_chunk_of_that_turn_is_sent(sim: Sim) -> None:
    events: list[AvatarEvent] = []
    stopped = trio.Event()

    def on_event(event: AvatarEvent) -> None:
        events.append(event)
        if event == AvatarStateChanged(speaking=False, turn=1):
            stopped.set()

    fmt = AudioFormat("pcm", 16_000)
    chunk = sine_pcm16(0.1, 16_000)
    with trio.fail_after(10):
        # Every chunk goes out as it comes (no 600 ms first packet), so the interrupt meets a turn already speaking.
        async with provider(sim, heygen_mode="realtime", relay_lite_first_packet_ms=0).open_session(on_event) \
                as session:
            await session.speak_audio(chunk, fmt, turn=1)
            await session.interrupt(1)
            await session.speak_audio(chunk, fmt, turn=1)
            await session.end_turn(1)
            await stopped.wait()
            entry = await sim.only_session()
    realtime = entry["realtime"]
    assert realtime["interrupts"] == ["turn-1"]
    assert realtime["chunks"] == 1
    assert realtime["chunks_after_interrupt"] == 0
    await assert_nothing_left_running(sim)


async def test_many_sessions_cancelled_mid_creation_are_all_stopped_and_the_client_still_works(sim: Sim) -> None:
    await sim.faults(latency_ms={"streaming.new": 1500})  # long enough to be sure all eight are mid-creation

    async def open_and_hold() -> None:
        async with provider(sim).open_session(lambda event: None):
            await trio.sleep_forever()

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            for _ in range(8):
                nursery.start_soon(open_and_hold)
            # The simulator creates each session, then delays the answer: all eight are in flight.
            await poll_ledger(sim.ledger, lambda ledger: ledger["totals"]["created"] == 8, "eight streaming.new")
            nursery.cancel_scope.cancel()
        await sim.faults(latency_ms={"streaming.new": None})
        async with provider(sim).open_session(lambda event: None) as session:
            await session.speak_text("still working", turn=1)
    ledger = await assert_nothing_left_running(sim)
    assert ledger["totals"]["created"] == 9
    assert ledger["totals"]["started"] == 1  # only the last: the eight were cancelled before streaming.start


@pytest.mark.parametrize(("faults", "reason", "words"), [
    ({"not_streaming_enabled": True}, "bad_config", "not enabled for streaming"),
    ({"no_api_access": True}, "unauthorized", "no API access"),
    ({"retired": 404}, "bad_config", "retired"),
    ({"retired": 410}, "bad_config", "retired"),
])
async def test_an_unentitled_or_retired_account_is_named_as_such_not_as_a_bad_key(
        sim: Sim, faults: dict[str, Any], reason: str, words: str) -> None:
    await sim.faults(**faults)
    with trio.fail_after(10), pytest.raises(AvatarUnavailable) as raised:
        async with provider(sim).open_session(lambda event: None):
            pytest.fail("the body must not run")
    assert raised.value.reason == reason
    assert words in raised.value.message
    assert "rejected the API key" not in raised.value.message
    assert (await sim.ledger())["totals"]["created"] == 0
