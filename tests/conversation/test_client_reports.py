"""The page's `client_metrics` reports through a whole conversation (fake sockets): a valid one reaches the hook and
not the agent; malformed, oversized and too frequent ones are dropped with a log line and the conversation goes on
as if nothing had been sent (never an error to the browser)."""

from __future__ import annotations

import logging

import orjson
import pytest

from relay.protocol import client_metrics as cm
from tests.support.fakes import Harness, start_and_ready, wait_until, with_conversation

TURN = {"event_id": 2, "speech_to_audio_ms": 820, "speech_to_mouth_ms": 960, "caption_offset_ms": 12}


async def test_reports_reach_the_hook_and_bad_or_too_frequent_ones_are_dropped_with_a_log_line(
        caplog: pytest.LogCaptureFixture) -> None:
    h = Harness()
    caplog.set_level(logging.INFO, logger="relay.conversation")

    async def body(h: Harness) -> None:
        await start_and_ready(h)
        await h.browser.send_json(type="client_metrics", turns=[TURN], freezes_ms=[700])
        await h.browser.send_json(type="client_metrics", turns=[{"speech_to_audio_ms": "fast"}])
        await h.browser.send_raw(orjson.dumps({"type": "client_metrics", "pad": "x" * cm.MAX_REPORT_CHARS}).decode())
        for _ in range(cm.REPORT_BURST):  # the first one took a token already: the last of these is one too many
            await h.browser.send_json(type="client_metrics", turns=[TURN])
        await h.browser.send_json(type="text", text="still here")
        await wait_until(lambda: h.agent.sent)
        await h.browser.send_json(type="stop")

    await with_conversation(h, body)
    reasons = [getattr(r, "reason", "taken") for r in h.client_reports]
    assert reasons == ["taken", "malformed", "oversized", "taken", "taken", "too_frequent"]
    first = h.client_reports[0]
    assert isinstance(first, cm.ClientMetrics)
    assert first.turns[0].speech_to_mouth_ms == 960.0 and first.freezes_ms == (700.0,)
    assert h.agent.sent == [{"type": "user_message", "text": "still here"}]  # no report reached the agent
    messages = [orjson.loads(f) for f in h.browser.drain() if isinstance(f, str)]
    assert not [m for m in messages if m["type"] == "error"]
    assert h.ended is not None and h.ended.reason == "client_stop"
    drops = [r.getMessage() for r in caplog.records if "client_metrics dropped" in r.getMessage()]
    assert [d.split()[2] for d in drops] == ["reason=malformed", "reason=oversized", "reason=too_frequent"]
