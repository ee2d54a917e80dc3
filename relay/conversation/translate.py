"""The browser <-> agent translation, as pure functions (no trio, no sockets, no clock: `now` comes from the caller).

`client_step` says what one parsed browser message means for the agent: a message to send it (`ToAgent`), the
avatar's speech to cut (`InterruptSpeech`), an MCP approval answer nobody awaits (`StaleApproval`), or the end of
the conversation (`EndConversation`). `browser_frame` says which frame, if any, the browser gets for one agent event.
The pumps (`relay.conversation.pumps`) do the I/O around them. Adding a browser message or an agent event the page
should see is one branch here (and its wire functions in `relay.protocol`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from relay.conversation.gates import McpApprovals
from relay.protocol import browser as bp
from relay.protocol import elevenlabs as el


@dataclass(frozen=True, slots=True)
class ToAgent:
    """Send `message` to the agent; `user_text` is a typed user message (for the transcript), else None."""

    message: str
    user_text: str | None = None


@dataclass(frozen=True, slots=True)
class InterruptSpeech:
    """The user cut the avatar off: stop its speech."""


@dataclass(frozen=True, slots=True)
class StaleApproval:
    """An answer to an MCP tool call that is not awaiting approval (answered, timed out or unknown): dropped."""

    tool_call_id: str


@dataclass(frozen=True, slots=True)
class EndConversation:
    """`client_stop` (the browser said `stop`), or a `protocol_error` with its message."""

    reason: Literal["client_stop", "protocol_error"]
    message: str = ""


@dataclass(frozen=True, slots=True)
class ReportClientMetrics:
    """The page's measurements (`client_metrics`), or why they are dropped: for the conversation's hook, not the
    agent."""

    report: bp.ClientMetrics | bp.DroppedClientMetrics


@dataclass(frozen=True, slots=True)
class Acknowledge:
    """The page has every numbered message up to `seq`: the replay buffer may forget them."""

    seq: int


ClientStep = ToAgent | InterruptSpeech | StaleApproval | EndConversation | ReportClientMetrics | Acknowledge


def client_step(event: bp.ClientEvent, build_audio: Callable[[bytes], str], approvals: McpApprovals,
                now: float) -> ClientStep:
    """What browser message `event` asks of the agent. `build_audio` turns PCM16 into the agent's audio message (as
    is, or mu-law); an MCP approval answer is taken from `approvals` (at `now`) or stale."""
    if isinstance(event, bp.Audio):
        return ToAgent(build_audio(event.pcm))
    if isinstance(event, bp.Text):
        return ToAgent(el.build_user_message(event.text, event.rich_content_id), user_text=event.text)
    if isinstance(event, bp.Multimodal):
        return ToAgent(el.build_multimodal_message(event.text), user_text=event.text)
    if isinstance(event, bp.McpApproval):
        if approvals.take(event.tool_call_id, now):
            return ToAgent(el.build_mcp_tool_approval_result(event.tool_call_id, event.approved))
        return StaleApproval(event.tool_call_id)
    if isinstance(event, bp.Context):
        return ToAgent(el.build_contextual_update(event.text, event.context_id))
    if isinstance(event, bp.Activity):
        return ToAgent(el.build_user_activity())
    if isinstance(event, bp.Interrupt):
        return InterruptSpeech()
    if isinstance(event, bp.ToolResult):
        return ToAgent(el.build_client_tool_result(event.tool_call_id, bp.tool_result_text(event.result),
                                                   event.is_error))
    if isinstance(event, bp.Feedback):
        return ToAgent(el.build_feedback(event.score, event.event_id))
    if isinstance(event, bp.Stop):
        return EndConversation("client_stop")
    if isinstance(event, bp.ClientMetrics | bp.DroppedClientMetrics):
        return ReportClientMetrics(event)
    if isinstance(event, bp.Ack):
        return Acknowledge(event.seq)
    return EndConversation("protocol_error", "'start' was already received")


def browser_frame(event: el.ServerEvent, approvals: McpApprovals, now: float) -> str | None:
    """The frame the browser gets for agent event `event`, or None (audio, pings, errors, the voice activity score
    and unknown events are the pump's business or not the browser's). An MCP tool call's state is noted in
    `approvals` (at `now`)."""
    if isinstance(event, el.AgentResponse):
        return bp.agent_response(event.text, event.event_id)
    if isinstance(event, el.UserTranscript):
        return bp.user_transcript(event.text, event.event_id, event.final)
    if isinstance(event, el.Interruption):
        return bp.interruption(event.event_id)
    if isinstance(event, el.AgentResponseCorrection):
        return bp.agent_response_correction(event.corrected, event.original, event.event_id)
    if isinstance(event, el.ClientToolCall):
        return bp.tool_call(event.tool_call_id, event.tool_name, event.parameters)
    if isinstance(event, el.AgentChatResponsePart):
        return bp.agent_response_part(event.part_type, event.text, event.event_id)
    if isinstance(event, el.AgentToolRequest):
        return bp.tool_status(event.tool_call_id, event.tool_name, event.tool_type, "running")
    if isinstance(event, el.AgentToolResponse):
        return bp.tool_status(event.tool_call_id, event.tool_name, event.tool_type,
                              "failed" if event.is_error else "done")
    if isinstance(event, el.McpToolCall):
        if not approvals.note(event, now):
            return None  # a repeated request for approval: refused, not shown again
        return bp.mcp_tool_call(
            tool_call_id=event.tool_call_id, service_id=event.service_id, tool_name=event.tool_name,
            tool_description=event.tool_description, parameters=event.parameters, state=event.state,
            approval_timeout_secs=event.approval_timeout_secs, error_message=event.error_message)
    if isinstance(event, el.McpConnectionStatus):
        return bp.mcp_connection_status(list(event.integrations))
    if isinstance(event, el.QueueStatus):
        return bp.queue_status(event.status)
    if isinstance(event, el.ExternalAgent):
        return bp.human_agent(event.connected)
    if isinstance(event, el.GuardrailTriggered):
        return bp.guardrail_triggered()
    if isinstance(event, el.AgentTyping):
        return bp.agent_typing(event.typing)
    if isinstance(event, el.ContextUsage):
        return bp.context_usage(event.fields)
    if isinstance(event, el.RichContent):
        return bp.rich_content(event.fields)
    return None
