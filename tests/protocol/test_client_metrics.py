"""The page's `client_metrics` reports without sockets: a valid one is read to its bounded numbers; an oversized,
malformed or label-planting one is dropped (never a protocol error); the relay's gate lets a burst through, then one
report every REPORT_EVERY seconds."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from relay.protocol import browser as bp
from relay.protocol import client_metrics as cm


def read(frame: dict[str, Any]) -> bp.ClientEvent:
    return bp.parse_text_frame(orjson.dumps(frame).decode())


def test_a_valid_report_is_read_to_its_numbers() -> None:
    report = read({"type": "client_metrics",
                   "turns": [{"event_id": 3, "speech_to_audio_ms": 812.5, "speech_to_mouth_ms": 901,
                              "caption_offset_ms": 14.2},
                             {"event_id": 5, "speech_to_audio_ms": 640, "speech_to_mouth_ms": None}],
                   "freezes_ms": [612, 1480.5]})
    assert report == cm.ClientMetrics(
        type="client_metrics",
        turns=(cm.TurnTimings(event_id=3, speech_to_audio_ms=812.5, speech_to_mouth_ms=901.0, caption_offset_ms=14.2),
               cm.TurnTimings(event_id=5, speech_to_audio_ms=640.0)),
        freezes_ms=(612.0, 1480.5))
    assert read({"type": "client_metrics"}) == cm.ClientMetrics(type="client_metrics")


def test_a_page_cannot_plant_labels_or_other_fields() -> None:
    report = read({"type": "client_metrics", "provider": "evil", "labels": {"provider": "x"},
                   "turns": [{"speech_to_audio_ms": 700, "provider": "evil", "le": "+Inf"}]})
    assert isinstance(report, cm.ClientMetrics)
    assert report.model_dump() == {"type": "client_metrics", "freezes_ms": (),
                                   "turns": ({"event_id": None, "speech_to_audio_ms": 700.0,
                                              "speech_to_mouth_ms": None, "caption_offset_ms": None},)}


@pytest.mark.parametrize("frame", [
    {"turns": [{"speech_to_audio_ms": -1}]},
    {"turns": [{"speech_to_audio_ms": cm.MAX_MS + 1}]},
    {"turns": [{"speech_to_audio_ms": "800"}]},
    {"turns": [{"speech_to_audio_ms": True}]},
    {"turns": [{"event_id": -1}]},
    {"turns": [{"event_id": 1.5}]},
    {"turns": [{}] * (cm.MAX_TURNS + 1)},
    {"turns": {"speech_to_audio_ms": 1}},
    {"turns": [[]]},
    {"freezes_ms": [1.0] * (cm.MAX_FREEZES + 1)},
    {"freezes_ms": [None]},
    {"freezes_ms": 5},
])
def test_a_malformed_report_is_dropped_not_a_protocol_error(frame: dict[str, Any]) -> None:
    dropped = read({"type": "client_metrics", **frame})
    assert isinstance(dropped, cm.DroppedClientMetrics)
    assert dropped.reason == "malformed"
    assert 0 < len(dropped.detail) <= 210


def test_an_oversized_report_is_dropped_before_it_is_read() -> None:
    text = orjson.dumps({"type": "client_metrics", "padding": "x" * cm.MAX_REPORT_CHARS}).decode()
    dropped = bp.parse_text_frame(text)
    assert isinstance(dropped, cm.DroppedClientMetrics)
    assert dropped.reason == "oversized"
    # The largest valid report fits with room to spare.
    full = {"type": "client_metrics", "freezes_ms": [cm.MAX_MS] * cm.MAX_FREEZES,
            "turns": [{"event_id": 2**31, "speech_to_audio_ms": cm.MAX_MS, "speech_to_mouth_ms": cm.MAX_MS,
                       "caption_offset_ms": cm.MAX_MS}] * cm.MAX_TURNS}
    assert len(orjson.dumps(full)) < cm.MAX_REPORT_CHARS
    assert isinstance(read(full), cm.ClientMetrics)


def test_the_gate_takes_a_burst_then_one_report_per_interval() -> None:
    gate = cm.ReportGate(burst=3, every=4.0)
    assert [gate.take(100.0) for _ in range(5)] == [True, True, True, False, False]
    assert not gate.take(103.9)
    assert gate.take(104.1)
    assert not gate.take(104.2)
    assert [gate.take(200.0) for _ in range(4)] == [True, True, True, False]  # refilled to the burst, no more
