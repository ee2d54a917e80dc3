"""A page's `client_metrics` through the real relay (hypercorn, the simulators): valid reports reach /metrics under
the provider the relay knows; a hostile page that floods reports, makes them huge or malformed, or tries to plant
labels reaches none of it — its reports are dropped and counted, and its conversation goes on as if it had sent
nothing."""

from __future__ import annotations

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from relay.protocol import client_metrics as cm
from tests.support.harness import Relay, running_relay

TURN = {"event_id": 1, "speech_to_audio_ms": 900, "speech_to_mouth_ms": 1100, "caption_offset_ms": 10}


async def samples(relay: Relay) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = (await relay.http.get(relay.url + "/metrics")).text
    return {(s.name, tuple(sorted(s.labels.items()))): float(s.value)
            for family in text_string_to_metric_families(text) for s in family.samples}


async def test_a_flooding_label_planting_page_is_dropped_and_its_conversation_goes_on() -> None:
    async with running_relay(relay_avatar="liveavatar") as relay:
        async with relay.browser() as browser:
            await browser.start()
            await browser.send(type="client_metrics", provider="evil", turns=[{**TURN, "provider": "evil"}],
                               freezes_ms=[800])
            for _ in range(30):  # a flood: the relay takes its burst and drops the rest
                await browser.send(type="client_metrics", turns=[TURN])
            await browser.send_raw(orjson.dumps({"type": "client_metrics", "turns": [TURN] * 500}).decode())
            await browser.send(type="client_metrics", turns=[{"speech_to_audio_ms": 1e12}])
            await browser.send(type="text", text="are you still there")
            await browser.expect("agent_response", where=lambda m: "are you still there" in m["text"])
            after = await samples(relay)
            await browser.send(type="stop")
            assert (await browser.expect("ended"))["reason"] == "client_stop"

    def value(name: str, **labels: str) -> float:
        return after.get((name, tuple(sorted(labels.items()))), 0.0)

    assert value("avatar_relay_client_metrics_reports_total") == cm.REPORT_BURST
    assert value("avatar_relay_client_metrics_dropped_total", reason="too_frequent") == 31 - cm.REPORT_BURST
    assert value("avatar_relay_client_metrics_dropped_total", reason="oversized") == 1
    assert value("avatar_relay_client_metrics_dropped_total", reason="malformed") == 1
    assert value("avatar_relay_client_speech_to_audio_seconds_count", provider="liveavatar") == cm.REPORT_BURST
    assert value("avatar_relay_client_speech_to_mouth_seconds_sum", provider="liveavatar") == pytest.approx(
        1.1 * cm.REPORT_BURST)
    assert value("avatar_relay_client_video_freeze_seconds_count", provider="liveavatar") == 1
    assert not [key for key in after if "evil" in str(key)], "a page planted a label"
