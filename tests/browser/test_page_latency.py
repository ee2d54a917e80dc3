"""Latency where the user is (issue 25 §2), in real headless Chromium against the relay in demo mode: the page times
a spoken turn — from the end of the user's speech (the relay's final transcript, as the page sees it) to the agent's
first audio heard and to the simulated avatar's mouth moving — and the relay's `/metrics` shows exactly those
figures in its histograms, under the avatar provider the relay knows."""

from __future__ import annotations

import urllib.request
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.browser.conftest import Relay, wait_until
from tests.browser.test_page import agent_faults, debug, start

pytestmark = pytest.mark.timeout(120)


def scrape(relay: Relay) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(relay.url + "/metrics", timeout=5) as response:
        text = response.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): float(s.value)
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_the_pages_turn_latency_reaches_the_relays_metrics(relays: Any, open_page: Any) -> None:
    relay = relays("liveavatar")
    audio, mouth = "avatar_relay_client_speech_to_audio_seconds", "avatar_relay_client_speech_to_mouth_seconds"
    before = scrape(relay)
    with agent_faults(relay, first_message=""):  # no greeting: the sentence the microphone says is the first turn
        page = open_page(relay, mic="speech")
        start(page)
        page.locator(".entry.agent", has_text="Turn 1").wait_for(timeout=25_000)
        page.wait_for_function("() => window.__relayDebug.turnTimings.length >= 1", timeout=20_000)
        page.wait_for_function("() => window.__relayDebug.clientMetricsSent >= 1")
    turn = debug(page)["turnTimings"][0]
    print("the page's turn:", turn)
    # What the user lived: the reply heard, and the drawn face's mouth moving, after the end of their speech.
    assert turn["speech_to_audio_ms"] > 0, turn
    assert turn["speech_to_mouth_ms"] is not None and turn["speech_to_mouth_ms"] > 0, turn
    assert turn["caption_offset_ms"] is not None, turn
    assert isinstance(turn["event_id"], int), turn

    def reached() -> dict[tuple[str, tuple[tuple[str, str], ...]], float] | None:
        now = scrape(relay)
        return now if value(now, audio + "_count", provider="liveavatar") > value(
            before, audio + "_count", provider="liveavatar") else None

    after = wait_until(reached, 20, "the page's turn latency in the relay's /metrics")
    for name, figure in ((audio, turn["speech_to_audio_ms"]), (mouth, turn["speech_to_mouth_ms"])):
        count = value(after, name + "_count", provider="liveavatar") - value(before, name + "_count",
                                                                              provider="liveavatar")
        total = value(after, name + "_sum", provider="liveavatar") - value(before, name + "_sum",
                                                                          provider="liveavatar")
        assert count == 1, name
        assert total == pytest.approx(figure / 1000, abs=1e-6), name  # the page's own figure, not another
    assert value(after, "avatar_relay_client_metrics_reports_total") > value(before,
                                                                            "avatar_relay_client_metrics_reports_total")
    assert sum(v for (n, _), v in after.items() if n == "avatar_relay_client_metrics_dropped_total") == sum(
        v for (n, _), v in before.items() if n == "avatar_relay_client_metrics_dropped_total")
