"""One conversation with the simulated agent: the handshake, the receive loop, user audio through the VAD, typed
messages, replies streamed as the real service does (and interrupted), pings, and the faults' background tasks.
`Conversation.run` returns when the agent closes (`close` is then set) or is cancelled when the client leaves."""

from __future__ import annotations

import base64
import binascii
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import orjson
import trio

from relay.sim.elevenlabs_sim import features
from relay.sim.elevenlabs_sim.defaults import DEFAULT_CLIENT_EVENTS
from relay.sim.elevenlabs_sim.voice import Vad, audio_format, synthesize, ulaw_encode
from relay.sim.elevenlabs_sim.wire import Close, alignment_field, audio_frame, error_frame, frame

CLOSE_TIMEOUT = 2.0
_SEND_TIMEOUT = 10.0

_VARIABLE = re.compile(r"\{\{\s*([A-Za-z0-9_]+)\s*\}\}")


def _substitute(text: str, variables: dict[str, Any]) -> str:
    return _VARIABLE.sub(lambda m: str(variables.get(m.group(1), m.group(0))), text)


def _truncate_spoken(text: str, fraction: float) -> str:
    """The words of `text` spoken in `fraction` of its duration (cut at a word boundary)."""
    cut = int(len(text) * max(0.0, min(1.0, fraction)))
    if cut >= len(text):
        return text
    head = text[:cut]
    space = head.rfind(" ")
    return head[:space] if space > 0 else head


def _override_fields(value: Any, prefix: str = "") -> list[str]:
    if not isinstance(value, dict):
        return [prefix.rstrip(".")] if _has_override(value) else []
    return [name for key, inner in value.items() for name in _override_fields(inner, f"{prefix}{key}.")]


def _has_override(value: Any) -> bool:
    if isinstance(value, dict):
        return any(_has_override(v) for v in value.values())
    return value is not None and value != [] and value != ""


# ----------------------------------------------------------------------------------------------------------------------
# One conversation


@dataclass(slots=True)
class _Reply:
    event_id: int
    text: str
    to_user: bool = True  # False for the greeting
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    started_at: float | None = None
    duration: float = 0.0
    done: bool = False

    def speaking_at(self, now: float) -> bool:
        return self.started_at is not None and not self.done and now < self.started_at + self.duration


class Conversation:
    def __init__(
        self,
        ws: Any,
        faults: dict[str, Any],
        record: dict[str, Any],
        on_user_audio: Callable[[str, bytes, float], None] | None,
    ) -> None:
        self.ws = ws
        self.faults = faults
        self.record = record
        self.id: str = record["id"]
        self.on_user_audio = on_user_audio
        self.send_lock = trio.Lock()
        self.input_format = audio_format(faults["user_input_audio_format"])
        self.output_format = audio_format(faults["agent_output_audio_format"])
        self.vad = Vad(
            self.input_format,
            float(faults["vad_rms_threshold"]),
            int(faults["vad_speech_start_ms"]),
            int(faults["vad_silence_end_ms"]),
            int(faults["tentative_interval_ms"]),
        )
        self.last_event_id = 0
        self.user_turn_id: int | None = None
        self.turns = 0
        self.reply: _Reply | None = None
        self.text_only = False
        self.dynamic_variables: dict[str, Any] = {}
        self.first_message: str | None = faults["first_message"] or None
        self.initiated = False
        self.stalled = False
        self.close: tuple[int, str] | None = None
        self.last_input = trio.current_time()
        self.ping_id = 0
        self.pings_in_flight: dict[int, float] = {}
        self.last_ping_ms: float | None = None
        self.tool_waiters: dict[str, tuple[trio.Event, list[dict[str, Any]]]] = {}
        self.approval_waiters: dict[str, tuple[trio.Event, list[bool]]] = {}  # MCP calls awaiting approval
        self.nursery: trio.Nursery | None = None
        events = faults["client_events"]
        self.client_events = frozenset(DEFAULT_CLIENT_EVENTS if events is None else events)
        self.replies_to_user = 0

    def enabled(self, event_type: str) -> bool:
        """Whether the agent's `client_events` lets it send `event_type` (metadata and errors are always sent)."""
        return event_type in self.client_events

    # -- plumbing
    # ------------------------------------------------------------------------------------------------------------------

    async def send(self, text: str) -> None:
        # A frame is written whole or not started: a send cancelled while it waits (an interrupted reply's burst)
        # would leave a permessage-deflate context ahead of the client's and corrupt every later frame. Bounded,
        # so a client that stopped reading cannot hold the conversation forever.
        async with self.send_lock:
            with trio.move_on_after(_SEND_TIMEOUT, shield=True):
                await self.ws.send(text)

    def close_with(self, code: int, reason: str) -> None:
        if self.close is None:
            self.close = (code, reason)
        if self.nursery is not None:
            self.nursery.cancel_scope.cancel()

    def next_event_id(self) -> int:
        self.last_event_id += 1
        return self.last_event_id

    # -- lifecycle
    # ------------------------------------------------------------------------------------------------------------------

    async def run(self) -> None:
        """Runs until the agent closes (then `self.close` is set) or the client leaves (the handler is
        cancelled)."""
        opened = trio.current_time()
        with trio.move_on_at(opened + float(self.faults["max_duration_s"])) as lifetime:
            async with trio.open_nursery() as nursery:
                self.nursery = nursery
                nursery.start_soon(self.receive_loop)
                nursery.start_soon(self.watch_input_timeout)
            if self.stalled and self.close is None:
                while True:  # drained and ignored: see `stall_*` in the module docstring
                    await self.ws.receive()
        if lifetime.cancelled_caught and self.close is None:
            # Like the real service: the error event (code 1000, max_duration_exceeded), then close 1000.
            self.close = (1000, "max_duration_exceeded")
            with trio.move_on_after(CLOSE_TIMEOUT):
                await self.send(error_frame(1000, "max_duration_exceeded",
                                             "Conversation ended: maximum duration exceeded"))

    def stall(self) -> None:
        self.stalled = True
        if self.nursery is not None:
            self.nursery.cancel_scope.cancel()

    async def watch_input_timeout(self) -> None:
        timeout = float(self.faults["input_timeout_s"])
        while True:
            deadline = self.last_input + timeout
            if trio.current_time() >= deadline:
                self.close_with(1002, "transport_receive_timeout")
                return
            await trio.sleep_until(deadline)

    # -- receiving
    # ------------------------------------------------------------------------------------------------------------------

    async def receive_loop(self) -> None:
        while True:
            raw = await self.ws.receive()
            try:
                message = self.parse(raw)
                if not self.initiated:
                    if message.get("type") == "conversation_initiation_client_data":
                        self.last_input = trio.current_time()
                        await self.initiate(message)
                        continue
                    # Liberal: a client that skips the initiation gets the agent's defaults.
                    await self.initiate({})
                await self.handle(message)
            except Close as close:
                if close.message is not None:
                    await self.send(error_frame(close.code, close.reason, close.message))
                self.close_with(close.code, close.reason)
                return

    @staticmethod
    def parse(raw: str | bytes | None) -> dict[str, Any]:
        try:
            message = orjson.loads(raw or b"")
        except orjson.JSONDecodeError:
            raise Close(1008, "invalid_message") from None
        if not isinstance(message, dict):
            raise Close(1008, "invalid_message")
        return message

    async def handle(self, message: dict[str, Any]) -> None:
        message_type = message.get("type")
        if "user_audio_chunk" in message and message_type in (None, "user_audio_chunk"):
            await self.handle_audio(message["user_audio_chunk"])
            return
        record = self.record
        if message_type == "pong":
            event_id = self.required(message, "event_id", int)
            sent = self.pings_in_flight.pop(event_id, None)
            if sent is not None:
                self.last_ping_ms = round((trio.current_time() - sent) * 1000.0, 1)
                record["last_ping_ms"] = self.last_ping_ms
            record["pongs"] += 1
            return
        self.last_input = trio.current_time()
        if message_type == "user_message":
            text = self.required(message, "text", str)
            rich_content_id = message.get("rich_content_id")
            if rich_content_id is not None:
                record["rich_content_ids"].append(self.required(message, "rich_content_id", str))
            if text:
                record["user_messages"].append(text)
                await self.user_said_typed(text)
        elif message_type == "multimodal_message":
            # asyncapi MultimodalMessagePayload: text is a UserMessagePayload object (or null), file a file_input.
            part = message.get("text")
            file = message.get("file")
            if part is not None and not (isinstance(part, dict) and part.get("type") == "user_message"
                                         and isinstance(part.get("text"), str | None)):
                raise Close(1008, "invalid_message")
            if file is not None and not (isinstance(file, dict) and file.get("type") == "file_input"
                                         and isinstance(file.get("file_id"), str)):
                raise Close(1008, "invalid_message")
            record["multimodal_messages"].append(message)
            text = part.get("text") if isinstance(part, dict) else None
            if isinstance(text, str) and text:
                record["user_messages"].append(text)
                await self.user_said_typed(text)
        elif message_type == "contextual_update":
            record["contextual_updates"].append(self.required(message, "text", str))
            if message.get("context_id") is not None:
                record["context_ids"].append(self.required(message, "context_id", str))
        elif message_type == "user_activity":
            record["user_activity"] += 1
        elif message_type == "feedback":
            score = message.get("score", "missing")
            if score not in ("like", "dislike", None):  # asyncapi FeedbackScore: null clears the rating
                raise Close(1008, "missing_fields")
            record["feedback"].append({"score": score, "event_id": self.required(message, "event_id", int)})
        elif message_type == "mcp_tool_approval_result":
            call_id = self.required(message, "tool_call_id", str)
            approved = self.required(message, "is_approved", bool)
            approval = self.approval_waiters.get(call_id)
            record["mcp_approvals"].append({"tool_call_id": call_id, "is_approved": approved,
                                            "awaited": approval is not None and not approval[0].is_set()})
            if approval is not None and not approval[0].is_set():
                approval[1].append(approved)
                approval[0].set()
        elif message_type == "client_tool_result":
            call_id = self.required(message, "tool_call_id", str)
            result = {
                "tool_call_id": call_id,
                "result": message.get("result"),
                "is_error": bool(message.get("is_error", False)),
            }
            record["tool_results"].append(result)
            waiter = self.tool_waiters.get(call_id)
            if waiter is not None:
                waiter[1].append(result)
                waiter[0].set()
        elif message_type == "conversation_initiation_client_data":
            record["repeated_initiations"] += 1
        else:
            raise Close(1008, "invalid_message")

    @staticmethod
    def required(message: dict[str, Any], key: str, kind: type) -> Any:
        value = message.get(key)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise Close(1008, "missing_fields")
        return value

    async def initiate(self, message: dict[str, Any]) -> None:
        faults = self.faults
        self.initiated = True
        override = message.get("conversation_config_override") or {}
        variables = message.get("dynamic_variables") or {}
        if not isinstance(override, dict) or not isinstance(variables, dict):
            raise Close(1008, "invalid_message")
        self.record["initiation"] = {
            "conversation_config_override": override,
            "dynamic_variables": variables,
            "user_id": message.get("user_id"),
            "custom_llm_extra_body": message.get("custom_llm_extra_body"),
            "source_info": message.get("source_info"),
        }
        if _has_override(override) and not faults["overrides_allowed"]:
            raise Close(1008, "override_error", "Override for field(s) "
                         f"{sorted(_override_fields(override))} is not allowed by the agent's configuration.")
        missing = [name for name in faults["required_dynamic_variables"] if name not in variables]
        if missing:
            raise Close(1008, "missing_dynamic_variable",
                         f"Missing required dynamic variables in first message: {set(missing)}")
        if self.record["agent_id"] in faults["unknown_agent_ids"]:
            raise Close(1008, "agent_not_found")
        self.dynamic_variables = variables
        agent = override.get("agent")
        if isinstance(agent, dict) and "first_message" in agent:
            self.first_message = agent["first_message"] or None
        conversation = override.get("conversation")
        if not isinstance(conversation, dict):
            conversation = {}
        self.text_only = bool(conversation.get("text_only") or override.get("text_only"))

        if faults["metadata_latency_ms"]:
            await trio.sleep(faults["metadata_latency_ms"] / 1000.0)
        if faults["stall_before_metadata"]:
            self.stall()
            await trio.sleep_forever()
        await self.send(
            frame(
                "conversation_initiation_metadata",
                "conversation_initiation_metadata_event",
                {
                    "conversation_id": self.id,
                    "agent_output_audio_format": faults["agent_output_audio_format"],
                    "user_input_audio_format": faults["user_input_audio_format"],
                },
            )
        )
        self.record["metadata_at"] = time.monotonic()
        if faults["queue_wait_ms"] or faults["queue_times_out"]:
            await self.wait_in_queue(float(faults["queue_wait_ms"]) / 1000.0, bool(faults["queue_times_out"]))
        if self.enabled("mcp_connection_status"):
            await self.send(frame("mcp_connection_status", "mcp_connection_status", {"integrations": [
                {"integration_id": "sim-weather", "integration_type": "mcp_server", "is_connected": True,
                 "tool_count": 1}]}))
        self.start_background()

    def start_background(self) -> None:
        faults = self.faults
        nursery = self.nursery
        assert nursery is not None
        if faults["send_bad_json"]:
            nursery.start_soon(self.send, '{"type":"audio","audio_event":{"audio_base_64":')
        if faults["send_unknown_events"]:
            nursery.start_soon(self.send_unknown_events)
        if faults["odd_fields"]:
            nursery.start_soon(self.send_odd_events)
        if faults["ping_interval_s"]:
            nursery.start_soon(self.ping_loop, float(faults["ping_interval_s"]))
        if self.first_message:
            self.start_reply(_substitute(self.first_message, self.dynamic_variables), latency=0.0, to_user=False)
        if faults["close_code"] is not None and faults["close_after_ms"] is not None:
            nursery.start_soon(self.close_later, faults["close_after_ms"] / 1000.0)
        if faults["stall_after_ms"] is not None:
            nursery.start_soon(self.stall_later, faults["stall_after_ms"] / 1000.0)
        if faults["error_event"]:
            nursery.start_soon(self.send_error_event, dict(faults["error_event"]))

    # -- background
    # ------------------------------------------------------------------------------------------------------------------

    async def ping_loop(self, interval: float) -> None:
        while True:
            await trio.sleep(interval)
            self.ping_id += 1
            if len(self.pings_in_flight) > 16:  # a client that never answers must not grow this forever
                self.pings_in_flight.clear()
            self.pings_in_flight[self.ping_id] = trio.current_time()
            self.record["pings"] += 1
            await self.send(frame("ping", "ping_event", {"event_id": self.ping_id, "ping_ms": self.last_ping_ms}))

    async def close_later(self, delay: float) -> None:
        await trio.sleep(delay)
        self.close_with(int(self.faults["close_code"]), str(self.faults["close_reason"] or ""))

    async def stall_later(self, delay: float) -> None:
        await trio.sleep(delay)
        self.stall()

    async def send_error_event(self, spec: dict[str, Any]) -> None:
        await trio.sleep(float(spec.get("after_ms", 0)) / 1000.0)
        code = int(spec.get("code", 1002))
        message = str(spec.get("message", "This request exceeds your quota limit."))
        if spec.get("form", "schema") == "flat":
            text = orjson.dumps(
                {"message": f"received {code} (protocol error) {message}; then sent {code}", "type": "error"}
            ).decode()
        else:
            text = frame(
                "error",
                "error_event",
                {
                    "code": code,
                    "message": message,
                    "error_type": spec.get("error_type", "quota_exceeded"),
                    "reason": message,
                    "debug_message": None,
                    "details": None,
                },
            )
        await self.send(text)

    async def wait_in_queue(self, seconds: float, times_out: bool) -> None:
        """The agent's concurrency queue (convai-widget-core's mock): `queue_status` waiting, then admitted after
        `seconds`, or timed out and closed 3008."""
        await self.send(orjson.dumps({"type": "queue_status", "queue_status_event": {"status": "waiting"}}).decode())
        await trio.sleep(seconds)
        if times_out:
            await self.send(orjson.dumps({"type": "queue_status",
                                          "queue_status_event": {"status": "timed_out"}}).decode())
            raise Close(3008, "too many concurrent connections")
        await self.send(orjson.dumps({"type": "queue_status", "queue_status_event": {"status": "admitted"}}).decode())

    async def send_odd_events(self) -> None:
        """Known events with missing, extra or oddly typed fields (what a changed service might send)."""
        odd = [
            {"type": "ping", "ping_event": {"event_id": "x", "ping_ms": "n/a"}},
            {"type": "ping", "ping_event": {"ping_ms": 12}},
            {"type": "agent_chat_response_part", "text_response_part": {"type": "start"}},
            {"type": "audio", "audio_event": {"audio_base_64": "AAAA"}},
            {"type": "audio", "audio_event": {"audio_base_64": "%%%", "event_id": 1}},
            {"type": "vad_score", "vad_score_event": {"vad_score": "high"}},
            {"type": "user_transcript", "user_transcription_event": {"event_id": 1}},
            {"type": "interruption", "interruption_event": {}},
            {"type": "client_tool_call", "client_tool_call": {"tool_name": "get_time"}},
            {"type": "agent_response", "agent_response_event": {"agent_response": 42, "event_id": 1, "new": 1}},
        ]
        for event in odd:
            await self.send(orjson.dumps(event).decode())
        await self.send("{not json")

    async def send_unknown_events(self) -> None:
        await self.send(frame("mcp_connection_status", "mcp_connection_status", {"integrations": []}))

    # -- user input
    # ------------------------------------------------------------------------------------------------------------------

    async def handle_audio(self, encoded: Any) -> None:
        if not isinstance(encoded, str):
            raise Close(1008, "invalid_message")
        try:
            chunk = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            raise Close(1008, "invalid_message") from None
        now = time.monotonic()
        self.last_input = trio.current_time()
        record = self.record
        record["user_audio_chunks"] += 1
        record["user_audio_bytes"] += len(chunk)
        record["user_audio_seconds"] = record["user_audio_bytes"] / self.input_format.bytes_per_second
        if self.on_user_audio is not None:
            self.on_user_audio(self.id, chunk, now)
        if self.faults["close_on_first_user_audio"] and self.faults["close_code"] is not None:
            raise Close(int(self.faults["close_code"]), str(self.faults["close_reason"] or ""))
        events = self.vad.feed(chunk)
        if self.enabled("vad_score"):
            score = 1.0 if self.vad.speaking else 0.0
            await self.send(frame("vad_score", "vad_score_event", {"vad_score": score}))
        for kind, ms in events:
            if kind == "start":
                self.user_turn_id = self.next_event_id()
                await self.interrupt_reply(self.user_turn_id)
            elif kind == "tentative":
                await self.send_transcript("tentative_user_transcript", f"({ms / 1000:.1f} s of speech…)")
            else:
                text = f"({ms / 1000:.1f} s of speech)"
                await self.send_transcript("user_transcript", text)
                self.record["user_transcripts"].append(text)
                self.user_turn_id = None
                self.turns += 1
                self.record["turns"] = self.turns
                self.start_reply(
                    f"Turn {self.turns}: I heard about {ms / 1000:.1f} seconds of speech. "
                    "Thanks for talking with the simulated agent."
                )

    async def send_transcript(self, event_type: str, text: str) -> None:
        key = "user_transcription_event" if event_type == "user_transcript" else "tentative_user_transcription_event"
        event_id = self.user_turn_id if self.user_turn_id is not None else self.last_event_id
        if not self.enabled(event_type):
            return
        await self.send(frame(event_type, key, {"user_transcript": text, "event_id": event_id}))

    async def user_said_typed(self, text: str) -> None:
        turn_id = self.next_event_id()
        await self.interrupt_reply(turn_id)
        self.turns += 1
        self.record["turns"] = self.turns
        if features.WEATHER.search(text):
            city = features.CITY.search(text)
            self.start_reply("", prepare=partial(features.mcp_weather, self, city.group(1) if city else "Paris"))
        elif features.ORDER.search(text):
            number = re.search(r"\d{3,}", text)
            self.start_reply("", prepare=partial(features.lookup_order, self, number.group(0) if number else "1234"))
        elif features.HUMAN.search(text):
            self.start_reply("", prepare=partial(features.hand_off, self), after=partial(features.hand_back, self))
        elif features.TOOL.search(text):
            self.start_reply("", prepare=partial(features.call_tool, self))
        else:
            self.start_reply(f"You said: {text}")

    async def interrupt_reply(self, new_event_id: int) -> None:
        reply = self.reply
        if reply is None or reply.done:
            return
        now = trio.current_time()
        reply.scope.cancel()
        self.reply = None
        if not reply.speaking_at(now):
            reply.done = True
            return
        reply.done = True
        assert reply.started_at is not None
        spoken = _truncate_spoken(reply.text, (now - reply.started_at) / reply.duration)
        self.record["interruptions"] += 1
        await self.send(frame("interruption", "interruption_event", {"event_id": new_event_id}))
        if not self.enabled("agent_response_correction"):
            return
        await self.send(
            frame(
                "agent_response_correction",
                "agent_response_correction_event",
                {
                    "original_agent_response": reply.text,
                    "corrected_agent_response": spoken,
                    "event_id": reply.event_id,
                },
            )
        )

    # -- agent replies
    # ------------------------------------------------------------------------------------------------------------------

    def start_reply(self, text: str, *, prepare: Callable[[int], Awaitable[str]] | None = None,
                    after: Callable[[int], Awaitable[None]] | None = None, latency: float | None = None,
                    to_user: bool = True) -> None:
        """Reply `text`, or what `prepare(event_id)` (a tool round trip) returns; `after(event_id)` runs once its
        audio is sent."""
        assert self.nursery is not None
        if self.reply is not None:
            self.reply.scope.cancel()  # a reply never overlaps the next one
        reply = _Reply(event_id=self.next_event_id(), text=text, to_user=to_user)
        self.reply = reply
        delay = float(self.faults["response_latency_ms"]) / 1000.0 if latency is None else latency
        self.nursery.start_soon(self.play_reply, reply, delay, prepare, after)

    async def play_reply(self, reply: _Reply, delay: float, prepare: Callable[[int], Awaitable[str]] | None,
                         after: Callable[[int], Awaitable[None]] | None) -> None:
        with reply.scope:
            if delay:
                await trio.sleep(delay)
            if prepare is not None:
                reply.text = await prepare(reply.event_id)
            faults = self.faults
            is_goodbye = bool(faults["end_call_after_reply"]) and reply.to_user
            if is_goodbye:
                reply.text = ("Thank you so much for calling today. " + reply.text
                              + " Goodbye, and have a wonderful day!")
            fmt = self.output_format
            # Every character lasts `ms_per_char` (faster for a reply that would exceed `max_reply_s`).
            char_ms = min(float(faults["ms_per_char"]), float(faults["max_reply_s"]) * 1000 / max(1, len(reply.text)))
            chunk_seconds = float(faults["chunk_duration_ms"]) / 1000.0
            chunk_samples = max(1, int(fmt.rate * chunk_seconds))
            speech = None if self.text_only else synthesize(fmt.rate, reply.text, char_ms)
            reply.duration = max(len(reply.text) * char_ms / 1000.0, 1e-3)
            reply.started_at = trio.current_time()
            if faults["send_unknown_events"]:
                await self.send(
                    frame(
                        "internal_tentative_agent_response",
                        "tentative_agent_response_internal_event",
                        {"tentative_agent_response": reply.text},
                    )
                )
            # Benchmark timestamps (time.monotonic(), taken just before each send): see `reply_times`.
            times: list[Any] = [reply.event_id, time.monotonic(), None, reply.text]
            self.record["reply_times"].append(times)
            if self.enabled("agent_chat_response_part"):
                # Streamed like an LLM's tokens: a start, one delta per word (with its space), a stop.
                deltas = re.findall(r"\S+\s*|\s+", reply.text)
                for part_type, text in (("start", ""), *(("delta", d) for d in deltas), ("stop", "")):
                    await self.send(frame("agent_chat_response_part", "text_response_part",
                                           {"text": text, "type": part_type, "event_id": reply.event_id}))
            if self.enabled("agent_response"):
                await self.send(
                    frame(
                        "agent_response",
                        "agent_response_event",
                        {"agent_response": reply.text, "event_id": reply.event_id},
                    )
                )
            self.record["replies"] += 1
            realtime = faults["reply_pacing"] == "realtime"
            chunks = range(0, len(speech.samples), chunk_samples) if speech is not None else range(0)
            first = 0  # the first character that starts in this chunk
            for index, start in enumerate(chunks):
                if index and realtime:
                    await trio.sleep_until(reply.started_at + index * chunk_seconds)
                assert speech is not None
                samples = speech.samples[start:start + chunk_samples]
                chunk = ulaw_encode(samples) if fmt.ulaw else samples.tobytes()
                if not index:
                    times[2] = time.monotonic()
                # The characters that start in this chunk, timed from its start (a character may run on into the
                # next chunk, as a word cut by the chunk boundary does).
                last = first
                while last < len(reply.text) and speech.boundary(last) < start + len(samples):
                    last += 1
                alignment = ""
                if faults["send_alignment"] and last > first:
                    alignment = alignment_field(reply.text[first:last], char_ms,
                                           first * char_ms - start * 1000.0 / fmt.rate)
                first = last
                if self.enabled("audio"):
                    await self.send(audio_frame(chunk, reply.event_id, alignment))
                self.record["agent_audio_seconds"] += len(chunk) / fmt.bytes_per_second
            if self.enabled("context_usage"):
                await self.send(frame("context_usage", "context_usage_event", {
                    "event_id": reply.event_id, "model": "sim-llm", "context_tokens": 400 + 40 * reply.event_id,
                    "context_limit_tokens": 128000}))
            if after is not None:
                await after(reply.event_id)
            if faults["send_unknown_events"]:
                await self.send(
                    frame("agent_response_metadata", "agent_response_metadata_event", {"event_id": reply.event_id})
                )
            if is_goodbye:
                # The agent calls its end_call system tool: the call ends right after the last chunk is sent, not
                # once it has been heard (elevenlabs-python#457: end_call closes 1000; packages#419: the client
                # still holds the goodbye's audio when the close arrives).
                if self.enabled("agent_tool_response"):
                    await self.send(frame("agent_tool_response", "agent_tool_response", {
                        "tool_name": "end_call", "tool_call_id": "end_call_" + secrets.token_hex(4),
                        "tool_type": "system", "is_error": False, "event_id": reply.event_id}))
                self.close_with(1000, "")
                return
            # Still "speaking" until the last chunk has had time to play: talking over it interrupts it.
            await trio.sleep_until(reply.started_at + reply.duration)
        reply.done = True
        if self.reply is reply:
            self.reply = None
