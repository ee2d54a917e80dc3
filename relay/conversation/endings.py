"""How a conversation ends: `ConversationOver` (raised by any task to end it), `classify` (many tasks may fail at
once: pick the one outcome that explains the end best) and `tell_browser_and_close` (error, ended, close: the one
sequence every ending sends, also used by the web layer to refuse a conversation for capacity).

`BrowserSocket` is the seam to the browser's WebSocket. This module must never block an ending on a browser that is
gone: telling it is shielded and bounded.
"""

from __future__ import annotations

import logging
import weakref
from contextlib import suppress
from typing import Any, Protocol

import trio

from relay._util import leaves
from relay.avatars import AvatarError
from relay.conversation.record import ConversationRecord
from relay.protocol import browser as bp
from relay.protocol import elevenlabs as el
from relay.protocol.vocab import EndReason, ErrorCode

log = logging.getLogger("relay.conversation")


class BrowserSocket(Protocol):
    """The seam to the browser's WebSocket (quart's `websocket` in production, fakes in tests)."""

    async def receive(self) -> str | bytes | None: ...

    async def send(self, data: str | bytes) -> None: ...

    async def close(self, code: int, reason: str = "") -> None: ...


class ConversationOver(Exception):
    """Raised by any task to end the conversation. `error` is None for a normal end."""

    def __init__(self, reason: EndReason, *, error: ErrorCode | None = None, message: str = "",
                 close_code: int = 1000, extra: dict[str, Any] | None = None) -> None:
        super().__init__(message or reason)
        self.reason = reason
        self.error = error
        self.message = message
        self.close_code = close_code
        self.extra = extra or {}

    @classmethod
    def failed(cls, code: ErrorCode, message: str, **extra: Any) -> ConversationOver:
        return cls(code, error=code, message=message, close_code=bp.CLOSE_CODE_FOR_ERROR[code], extra=extra)


def classify(exc: Exception, record: ConversationRecord) -> ConversationOver:
    """Many tasks may fail at once; pick the one outcome that explains the end best."""
    found = [e for e in leaves(exc) if not isinstance(e, trio.Cancelled)]
    for leaf in found:
        if isinstance(leaf, ConversationOver):
            return leaf
    for leaf in found:
        if isinstance(leaf, el.AgentUnavailable):
            return ConversationOver.failed("upstream_unavailable", f"the voice agent is unavailable: {leaf}")
        if isinstance(leaf, el.AgentRefused):
            ending = leaf.ending
            code: ErrorCode = "agent_error" if ending.normal else ending.kind  # type: ignore[assignment]
            extra = {key: value for key, value in (("agent_error_type", leaf.error_type),
                                                   ("agent_close_code", leaf.close_code),
                                                   ("agent_close_reason", leaf.close_reason)) if value}
            return ConversationOver.failed(code, ending.message, **extra)
        if isinstance(leaf, el.AgentClosed):
            ending = el.classify_close(leaf.code, leaf.reason, during_setup=True)
            kind: ErrorCode = "agent_error" if ending.normal else ending.kind  # type: ignore[assignment]
            message = ending.message if kind != "agent_error" else f"the agent closed during set-up ({leaf.code} " \
                f"{leaf.reason})"
            return ConversationOver.failed(kind, message, agent_close_code=leaf.code,
                                           agent_close_reason=leaf.reason)
        if isinstance(leaf, el.AgentProtocolError):
            return ConversationOver.failed("agent_error", f"the agent broke the protocol: {leaf}")
        if isinstance(leaf, AvatarError):
            return ConversationOver.failed("upstream_unavailable", f"the avatar is unavailable: {leaf.message}",
                                           avatar_reason=leaf.reason)
        if isinstance(leaf, trio.TooSlowError):
            return ConversationOver.failed("upstream_unavailable", "the upstream services took too long to set up")
    log.error("internal error in conversation relay_id=%s", record.relay_id, exc_info=exc)
    return ConversationOver.failed("internal", "internal error")


async def tell_browser_and_close(browser: BrowserSocket, outcome: ConversationOver) -> None:
    """Send `error` (if any) and `ended`, then close. Shielded and bounded: the browser may be gone or stalled."""
    with trio.move_on_after(1.0, shield=True):
        with suppress(Exception):
            if outcome.error is not None:
                await browser.send(bp.error(outcome.error, outcome.message, **outcome.extra))
            await browser.send(bp.ended(outcome.reason))
            await browser.close(outcome.close_code, outcome.reason)


# Why a conversation's shutdown scope was cancelled, when it was not the drain: `cut_short` records it, the
# conversation reads it back (`why_cut`) as it ends. Weak keys: a scope nobody cut leaves nothing behind.
_cuts: weakref.WeakKeyDictionary[trio.CancelScope, ConversationOver] = weakref.WeakKeyDictionary()


def cut_short(scope: trio.CancelScope, outcome: ConversationOver) -> None:
    """End the conversation running in `scope` (its shutdown scope) with `outcome` instead of `shutdown`."""
    _cuts.setdefault(scope, outcome)
    scope.cancel()


def why_cut(scope: trio.CancelScope) -> ConversationOver:
    """How a conversation whose shutdown scope was cancelled ends: as `cut_short` said, else `shutdown`."""
    return _cuts.pop(scope, None) or ConversationOver.failed("shutdown", "the relay is shutting down")
