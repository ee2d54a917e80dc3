"""ElevenLabs Conversational AI: the connection to an agent (I/O).

`fetch_signed_url` (httpx2) and `open_agent` (`relay.net.wsclient`, over the `websockets` sans-I/O protocol), which
yields an `AgentConnection`. Every frame is parsed and built by `relay.protocol.elevenlabs`; this module only moves
them. It must never put an API key in an exception message or a log line, and must never log per audio frame.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Final

import httpx2
import trio

from relay.net import spans
from relay.net.wsclient import (
    ClientWebSocket,
    WebSocketClosed,
    WebSocketConnectError,
    WebSocketRejected,
    open_websocket,
)
from relay.protocol.elevenlabs import (
    AgentClosed,
    AgentErrorEvent,
    AgentProtocolError,
    AgentRefused,
    AgentUnavailable,
    ConversationMetadata,
    MalformedEvent,
    ServerEvent,
    UnknownEvent,
    classify_close,
    conversation_ws_url,
    parse_server_event,
    read_signed_url_answer,
    reason_for_status,
    signed_url_request,
    with_source,
)

log = logging.getLogger("relay.elevenlabs")

_CLOSE_TIMEOUT: Final = 2.0
_MALFORMED_LOG_BURST: Final = 5  # malformed frames logged per connection before rate limiting
_MALFORMED_LOG_INTERVAL: Final = 10.0  # then at most one line per this many seconds (with the count skipped)


class MalformedLog:
    """Logs skipped malformed agent frames: the first few, then one line per interval saying how many were
    skipped meanwhile (a service that changed a field must not flood the log)."""

    __slots__ = ("_logged", "_next_at", "_skipped")

    def __init__(self) -> None:
        self._logged = 0
        self._skipped = 0
        self._next_at = 0.0

    def note(self, event: MalformedEvent, now: float) -> None:
        if self._logged < _MALFORMED_LOG_BURST or now >= self._next_at:
            self._logged += 1
            if self._logged >= _MALFORMED_LOG_BURST:
                self._next_at = now + _MALFORMED_LOG_INTERVAL
            log.warning("skipping a malformed agent event type=%s problem=%s (skipped since last line: %d)",
                        event.type or "-", event.problem, self._skipped)
            self._skipped = 0
        else:
            self._skipped += 1


async def fetch_signed_url(http: httpx2.AsyncClient, base_url: str, api_key: str, agent_id: str, *,
                           branch_id: str | None = None, environment: str | None = None) -> str:
    """Get a short-lived signed socket URL for a private agent (fetch a fresh one per conversation), for the
    agent's `branch_id` / `environment` when given.

    Raises `AgentUnavailable` (see `read_signed_url_answer`; network errors upstream_error, timeouts timeout).
    Cancelled by the caller's scope; bounded by `http`'s timeouts."""
    try:
        with spans.child("signed URL"):
            response = await http.get(signed_url_request(base_url, agent_id, branch_id=branch_id,
                                                         environment=environment), headers={"xi-api-key": api_key})
    except httpx2.TimeoutException:
        raise AgentUnavailable("timeout", "timed out fetching the ElevenLabs signed URL") from None
    except httpx2.TransportError as exc:
        raise AgentUnavailable(
            "upstream_error", f"could not reach ElevenLabs for a signed URL ({type(exc).__name__})"
        ) from None
    return read_signed_url_answer(response.status_code, response.content, api_key)


def _closed_error(exc: WebSocketClosed) -> AgentClosed:
    return AgentClosed(exc.code, exc.reason)


class AgentConnection:
    """An open conversation with an agent. One task may `receive()` while others `send()`. There is no reader
    task: `receive()` reads the socket (and answers WebSocket pings), so keep calling it while the conversation
    lasts — the relay's downstream pump does."""

    __slots__ = ("_malformed", "_ws", "metadata")

    def __init__(self, ws: ClientWebSocket, metadata: ConversationMetadata) -> None:
        self._ws = ws
        self.metadata = metadata
        self._malformed = MalformedLog()

    async def send(self, text: str | bytes) -> None:
        """Send one message built by a `build_*` function (bytes: a `*_utf8` one's UTF-8 JSON text). Blocks while
        the socket's send buffer is full; cancelled by the caller's scope. Raises `AgentClosed` if the socket is
        closed."""
        try:
            await self._ws.send_text(text)
        except WebSocketClosed as exc:
            raise _closed_error(exc) from None

    async def receive(self) -> ServerEvent:
        """The next server event. Blocks until one arrives; cancelled by the caller's scope. After the socket
        closes, the messages already received are returned first, then `AgentClosed` is raised (every call).
        A malformed frame is returned as `MalformedEvent` (logged here, rate-limited): skip it."""
        try:
            frame = await self._ws.receive()
        except WebSocketClosed as exc:
            raise _closed_error(exc) from None
        event = parse_server_event(frame)
        kind = type(event)
        if kind is UnknownEvent:
            log.debug("ignoring agent event type %r", event.type)  # type: ignore[union-attr]
        elif kind is MalformedEvent:
            self._malformed.note(event, time.monotonic())  # type: ignore[arg-type]
        return event

    async def aclose(self, code: int = 1000, reason: str = "") -> None:
        """Close the socket with `code` and `reason`, waiting at most ~2 s for the agent's close frame.
        Idempotent. Cancelled by the caller's scope (the TCP stream is closed anyway)."""
        await self._ws.aclose(code, reason, _CLOSE_TIMEOUT)


async def _receive_metadata(ws: ClientWebSocket) -> ConversationMetadata:
    """The first message. An `error` event first is a refusal (`override_error`, `missing_dynamic_variable`...):
    the close that follows is read (bounded) and `AgentRefused` raised with the service's words; a close with a
    set-up refusal's reason (1008 `override_error`) or a queue time-out (3008) is a refusal too."""
    try:
        frame = await ws.receive()
    except WebSocketClosed as exc:
        ending = classify_close(exc.code, exc.reason, during_setup=True)
        if ending.kind in ("agent_refused", "agent_busy"):
            raise AgentRefused(ending, close_code=exc.code, close_reason=exc.reason) from None
        raise _closed_error(exc) from None
    event = parse_server_event(frame)
    if isinstance(event, AgentErrorEvent):
        close_code, close_reason = None, ""
        with trio.move_on_after(_CLOSE_TIMEOUT):
            try:
                while True:  # the close follows the error event; what comes between is of no use now
                    await ws.receive()
            except WebSocketClosed as exc:
                close_code, close_reason = exc.code, exc.reason
        ending = classify_close(close_code, close_reason, event, during_setup=True)
        raise AgentRefused(ending, error_type=event.error_type, code=event.code, close_code=close_code,
                           close_reason=close_reason)
    if not isinstance(event, ConversationMetadata):
        kind = event.type if isinstance(event, UnknownEvent | MalformedEvent) else type(event).__name__
        raise AgentProtocolError(f"expected conversation_initiation_metadata first, got {kind}")
    return event


@asynccontextmanager
async def open_agent(
    http: httpx2.AsyncClient,
    *,
    base_url: str,
    agent_id: str,
    api_key: str | None,
    initiation: str,
    connect_timeout: float = 10.0,
    max_message_size: int = 16 * 2**20,
    branch_id: str | None = None,
    environment: str | None = None,
    version: str | None = None,
) -> AsyncIterator[AgentConnection]:
    """Start a conversation and yield it once the agent has sent its metadata.

    With `api_key`, a signed URL is fetched first (the key never goes over the socket); without, the public
    URL is used. `branch_id` (signed-URL request only, so it needs `api_key`: ValueError otherwise) /
    `environment` (signed-URL request and socket URL) select the agent's branch and environment; with `version`,
    `source=avatar-relay&version=...` is added to the socket URL as the SDKs do. No WebSocket subprotocol is
    requested, like the official Python SDK (`convai` is only needed by browsers). `initiation` (see
    `build_initiation`) is sent immediately, then the first message must be `conversation_initiation_metadata`.

    Raises `AgentUnavailable` (signed URL refused, handshake refused — with its HTTP status —, connection
    failure, or `connect_timeout` exceeded: it bounds the whole opening, signed URL, handshake and metadata),
    `AgentRefused` (an `error` event or a refusal's close before the metadata: 1008 `override_error`,
    `missing_dynamic_variable`, 3008 queue time-out), `AgentClosed` (any other close before the metadata),
    `AgentProtocolError` (anything else first). Cancelled by the caller's scope at any point. On exit the socket
    is closed with 1000, shielded and bounded to ~2 s."""
    step = "fetching the signed URL"
    # One scope around everything, deadline lifted once open: it bounds the signed URL, the TCP connection, the
    # upgrade and the metadata together.
    with trio.CancelScope(deadline=trio.current_time() + connect_timeout) as opening:
        async with AsyncExitStack() as stack:
            if api_key:
                url = await fetch_signed_url(http, base_url, api_key, agent_id, branch_id=branch_id,
                                             environment=environment)
                if version:
                    url = with_source(url, version, environment)
            else:
                if branch_id:
                    raise ValueError("a branch is selected through a signed URL: branch_id needs an api_key")
                url = conversation_ws_url(base_url, agent_id, environment=environment, version=version)
            step = "connecting"
            try:
                # Leaving closes it with 1000, shielded: at most _CLOSE_TIMEOUT waiting for the agent's close
                # frame, or a moment to send ours when the conversation was cancelled.
                ws = await stack.enter_async_context(
                    open_websocket(url, max_message_size=max_message_size, close_timeout=_CLOSE_TIMEOUT))
            except WebSocketRejected as exc:
                raise AgentUnavailable(
                    reason_for_status(exc.status_code),
                    f"ElevenLabs refused the conversation socket (HTTP {exc.status_code})",
                    exc.status_code,
                ) from None
            except WebSocketConnectError as exc:
                raise AgentUnavailable("upstream_error", f"could not connect to the ElevenLabs agent: {exc}") from None
            step = "waiting for the conversation metadata"
            try:
                await ws.send_text(initiation)
            except WebSocketClosed as exc:
                raise _closed_error(exc) from None
            metadata = await _receive_metadata(ws)
            opening.deadline = math.inf
            yield AgentConnection(ws, metadata)
    if opening.cancelled_caught:
        raise AgentUnavailable("timeout", f"ElevenLabs agent timed out ({step})")
