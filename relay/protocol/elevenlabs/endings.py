"""What an ending means: ElevenLabs' close codes, `classify_close`, and the exceptions the agent client raises.

Sans-I/O: this module must never do I/O or import trio, httpx2 or websockets, and must never put an API key in an
exception message.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

from relay.protocol.elevenlabs.events import AgentErrorEvent
from relay.protocol.vocab import AgentUnavailableReason


class AgentProtocolError(Exception):
    """The agent's first message is not a usable `conversation_initiation_metadata` (nothing else is fatal: a
    malformed later frame is a `MalformedEvent`)."""


class AgentRefused(Exception):
    """The agent refused the conversation at set-up: an `error` event (and/or a close) before its metadata, e.g.
    `override_error` or `missing_dynamic_variable` (close 1008), or a queue time-out (close 3008). `message` is the
    service's own words; `ending` says what it means (`classify_close`: "agent_refused", "agent_busy" or
    "agent_error"); `error_type`, `code` (the error event's) and `close_code`/`close_reason` as received."""

    def __init__(self, ending: Ending, *, error_type: str | None = None, code: int | None = None,
                 close_code: int | None = None, close_reason: str = "") -> None:
        super().__init__(ending.message)
        self.ending = ending
        self.message = ending.message
        self.error_type = error_type
        self.code = code
        self.close_code = close_code
        self.close_reason = close_reason


class AgentUnavailable(Exception):
    """No conversation could be started. `reason` is one of "unauthorized", "not_found", "rate_limited",
    "upstream_error", "timeout", "rejected"; `status_code` is the HTTP status when there was one."""

    def __init__(self, reason: AgentUnavailableReason, message: str, status_code: int | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.status_code = status_code


class AgentClosed(Exception):
    """The agent's socket is closed. `code` and `reason` are ElevenLabs' close frame (1000 agent ended or
    `max_duration_exceeded`; 1002 operational, e.g. `transport_receive_timeout`; 1008 contract, e.g.
    `override_error`, `invalid_message`; 1011 server error). `code` is 1006 when the connection was lost
    without a close frame, None when unknown."""

    def __init__(self, code: int | None, reason: str) -> None:
        super().__init__(f"agent connection closed (code {code}{', ' + reason if reason else ''})")
        self.code = code
        self.reason = reason


# ----------------------------------------------------------------------------------------------------------------------
# What an ending means

# Close codes ElevenLabs documents (asyncapi `ErrorType` codes; convai-widget-core's queue mock for 3008).
CLOSE_NORMAL: Final = 1000  # the agent ended the call (end_call), or max duration
CLOSE_QUEUE_TIMEOUT: Final = 3008  # waited too long in the agent's concurrency queue
_SETUP_REFUSALS: Final = {"override_error", "missing_dynamic_variable", "invalid_dynamic_variable"}
MAX_DURATION: Final = "max_duration_exceeded"

EndingKind = Literal["agent_ended", "max_duration", "agent_refused", "agent_busy", "agent_error"]


@dataclass(frozen=True, slots=True)
class Ending:
    """What an agent's close means: `kind` "agent_ended"/"max_duration" are normal ends; "agent_refused" (a set-up
    contract error: overrides not allowed, a missing dynamic variable), "agent_busy" (queue time-out) and
    "agent_error" are failures, with a `message` for the user."""

    kind: EndingKind
    message: str

    @property
    def normal(self) -> bool:
        return self.kind in ("agent_ended", "max_duration")


def is_normal_end(event: AgentErrorEvent) -> bool:
    """An `error` event that announces a normal end (max duration: `error_type` max_duration_exceeded, code 1000;
    the JS client ends the session normally on it, elevenlabs/packages d35faae2)."""
    return event.error_type == MAX_DURATION or event.code == CLOSE_NORMAL


def _refusal_message(error_type: str | None, detail: str) -> str:
    if error_type == "override_error":
        text = "the agent does not allow the overrides this page sent (enable them in the agent's security settings)"
    elif error_type in ("missing_dynamic_variable", "invalid_dynamic_variable"):
        text = "the agent needs a dynamic variable the page did not send (or sent with the wrong type)"
    else:
        text = "the agent refused the conversation's set-up"
    return f"{text}: {detail}" if detail and detail != error_type else text


def classify_close(code: int | None, reason: str, error: AgentErrorEvent | None = None, *,
                   during_setup: bool = False) -> Ending:
    """What the agent's close (`code`, `reason`), after the last `error` event it sent (if any), means.

    1000 is always a normal end (an earlier non-fatal error event does not taint it), `max_duration` when the
    error event or the reason says max_duration_exceeded; 3008 is a busy agent (queue time-out); during set-up a
    1008 (or an error event) for overrides / dynamic variables is a refusal with the service's words; anything
    else (1002 operational, 1008 contract, 1011 internal, 3000, a lost connection) is a failure."""
    error_type = error.error_type if error is not None else None
    detail = (error.message if error is not None and error.message else "") or reason
    if code == CLOSE_NORMAL:
        if reason == MAX_DURATION or error_type == MAX_DURATION:
            return Ending("max_duration", "the agent's maximum conversation duration was reached")
        return Ending("agent_ended", "the agent ended the conversation")
    if code == CLOSE_QUEUE_TIMEOUT:
        return Ending("agent_busy", "the agent is busy: too many conversations at once, and the wait in its "
                                    "queue timed out; try again shortly")
    refusal_type = error_type if error_type in _SETUP_REFUSALS else (reason if reason in _SETUP_REFUSALS else None)
    if during_setup and (refusal_type is not None or code == 1008):
        return Ending("agent_refused", _refusal_message(refusal_type or error_type, detail))
    message = f"the agent closed the conversation ({code} {reason})".replace(" )", ")")
    if error is not None and error.message:
        message += f": {error.message}"
    return Ending("agent_error", message)
