"""The CPU a conversation's trace costs the relay, measured alone (docs/performance.md "Tracing"): the relay's own
tracing code (`relay.conversation.spans`, `relay.net.spans`) records traces shaped like a demo conversation's —
the root, admission, agent connection (signed URL, its HTTP call, the socket's handshake), avatar set-up (two HTTP
calls, the socket), avatar connected, TURNS turns with their three events, an interruption, the ending with the
avatar's stop call — and the real SDK exports them (batch span processor, OTLP/HTTP, to `bench.otlp_sink` or any
collector at OTEL_EXPORTER_OTLP_ENDPOINT). Prints the process's CPU time (every thread: the export's too) per
conversation and per turn. The bench's CPU per conversation-second, on this shared machine, cannot resolve a
difference this small; this can.

    python -m bench.otlp_sink --port 4318 &
    OTEL_TRACES_EXPORTER=otlp OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4318 python -m bench.tracing_cost
"""

from __future__ import annotations

import argparse
import os
import time

from opentelemetry import trace

from relay.conversation import spans as conversation_spans
from relay.net import spans
from relay.ops.tracing import configure_tracing


class _Record:
    relay_id, conversation_id, avatar_provider, avatar_session_id = "r-1", "conv_1", "liveavatar", "s-1"
    reason, error, degraded = "client_stop", None, False


def one_conversation(turns: int) -> None:
    record = _Record()
    with conversation_spans.conversation_trace(None, "user-1") as held:
        assert held is not None
        with spans.child("admission"):
            pass
        with spans.child("agent connection"):
            with spans.child("signed URL"), spans.child("GET /v1/convai/conversation/get-signed-url",
                                                        {"http.request.method": "GET", "url.path": "/x"}):
                spans.inject_traceparent({})
            with spans.child("websocket connect", {"server.address": "127.0.0.1"}):
                spans.inject_traceparent({})
        with spans.child("avatar set-up", {"avatar.provider": "liveavatar"}):
            for path in ("/v1/sessions/token", "/v1/sessions/start"):
                with spans.child(f"POST {path}", {"http.request.method": "POST", "url.path": path}):
                    spans.inject_traceparent({})
            with spans.child("websocket connect", {"server.address": "127.0.0.1"}):
                pass
        conversation_spans.avatar_opened("liveavatar", "s-1")
        conversation_spans.avatar_connected()
        conversation_spans.ready(record)
        for turn in range(1, turns + 1):
            held.turns.user_ended("speech", turn - 1)
            held.turns.agent_audio(turn, True)
            held.turns.avatar_given(turn)
            held.turns.avatar_speaking(turn)
        held.turns.interrupted("browser", turns + 1)
        held.turns.interrupt_sent()
        with trace.use_span(held.child("avatar stop", parent=held.begin_ending()), end_on_exit=True), \
                spans.child("POST /v1/sessions/stop"):
            pass
        conversation_spans.finished(record)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--conversations", type=int, default=2000)
    parser.add_argument("--turns", type=int, default=5)
    args = parser.parse_args()
    if not configure_tracing(dict(os.environ)):
        raise SystemExit("set OTEL_TRACES_EXPORTER=otlp (and OTEL_EXPORTER_OTLP_ENDPOINT) to measure")
    for _ in range(50):
        one_conversation(args.turns)  # warm-up
    results = {}
    for turns in (0, args.turns):
        provider = trace.get_tracer_provider()
        provider.force_flush()  # type: ignore[attr-defined]
        cpu = time.process_time()
        for index in range(args.conversations):
            one_conversation(turns)
            if index % 20 == 19:
                provider.force_flush()  # type: ignore[attr-defined]  # the queue (2048 spans) never overflows  # type: ignore[attr-defined]
        results[turns] = (time.process_time() - cpu) / args.conversations
    per_turn = (results[args.turns] - results[0]) / args.turns
    print(f"CPU per traced conversation: {results[0] * 1e6:.0f} µs with no turn, {per_turn * 1e6:.0f} µs per turn "
          f"({args.conversations} conversations, export included)")


if __name__ == "__main__":
    main()
