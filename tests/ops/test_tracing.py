"""Tracing's parts, in process: what turns it on (the OTEL_* variables, nothing of the relay's own), what it costs
when off (no exporter thread, no span, even with an OpenTelemetry SDK in the process), the `traceparent` the relay
sends on its outgoing HTTP calls and WebSocket handshakes, and the turn spans' logic.

An SDK tracer provider writing to memory is installed once for this process (the OpenTelemetry API allows one);
it records only under a conversation's trace, which exists only while a test turns tracing on."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import httpx2
import pytest
import trio
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from relay.conversation import spans as conversation_spans
from relay.conversation.spans import conversation_trace
from relay.net import spans
from relay.net.wsclient import WebSocketConnectError, open_websocket
from relay.ops import tracing
from relay.ops.tracing import TracingTransport, configure_tracing, exporter_names
from tests.support.harness import running_relay

_MEMORY = InMemorySpanExporter()
WEBSITE = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


@pytest.fixture
def recorded() -> Iterator[InMemorySpanExporter]:
    """The spans ended during the test (an SDK provider in the process, tracing not turned on by it)."""
    if not isinstance(trace.get_tracer_provider(), TracerProvider):
        provider = TracerProvider(shutdown_on_exit=False)
        provider.add_span_processor(SimpleSpanProcessor(_MEMORY))
        trace.set_tracer_provider(provider)
    _MEMORY.clear()
    yield _MEMORY
    _MEMORY.clear()


@pytest.fixture
def tracing_on(recorded: InMemorySpanExporter, monkeypatch: pytest.MonkeyPatch) -> InMemorySpanExporter:
    """Conversations are traced (as `configure_tracing` leaves it), into memory."""
    monkeypatch.setattr(spans, "_enabled", True)
    return recorded


def test_only_an_exporter_named_in_otel_traces_exporter_turns_tracing_on() -> None:
    assert exporter_names({}) == []
    assert exporter_names({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}) == []
    assert exporter_names({"OTEL_TRACES_EXPORTER": "none"}) == []
    assert exporter_names({"OTEL_TRACES_EXPORTER": "otlp"}) == ["otlp"]
    assert exporter_names({"OTEL_TRACES_EXPORTER": "otlp,console"}) == ["otlp", "console"]
    assert exporter_names({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_SDK_DISABLED": "true"}) == []


def test_tracing_off_starts_no_thread_and_no_trace(recorded: InMemorySpanExporter) -> None:
    before = set(threading.enumerate())
    assert configure_tracing({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318",
                              "OTEL_SERVICE_NAME": "x"}) is False
    assert set(threading.enumerate()) == before
    assert not spans.enabled() and tracing.http_transport(httpx2.Limits()) is None
    with conversation_trace(WEBSITE, "user") as held:
        assert held is None
    assert recorded.get_finished_spans() == ()


async def test_a_conversation_with_tracing_off_records_no_span(recorded: InMemorySpanExporter) -> None:
    threads = {t.name for t in threading.enumerate()}
    async with running_relay() as relay, relay.browser() as browser:
        await browser.start(traceparent=WEBSITE)
        await browser.send(type="text", text="hello there")
        await browser.expect("agent_response", where=lambda m: "hello there" in m["text"])
        await browser.send(type="stop")
        await browser.expect("ended")
    assert recorded.get_finished_spans() == ()
    assert not any("Otel" in t.name for t in threading.enumerate()), threads


def _only(memory: InMemorySpanExporter, name: str) -> ReadableSpan:
    [span] = [s for s in memory.get_finished_spans() if s.name == name]
    return span


async def test_an_outgoing_http_call_carries_its_client_span_as_traceparent(tracing_on: InMemorySpanExporter) -> None:
    seen: list[httpx2.Request] = []

    def answer(request: httpx2.Request) -> httpx2.Response:
        seen.append(request)
        return httpx2.Response(200)

    async with httpx2.AsyncClient(transport=TracingTransport(httpx2.MockTransport(answer))) as http:
        await http.get("http://127.0.0.1:9/v1/before")  # outside a conversation: nothing
        with conversation_trace(None, None) as held:
            assert held is not None
            await http.post("http://127.0.0.1:9/v1/sessions/token?key=QUERY-SECRET", headers={"x-api-key": "K"})
    assert "traceparent" not in seen[0].headers
    call = _only(tracing_on, "POST /v1/sessions/token")
    assert call.parent is not None and call.parent.span_id == held.root.get_span_context().span_id
    sent = seen[1].headers["traceparent"]
    assert sent.startswith(f"00-{held.trace_id}-{call.context.span_id:016x}-") and int(sent[-2:], 16) & 1  # sampled
    assert "QUERY-SECRET" not in repr(dict(call.attributes or {})) and "K" not in (call.attributes or {}).values()


async def test_a_websocket_handshake_carries_traceparent(tracing_on: InMemorySpanExporter) -> None:
    [listener] = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listener.socket.getsockname()[1]
    request = bytearray()

    async def refuse_after_reading() -> None:
        stream = await listener.accept()
        while b"\r\n\r\n" not in request:
            request.extend(await stream.receive_some(4096))
        await stream.aclose()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(refuse_after_reading)
        with conversation_trace(WEBSITE, None) as held:
            assert held is not None
            with pytest.raises(WebSocketConnectError):
                async with open_websocket(f"ws://127.0.0.1:{port}/v1/convai/conversation?agent_id=a"):
                    pass
    await listener.aclose()
    connect = _only(tracing_on, "websocket connect")
    assert held.trace_id == WEBSITE.split("-")[1]
    assert f"traceparent: 00-{held.trace_id}-{connect.context.span_id:016x}-".encode() in bytes(request).lower()


def test_a_turn_runs_from_the_users_end_to_the_avatar_speaking(tracing_on: InMemorySpanExporter) -> None:
    with conversation_trace(None, None) as held:
        assert held is not None
        turns = held.turns
        turns.user_ended("text", last_agent_turn=1)
        turns.interrupted("agent", watermark=2)  # the agent stops its greeting: the user's turn goes on
        turns.agent_audio(1, avatar=True)  # the rest of the greeting: not the answer
        turns.agent_audio(2, avatar=True)
        turns.avatar_given(2)
        turns.avatar_given(2)
        turns.avatar_speaking(2)
        turns.agent_audio(3, avatar=False)  # the agent goes on by itself, voice only
        turns.user_ended("speech", last_agent_turn=3)
        turns.interrupted("browser", watermark=4)  # not answered yet: stays open
        turns.agent_audio(4, avatar=True)
        turns.interrupted("agent", watermark=5)
        turns.interrupt_sent()
    text, agent, speech = [s for s in tracing_on.get_finished_spans() if s.name == "turn"]
    assert text.attributes is not None and agent.attributes is not None and speech.attributes is not None
    assert (text.attributes["turn.trigger"], text.attributes["turn.event_id"], text.attributes["turn.outcome"]) \
        == ("text", 2, "spoken")
    assert [e.name for e in text.events] == ["agent.first_audio", "avatar.first_audio", "avatar.speaking"]
    assert (agent.attributes["turn.trigger"], agent.attributes["turn.outcome"]) == ("agent", "voice")
    assert (speech.attributes["turn.trigger"], speech.attributes["turn.outcome"]) == ("speech", "interrupted")
    sources = [(s.attributes or {}).get("interruption.source") for s in tracing_on.get_finished_spans()
               if s.name == "interruption"]
    assert sources == ["agent", "browser", "agent"]
    assert conversation_spans.current_trace.get() is None


def test_the_pages_measures_of_a_turn_are_a_span_beside_it(tracing_on: InMemorySpanExporter) -> None:
    with conversation_trace(None, None) as held:
        assert held is not None
        held.turns.user_ended("text", last_agent_turn=0)
        held.turns.agent_audio(3, avatar=False)
        conversation_spans.client_turn(3, {"first_audio_heard": 812.5, "mouth_moving": 1020.0, "Bad-Name": 1.0})
        conversation_spans.client_turn(None, {"video_freezes": 2})
    [turn] = [s for s in tracing_on.get_finished_spans() if s.name == "turn"]
    measured, loose = [s for s in tracing_on.get_finished_spans() if s.name == "client turn"]
    assert dict(measured.attributes or {}) == {"client.first_audio_heard": 812.5, "client.mouth_moving": 1020.0,
                                                "turn.event_id": 3}
    assert measured.start_time == turn.start_time and measured.parent == turn.parent
    assert dict(loose.attributes or {}) == {"client.video_freezes": 2.0}
