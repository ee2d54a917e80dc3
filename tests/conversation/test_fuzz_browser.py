"""Property-based fuzzing of client frames: thousands at the sans-io parser, hundreds through a whole conversation
(the nursery with fake upstreams). Whatever a client sends, the relay answers with a parsed event or a clear
protocol error, never crashes, tells the browser how it ended, and has stopped every avatar session it opened by the
time the conversation returns (the fake provider's stop is an awaited step, so a stop that is cut short or left to
run after the conversation is seen).

Each test counts the examples it really ran and prints the count (pytest -s shows it; docs/reliability.md quotes
it)."""

from __future__ import annotations

from typing import Any

import orjson
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from relay.config import Settings
from relay.nursery import Upstreams, run_conversation
from relay.protocol import browser as bp
from relay.protocol import elevenlabs as el
from tests.support.fakes import FakeAgent, FakeBrowser, FakeProvider

PARSER_EXAMPLES = 300  # batches of PARSER_BATCH frames: hypothesis costs per example, not per frame
PARSER_BATCH = 10
CONVERSATION_EXAMPLES = 300

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=5,
)
field_names = st.sampled_from(["text", "audio", "dynamic_variables", "overrides", "user_id", "token", "score",
                               "event_id", "tool_call_id", "result", "is_error", "approved", "rich_content_id",
                               "context_id", "custom_llm_extra_body", "seq"]) | st.text(max_size=8)
message_types = st.sampled_from([*bp.KNOWN_TYPES, "", "START", "launch"]) | st.text(max_size=10) | json_values
json_messages = st.builds(lambda kind, rest: {"type": kind, **rest}, message_types,
                          st.dictionaries(field_names, json_values, max_size=4))
text_frames = (json_messages.map(lambda m: orjson.dumps(m).decode())
               | st.text(max_size=200)
               | st.sampled_from(['{"type":"start","user_id":' + "9" * 30 + "}", '{"type":"text","text":"\\ud800"}',
                                  '{"type":"audio","audio":"AAA="}', '[{"type":"stop"}]', '{"type":"stop"} x'])
               | json_values.map(lambda v: orjson.dumps(v).decode()))
client_frames = text_frames | st.binary(max_size=64)


def test_the_parser_answers_every_text_frame_with_an_event_or_a_protocol_error() -> None:
    tried = 0

    @settings(max_examples=PARSER_EXAMPLES, deadline=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(st.lists(text_frames, min_size=PARSER_BATCH, max_size=PARSER_BATCH))
    def parse(frames: list[str]) -> None:
        nonlocal tried
        for frame in frames:
            tried += 1
            try:
                event = bp.parse_text_frame(frame)
            except bp.ProtocolError as exc:
                assert 0 < len(str(exc)) < 600  # clear, and bounded whatever the input
                continue
            assert isinstance(event, bp.Start | bp.Audio | bp.Text | bp.Context | bp.Multimodal | bp.McpApproval
                              | bp.Activity | bp.Interrupt | bp.ToolResult | bp.Feedback | bp.Stop
                              | bp.ClientMetrics | bp.DroppedClientMetrics)

    parse()
    print(f"parser: {tried} frames tried")
    assert tried >= PARSER_EXAMPLES * PARSER_BATCH * 0.9


async def _converse_with(frames: list[str | bytes]) -> tuple[list[dict[str, Any]], FakeProvider, Any, list[str],
                                                             FakeBrowser]:
    """Run one conversation that receives `frames` after `ready`, then `stop`. Returns the browser's text messages,
    the provider, the conversation's record, the sessions stopped when `run_conversation` returned, the browser."""
    browser = FakeBrowser()
    provider = FakeProvider()
    agent = FakeAgent(el.ConversationMetadata("conv_fuzz", "pcm_16000", "pcm_16000"))
    up = Upstreams(settings=Settings(_env_file=None, relay_idle_timeout=5.0),  # type: ignore[call-arg]
                   http=None, provider=provider, open_agent=agent.open)  # type: ignore[arg-type]
    record: Any = None
    stopped_on_return: list[str] = []

    async def run() -> None:
        nonlocal record
        record = await run_conversation(browser, up)
        stopped_on_return.extend(provider.stopped)

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(run)
            # The agent's first event (a greeting, here a silent VAD score) spares `ready` the queue notice's wait.
            await agent.emit(el.VadScore(0.0))
            await browser.send_json(type="start")
            await browser.expect("ready")
            for frame in frames:
                await browser.send_raw(frame)
            await browser.send_json(type="stop")
    messages = [orjson.loads(f) for f in browser.drain() if isinstance(f, str)]
    return messages, provider, record, stopped_on_return, browser


def test_any_frames_mid_conversation_end_it_cleanly_or_not_at_all() -> None:
    tried = 0

    @settings(max_examples=CONVERSATION_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(st.lists(client_frames, min_size=1, max_size=5))
    def converse(frames: list[str | bytes]) -> None:
        nonlocal tried
        tried += 1
        messages, provider, record, stopped_on_return, browser = trio.run(_converse_with, frames)
        assert record.reason in ("client_stop", "protocol_error"), (record.reason, messages)
        errors = [m for m in messages if m["type"] == "error"]
        assert all(e["code"] == "protocol_error" and e["message"] for e in errors)
        assert messages[-1] == {"type": "ended", "reason": record.reason}
        assert browser.closed_with == ((1000, "client_stop") if record.reason == "client_stop"
                                       else (1008, "protocol_error"))
        assert len(provider.sessions) == 1
        assert stopped_on_return == ["s1"]  # its stop had finished, not cut short, when the conversation returned

    converse()
    print(f"conversation: {tried} frame sequences tried")
    assert tried >= CONVERSATION_EXAMPLES * 0.9
