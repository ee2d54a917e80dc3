"""`/metrics`, `/healthz` and `/readyz` on the real relay (hypercorn + simulators on loopback): scrape after real
conversations and check the numbers against what the test did and what the simulators' ledgers saw."""

from __future__ import annotations

from typing import Any

import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from tests.support.harness import Relay, running_relay, silence

pytestmark = pytest.mark.timeout(60)

FRAME = 640  # 20 ms of PCM16 at 16 kHz


async def scrape(relay: Relay) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of `/metrics`, by (name, labels)."""
    response = await relay.http.get(relay.url + "/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


async def wait_for(relay: Relay, name: str, expected: float, **labels: str) -> dict[Any, float]:
    """Scrape until `name{labels}` reaches `expected` (the end of a conversation is counted a moment after the
    browser is told `ended`); the last scrape after a generous 10 s (the caller's assertions then fail)."""
    with trio.move_on_after(10):
        while True:
            samples = await scrape(relay)
            if value(samples, name, **labels) >= expected:
                return samples
            await trio.sleep(0.02)
    return await scrape(relay)


async def test_metrics_count_a_text_mode_conversation_exactly() -> None:
    async with running_relay(relay_auth="off") as relay:
        await relay.faults("elevenlabs", ping_interval_s=0.1)
        async with relay.browser() as browser:
            await browser.start()
            open_now = await scrape(relay)
            assert value(open_now, "avatar_relay_conversations_open") == 1
            assert value(open_now, "avatar_relay_avatar_sessions_created_total", provider="heygen") == 1
            await browser.expect("avatar_speaking")  # the greeting reached the avatar
            await browser.send(type="text", text="what are your opening hours?")
            await browser.expect("agent_response", where=lambda m: "opening hours" in m["text"])
            await browser.expect("avatar_speaking")
            await browser.stream(silence(0.5), chunk_bytes=FRAME, pause=0.002)
            await wait_for(relay, "avatar_relay_agent_ping_seconds_count", 2)  # a few pings with ping_ms
            live = await wait_for(relay, "avatar_relay_audio_frames_total", 25, direction="upstream")
            # Counted while the conversation runs, not only at its end.
            assert value(live, "avatar_relay_audio_frames_total", direction="upstream") == 25
            assert value(live, "avatar_relay_audio_bytes_total", direction="upstream") == 25 * FRAME
            await browser.send(type="stop")
            await browser.expect("ended")
        samples = await wait_for(relay, "avatar_relay_conversations_ended_total", 1, reason="client_stop")
        await relay.wait_all_sessions_stopped("heygen")
        agent = (await relay.ledger("elevenlabs"))["conversations"][0]

    assert value(samples, "avatar_relay_conversations_started_total") == 1
    assert value(samples, "avatar_relay_conversations_ended_total", reason="client_stop") == 1
    assert value(samples, "avatar_relay_conversations_open") == 0
    # The totals survive the conversation's end, and match what the agent received.
    assert value(samples, "avatar_relay_audio_frames_total", direction="upstream") == 25
    assert value(samples, "avatar_relay_audio_bytes_total", direction="upstream") == 25 * FRAME == \
        agent["user_audio_bytes"]
    downstream = value(samples, "avatar_relay_audio_bytes_total", direction="downstream")
    assert browser.audio_received > 0
    assert browser.audio_received <= downstream <= agent["agent_audio_seconds"] * 32000 + 1
    assert value(samples, "avatar_relay_audio_frames_total", direction="downstream") >= 2
    assert value(samples, "avatar_relay_avatar_sessions_created_total", provider="heygen") == 1
    assert value(samples, "avatar_relay_avatar_sessions_stopped_total", provider="heygen") == 1
    assert value(samples, "avatar_relay_avatar_sessions_stop_failed_total", provider="heygen") == 0
    # Times are checked for their structure, not their size (the machine may be slow): each is a part of the
    # conversation's lifetime.
    lifetime = value(samples, "avatar_relay_conversation_duration_seconds_sum")
    assert value(samples, "avatar_relay_conversation_duration_seconds_count") == 1
    assert value(samples, "avatar_relay_setup_seconds_count") == 1
    assert 0 < value(samples, "avatar_relay_setup_seconds_sum") < lifetime
    # The greeting and the reply each reached the avatar as a speak task.
    assert value(samples, "avatar_relay_text_to_avatar_seconds_count") == 2
    assert 0 < value(samples, "avatar_relay_text_to_avatar_seconds_sum") < lifetime
    assert value(samples, "avatar_relay_audio_to_avatar_seconds_count") == 0
    # Every ping the agent sent with a measured round trip, and no other.
    assert 2 <= value(samples, "avatar_relay_agent_ping_seconds_count") <= agent["pings"]
    assert value(samples, "avatar_relay_agent_ping_seconds_sum") < lifetime
    assert value(samples, "avatar_relay_conversations_degraded_total") == 0
    assert value(samples, "avatar_relay_ready") == 1
    assert value(samples, "avatar_relay_info", version="0.1.0", avatar="heygen", demo_mode="false") == 1


async def test_audio_mode_times_the_first_chunk_of_each_reply_reaching_the_avatar() -> None:
    async with running_relay(relay_auth="off", relay_avatar="liveavatar") as relay:
        async with relay.browser() as browser:
            await browser.start()
            await browser.wait_for_audio(32000)
            await browser.send(type="stop")
            await browser.expect("ended")
        samples = await wait_for(relay, "avatar_relay_conversations_ended_total", 1, reason="client_stop")
        await relay.wait_all_sessions_stopped("liveavatar")
    assert value(samples, "avatar_relay_audio_to_avatar_seconds_count") == 1  # the greeting
    assert 0 <= value(samples, "avatar_relay_audio_to_avatar_seconds_sum") < \
        value(samples, "avatar_relay_conversation_duration_seconds_sum")
    assert value(samples, "avatar_relay_text_to_avatar_seconds_count") == 0
    assert value(samples, "avatar_relay_avatar_sessions_created_total", provider="liveavatar") == 1
    assert value(samples, "avatar_relay_avatar_sessions_stopped_total", provider="liveavatar") == 1


async def test_a_failed_avatar_stop_is_counted_as_such() -> None:
    async with running_relay(relay_auth="off", relay_stop_timeout=1.0) as relay:
        await relay.faults("heygen", fail={"streaming.stop": {"status": 400, "code": 400999,
                                                              "message": "simulated refusal"}})
        async with relay.browser() as browser:
            await browser.start()
            await browser.send(type="stop")
            await browser.expect("ended")
        samples = await wait_for(relay, "avatar_relay_conversations_ended_total", 1, reason="client_stop")
    assert value(samples, "avatar_relay_avatar_sessions_created_total", provider="heygen") == 1
    assert value(samples, "avatar_relay_avatar_sessions_stop_failed_total", provider="heygen") == 1
    assert value(samples, "avatar_relay_avatar_sessions_stopped_total", provider="heygen") == 0


async def test_an_invalid_agent_key_is_counted_by_upstream_kind_and_code() -> None:
    async with running_relay(relay_auth="off") as relay:
        await relay.faults("elevenlabs", invalid_api_keys=["xi-test"])
        async with relay.browser() as browser:
            await browser.send(type="start")
            error = await browser.expect("error")
            assert error["code"] == "upstream_unavailable"
            await browser.expect("ended")
        samples = await wait_for(relay, "avatar_relay_conversations_ended_total", 1, reason="upstream_unavailable")
        await relay.wait_all_sessions_stopped("heygen")
    assert value(samples, "avatar_relay_upstream_errors_total", upstream="elevenlabs", kind="unauthorized",
                 code="401") == 1
    assert value(samples, "avatar_relay_setup_seconds_count") == 0


async def test_a_refused_avatar_is_counted_and_the_conversation_counted_as_degraded() -> None:
    async with running_relay(relay_auth="off") as relay:
        await relay.faults("heygen", concurrency_limit=0)
        async with relay.browser() as browser:
            await browser.send(type="start")
            await browser.expect("avatar_unavailable")
            await browser.expect("ready")
            await browser.send(type="stop")
            await browser.expect("ended")
        samples = await wait_for(relay, "avatar_relay_conversations_ended_total", 1, reason="client_stop")
    assert value(samples, "avatar_relay_conversations_degraded_total") == 1
    assert value(samples, "avatar_relay_upstream_errors_total", upstream="heygen", kind="concurrent_limit",
                 code="10007") == 1
    assert value(samples, "avatar_relay_avatar_sessions_created_total", provider="heygen") == 0


async def test_healthz_and_readyz_answer_and_readyz_turns_503_at_capacity() -> None:
    async with running_relay(relay_auth="off", relay_max_conversations=1) as relay:
        health = await relay.http.get(relay.url + "/healthz")
        assert health.status_code == 200 and health.json()["status"] == "ok"
        ready = await relay.http.get(relay.url + "/readyz")
        assert ready.status_code == 200
        assert ready.json() == {"ready": True, "checks": {"started": True, "accepting": True,
                                                          "under_capacity": True},
                                "open_conversations": 0, "max_conversations": 1}
        async with relay.browser() as browser:
            await browser.start()
            full = await relay.http.get(relay.url + "/readyz")
            assert full.status_code == 503
            assert full.json()["checks"]["under_capacity"] is False
            assert value(await scrape(relay), "avatar_relay_ready") == 0
            async with relay.browser() as second:
                await second.send(type="start")
                assert (await second.expect("error"))["code"] == "capacity"
            await browser.send(type="stop")
            await browser.expect("ended")
        with trio.fail_after(5):
            while (await relay.http.get(relay.url + "/readyz")).status_code != 200:
                await trio.sleep(0.02)
        samples = await scrape(relay)
    assert value(samples, "avatar_relay_conversations_refused_total", reason="capacity") == 1


@pytest.mark.parametrize("count", [3])
async def test_concurrent_conversations_add_up(count: int) -> None:
    async with running_relay(relay_auth="off", relay_avatar="none") as relay:
        async def one() -> None:
            async with relay.browser() as browser:
                await browser.start()
                await browser.stream(silence(0.2), chunk_bytes=FRAME, pause=0.001)
                await browser.send(type="stop")
                await browser.expect("ended")

        async with trio.open_nursery() as nursery:
            for _ in range(count):
                nursery.start_soon(one)
        samples = await wait_for(relay, "avatar_relay_conversations_ended_total", count, reason="client_stop")
    assert value(samples, "avatar_relay_conversations_started_total") == count
    assert value(samples, "avatar_relay_audio_frames_total", direction="upstream") == 10 * count
    assert value(samples, "avatar_relay_conversations_open") == 0


async def test_a_browser_that_leaves_is_counted_as_gone_not_as_a_shutdown() -> None:
    async with running_relay(relay_auth="off") as relay:
        async with relay.browser() as browser:
            await browser.start()
            await browser.expect("avatar_speaking")
        # The browser closed its socket mid-conversation, without `stop`.
        samples = await wait_for(relay, "avatar_relay_conversations_ended_total", 1, reason="client_gone")
        await relay.wait_all_sessions_stopped("heygen")
    assert value(samples, "avatar_relay_conversations_ended_total", reason="client_gone") == 1
    assert value(samples, "avatar_relay_conversations_ended_total", reason="shutdown") == 0
