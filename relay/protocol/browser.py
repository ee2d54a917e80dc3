"""Our browser protocol, sans-io: client frame -> typed event (or a clear ProtocolError), typed event -> server frame.

The wire format is documented in docs/protocol.md; this module is its single implementation on the relay side. It
must never do I/O, import trio (or a relay module above `relay.protocol`), or echo a secret. Binary client frames
are audio and are not parsed at all (the hot path); text frames are validated with pydantic so every bad frame gets
a precise message.
"""

from __future__ import annotations

import binascii
from dataclasses import dataclass
from typing import Annotated, Any, Final, Literal, get_args

import orjson
import pybase64
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    TypeAdapter,
    ValidationError,
)

from relay._util import dumps as _dump
from relay.protocol.client_metrics import ClientMetrics as ClientMetrics  # re-exported: part of ClientEvent
from relay.protocol.client_metrics import DroppedClientMetrics as DroppedClientMetrics
from relay.protocol.client_metrics import read_report
from relay.protocol.vocab import AvatarUnavailableReason, EndReason, ErrorCode

# ----------------------------------------------------------------------------------------------------------------------
# Client -> relay


class ProtocolError(Exception):
    """A client frame that breaks the protocol. The message is safe to send back to that client."""


class _Frame(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


DynamicValue = StrictStr | StrictInt | float | StrictBool



def _valid_traceparent(value: str) -> str:
    """A W3C Trace Context `traceparent` of version 00, exactly as the specification writes it: lowercase hex, a
    trace id and a parent id that are not all zeros (https://www.w3.org/TR/trace-context/#traceparent-header).
    Raises ValueError (a safe message: never the value) otherwise."""
    parts = value.split("-")
    if (len(value) != 55 or len(parts) != 4 or parts[0] != "00" or [len(p) for p in parts] != [2, 32, 16, 2]
            or not all(c in "0123456789abcdef" for c in value.replace("-", ""))):
        raise ValueError("traceparent must be a W3C traceparent: 00-<32 hex>-<16 hex>-<2 hex>, lowercase")
    if parts[1] == "0" * 32 or parts[2] == "0" * 16:
        raise ValueError("traceparent has an all-zero trace id or parent id")
    return value


Traceparent = Annotated[StrictStr, Field(max_length=55), AfterValidator(_valid_traceparent)]


class Start(_Frame):
    type: Literal["start"]
    dynamic_variables: dict[Annotated[str, Field(max_length=128)], DynamicValue] = Field(default_factory=dict,
                                                                                         max_length=128)
    overrides: dict[str, Any] = Field(default_factory=dict)
    custom_llm_extra_body: dict[str, Any] | None = None
    user_id: Annotated[StrictStr, Field(max_length=256)] | None = None
    token: StrictStr | None = None
    # The website's trace (W3C `traceparent`): the conversation's trace becomes its child (relay.ops.tracing).
    traceparent: Traceparent | None = None


class Resume(_Frame):
    """The first frame of a connection that takes a held conversation over (not a `ClientEvent`: it never reaches a
    conversation's pumps)."""

    type: Literal["resume"]
    resume_token: Annotated[StrictStr, Field(min_length=1, max_length=512)]
    last_seq: Annotated[StrictInt, Field(ge=0)]


def parse_resume(frame: str | bytes | None) -> Resume | None:
    """The connection's first frame as a `resume`, or None when it is something else (a `start`, ...). Raises
    ProtocolError for a `resume` that is malformed."""
    if not isinstance(frame, str) or '"resume"' not in frame:
        return None
    try:
        raw = orjson.loads(frame)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(raw, dict) or raw.get("type") != "resume":
        return None
    try:
        return Resume.model_validate(raw)
    except ValidationError as exc:
        raise ProtocolError(f"invalid 'resume' message: {_describe(exc)}") from None


class AudioText(_Frame):
    type: Literal["audio"]
    audio: StrictStr


_Id = Annotated[StrictStr, Field(min_length=1, max_length=256)]


class Text(_Frame):
    type: Literal["text"]
    text: Annotated[StrictStr, Field(min_length=1)]
    rich_content_id: _Id | None = None


class Context(_Frame):
    type: Literal["context"]
    text: Annotated[StrictStr, Field(min_length=1)]
    context_id: _Id | None = None


class Multimodal(_Frame):
    type: Literal["multimodal"]
    text: Annotated[StrictStr, Field(min_length=1)]


class McpApproval(_Frame):
    type: Literal["mcp_approval"]
    tool_call_id: _Id
    approved: StrictBool


class Activity(_Frame):
    type: Literal["activity"]


class Interrupt(_Frame):
    type: Literal["interrupt"]


class ToolResult(_Frame):
    type: Literal["tool_result"]
    tool_call_id: Annotated[StrictStr, Field(min_length=1)]
    result: Any = ""
    is_error: StrictBool = False


class Feedback(_Frame):
    type: Literal["feedback"]
    score: Literal["like", "dislike"] | None  # null clears the rating (required: a missing score is an error)
    event_id: StrictInt


class Stop(_Frame):
    type: Literal["stop"]


class Ack(_Frame):
    """The page has every numbered message up to `seq` (docs/protocol.md "Resuming"): the relay need not keep them."""

    type: Literal["ack"]
    seq: Annotated[StrictInt, Field(ge=0)]


@dataclass(frozen=True, slots=True)
class Audio:
    """PCM16 LE mono at the announced input rate (from a binary frame or a base64 `audio` message)."""

    pcm: bytes


# Adding a client message: its frame class above, a member of `TextFrame` (what arrives) and of `ClientEvent` (what
# `parse_text_frame` returns; tests/protocol/test_browser.py fails when the two disagree). The known types follow.
# `client_metrics` (relay.protocol.client_metrics) is the one message a bad copy of which is not a protocol error: it
# is read as `DroppedClientMetrics` (the conversation logs and counts it) instead.
TextFrame = (Start | AudioText | Text | Context | Multimodal | McpApproval | Activity | Interrupt | ToolResult
             | Feedback | Stop | Ack | ClientMetrics)

ClientEvent = (Start | Audio | Text | Context | Multimodal | McpApproval | Activity | Interrupt | ToolResult | Feedback
               | Stop | Ack | ClientMetrics | DroppedClientMetrics)

_text_frame_adapter: TypeAdapter[Any] = TypeAdapter(Annotated[TextFrame, Field(discriminator="type")])
KNOWN_TYPES: Final[tuple[str, ...]] = tuple(get_args(frame.model_fields["type"].annotation)[0]
                                            for frame in get_args(TextFrame))


def _describe(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors(include_url=False, include_input=False)[:3]:
        loc = ".".join(str(p) for p in err["loc"][1:]) or "frame"
        parts.append(f"{loc}: {err['msg']}")
    return "; ".join(parts)


MAX_DEPTH: Final = 32  # JSON nesting of a client frame (overrides are a few levels deep)


def nested_deeper_than(value: Any, limit: int) -> bool:
    """Whether a parsed JSON value nests objects or arrays more than `limit` levels deep (walked without recursion,
    so no depth can exhaust the stack)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is None:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return False


def parse_text_frame(text: str) -> ClientEvent:
    """Parse one client text frame. Raises ProtocolError naming what is wrong."""
    try:
        raw = orjson.loads(text)
    except orjson.JSONDecodeError:
        raise ProtocolError("text frames must be JSON objects") from None
    if not isinstance(raw, dict):
        raise ProtocolError("text frames must be JSON objects")
    if raw.get("type") == "client_metrics":  # measurements: a bad one is dropped, never the conversation's end
        return read_report(raw, len(text))
    if nested_deeper_than(raw, MAX_DEPTH):
        raise ProtocolError(f"JSON nested more than {MAX_DEPTH} levels deep")
    kind = raw.get("type")
    if not isinstance(kind, str):
        raise ProtocolError("message has no string 'type'")
    if kind not in KNOWN_TYPES:
        raise ProtocolError(f"unknown message type {kind[:40]!r}")
    try:
        frame = _text_frame_adapter.validate_python(raw)
    except ValidationError as exc:
        raise ProtocolError(f"invalid {kind!r} message: {_describe(exc)}") from None
    if isinstance(frame, AudioText):
        try:
            pcm = pybase64.b64decode(frame.audio, validate=True)
        except (binascii.Error, ValueError):
            raise ProtocolError("'audio' must be base64") from None
        return check_audio(pcm)
    return frame  # type: ignore[no-any-return]


def check_audio(pcm: bytes) -> Audio:
    """Wrap a binary frame as audio; PCM16 frames have an even length."""
    if len(pcm) % 2:
        raise ProtocolError("audio frames must be PCM16: an even number of bytes")
    return Audio(pcm)


def parse_allowed_paths(setting: str) -> frozenset[str]:
    """RELAY_CLIENT_OVERRIDES -> the dotted paths a client may override ("*" = any; empty = none)."""
    return frozenset(part.strip() for part in setting.split(",") if part.strip())


def override_paths(overrides: dict[str, Any], prefix: str = "") -> list[str]:
    """The dotted paths of the leaves of `overrides` (`{"agent": {"prompt": {"prompt": "x"}}}` ->
    `["agent.prompt.prompt"]`); an empty object is a leaf too (it still reaches the agent)."""
    paths: list[str] = []
    for key, value in overrides.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            paths.extend(override_paths(value, path + "."))
        else:
            paths.append(path)
    return paths


def refused_override(overrides: dict[str, Any], allowed: frozenset[str]) -> str | None:
    """The first override path of `overrides` the operator does not allow, or None. A path is allowed when it, or
    one of its parents, is in `allowed` (`agent` allows `agent.prompt.prompt`), or `allowed` holds "*"."""
    if "*" in allowed:
        return None
    for path in override_paths(overrides):
        parts = path.split(".")
        if not any(".".join(parts[:n]) in allowed for n in range(1, len(parts) + 1)):
            return path
    return None


def tool_result_text(result: Any) -> str:
    """ElevenLabs wants the tool result as a string: strings pass, anything else is sent as JSON."""
    return result if isinstance(result, str) else orjson.dumps(result).decode()


# ----------------------------------------------------------------------------------------------------------------------
# Relay -> client. Each builder returns the text frame to send.

ERROR_CODES: Final[tuple[ErrorCode, ...]] = get_args(ErrorCode)

# Close code that follows an error with that code (docs/protocol.md, "Ending").
CLOSE_CODE_FOR_ERROR: Final[dict[ErrorCode, int]] = {
    "protocol_error": 1008,
    "unauthorized": 1008,
    "capacity": 1013,
    "upstream_unavailable": 1013,
    "agent_error": 1011,
    "agent_refused": 1008,  # the agent's configuration refuses this start (overrides, dynamic variables)
    "agent_busy": 1013,  # the agent's queue timed out (ElevenLabs close 3008): try again later
    "timeout": 1000,
    "shutdown": 1001,
    "internal": 1011,
    "resume_failed": 1008,  # a `resume` that cannot be honoured (its `reason` says why)
}


@dataclass(frozen=True, slots=True)
class AvatarInfo:
    """What the browser needs to show the avatar; sent as `ready.avatar`. Never holds a server-side secret.
    (Defined with the frame it fills; `relay.avatars` re-exports it as part of the provider interface.)"""

    provider: str
    session_id: str | None
    livekit_url: str | None
    access_token: str | None
    simulated: bool
    # The session's own limit in seconds when the provider said it (LiveAvatar's start answer): the relay rotates to a
    # fresh session before it. Server-side only: not sent (`_avatar` names what the browser gets).
    session_seconds: float | None = None


def _avatar(avatar: AvatarInfo) -> dict[str, Any]:
    return {"provider": avatar.provider, "session_id": avatar.session_id, "livekit_url": avatar.livekit_url,
            "access_token": avatar.access_token, "simulated": avatar.simulated}


def ready(*, conversation_id: str, avatar: AvatarInfo | None, input_sample_rate: int,
          output_sample_rate: int) -> str:
    return _dump({
        "type": "ready",
        "conversation_id": conversation_id,
        "avatar": None if avatar is None else _avatar(avatar),
        "input_audio": {"encoding": "pcm_s16le", "sample_rate": input_sample_rate},
        "output_audio": {"encoding": "pcm_s16le", "sample_rate": output_sample_rate},
    })


def user_transcript(text: str, event_id: int, final: bool) -> str:
    return _dump({"type": "user_transcript", "text": text, "event_id": event_id, "final": final})


def agent_response(text: str, event_id: int) -> str:
    return _dump({"type": "agent_response", "text": text, "event_id": event_id})


def agent_response_correction(text: str, original: str, event_id: int) -> str:
    return _dump({"type": "agent_response_correction", "text": text, "original": original, "event_id": event_id})


def interruption(event_id: int) -> str:
    return _dump({"type": "interruption", "event_id": event_id})


def tool_call(tool_call_id: str, tool_name: str, parameters: dict[str, Any]) -> str:
    return _dump({"type": "tool_call", "tool_call_id": tool_call_id, "tool_name": tool_name,
                  "parameters": parameters})


def avatar_speaking(text: str | None, duration_ms: int | None, event_id: int | None = None) -> str:
    return _dump({"type": "avatar_speaking", "text": text, "duration_ms": duration_ms, "event_id": event_id})


def avatar_state(speaking: bool, event_id: int | None = None) -> str:
    return _dump({"type": "avatar_state", "speaking": speaking, "event_id": event_id})


def agent_response_part(part: str, text: str, event_id: int | None) -> str:
    """A streamed piece of reply `event_id` ("start", "delta", "stop"; text "" on start/stop)."""
    return _dump({"type": "agent_response_part", "event_id": event_id, "part": part, "text": text})


def tool_status(tool_call_id: str, tool_name: str, tool_type: str | None, state: str) -> str:
    """A server-side tool of the agent: "running", "done" or "failed"."""
    return _dump({"type": "tool_status", "tool_call_id": tool_call_id, "tool_name": tool_name,
                  "tool_type": tool_type, "state": state})


def mcp_tool_call(*, tool_call_id: str, service_id: str, tool_name: str, tool_description: str | None,
                  parameters: dict[str, Any], state: str, approval_timeout_secs: int | None,
                  error_message: str | None) -> str:
    return _dump({"type": "mcp_tool_call", "tool_call_id": tool_call_id, "service_id": service_id,
                  "tool_name": tool_name, "tool_description": tool_description, "parameters": parameters,
                  "state": state, "approval_timeout_secs": approval_timeout_secs, "error_message": error_message})


def mcp_connection_status(integrations: list[dict[str, Any]]) -> str:
    return _dump({"type": "mcp_connection_status", "integrations": integrations})


def queue_status(status: str) -> str:
    return _dump({"type": "queue_status", "status": status})


def guardrail_triggered() -> str:
    """One of the agent's guardrails fired (ElevenLabs `guardrail_triggered`)."""
    return _dump({"type": "guardrail_triggered"})


def human_agent(connected: bool) -> str:
    return _dump({"type": "human_agent", "connected": connected})


def agent_typing(typing: bool) -> str:
    return _dump({"type": "agent_typing", "typing": typing})


def vad_score(score: float) -> str:
    return _dump({"type": "vad_score", "score": min(1.0, max(0.0, score))})


def context_usage(fields: dict[str, Any]) -> str:
    """The agent's `context_usage` fields (only the documented ones: relay.protocol.elevenlabs keeps no other)."""
    return _dump({**fields, "type": "context_usage"})


def rich_content(fields: dict[str, Any]) -> str:
    """The agent's `rich_content` fields (only the documented ones), as the agent sent them."""
    return _dump({**fields, "type": "rich_content"})


# ----------------------------------------------------------------------------------------------------------------------
# Captions: the agent's per-character alignment -> words with turn-relative times


@dataclass(frozen=True, slots=True)
class CaptionWord:
    """A word of a chunk: `start_ms`/`end_ms` from the start of its turn's speech; `continues` when it is the rest
    of the previous chunk's last word (cut by the chunk boundary)."""

    text: str
    start_ms: int
    end_ms: int
    continues: bool


CAPTION_TURNS_KEPT: Final = 8  # turns whose offset is remembered (older ones are forgotten)


class CaptionAligner:
    """Turns each agent audio chunk's alignment (chars + start times + durations, relative to the chunk) into
    words timed from the start of the turn's speech, sans-I/O. Feed it every chunk of every turn in order,
    with or without an alignment (`chunk`): the offset of turn N is the duration of N's audio already fed."""

    def __init__(self) -> None:
        self._offset_ms: dict[int, float] = {}
        self._mid_word: dict[int, bool] = {}  # the turn's last chunk ended inside a word

    def chunk(self, event_id: int, chars: tuple[str, ...] | None, starts: tuple[int, ...] | None,
              durations: tuple[int, ...] | None, audio_ms: float) -> tuple[int, list[CaptionWord]] | None:
        """Account for one chunk of turn `event_id` lasting `audio_ms`; returns (offset_ms, words) when it had an
        alignment, else None."""
        offset = self._offset_ms.get(event_id)
        if offset is None:
            offset = 0.0
            self._offset_ms[event_id] = offset
            if len(self._offset_ms) > CAPTION_TURNS_KEPT:
                oldest = min(self._offset_ms)
                del self._offset_ms[oldest]
                self._mid_word.pop(oldest, None)
        self._offset_ms[event_id] = offset + max(0.0, audio_ms)
        if not chars or starts is None or durations is None:
            self._mid_word[event_id] = False
            return None
        words: list[CaptionWord] = []
        text, start, end = "", 0.0, 0.0
        first = True
        continues = False
        for char, char_start, char_duration in zip(chars, starts, durations, strict=False):
            if char.isspace():
                if text:
                    words.append(CaptionWord(text, round(offset + start), round(offset + end), continues))
                    text, continues = "", False
                first = False
                continue
            if not text:
                start = char_start
                continues = first and self._mid_word.get(event_id, False)
            text += char
            end = char_start + char_duration
            first = False
        if text:
            words.append(CaptionWord(text, round(offset + start), round(offset + end), continues))
        self._mid_word[event_id] = bool(chars) and not chars[-1].isspace()
        return round(offset), words


def agent_alignment(event_id: int, offset_ms: int, words: list[CaptionWord]) -> str:
    """The caption timing of the agent audio chunk sent right after it."""
    return _dump({"type": "agent_alignment", "event_id": event_id, "offset_ms": offset_ms,
                  "words": [{"text": w.text, "start_ms": w.start_ms, "end_ms": w.end_ms, "continues": w.continues}
                            for w in words]})


def avatar_unavailable(reason: AvatarUnavailableReason, message: str) -> str:
    return _dump({"type": "avatar_unavailable", "reason": reason, "message": message})


def avatar_changed(avatar: AvatarInfo, reason: str) -> str:
    """The conversation's avatar was replaced (the previous one died: `reason`): `avatar` has the shape of
    `ready.avatar`; the page leaves the previous room and joins this one."""
    return _dump({"type": "avatar_changed", "avatar": _avatar(avatar), "reason": reason})


def error(code: ErrorCode, message: str, **extra: Any) -> str:
    return _dump({"type": "error", "code": code, "message": message, **extra})


def resumed(*, conversation_id: str, resume_token: str, seq: int) -> str:
    """The answer to a `resume`: the new token, and `seq`, the newest message number so far (the replay that
    follows runs from the browser's `last_seq` + 1 to it)."""
    return _dump({"type": "resumed", "conversation_id": conversation_id, "resume_token": resume_token, "seq": seq})


def ended(reason: EndReason) -> str:
    return _dump({"type": "ended", "reason": reason})
