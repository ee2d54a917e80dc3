"""The agent's server events, as frozen dataclasses: what `parse.parse_server_event` returns.

Adding an agent event: its dataclass here, a member of `ServerEvent`, and a parser in `parse.py` decorated with
`@parses("wire_type")` (tests/protocol/test_elevenlabs.py fails when a member of `ServerEvent` has no parser). This
module holds data only: it must never do I/O or import trio, httpx2 or websockets.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final


@dataclass(frozen=True, slots=True)
class ConversationMetadata:
    """`conversation_initiation_metadata`: always the first server message. The formats are the agent's own
    configuration and cannot be overridden: read them every time."""

    conversation_id: str
    agent_output_audio_format: str
    user_input_audio_format: str


@dataclass(frozen=True, slots=True)
class Alignment:
    """An audio chunk's per-character timings (asyncapi `AudioAlignmentData`): `chars[i]` starts
    `char_start_times_ms[i]` ms after the chunk's start and lasts `char_durations_ms[i]` ms. The three tuples have
    the same length (a ragged alignment is cut to the shortest; an unusable one is dropped, never an error)."""

    chars: tuple[str, ...]
    char_start_times_ms: tuple[int, ...]
    char_durations_ms: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class AgentAudio:
    """One chunk of the agent's voice, already base64-decoded, in `agent_output_audio_format`. `event_id` is
    the reply's turn id: drop chunks whose `event_id` is lower than the last `Interruption.event_id`. `alignment`
    is the chunk's per-character timing when the agent sent a usable one (captions), else None."""

    audio: bytes
    event_id: int
    alignment: Alignment | None = None


@dataclass(frozen=True, slots=True)
class UserTranscript:
    """What the agent heard. `final` is False for `tentative_user_transcript` (updates while the user
    speaks)."""

    text: str
    event_id: int
    final: bool


@dataclass(frozen=True, slots=True)
class AgentResponse:
    """The full text of a reply; arrives together with the reply's first audio chunk."""

    text: str
    event_id: int


@dataclass(frozen=True, slots=True)
class AgentResponseCorrection:
    """After an interruption: the text of reply `event_id` that was actually spoken (`corrected`)."""

    original: str
    corrected: str
    event_id: int


@dataclass(frozen=True, slots=True)
class Interruption:
    """The user talked over the agent: audio with an `event_id` lower than this one is stale."""

    event_id: int


@dataclass(frozen=True, slots=True)
class Ping:
    """Answer at once with `build_pong(event_id)`. `ping_ms` is the agent's round-trip estimate (None at
    first)."""

    event_id: int
    ping_ms: float | None


@dataclass(frozen=True, slots=True)
class ClientToolCall:
    """The agent asks the client to run a tool; answer with `build_client_tool_result(tool_call_id, ...)`."""

    tool_name: str
    tool_call_id: str
    parameters: dict[str, Any]
    event_id: int | None


@dataclass(frozen=True, slots=True)
class AgentErrorEvent:
    """An `error` event, from either the schema form (`error_event: {code, message, error_type, ...}`) or the
    flat form seen in production (`{"type": "error", "message": "received 1002 (protocol error) ..."}`; the
    code is then read from the "received NNNN" prefix when present)."""

    code: int | None
    message: str
    error_type: str | None


@dataclass(frozen=True, slots=True)
class VadScore:
    """Probability that the user is speaking, 0..1."""

    score: float


@dataclass(frozen=True, slots=True)
class AgentChatResponsePart:
    """A streamed piece of reply text; `part_type` is "start", "delta" or "stop" (unknown values kept as
    sent)."""

    text: str
    part_type: str
    event_id: int | None


@dataclass(frozen=True, slots=True)
class AgentToolRequest:
    """`agent_tool_request`: the agent started a tool (server/webhook, system such as `end_call`, mcp, client).
    `tool_type` and `event_id` are None when absent."""

    tool_name: str
    tool_call_id: str
    tool_type: str | None
    event_id: int | None


@dataclass(frozen=True, slots=True)
class AgentToolResponse:
    """`agent_tool_response`: a tool finished (`is_error` when it failed)."""

    tool_name: str
    tool_call_id: str
    tool_type: str | None
    is_error: bool
    event_id: int | None


MCP_STATES: Final = ("loading", "awaiting_approval", "success", "failure")


@dataclass(frozen=True, slots=True)
class McpToolCall:
    """`mcp_tool_call` in one of its states ("loading", "awaiting_approval", "success", "failure"; an unknown state
    is kept as sent). `approval_timeout_secs` only for awaiting_approval (asyncapi default 300), `error_message` only
    for failure."""

    tool_call_id: str
    service_id: str
    tool_name: str
    tool_description: str | None
    parameters: dict[str, Any]
    state: str
    approval_timeout_secs: int | None
    error_message: str | None


@dataclass(frozen=True, slots=True)
class McpConnectionStatus:
    """`mcp_connection_status`: the agent's MCP integrations (each an object, passed on as sent)."""

    integrations: tuple[dict[str, Any], ...]


@dataclass(frozen=True, slots=True)
class QueueStatus:
    """`queue_status` (the agent's concurrency queue, after the metadata): "waiting", "admitted" or "timed_out"
    (a close 3008 follows). Not in the asyncapi yet: convai-widget-core mocks/browser.ts, contexts/conversation.tsx."""

    status: str


@dataclass(frozen=True, slots=True)
class ExternalAgent:
    """`external_agent_connected` (True) / `external_agent_disconnected` (False): a human took over / left."""

    connected: bool


@dataclass(frozen=True, slots=True)
class AgentTyping:
    """`agent_typing`: a (human) agent is typing; `duration_ms` (optional) clears it automatically."""

    typing: bool
    duration_ms: int | None


@dataclass(frozen=True, slots=True)
class ContextUsage:
    """`context_usage`: the turn's LLM context size (`event_id`, `model`, `context_tokens`, `context_limit_tokens`);
    `fields` holds those that were present and well typed."""

    fields: dict[str, Any]


@dataclass(frozen=True, slots=True)
class RichContent:
    """`rich_content`: a component for the page to show (`rich_content_id`, `component`, `props`, `event_id`);
    `fields` holds those that were present and well typed, as the agent sent them."""

    fields: dict[str, Any]


@dataclass(frozen=True, slots=True)
class UnknownEvent:
    """Any other event type (there are many, and new ones appear often). Never an error: ignore it."""

    type: str


@dataclass(frozen=True, slots=True)
class MalformedEvent:
    """A frame that could not be used: not JSON, not an object, no `type`, or a known type whose field the event
    cannot do without (an audio chunk without a turn id, a ping without an id, ...). `type` is the frame's type when
    it had one. Never fatal: log it (rate-limited) and skip it, as the official clients do."""

    type: str | None
    problem: str


ServerEvent = (
    ConversationMetadata
    | AgentAudio
    | UserTranscript
    | AgentResponse
    | AgentResponseCorrection
    | Interruption
    | Ping
    | ClientToolCall
    | AgentErrorEvent
    | VadScore
    | AgentChatResponsePart
    | AgentToolRequest
    | AgentToolResponse
    | McpToolCall
    | McpConnectionStatus
    | QueueStatus
    | ExternalAgent
    | AgentTyping
    | ContextUsage
    | RichContent
    | UnknownEvent
    | MalformedEvent
)
