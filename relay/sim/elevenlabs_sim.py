"""A simulated ElevenLabs Conversational AI agent: signed URLs, agent details, and the conversation socket.

Faithful to `/work/shared/reference/elevenlabs-convai.md` (frames are sent with `type` last, like the real
ones): the handshake (`conversation_initiation_client_data` -> `conversation_initiation_metadata`), pings
answered by pongs (`ping_ms` is the measured round trip), an energy VAD on the user's audio producing
`tentative_user_transcript` / `user_transcript`, then `agent_response` with the first chunk of a synthetic
voice reply streamed ahead of real time, interruptions (`interruption` with the new turn's id, then
`agent_response_correction` with the words actually spoken), typed messages, a client tool round trip, and the
real close codes. It must never import the relay (a protocol bug must not hide in both sides), and must stay
cheap per audio frame: hundreds of conversations run through it at once.

Endpoints
- `GET /v1/convai/conversation/get-signed-url?agent_id=` (header `xi-api-key`) -> `{"signed_url": ...}` with an HMAC
  `conversation_signature` valid `signature_ttl_s`; 422 without agent_id, 401 without a key or with an invalid one,
  404 for an unknown agent. The socket also accepts the older `token=` form.
- `GET /v1/convai/agents/{agent_id}` (header `xi-api-key`) -> the agent's configuration, including its formats.
- WebSocket `/v1/convai/conversation?agent_id=...` (subprotocol `convai` echoed when asked for, none otherwise).
- `GET /_sim/ledger`, `POST /_sim/faults` (JSON object merged into the faults; unknown keys -> 400),
  `POST /_sim/reset` (clears the ledger and restores the default faults).

The agent's behaviour
- Speech: 20 ms frames whose RMS exceeds `vad_rms_threshold` for `vad_speech_start_ms` start a user turn (a new
  event id); `tentative_user_transcript` every `tentative_interval_ms` of speech; `vad_silence_end_ms` of silence
  ends it with `user_transcript` "(1.8 s of speech)". VAD time is audio time (samples received), so audio sent
  faster than real time works too. After `response_latency_ms` the agent replies: `agent_response` with the first
  audio chunk, then the rest (same event id) at once, ahead of real time like the real service (`reply_pacing`),
  `chunk_duration_ms` each. Reply audio is a
  synthetic voice (harmonics and a syllable envelope), `ms_per_char` per character capped at `max_reply_s`.
- Typed `user_message` (or `multimodal_message` with `text: {type: "user_message", text}`) -> "You said: ...". If it
  contains the word "tool", the agent first sends `client_tool_call` (`get_time`) and waits up to
  `tool_result_timeout_s` for the `client_tool_result`, then quotes the result. The demo features (docs/simulators.md):
  "order" -> `agent_tool_request` / `agent_tool_response` (`lookup_order`, webhook) after `server_tool_delay_ms`;
  "weather" -> `mcp_tool_call` loading, awaiting_approval (`mcp_approval_timeout_s`), then success or failure as the
  client's `mcp_tool_approval_result` says (or failure at the time-out); "human" -> `external_agent_connected`,
  `agent_typing`, the human's reply after `human_typing_ms`, `agent_typing` false, `external_agent_disconnected`.
- The voice: each character lasts `ms_per_char`; each word is one voiced burst, each space silence, and every audio
  chunk's `alignment` lists the characters starting in it, timed from the chunk's start, exactly as the audio says.
- Talking (or typing) over a reply that is still being spoken -> the old reply's audio stops, `interruption` with
  the new turn's event id, then `agent_response_correction` (old event id) with the text spoken so far. A reply not
  yet started is dropped silently.
- `conversation_config_override.agent.first_message` replaces the greeting ("" disables it);
  `{{variable}}` in it is filled from `dynamic_variables`. `conversation.text_only` (or the Python SDK's
  top-level `text_only`) sends replies without audio.
- Closes: bad JSON, a non-object, an unknown type or bad base64 -> 1008 `invalid_message`; a known type missing a
  field -> 1008 `missing_fields`; overrides when not allowed -> 1008 `override_error`; a missing required dynamic
  variable -> 1008 `missing_dynamic_variable`; no client message except pongs for `input_timeout_s` -> 1002
  `transport_receive_timeout`; `max_duration_s` -> an `error` event (max_duration_exceeded, code 1000), then 1000
  `max_duration_exceeded`.

Faults (`POST /_sim/faults`; a conversation reads them once, when its socket opens)
- `handshake_latency_ms` (0): delay before accepting the socket.
- `refuse_handshake_status` (null): refuse the socket upgrade with this HTTP status.
- `require_signed_url` (false): refuse (403) sockets without a valid signature (a private agent).
- `metadata_latency_ms` (0): delay between the client's initiation and the metadata.
- `signed_url_latency_ms` (0), `signed_url_status` (null): delay / forced error status for the signed URL endpoint.
- `agent_details_status` (null): forced error status for the agent details endpoint.
- `invalid_api_keys` ([]): keys answered with 401. Any other non-empty key is valid.
- `unknown_agent_ids` ([]): agents that do not exist (404 on REST; the socket closes 1008 `agent_not_found`).
- `signature_ttl_s` (900): lifetime of a signed URL.
- `agent_output_audio_format`, `user_input_audio_format` ("pcm_16000"): any of pcm_8000, pcm_16000, pcm_22050,
  pcm_24000, pcm_44100, pcm_48000, ulaw_8000 (mu-law is encoded and decoded here).
- `overrides_allowed` (false, like real agents): an initiation carrying a non-empty override gets an `error`
  event (`override_error`, naming the fields) and close 1008 `override_error`. The demo agent allows them (`agents`).
- `agents` (null = `DEFAULT_AGENTS`: `demo-agent` allows overrides and enables every client event): per agent id,
  fault overrides for that agent.
- `client_events` (null = `DEFAULT_CLIENT_EVENTS`, the real default list): the events the agent may send;
  `agent_response_correction`, `client_tool_call`, `agent_chat_response_part`, `vad_score` and `agent_tool_response`
  are opt-in (a disabled client tool is answered "not enabled for this client" by the agent itself).
- `reply_pacing` ("burst", like the real service: a reply's audio is sent at once; "realtime": paced).
- `end_call_after_reply` (false): the reply to the user is a goodbye, then `agent_tool_response` end_call (if
  enabled) and close 1000 right after the last chunk.
- `send_alignment` (true): per-character `alignment` on each audio chunk.
- `queue_wait_ms` (0; `DEMO_FAULTS` 1200 in demo mode), `queue_times_out` (false): `queue_status` waiting →
  admitted, or timed_out and close 3008.
- `server_tool_delay_ms` (600), `mcp_approval_timeout_s` (30), `human_typing_ms` (800): the demo features' timings.
- `odd_fields` (false): known events with missing, extra or oddly typed fields, and one non-JSON frame.
- `required_dynamic_variables` ([]): names the client must send (else an `error` event `missing_dynamic_variable`
  naming them, then close 1008).
- `first_message` ("Hello! I'm the simulated agent. How can I help you today?"): the greeting; null or "" disables.
- `ping_interval_s` (2.0): seconds between pings; 0 disables them.
- `vad_rms_threshold` (500, PCM16 units), `vad_speech_start_ms` (100), `vad_silence_end_ms` (600),
  `tentative_interval_ms` (500).
- `chunk_duration_ms` (250), `response_latency_ms` (300), `ms_per_char` (60), `max_reply_s` (6.0),
  `tool_result_timeout_s` (15).
- `input_timeout_s` (60), `max_duration_s` (600).
- `close_code` (null), `close_reason` (""), `close_after_ms` (null), `close_on_first_user_audio` (false): close with
  `close_code`/`close_reason` that many ms after the metadata, and/or on the first user audio chunk.
- `send_bad_json` (false): send one malformed frame right after the metadata.
- `send_unknown_events` (false): send event types clients do not know (`agent_response_metadata`,
  `internal_tentative_agent_response`, `mcp_connection_status`) after the metadata and around each reply.
- `stall_before_metadata` (false), `stall_after_ms` (null): stop answering entirely (no metadata / nothing after
  that many ms past the metadata): the socket stays open, nothing is sent, and what arrives is drained and ignored
  (draining is what lets the simulator notice the client leaving), until `max_duration_s`.
- `error_event` (null): `{"form": "schema"|"flat", "after_ms": 0, "code": 1002, "message": "...",
  "error_type": "..."}` sends one `error` event that long after the metadata.

Ledger (`GET /_sim/ledger`): `conversations` (one object per socket: id, agent_id, subprotocol, signed,
opened_at, metadata_at, closed_at, close_code, close_reason, closed_by "agent"|"client", initiation, the
formats, user_audio_chunks/bytes/seconds, user_messages, contextual_updates, user_activity, feedback,
tool_calls, tool_results, pings, pongs, last_ping_ms, turns, user_transcripts, replies, agent_audio_seconds,
interruptions, reply_times, query, rich_content_ids, context_ids, multimodal_messages, mcp_approvals, mcp_tool_calls,
server_tool_calls, hand_offs), `totals`, `signed_urls_issued`, `signed_url_queries`, `agent_details_requests`. Times are
`time.monotonic()`. `reply_times` is one `[event_id, agent_response_at, first_audio_at, text]` per reply, taken just
before the `agent_response` frame and the reply's first audio frame are sent (`first_audio_at` is null for a
text-only reply); the benchmark (`bench/`) matches them with what the avatar simulators received.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import lru_cache, partial
from typing import Any
from urllib.parse import quote

import numpy as np
import orjson
import trio
from quart import Response, abort, request, websocket
from quart_trio import QuartTrio

from relay.sim.http_keepalive import KeepAliveGuard

DEFAULT_FIRST_MESSAGE = "Hello! I'm the simulated agent. How can I help you today?"

DEFAULT_FAULTS: dict[str, Any] = {
    "handshake_latency_ms": 0,
    "refuse_handshake_status": None,
    "require_signed_url": False,
    "metadata_latency_ms": 0,
    "signed_url_latency_ms": 0,
    "signed_url_status": None,
    "agent_details_status": None,
    "invalid_api_keys": [],
    "unknown_agent_ids": [],
    "signature_ttl_s": 900,
    "agent_output_audio_format": "pcm_16000",
    "user_input_audio_format": "pcm_16000",
    "overrides_allowed": False,
    "required_dynamic_variables": [],
    "first_message": DEFAULT_FIRST_MESSAGE,
    "ping_interval_s": 2.0,
    "vad_rms_threshold": 500,
    "vad_speech_start_ms": 100,
    "vad_silence_end_ms": 600,
    "tentative_interval_ms": 500,
    "chunk_duration_ms": 250,
    "response_latency_ms": 300,
    "ms_per_char": 60,
    "max_reply_s": 6.0,
    "tool_result_timeout_s": 15,
    "input_timeout_s": 60,
    "max_duration_s": 600,
    "close_code": None,
    "close_reason": "",
    "close_after_ms": None,
    "close_on_first_user_audio": False,
    "send_bad_json": False,
    "send_unknown_events": False,
    "stall_before_metadata": False,
    "stall_after_ms": None,
    "error_event": None,
    "reply_pacing": "burst",
    "end_call_after_reply": False,
    "client_events": None,
    "send_alignment": True,
    "queue_wait_ms": 0,
    "queue_times_out": False,
    "odd_fields": False,
    "agents": None,
    "server_tool_delay_ms": 600,
    "mcp_approval_timeout_s": 30,
    "human_typing_ms": 800,
}

# `avatar-relay serve` in demo mode (`relay.sim.runner.serve_simulators(demo=True)`): each conversation waits briefly
# in the agent's queue, so the page shows the queue state without an account.
DEMO_FAULTS: dict[str, Any] = {"queue_wait_ms": 1200}

# The agent's `client_events` when its configuration does not list them: the real default list (ElevenLabs agent
# settings → Advanced → client events; the asyncapi notes the others are opt-in). Anything else — corrections, client
# tool calls, streamed text parts, VAD scores, tool responses — is only sent when the agent enables it.
DEFAULT_CLIENT_EVENTS = (
    "audio",
    "interruption",
    "agent_response",
    "user_transcript",
    "tentative_user_transcript",
    "conversation_initiation_metadata",
    "ping",
)
ALL_CLIENT_EVENTS = (
    *DEFAULT_CLIENT_EVENTS,
    "agent_response_correction",
    "client_tool_call",
    "agent_chat_response_part",
    "vad_score",
    "agent_tool_response",
    "agent_tool_request",
    "mcp_tool_call",
    "mcp_connection_status",
    "agent_typing",
    "external_agent_connected",
    "external_agent_disconnected",
    "context_usage",
    "rich_content",
)
# Per-agent configuration overriding the faults for that agent id (a fault `agents` replaces it). The demo agent is
# configured like a real agent would be for the demo page: overrides allowed, every client event the page shows.
DEFAULT_AGENTS: dict[str, dict[str, Any]] = {
    "demo-agent": {"overrides_allowed": True, "client_events": list(ALL_CLIENT_EVENTS)},
}

FORMATS = ("pcm_8000", "pcm_16000", "pcm_22050", "pcm_24000", "pcm_44100", "pcm_48000", "ulaw_8000")
_VAD_FRAME_MS = 20
_CLOSE_TIMEOUT = 2.0
_SEND_TIMEOUT = 10.0


# ----------------------------------------------------------------------------------------------------------------------
# Audio: format details, mu-law, the synthetic voice


@dataclass(frozen=True, slots=True)
class _Format:
    ulaw: bool
    rate: int

    @property
    def bytes_per_second(self) -> int:
        return self.rate * (1 if self.ulaw else 2)


def _format(name: str) -> _Format:
    if name not in FORMATS:
        raise ValueError(f"unknown audio format {name!r}")
    encoding, _, rate = name.partition("_")
    return _Format(encoding == "ulaw", int(rate))


def _ulaw_decode_table() -> np.ndarray:
    codes = ~np.arange(256, dtype=np.int32) & 0xFF
    exponent = (codes >> 4) & 0x07
    magnitude = (((codes & 0x0F) << 3) + 0x84) << exponent
    return np.where(codes & 0x80, 0x84 - magnitude, magnitude - 0x84).astype(np.int16)


_ULAW_DECODE = _ulaw_decode_table()


def _ulaw_encode(samples: np.ndarray) -> bytes:
    """G.711 mu-law encoding of int16 samples (the inverse of the decode table above)."""
    values = samples.astype(np.int32)
    sign = (values < 0).astype(np.int32) << 7
    magnitude = np.minimum(np.abs(values), 32635) + 0x84
    exponent = np.clip(np.floor(np.log2(magnitude)).astype(np.int32) - 7, 0, 7)
    mantissa = (magnitude >> (exponent + 3)) & 0x0F
    codes: np.ndarray = (~(sign | (exponent << 4) | mantissa) & 0xFF).astype(np.uint8)
    return codes.tobytes()


@lru_cache(maxsize=16)
def _tone(rate: int, seconds: float) -> np.ndarray:
    """The voice's carrier without its syllable envelope: a gliding ~140 Hz fundamental with decaying harmonics
    (float, peak ~1). Cached: every reply uses a prefix of it."""
    t = np.arange(int(rate * seconds)) / rate
    pitch = 140.0 * (1.0 + 0.12 * np.sin(np.floor(t * 4.5) * 1.7)) * (1.0 + 0.01 * np.sin(2 * np.pi * 5.0 * t))
    phase = 2 * np.pi * np.cumsum(pitch) / rate
    signal: np.ndarray = sum(np.sin(k * phase) / k for k in range(1, 7)) / 1.6  # type: ignore[assignment]
    return signal


@dataclass(frozen=True, slots=True)
class _Speech:
    """A reply's synthetic speech: the PCM16 samples, and each character's start and duration (ms): every word
    (a run of non-space characters) is one voiced burst over exactly its characters' time, every space is
    silence — so the alignment sent with the audio says precisely when each word sounds."""

    samples: np.ndarray
    char_ms: float
    rate: int

    def boundary(self, char_index: int) -> int:
        return round(self.rate * char_index * self.char_ms / 1000)


def _speech(rate: int, text: str, char_ms: float) -> _Speech:
    total = _Speech(np.zeros(0, dtype=np.int16), char_ms, rate).boundary(len(text))
    tone = _tone(rate, max(0.5, total / rate + 0.1))
    samples = np.zeros(total, dtype=np.float64)
    speech = _Speech(samples, char_ms, rate)
    for word in re.finditer(r"\S+", text):
        start, end = speech.boundary(word.start()), speech.boundary(word.end())
        if end > start:
            x = (np.arange(end - start) + 0.5) / (end - start)
            samples[start:end] = tone[start:end] * np.sin(np.pi * x) ** 0.5 * 9000.0
    return _Speech(np.clip(samples, -32767, 32767).astype(np.int16), char_ms, rate)


# ----------------------------------------------------------------------------------------------------------------------
# Energy VAD (audio time, not wall time)


@dataclass(slots=True)
class _Vad:
    fmt: _Format
    threshold: float
    start_ms: int
    end_ms: int
    tentative_ms: int
    leftover: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int16))
    odd_byte: bytes = b""
    speaking: bool = False
    above_ms: int = 0
    silence_ms: int = 0
    speech_ms: int = 0
    voiced_ms: int = 0
    last_tentative_ms: int = 0

    def feed(self, chunk: bytes) -> list[tuple[str, int]]:
        """Feed raw input audio; returns ("start", 0), ("tentative", ms) and ("end", voiced_ms) events."""
        if self.fmt.ulaw:
            samples = _ULAW_DECODE[np.frombuffer(chunk, dtype=np.uint8)]
        else:
            data = self.odd_byte + chunk
            cut = len(data) & ~1
            self.odd_byte = data[cut:]
            samples = np.frombuffer(data[:cut], dtype=np.int16)
        if len(self.leftover):
            samples = np.concatenate((self.leftover, samples))
        frame = self.fmt.rate * _VAD_FRAME_MS // 1000
        whole = len(samples) // frame * frame
        self.leftover = samples[whole:].copy()
        if not whole:
            return []
        frames = samples[:whole].astype(np.float32).reshape(-1, frame)
        loud = (frames * frames).mean(axis=1) > self.threshold * self.threshold
        events: list[tuple[str, int]] = []
        for above in loud.tolist():
            if not self.speaking:
                self.above_ms = self.above_ms + _VAD_FRAME_MS if above else 0
                if self.above_ms >= self.start_ms:
                    self.speaking = True
                    self.speech_ms = self.voiced_ms = self.above_ms
                    self.silence_ms = self.last_tentative_ms = 0
                    self.above_ms = 0
                    events.append(("start", 0))
                continue
            self.speech_ms += _VAD_FRAME_MS
            if above:
                self.silence_ms = 0
                self.voiced_ms = self.speech_ms
                # Tentative transcripts only while words keep coming, like a streaming recogniser.
                if self.speech_ms - self.last_tentative_ms >= self.tentative_ms:
                    self.last_tentative_ms = self.speech_ms
                    events.append(("tentative", self.voiced_ms))
            else:
                self.silence_ms += _VAD_FRAME_MS
                if self.silence_ms >= self.end_ms:
                    self.speaking = False
                    events.append(("end", self.voiced_ms))
        return events


# ----------------------------------------------------------------------------------------------------------------------
# Frames (type last, like the real service)


def _frame(event_type: str, key: str, body: dict[str, Any]) -> str:
    return orjson.dumps({key: body, "type": event_type}).decode()


def _audio_frame(audio: bytes, event_id: int, alignment: str = "") -> str:
    return (
        '{"audio_event":{"audio_base_64":"'
        + base64.b64encode(audio).decode("ascii")
        + '","event_id":'
        + str(event_id)
        + alignment
        + '},"type":"audio"}'
    )


def _alignment(chars: str, char_ms: float, first_start_ms: float) -> str:
    """`,"alignment":{...}` for an audio frame in which `chars` start, the first `first_start_ms` after the chunk's
    start: per-character timings relative to the chunk, exactly as its audio says them (`_speech`)."""
    return ',"alignment":' + orjson.dumps({
        "chars": list(chars),
        "char_start_times_ms": [round(first_start_ms + i * char_ms) for i in range(len(chars))],
        "char_durations_ms": [round(first_start_ms + (i + 1) * char_ms) - round(first_start_ms + i * char_ms)
                              for i in range(len(chars))],
    }).decode()


_WORD = re.compile(r"\btool\b", re.IGNORECASE)
_ORDER = re.compile(r"\border", re.IGNORECASE)
_WEATHER = re.compile(r"weather", re.IGNORECASE)
_HUMAN = re.compile(r"\bhuman", re.IGNORECASE)
_CITY = re.compile(r"\bin ([A-Z][A-Za-z-]+)")
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


class _Close(Exception):
    """Close the socket with `code`/`reason`; `message`, when given, is sent first as an `error` event (the real
    service announces contract errors and max duration that way)."""

    def __init__(self, code: int, reason: str, message: str | None = None) -> None:
        super().__init__(code, reason)
        self.code = code
        self.reason = reason
        self.message = message


def _error_frame(code: int, error_type: str, message: str) -> str:
    return _frame("error", "error_event", {"code": code, "message": message, "error_type": error_type,
                                           "reason": message, "debug_message": None, "details": None})


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


class _Conversation:
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
        self.input_format = _format(faults["user_input_audio_format"])
        self.output_format = _format(faults["agent_output_audio_format"])
        self.vad = _Vad(
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
            with trio.move_on_after(_CLOSE_TIMEOUT):
                await self.send(_error_frame(1000, "max_duration_exceeded",
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
            except _Close as close:
                if close.message is not None:
                    await self.send(_error_frame(close.code, close.reason, close.message))
                self.close_with(close.code, close.reason)
                return

    @staticmethod
    def parse(raw: str | bytes | None) -> dict[str, Any]:
        try:
            message = orjson.loads(raw or b"")
        except orjson.JSONDecodeError:
            raise _Close(1008, "invalid_message") from None
        if not isinstance(message, dict):
            raise _Close(1008, "invalid_message")
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
                raise _Close(1008, "invalid_message")
            if file is not None and not (isinstance(file, dict) and file.get("type") == "file_input"
                                         and isinstance(file.get("file_id"), str)):
                raise _Close(1008, "invalid_message")
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
                raise _Close(1008, "missing_fields")
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
            raise _Close(1008, "invalid_message")

    @staticmethod
    def required(message: dict[str, Any], key: str, kind: type) -> Any:
        value = message.get(key)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise _Close(1008, "missing_fields")
        return value

    async def initiate(self, message: dict[str, Any]) -> None:
        faults = self.faults
        self.initiated = True
        override = message.get("conversation_config_override") or {}
        variables = message.get("dynamic_variables") or {}
        if not isinstance(override, dict) or not isinstance(variables, dict):
            raise _Close(1008, "invalid_message")
        self.record["initiation"] = {
            "conversation_config_override": override,
            "dynamic_variables": variables,
            "user_id": message.get("user_id"),
            "custom_llm_extra_body": message.get("custom_llm_extra_body"),
            "source_info": message.get("source_info"),
        }
        if _has_override(override) and not faults["overrides_allowed"]:
            raise _Close(1008, "override_error", "Override for field(s) "
                         f"{sorted(_override_fields(override))} is not allowed by the agent's configuration.")
        missing = [name for name in faults["required_dynamic_variables"] if name not in variables]
        if missing:
            raise _Close(1008, "missing_dynamic_variable",
                         f"Missing required dynamic variables in first message: {set(missing)}")
        if self.record["agent_id"] in faults["unknown_agent_ids"]:
            raise _Close(1008, "agent_not_found")
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
            _frame(
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
            await self.send(_frame("mcp_connection_status", "mcp_connection_status", {"integrations": [
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
            await self.send(_frame("ping", "ping_event", {"event_id": self.ping_id, "ping_ms": self.last_ping_ms}))

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
            frame = orjson.dumps(
                {"message": f"received {code} (protocol error) {message}; then sent {code}", "type": "error"}
            ).decode()
        else:
            frame = _frame(
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
        await self.send(frame)

    async def wait_in_queue(self, seconds: float, times_out: bool) -> None:
        """The agent's concurrency queue (convai-widget-core's mock): `queue_status` waiting, then admitted after
        `seconds`, or timed out and closed 3008."""
        await self.send(orjson.dumps({"type": "queue_status", "queue_status_event": {"status": "waiting"}}).decode())
        await trio.sleep(seconds)
        if times_out:
            await self.send(orjson.dumps({"type": "queue_status",
                                          "queue_status_event": {"status": "timed_out"}}).decode())
            raise _Close(3008, "too many concurrent connections")
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
        await self.send(_frame("mcp_connection_status", "mcp_connection_status", {"integrations": []}))

    # -- user input
    # ------------------------------------------------------------------------------------------------------------------

    async def handle_audio(self, encoded: Any) -> None:
        if not isinstance(encoded, str):
            raise _Close(1008, "invalid_message")
        try:
            chunk = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            raise _Close(1008, "invalid_message") from None
        now = time.monotonic()
        self.last_input = trio.current_time()
        record = self.record
        record["user_audio_chunks"] += 1
        record["user_audio_bytes"] += len(chunk)
        record["user_audio_seconds"] = record["user_audio_bytes"] / self.input_format.bytes_per_second
        if self.on_user_audio is not None:
            self.on_user_audio(self.id, chunk, now)
        if self.faults["close_on_first_user_audio"] and self.faults["close_code"] is not None:
            raise _Close(int(self.faults["close_code"]), str(self.faults["close_reason"] or ""))
        events = self.vad.feed(chunk)
        if self.enabled("vad_score"):
            score = 1.0 if self.vad.speaking else 0.0
            await self.send(_frame("vad_score", "vad_score_event", {"vad_score": score}))
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
        await self.send(_frame(event_type, key, {"user_transcript": text, "event_id": event_id}))

    async def user_said_typed(self, text: str) -> None:
        turn_id = self.next_event_id()
        await self.interrupt_reply(turn_id)
        self.turns += 1
        self.record["turns"] = self.turns
        if _WEATHER.search(text):
            city = _CITY.search(text)
            self.start_reply("", prepare=partial(self.mcp_weather, city.group(1) if city else "Paris"))
        elif _ORDER.search(text):
            number = re.search(r"\d{3,}", text)
            self.start_reply("", prepare=partial(self.server_tool, number.group(0) if number else "1234"))
        elif _HUMAN.search(text):
            self.start_reply("", prepare=self.hand_off, after=self.hand_back)
        elif _WORD.search(text):
            self.start_reply("", prepare=self.call_tool)
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
        await self.send(_frame("interruption", "interruption_event", {"event_id": new_event_id}))
        if not self.enabled("agent_response_correction"):
            return
        await self.send(
            _frame(
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
            speech = None if self.text_only else _speech(fmt.rate, reply.text, char_ms)
            reply.duration = max(len(reply.text) * char_ms / 1000.0, 1e-3)
            reply.started_at = trio.current_time()
            if faults["send_unknown_events"]:
                await self.send(
                    _frame(
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
                    await self.send(_frame("agent_chat_response_part", "text_response_part",
                                           {"text": text, "type": part_type, "event_id": reply.event_id}))
            if self.enabled("agent_response"):
                await self.send(
                    _frame(
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
                chunk = _ulaw_encode(samples) if fmt.ulaw else samples.tobytes()
                if not index:
                    times[2] = time.monotonic()
                # The characters that start in this chunk, timed from its start (a character may run on into the
                # next chunk, as a word cut by the chunk boundary does).
                last = first
                while last < len(reply.text) and speech.boundary(last) < start + len(samples):
                    last += 1
                alignment = ""
                if faults["send_alignment"] and last > first:
                    alignment = _alignment(reply.text[first:last], char_ms,
                                           first * char_ms - start * 1000.0 / fmt.rate)
                first = last
                if self.enabled("audio"):
                    await self.send(_audio_frame(chunk, reply.event_id, alignment))
                self.record["agent_audio_seconds"] += len(chunk) / fmt.bytes_per_second
            if self.enabled("context_usage"):
                await self.send(_frame("context_usage", "context_usage_event", {
                    "event_id": reply.event_id, "model": "sim-llm", "context_tokens": 400 + 40 * reply.event_id,
                    "context_limit_tokens": 128000}))
            if after is not None:
                await after(reply.event_id)
            if faults["send_unknown_events"]:
                await self.send(
                    _frame("agent_response_metadata", "agent_response_metadata_event", {"event_id": reply.event_id})
                )
            if is_goodbye:
                # The agent calls its end_call system tool: the call ends right after the last chunk is sent, not
                # once it has been heard (elevenlabs-python#457: end_call closes 1000; packages#419: the client
                # still holds the goodbye's audio when the close arrives).
                if self.enabled("agent_tool_response"):
                    await self.send(_frame("agent_tool_response", "agent_tool_response", {
                        "tool_name": "end_call", "tool_call_id": "end_call_" + secrets.token_hex(4),
                        "tool_type": "system", "is_error": False, "event_id": reply.event_id}))
                self.close_with(1000, "")
                return
            # Still "speaking" until the last chunk has had time to play: talking over it interrupts it.
            await trio.sleep_until(reply.started_at + reply.duration)
        reply.done = True
        if self.reply is reply:
            self.reply = None

    async def server_tool(self, number: str, event_id: int) -> str:
        """The agent runs its `lookup_order` webhook tool (server side): request, a short delay, response."""
        call_id = "toolu_" + secrets.token_hex(8)
        self.record["server_tool_calls"].append({"tool_call_id": call_id, "tool_name": "lookup_order"})
        if self.enabled("agent_tool_request"):
            await self.send(_frame("agent_tool_request", "agent_tool_request", {
                "tool_name": "lookup_order", "tool_call_id": call_id, "tool_type": "webhook", "event_id": event_id}))
        await trio.sleep(float(self.faults["server_tool_delay_ms"]) / 1000.0)
        if self.enabled("agent_tool_response"):
            await self.send(_frame("agent_tool_response", "agent_tool_response", {
                "tool_name": "lookup_order", "tool_call_id": call_id, "tool_type": "webhook", "is_error": False,
                "is_called": True, "event_id": event_id}))
        if self.enabled("rich_content"):
            await self.send(_frame("rich_content", "rich_content", {
                "rich_content_id": "rc_" + call_id[6:], "component": "buttons", "event_id": event_id,
                "props": {"buttons": [{"type": "message", "label": "Track it", "message": "Where is my order?"}]}}))
        return f"Your order {number} has shipped and arrives on Friday."

    async def mcp_weather(self, city: str, event_id: int) -> str:
        """The agent calls the `get_weather` tool of an MCP server that requires approval: loading, then
        awaiting_approval for `mcp_approval_timeout_s`; approved -> success, denied or no answer -> failure."""
        call_id = "mcp_" + secrets.token_hex(8)
        timeout = int(self.faults["mcp_approval_timeout_s"])
        base = {"service_id": "sim-weather", "tool_call_id": call_id, "tool_name": "get_weather",
                "tool_description": "Current weather for a city", "parameters": {"city": city}}
        call = {"tool_call_id": call_id, "tool_name": "get_weather", "parameters": {"city": city}, "outcome": None}
        self.record["mcp_tool_calls"].append(call)

        async def state(name: str, **extra: Any) -> None:
            if self.enabled("mcp_tool_call"):
                stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
                await self.send(_frame("mcp_tool_call", "mcp_tool_call",
                                       {**base, "timestamp": stamp, "state": name, **extra}))

        await state("loading")
        answered = trio.Event()
        answers: list[bool] = []
        self.approval_waiters[call_id] = (answered, answers)
        try:
            await state("awaiting_approval", approval_timeout_secs=timeout)
            with trio.move_on_after(timeout):
                await answered.wait()
            answered.set()  # from now on an answer is late
        finally:
            self.approval_waiters.pop(call_id, None)
        if answers and answers[0]:
            call["outcome"] = "approved"
            await state("success", result=[{"type": "text", "text": f"{city}: sunny, 21 °C"}])
            return f"The weather in {city} is sunny, 21 degrees."
        call["outcome"] = "denied" if answers else "timed_out"
        await state("failure", error_message="The user denied the tool call" if answers
                    else "Approval timed out")
        if answers:
            return f"All right, I won't look up the weather in {city}."
        return "I did not get your approval in time, so I did not look up the weather."

    async def hand_off(self, event_id: int) -> str:
        """A human takes over: external_agent_connected, agent_typing, then the human's reply."""
        self.record["hand_offs"] += 1
        if self.enabled("external_agent_connected"):
            await self.send(_frame("external_agent_connected", "external_agent_connected_event", {}))
        if self.enabled("agent_typing"):
            await self.send(_frame("agent_typing", "agent_typing_event", {"is_typing": True, "duration_ms": None}))
        await trio.sleep(float(self.faults["human_typing_ms"]) / 1000.0)
        return "Hi, this is Sam, a human colleague. I can take it from here."

    async def hand_back(self, event_id: int) -> None:
        if self.enabled("agent_typing"):
            await self.send(_frame("agent_typing", "agent_typing_event", {"is_typing": False, "duration_ms": None}))
        if self.enabled("external_agent_disconnected"):
            await self.send(_frame("external_agent_disconnected", "external_agent_disconnected_event", {}))

    async def call_tool(self, event_id: int) -> str:
        call_id = "call_" + secrets.token_hex(8)
        event = trio.Event()
        results: list[dict[str, Any]] = []
        self.tool_waiters[call_id] = (event, results)
        self.record["tool_calls"].append({"tool_call_id": call_id, "tool_name": "get_time"})
        try:
            if not self.enabled("client_tool_call"):
                return "The get_time tool is not enabled for this client."
            await self.send(
                _frame(
                    "client_tool_call",
                    "client_tool_call",
                    {
                        "tool_name": "get_time",
                        "tool_call_id": call_id,
                        "parameters": {"timezone": "UTC"},
                        "event_id": event_id,
                    },
                )
            )
            with trio.move_on_after(float(self.faults["tool_result_timeout_s"])):
                await event.wait()
        finally:
            del self.tool_waiters[call_id]
        if not results:
            return "The get_time tool did not answer in time."
        result = results[0]
        if result["is_error"]:
            return f"The get_time tool failed: {result['result']}"
        return f"The get_time tool returned: {result['result']}"


# ----------------------------------------------------------------------------------------------------------------------
# The app


def _new_record(
    conversation_id: str, agent_id: str, subprotocol: str | None, signed: bool, faults: dict[str, Any]
) -> dict[str, Any]:
    return {
        "id": conversation_id,
        "agent_id": agent_id,
        "subprotocol": subprotocol,
        "signed": signed,
        "opened_at": time.monotonic(),
        "metadata_at": None,
        "closed_at": None,
        "close_code": None,
        "close_reason": None,
        "closed_by": None,
        "initiation": None,
        "agent_output_audio_format": faults["agent_output_audio_format"],
        "user_input_audio_format": faults["user_input_audio_format"],
        "user_audio_chunks": 0,
        "user_audio_bytes": 0,
        "user_audio_seconds": 0.0,
        "user_messages": [],
        "contextual_updates": [],
        "user_activity": 0,
        "feedback": [],
        "tool_calls": [],
        "tool_results": [],
        "pings": 0,
        "pongs": 0,
        "last_ping_ms": None,
        "turns": 0,
        "user_transcripts": [],
        "replies": 0,
        "agent_audio_seconds": 0.0,
        "interruptions": 0,
        "repeated_initiations": 0,
        "reply_times": [],
        "query": {},
        "rich_content_ids": [],
        "context_ids": [],
        "multimodal_messages": [],
        "mcp_approvals": [],
        "mcp_tool_calls": [],
        "server_tool_calls": [],
        "hand_offs": 0,
    }


def _error(status: int, detail: Any) -> Response:
    return Response(orjson.dumps({"detail": detail}), status=status, content_type="application/json")


def _json(body: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status=status, content_type="application/json")


def create_app(*, on_user_audio: Callable[[str, bytes, float], None] | None = None,
               start_faults: dict[str, Any] | None = None) -> QuartTrio:
    """The simulator as an ASGI app. `on_user_audio(conversation_id, audio, time.monotonic())` is called for
    every user audio chunk as it arrives (base64-decoded, still in the input format); it must not block.
    `start_faults` are merged into the defaults (demo mode: `DEMO_FAULTS`); `/_sim/reset` restores them."""
    app = QuartTrio(__name__)
    app.asgi_app = KeepAliveGuard(app.asgi_app)  # type: ignore[method-assign]  # never lose a kept-alive request
    secret = secrets.token_bytes(32)
    initial_faults: dict[str, Any] = {**DEFAULT_FAULTS, **(start_faults or {})}
    faults: dict[str, Any] = dict(initial_faults)
    ledger: dict[str, Any] = {"conversations": {}, "signed_urls_issued": 0, "agent_details_requests": 0,
                              "signed_url_queries": []}

    def sign(agent_id: str, expires: int) -> str:
        mac = hmac.new(secret, f"{agent_id}:{expires}".encode(), hashlib.sha256).hexdigest()[:40]
        return f"{expires}.{mac}"

    def signature_valid(signature: str, agent_id: str) -> bool:
        expires, _, _ = signature.partition(".")
        if not expires.isdigit() or int(expires) < time.time():
            return False
        return hmac.compare_digest(signature, sign(agent_id, int(expires)))

    def api_key_error() -> Response | None:
        key = request.headers.get("xi-api-key")
        if not key:
            return _error(401, {"status": "needs_authorization", "message": "Missing xi-api-key header"})
        if key in faults["invalid_api_keys"]:
            return _error(401, {"status": "invalid_api_key", "message": "Invalid API key"})
        return None

    @app.get("/v1/convai/conversation/get-signed-url")
    async def get_signed_url() -> Response:
        if faults["signed_url_latency_ms"]:
            await trio.sleep(faults["signed_url_latency_ms"] / 1000.0)
        agent_id = request.args.get("agent_id")
        if not agent_id:
            return _error(
                422, [{"type": "missing", "loc": ["query", "agent_id"], "msg": "Field required", "input": None}]
            )
        refused = api_key_error()
        if refused is not None:
            return refused
        if faults["signed_url_status"] is not None:
            status = int(faults["signed_url_status"])
            return _error(status, {"status": "simulated_failure", "message": f"Simulated HTTP {status}"})
        if agent_id in faults["unknown_agent_ids"]:
            return _error(404, {"status": "agent_not_found", "message": "Agent not found"})
        scheme = "wss" if request.scheme in ("https", "wss") else "ws"
        expires = int(time.time()) + int(faults["signature_ttl_s"])
        ledger["signed_urls_issued"] += 1
        ledger["signed_url_queries"].append(dict(request.args))
        url = (
            f"{scheme}://{request.host}/v1/convai/conversation?agent_id={quote(agent_id, safe='')}"
            f"&conversation_signature={sign(agent_id, expires)}"
        )
        return _json({"signed_url": url})

    @app.get("/v1/convai/agents/<agent_id>")
    async def agent_details(agent_id: str) -> Response:
        ledger["agent_details_requests"] += 1
        refused = api_key_error()
        if refused is not None:
            return refused
        if faults["agent_details_status"] is not None:
            status = int(faults["agent_details_status"])
            return _error(status, {"status": "simulated_failure", "message": f"Simulated HTTP {status}"})
        if agent_id in faults["unknown_agent_ids"]:
            return _error(404, {"status": "agent_not_found", "message": "Agent not found"})
        agent = agent_faults(agent_id)
        return _json(
            {
                "agent_id": agent_id,
                "name": "Simulated agent",
                "conversation_config": {
                    "asr": {"user_input_audio_format": faults["user_input_audio_format"]},
                    "tts": {"agent_output_audio_format": faults["agent_output_audio_format"]},
                    "agent": {"first_message": faults["first_message"] or "", "language": "en"},
                    "conversation": {
                        "max_duration_seconds": faults["max_duration_s"],
                        "client_events": list(agent["client_events"] or DEFAULT_CLIENT_EVENTS),
                    },
                },
                "platform_settings": {
                    "auth": {"enable_auth": bool(faults["require_signed_url"])},
                    "overrides": {
                        "enable_conversation_initiation_client_data_from_webhook": False,
                        "conversation_config_override": {
                            "agent": {"first_message": bool(agent["overrides_allowed"]),
                                      "language": bool(agent["overrides_allowed"]),
                                      "prompt": {"prompt": bool(agent["overrides_allowed"])}},
                            "tts": {"voice_id": bool(agent["overrides_allowed"])},
                        },
                    },
                },
            }
        )

    def agent_faults(agent_id: str) -> dict[str, Any]:
        """The faults as this agent sees them: the global ones, then its own configuration (`agents`)."""
        agents = DEFAULT_AGENTS if faults["agents"] is None else faults["agents"]
        return {**faults, **agents.get(agent_id, {})}

    @app.websocket("/v1/convai/conversation")
    async def conversation_socket() -> None:
        agent_id = websocket.args.get("agent_id", "")
        snapshot = agent_faults(agent_id)
        signature = websocket.args.get("conversation_signature") or websocket.args.get("token")
        if signature is not None and not signature_valid(signature, agent_id):
            abort(403)
        if signature is None and snapshot["require_signed_url"]:
            abort(403)
        if not agent_id:
            abort(400)
        if snapshot["handshake_latency_ms"]:
            await trio.sleep(snapshot["handshake_latency_ms"] / 1000.0)
        if snapshot["refuse_handshake_status"] is not None:
            abort(int(snapshot["refuse_handshake_status"]))
        subprotocol = "convai" if "convai" in websocket.requested_subprotocols else None
        await websocket.accept(subprotocol=subprotocol)
        conversation_id = "conv_" + secrets.token_hex(12)
        record = _new_record(conversation_id, agent_id, subprotocol, signature is not None, snapshot)
        record["query"] = {key: websocket.args.get(key) for key in ("source", "version", "branch_id", "environment")
                           if key in websocket.args}
        ledger["conversations"][conversation_id] = record
        # The real object, not the context-local proxy: it is used from the conversation's own tasks.
        socket = websocket._get_current_object()  # type: ignore[attr-defined]
        conversation = _Conversation(socket, snapshot, record, on_user_audio)
        try:
            await conversation.run()
        finally:
            record["closed_at"] = time.monotonic()
            if conversation.close is None:
                record["closed_by"] = "client"
            else:
                record["closed_by"] = "agent"
                record["close_code"], record["close_reason"] = conversation.close
        if conversation.close is not None:
            with trio.move_on_after(_CLOSE_TIMEOUT, shield=True):
                await websocket.close(*conversation.close)

    @app.get("/_sim/ledger")
    async def get_ledger() -> Response:
        conversations = list(ledger["conversations"].values())
        totals = {
            "conversations": len(conversations),
            "open": sum(1 for c in conversations if c["closed_at"] is None),
            "user_audio_chunks": sum(c["user_audio_chunks"] for c in conversations),
            "user_audio_bytes": sum(c["user_audio_bytes"] for c in conversations),
            "user_audio_seconds": sum(c["user_audio_seconds"] for c in conversations),
            "user_messages": sum(len(c["user_messages"]) for c in conversations),
            "turns": sum(c["turns"] for c in conversations),
            "replies": sum(c["replies"] for c in conversations),
            "interruptions": sum(c["interruptions"] for c in conversations),
            "tool_results": sum(len(c["tool_results"]) for c in conversations),
            "pongs": sum(c["pongs"] for c in conversations),
        }
        return _json(
            {
                "conversations": conversations,
                "totals": totals,
                "signed_urls_issued": ledger["signed_urls_issued"],
                "signed_url_queries": ledger["signed_url_queries"],
                "agent_details_requests": ledger["agent_details_requests"],
            }
        )

    @app.post("/_sim/faults")
    async def set_faults() -> Response:
        body = await request.get_json(force=True, silent=True)
        if not isinstance(body, dict):
            return _json({"error": "expected a JSON object"}, 400)
        unknown = sorted(set(body) - set(DEFAULT_FAULTS))
        if unknown:
            return _json({"error": f"unknown fault keys {unknown}", "known": sorted(DEFAULT_FAULTS)}, 400)
        for key in ("agent_output_audio_format", "user_input_audio_format"):
            if key in body and body[key] not in FORMATS:
                return _json({"error": f"{key} must be one of {list(FORMATS)}"}, 400)
        if body.get("reply_pacing", "burst") not in ("burst", "realtime"):
            return _json({"error": "reply_pacing must be 'burst' or 'realtime'"}, 400)
        if body.get("agents") is not None and not isinstance(body["agents"], dict):
            return _json({"error": "agents must be an object: agent id -> its fault overrides"}, 400)
        faults.update(body)
        return _json(faults)

    @app.post("/_sim/reset")
    async def reset() -> Response:
        faults.clear()
        faults.update(initial_faults)
        ledger["conversations"] = {}
        ledger["signed_url_queries"] = []
        ledger["signed_urls_issued"] = 0
        ledger["agent_details_requests"] = 0
        return _json({"ok": True})

    return app


__all__ = ["DEFAULT_FAULTS", "FORMATS", "create_app"]
