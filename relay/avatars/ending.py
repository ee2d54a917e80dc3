"""Why the conversation that holds an avatar session ended, for a provider whose stop call takes a reason
(LiveAvatar's `SessionEndReasonEnum` has AGENT_HANG_UP): a mutable cell in a context variable, so the `AvatarSession`
and `AvatarProvider` interfaces stay as they are. The conversation puts a fresh cell in its context before it opens
the session (tasks copy their context when they start, so the cell, not the variable, carries the news); its agent
pump marks it when the agent ended the conversation; the provider reads it when it stops the session. No I/O.
"""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass


@dataclass(slots=True)
class ConversationEnding:
    agent_hung_up: bool = False  # the agent ended the conversation (close 1000: end_call or its max duration)


_current: ContextVar[ConversationEnding | None] = ContextVar("relay_avatar_conversation_ending", default=None)


def begin() -> ConversationEnding:
    """A fresh cell for the conversation running in this context (call before its tasks start)."""
    ending = ConversationEnding()
    _current.set(ending)
    return ending


def mark_agent_hung_up() -> None:
    """The agent ended the conversation (a no-op outside a conversation)."""
    ending = _current.get()
    if ending is not None:
        ending.agent_hung_up = True


def agent_hung_up() -> bool:
    """Whether the conversation holding this session was ended by the agent."""
    ending = _current.get()
    return ending is not None and ending.agent_hung_up
