"""OpenTelemetry traces of real conversations (issue #25 §1): `avatar-relay serve` in demo mode (its simulators) as a
separate process, turned on by the standard OTEL_* variables alone, exporting OTLP/HTTP to a receiver this test runs
on loopback (decoded with opentelemetry-proto). One conversation is one trace with the spans and attributes an
operator needs, nothing secret in any attribute, and its log lines carry the trace id; a website's `traceparent`
in `start` makes the conversation a child of the website's trace."""

from __future__ import annotations

import os
import secrets
import signal
import sys
from pathlib import Path
from typing import Any

import httpx2
import orjson
import pytest
import trio
from trio_websocket import open_websocket_url

from relay.avatars.common import PLACEHOLDER_API_KEY
from relay.server.auth import mint_token
from tests.support.harness import silence, spoken_sentence
from tests.support.otlp import OtlpReceiver, ReceivedSpan, otlp_receiver
from tests.support.processes import free_port, relay_process

pytestmark = pytest.mark.timeout(90)

AUTH_SECRET = "trace-test-" + "s" * 40
SUBJECT = "user-42"
UPSTREAM_PREFIXES = ("ELEVENLABS_", "HEYGEN_", "LIVEAVATAR_", "SIMLI_", "RELAY_", "OTEL_")
WEBSITE_TRACE, WEBSITE_SPAN = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"


def relay_env(endpoint: str | None, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(UPSTREAM_PREFIXES)}
    env.update({"RELAY_AUTH": "token", "RELAY_AUTH_SECRET": AUTH_SECRET, "RELAY_LOG_FORMAT": "json",
                "RELAY_LOG_LEVEL": "DEBUG", "PYTHONUNBUFFERED": "1"})
    if endpoint is not None:
        env.update({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
                    "OTEL_SERVICE_NAME": "relay-under-test", "OTEL_TRACES_SAMPLER": "always_on",
                    "OTEL_BSP_SCHEDULE_DELAY": "100"})
    env.update(extra)
    return env


async def converse(base: str, token: str, typed: str, *, speak: bool = False, **start: Any) -> list[dict[str, Any]]:
    """A conversation as a page holds it: start, a typed message, the agent's answer and the avatar speaking it; with
    `speak`, then a spoken question and the same; an interruption, stop. Returns the messages seen."""
    seen: list[dict[str, Any]] = []
    async with open_websocket_url(base.replace("http://", "ws://") + "/ws", message_queue_size=1000) as ws, \
            trio.open_nursery() as nursery:
        await ws.send_message(orjson.dumps({"type": "start", "token": token, **start}).decode())
        rate = 16000
        answer: int | None = None
        phase = "text"
        with trio.fail_after(40):
            while True:
                frame = await ws.get_message()
                if isinstance(frame, bytes):
                    continue
                message = orjson.loads(frame)
                seen.append(message)
                kind = message["type"]
                if kind == "ready":
                    rate = message["input_audio"]["sample_rate"]
                    await ws.send_message(orjson.dumps({"type": "text", "text": typed}).decode())
                elif kind == "agent_response" and answer is None and (
                        typed in message["text"] if phase == "text" else phase == "heard"):
                    answer = message["event_id"]
                elif kind == "user_transcript" and message["final"] and message["text"] and phase == "speech":
                    phase = "heard"
                elif kind == "avatar_state" and message["speaking"] and answer is not None and \
                        message["event_id"] == answer:
                    answer = None
                    if phase == "text" and speak:
                        phase = "speech"
                        nursery.start_soon(_speak, ws, rate)
                    elif phase != "stopping":
                        phase = "stopping"
                        await ws.send_message(orjson.dumps({"type": "client_metrics", "turns": [
                            {"event_id": message["event_id"], "speech_to_audio_ms": 812.5,
                             "speech_to_mouth_ms": 1020.0}], "freezes_ms": [250.0]}).decode())
                        await ws.send_message('{"type":"interrupt"}')
                        await ws.send_message('{"type":"stop"}')
                elif kind == "ended":
                    return seen


async def _speak(ws: Any, rate: int) -> None:
    audio = spoken_sentence(rate) + silence(1.0, rate)
    for i in range(0, len(audio), 3200):
        await ws.send_message(audio[i:i + 3200])
        await trio.sleep(0.005)


def by_name(spans: list[ReceivedSpan]) -> dict[str, list[ReceivedSpan]]:
    named: dict[str, list[ReceivedSpan]] = {}
    for span in spans:
        named.setdefault(span.name, []).append(span)
    return named


def every_attribute_text(spans: list[ReceivedSpan]) -> str:
    values: list[Any] = []
    for span in spans:
        values += [span.name, span.status_message, *span.attributes.items(), *span.resource.items()]
        values += [event for event in span.events]
    return repr(values)


Traced = tuple[OtlpReceiver, list[dict[str, Any]], str, ReceivedSpan, list[dict[str, Any]], str]


async def traced_conversation(tmp_path: Path, *, dotenv: bool = False, **start: Any) -> Traced:
    """One conversation through a traced relay: (receiver, messages, token, root span, JSON log lines, typed).
    `dotenv`: the OTEL_* variables are in the relay's .env, not its environment."""
    token = mint_token(AUTH_SECRET, subject=SUBJECT)
    typed = "my card number is 4111-" + secrets.token_hex(4)
    log_path = tmp_path / "relay.log"
    with otlp_receiver() as (receiver, endpoint), log_path.open("w") as log_file:
        env = relay_env(endpoint)
        if dotenv:
            otel = {name: env.pop(name) for name in list(env) if name.startswith("OTEL_")}
            (tmp_path / ".env").write_text("".join(f"{name}={value}\n" for name, value in otel.items()))
        async with relay_process(env, tmp_path, stderr=log_file) as (_, base):
            messages = await converse(base, token, typed, speak=True, **start)
            root = await receiver.wait_for("conversation", where=lambda s: "relay.end_reason" in s.attributes)
    lines = [orjson.loads(line) for line in log_path.read_text().splitlines() if line.startswith("{")]
    return receiver, messages, token, root, lines, typed


async def test_a_conversation_is_one_trace_with_its_spans_attributes_and_log_lines(tmp_path: Path) -> None:
    receiver, messages, token, root, lines, typed = await traced_conversation(tmp_path)
    ready = next(m for m in messages if m["type"] == "ready")
    assert messages[-1]["reason"] == "client_stop"

    spans = [s for s in receiver.snapshot() if s.trace_id == root.trace_id]
    assert {s.trace_id for s in receiver.snapshot()} == {root.trace_id}, "one conversation, one trace"
    assert root.parent_span_id == "" and root.resource["service.name"] == "relay-under-test"
    assert root.attributes["relay.conversation_id"] == ready["conversation_id"]
    assert root.attributes["elevenlabs.conversation_id"] == ready["conversation_id"]
    assert root.attributes["avatar.provider"] == ready["avatar"]["provider"] == "liveavatar"
    assert root.attributes["avatar.session_id"] == ready["avatar"]["session_id"]
    assert root.attributes["relay.end_reason"] == "client_stop"
    assert root.attributes["relay.client.subject"] == SUBJECT
    assert "ready" in root.event_names()

    named = by_name(spans)
    ids = {s.span_id: s for s in spans}

    def parent(span: ReceivedSpan) -> str:
        return ids[span.parent_span_id].name if span.parent_span_id in ids else "?"

    for name in ("admission", "agent connection", "avatar set-up", "avatar connected", "ending"):
        assert [parent(s) for s in named.get(name, [])] == ["conversation"], (name, sorted(named))
    # the agent's (it stops what it was saying when the user types), then the browser's
    assert [(parent(s), s.attributes["interruption.source"]) for s in named["interruption"]][-1] == \
        ("conversation", "browser")
    assert [parent(s) for s in named["signed URL"]] == ["agent connection"]
    assert "GET /v1/convai/conversation/get-signed-url" in {s.name for s in spans if parent(s) == "signed URL"}
    websockets = {parent(s) for s in named["websocket connect"]}
    assert websockets == {"agent connection", "avatar set-up"}, websockets  # the agent's socket, the LITE socket
    setup_calls = sorted(s.name for s in spans if parent(s) == "avatar set-up")
    assert "POST /v1/sessions/token" in setup_calls and "POST /v1/sessions/start" in setup_calls, setup_calls
    assert named["avatar set-up"][0].attributes["avatar.session_id"] == ready["avatar"]["session_id"]
    [stop] = named["avatar stop"]
    assert parent(stop) == "ending" and stop.attributes["avatar.stop_cause"] == "conversation_ended"
    assert "POST /v1/sessions/stop" in {s.name for s in spans if s.parent_span_id == stop.span_id}
    for http_span in (s for s in spans if s.name.startswith(("GET ", "POST "))):
        assert http_span.kind == 3 and http_span.attributes["http.response.status_code"] in (200, 201)  # CLIENT

    for trigger in ("text", "speech"):  # the typed question, then the spoken one
        [turn] = [s for s in named["turn"] if s.attributes["turn.trigger"] == trigger]
        assert parent(turn) == "conversation"
        assert turn.event_names() == ["agent.first_audio", "avatar.first_audio", "avatar.speaking"], turn.events
        assert 0 <= turn.attributes["turn.agent_first_audio_ms"] <= turn.attributes["turn.avatar_first_audio_ms"] \
            <= turn.attributes["turn.avatar_speaking_ms"]
        assert turn.attributes["turn.outcome"] == "spoken"

    # the page's own measures of the last turn it heard: a span beside that turn, from its start
    [measured] = named["client turn"]
    [spoken] = [s for s in named["turn"] if s.attributes.get("turn.event_id") == measured.attributes["turn.event_id"]]
    assert measured.start_ns == spoken.start_ns and parent(measured) == "conversation"
    assert (measured.attributes["client.speech_to_audio_ms"], measured.attributes["client.speech_to_mouth_ms"]) \
        == (812.5, 1020.0)
    assert ("client.video_freeze", {"client.freeze_ms": 250.0}) in root.events

    text = every_attribute_text(spans)
    for secret in (AUTH_SECRET, token, PLACEHOLDER_API_KEY, ready["avatar"]["access_token"], typed,
                   "conversation_signature", "xi-api-key"):
        assert secret not in text, f"{secret!r} is in a span"

    mine = [line for line in lines if line.get("relay_id") == root.attributes["relay.relay_id"]]
    assert mine and all(line.get("trace_id") == root.trace_id for line in mine), mine[:3]
    assert {line["span_id"] for line in mine} <= set(ids), "log lines name spans of the trace"
    assert any(line["message"] == "conversation opened" and line["span_id"] == root.span_id for line in mine)


async def test_a_website_traceparent_makes_the_conversation_its_child(tmp_path: Path) -> None:
    receiver, messages, _, root, _, _ = await traced_conversation(  # configured in .env, as the relay's settings can be
        tmp_path, dotenv=True, traceparent=f"00-{WEBSITE_TRACE}-{WEBSITE_SPAN}-01")
    assert messages[-1]["reason"] == "client_stop"
    assert (root.trace_id, root.parent_span_id) == (WEBSITE_TRACE, WEBSITE_SPAN)
    assert {s.trace_id for s in receiver.snapshot()} == {WEBSITE_TRACE}


async def test_a_malformed_traceparent_is_refused_with_a_clear_error(tmp_path: Path) -> None:
    token = mint_token(AUTH_SECRET, subject=SUBJECT)
    with otlp_receiver() as (_, endpoint):
        async with relay_process(relay_env(endpoint), tmp_path, stderr=sys.stderr) as (_, base):
            async with open_websocket_url(base.replace("http://", "ws://") + "/ws") as ws:
                await ws.send_message(orjson.dumps({"type": "start", "token": token,
                                                    "traceparent": f"00-{WEBSITE_TRACE.upper()}-{WEBSITE_SPAN}-01"}
                                                   ).decode())
                with trio.fail_after(10):
                    error = orjson.loads(await ws.get_message())
    assert error["type"] == "error" and error["code"] == "protocol_error" and "traceparent" in error["message"]


async def test_a_failover_is_in_the_trace(tmp_path: Path) -> None:
    token = mint_token(AUTH_SECRET, subject=SUBJECT)
    with otlp_receiver() as (receiver, endpoint):
        async with relay_process(relay_env(endpoint, RELAY_AVATAR="liveavatar,simli"), tmp_path,
                                 stderr=sys.stderr) as (_, base):
            async with httpx2.AsyncClient(timeout=5) as http:
                sims = (await http.get(base + "/_demo/simulators")).json()
                (await http.post(sims["liveavatar"] + "/_sim/faults", json={"concurrency_limit": 0})).raise_for_status()
            async with open_websocket_url(base.replace("http://", "ws://") + "/ws") as ws:
                await ws.send_message(orjson.dumps({"type": "start", "token": token}).decode())
                with trio.fail_after(20):
                    while (message := orjson.loads(await ws.get_message()))["type"] != "ready":
                        pass
                    await ws.send_message('{"type":"stop"}')
            root = await receiver.wait_for("conversation", where=lambda s: "relay.end_reason" in s.attributes)
    assert message["avatar"]["provider"] == root.attributes["avatar.provider"] == "simli"
    spans = [s for s in receiver.snapshot() if s.trace_id == root.trace_id]
    setups = sorted((s for s in spans if s.name == "avatar set-up"), key=lambda s: s.start_ns)
    assert [(s.attributes["avatar.provider"], s.status_code) for s in setups] == [("liveavatar", 2), ("simli", 0)]
    assert setups[0].status_message.startswith("AvatarUnavailable: ")
    [failover] = [s for s in spans if s.name == "failover"]
    assert failover.parent_span_id == root.span_id
    assert failover.attributes["avatar.provider"] == "liveavatar"
    assert failover.attributes["avatar.failover_reason"] == setups[0].status_message.removeprefix("AvatarUnavailable: ")


async def test_a_collector_that_does_not_answer_harms_no_conversation(tmp_path: Path) -> None:
    log_path = tmp_path / "relay.log"
    env = relay_env(f"http://127.0.0.1:{free_port()}")  # nothing listens there
    with log_path.open("w") as log_file:
        async with relay_process(env, tmp_path, stderr=log_file) as (process, base):
            for _ in range(2):
                messages = await converse(base, mint_token(AUTH_SECRET, subject=SUBJECT), "are you open on sundays")
                assert messages[-1]["reason"] == "client_stop"
            process.send_signal(signal.SIGTERM)
            with trio.fail_after(30):  # the SDK retries the last export for up to OTEL_EXPORTER_OTLP_TIMEOUT (10 s)
                assert await process.wait() == 0
    lines = log_path.read_text().splitlines()
    exporter = [orjson.loads(line) for line in lines if "opentelemetry" in line]
    assert exporter, "the failed exports are logged"
    assert all(line["logger"].startswith("opentelemetry.") for line in exporter)  # JSON lines, like the relay's
