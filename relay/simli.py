"""Simli: the `AvatarProvider` named "simli" (I/O), the relay's second face.

A session is a token (`POST /compose/token`) and a socket (`/compose/webrtc/livekit?session_token=…`) that answers
with the LiveKit room hosting the avatar (handed to the browser as `ready.avatar`), takes the agent's voice as
binary PCM16 at 16 kHz, clears its buffer on `SKIP` and ends on `DONE`. Requests, messages and what a refusal
means are `relay.protocol.simli`; what the public sources say is docs/protocol.md ("Simli").

Leak-proof as far as Simli allows: the billed session is the socket's, so opening it is shielded (a caller cancelled
mid-start still gets its socket ended), and every way out sends `SKIP` and `DONE` and waits, shielded and bounded by
RELAY_STOP_TIMEOUT, for the server to close. Simli has no call to list or stop sessions by id: a session whose
socket was lost (a dropped connection, a crashed relay) runs until `maxIdleTime` (SIMLI_MAX_IDLE_TIME) passes without
audio, at most `maxSessionLength` (docs/deploy.md). This module must never retry `compose/token`, and must never put
the API key, a session token, the socket URL (its query carries the token) or a LiveKit token into a log line or an
exception message.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx2
import orjson
import trio

from relay._util import single
from relay.avatars import (
    AvatarInfo,
    AvatarSessionEnded,
    AvatarStateChanged,
    AvatarUnavailable,
    OnAvatarEvent,
    OnSessionCreated,
    OnStopFailed,
)
from relay.avatars.common import PLACEHOLDER_API_KEY, is_simulated, setup_deadline
from relay.avatars.streamed import StreamedAudioSession
from relay.config import Settings
from relay.net.wsclient import (
    ClientWebSocket,
    WebSocketClosed,
    WebSocketConnectError,
    WebSocketRejected,
    open_websocket,
)
from relay.protocol.audio import AudioFormat, StreamingResampler
from relay.protocol.simli import (
    CLEAR_BUFFER,
    FINAL_MESSAGE,
    KEEP_ALIVE_SILENCE,
    SIMLI_SAMPLE_RATE,
    TOKEN_PATH,
    ApiError,
    Destination,
    JoinInfo,
    Speaking,
    Started,
    Terminated,
    TokenAnswer,
    Unknown,
    audio_frames,
    connect_src_allows,
    parse_server_message,
    read_session_count,
    read_token_answer,
    session_end_text,
    socket_refusal,
    socket_url,
    unavailable,
)
from relay.protocol.simli import token_request_body as _token_request_body

log = logging.getLogger("relay.simli")

API_TIMEOUT = httpx2.Timeout(10.0, connect=5.0, pool=5.0)


def token_request_body(settings: Settings) -> dict[str, Any]:
    """The `POST /compose/token` body for these settings (see `relay.protocol.simli.token_request_body`)."""
    return _token_request_body(face_id=settings.simli_face_id or "",
                               max_session_length=settings.simli_session_length,
                               max_idle_time=settings.simli_max_idle_time)


def keep_alive_interval(settings: Settings) -> float:
    """Seconds between keep-alives: RELAY_KEEP_ALIVE_INTERVAL, but at least three per SIMLI_MAX_IDLE_TIME."""
    return min(settings.relay_keep_alive_interval, settings.simli_max_idle_time / 3)


def to_unavailable(error: ApiError) -> AvatarUnavailable:
    """`AvatarUnavailable` for a REST refusal, with the provider-neutral reason and a user-safe message."""
    reason, text = unavailable(error)
    return AvatarUnavailable(reason, text, upstream_code=error.status, retry_after=error.retry_after)


def _api_key(settings: Settings) -> str:
    key = settings.simli_api_key
    return key.get_secret_value() if key is not None else PLACEHOLDER_API_KEY


def _url(settings: Settings, path: str) -> str:
    return settings.simli_base_url.rstrip("/") + path


def _network_unavailable(exc: httpx2.HTTPError) -> AvatarUnavailable:
    if isinstance(exc, httpx2.TimeoutException):
        return AvatarUnavailable("timeout", "Simli did not answer in time.")
    return AvatarUnavailable("upstream_error", f"Could not reach Simli ({type(exc).__name__}).")


async def create_token(settings: Settings, http: httpx2.AsyncClient) -> TokenAnswer:
    """`POST /compose/token` with the configured face and limits. Never retried (a token opens a billed session).
    Raises AvatarUnavailable. Cancelled by the caller's scope."""
    try:
        response = await http.post(_url(settings, TOKEN_PATH), content=orjson.dumps(token_request_body(settings)),
                                   headers={"x-simli-api-key": _api_key(settings), "Accept": "application/json",
                                            "Content-Type": "application/json"}, timeout=API_TIMEOUT)
        return read_token_answer(response.status_code, response.content,
                                 retry_after=response.headers.get("Retry-After"))
    except ApiError as exc:
        raise to_unavailable(exc) from None
    except httpx2.HTTPError as exc:
        raise _network_unavailable(exc) from None


# ----------------------------------------------------------------------------------------------------------------------
# Operator calls: Simli has neither a session list nor a stop by id


async def active_session_count(settings: Settings, http: httpx2.AsyncClient) -> int:
    """How many sessions the account has running now (`GET /ratelimiter/sessions`, `currentUsage`): a count, not
    a list. Raises AvatarUnavailable."""
    try:
        response = await http.get(_url(settings, "/ratelimiter/sessions"),
                                  headers={"x-simli-api-key": _api_key(settings), "Accept": "application/json"},
                                  timeout=API_TIMEOUT)
        return read_session_count(response.status_code, response.content)
    except ApiError as exc:
        raise to_unavailable(exc) from None
    except httpx2.HTTPError as exc:
        raise _network_unavailable(exc) from None


async def list_running_ids(settings: Settings, http: httpx2.AsyncClient) -> list[str]:
    """Always []: Simli cannot list an account's sessions (only count them, `active_session_count`), so
    `avatar-relay reap` finds Simli sessions only in the journal. Never raises."""
    return []


async def stop_by_id(settings: Settings, http: httpx2.AsyncClient, session_id: str) -> None:
    """Nothing to call: Simli stops a session only through its own socket (`DONE`). A session whose socket is gone
    ends by itself within SIMLI_MAX_IDLE_TIME of its last audio, at most SIMLI_MAX_SESSION_LENGTH after it began;
    logged, so the journal and the fleet forget it. Never raises."""
    log.info("simli session %s cannot be stopped by id (Simli has no such call); it ends by itself within "
             "SIMLI_MAX_IDLE_TIME (%d s) of its last audio, at most SIMLI_MAX_SESSION_LENGTH (%d s) after it began",
             session_id, settings.simli_max_idle_time, settings.simli_session_length)


# ----------------------------------------------------------------------------------------------------------------------
# The socket


class SimliStream:
    """One session's socket: sends the agent's audio, `SKIP` and keep-alive silence, reads the server's messages.

    Every send may block on the socket (the upstream not reading); cancelling the calling scope cancels it. Speech
    is held until the server's `START` (audio sent before it is not played). A socket that closes makes the sends
    return quietly: the reader notices the close and raises `AvatarSessionEnded`. Must never send a chunk of an
    interrupted turn after its `SKIP`, and never `DONE` before the session ends (it would end it)."""

    def __init__(self, ws: ClientWebSocket, session_id: str, quiet_after: float) -> None:
        self._ws = ws
        self.session_id = session_id
        self._quiet_after = quiet_after
        # Our own lock, not only the socket's: the "interrupted?" check and the send must be one step, so a frame
        # waiting to be sent re-checks after a `SKIP` went out ahead of it.
        self._send_lock = trio.StrictFIFOLock()
        self._resamplers: dict[int, StreamingResampler] = {}
        self._interrupted_through = -(2**63)
        self._last_turn: int | None = None
        self._last_sent = trio.current_time()
        self.started = trio.Event()
        self.terminated: Terminated | None = None  # the server said the session ended

    def _is_interrupted(self, turn: int) -> bool:
        return turn <= self._interrupted_through

    async def read_join_info(self) -> JoinInfo:
        """Read the server's first messages until the room's join info. Raises AvatarUnavailable if the server
        refuses (`RATE …`, `ERROR …`) or closes first. Cancelled by the caller's scope."""
        while True:
            try:
                message = parse_server_message(await self._ws.receive())
            except WebSocketClosed as exc:
                raise AvatarUnavailable("upstream_error", "Simli closed the socket before the session started.",
                                        upstream_code=exc.code) from None
            if isinstance(message, JoinInfo):
                return message
            if isinstance(message, Destination) and message.session_id:
                self.session_id = message.session_id
            elif isinstance(message, Started):
                self.started.set()
            elif isinstance(message, Terminated):
                self.terminated = message
                reason, text = socket_refusal(message)
                raise AvatarUnavailable(reason, text, upstream_code=message.kind)

    async def wait_connected(self) -> None:
        """Return once the server said `START` (or the socket closed: the reader then raises). Cancelled by the
        caller's scope."""
        await self.started.wait()

    async def set_listening(self, listening: bool) -> None:
        """Simli has no listening pose."""

    async def _send(self, data: bytes | memoryview | str) -> bool:
        await self.started.wait()
        try:
            if isinstance(data, str):
                await self._ws.send_text(data)
            else:
                await self._ws.send_bytes(data)
        except WebSocketClosed:
            log.debug("simli socket closed while sending")
            return False
        return True

    async def _send_audio(self, turn: int, pcm16k: bytes) -> None:
        for frame in audio_frames(pcm16k):
            async with self._send_lock:
                if self._is_interrupted(turn):
                    return
                if not await self._send(frame):
                    return
                self._last_turn = turn
                self._last_sent = trio.current_time()

    async def speak_audio(self, audio: bytes, audio_format: AudioFormat, turn: int) -> None:
        """Resample one chunk of turn `turn` to 16 kHz and send it at once; chunks of an interrupted turn are
        dropped."""
        if self._is_interrupted(turn):
            return
        resampler = self._resamplers.get(turn)
        if resampler is None or resampler.in_format != audio_format:
            if resampler is not None:  # a format change mid-turn: the old stream's tail first
                await self._send_audio(turn, resampler.flush())
            resampler = self._resamplers[turn] = StreamingResampler(audio_format, SIMLI_SAMPLE_RATE)
        await self._send_audio(turn, resampler.process(audio))

    async def end_turn(self, turn: int) -> None:
        """Send the resampler's tail. Simli has no end-of-turn message (`DONE` ends the session)."""
        resampler = self._resamplers.pop(turn, None)
        if resampler is not None and not self._is_interrupted(turn):
            await self._send_audio(turn, resampler.flush())

    async def interrupt(self, turn: int) -> None:
        """`SKIP`: the avatar stops and forgets the audio sent. From this call on, nothing of `turn` or an older turn
        is sent, even a frame already waiting for the socket."""
        self._interrupted_through = max(self._interrupted_through, turn)
        for old in [t for t in self._resamplers if t <= turn]:
            del self._resamplers[old]
        async with self._send_lock:
            await self._send(CLEAR_BUFFER)

    async def keep_alive(self) -> None:
        """0.1875 s of silence when no audio went out for the keep-alive interval (`maxIdleTime` counts time
        without audio, or without speech: docs/protocol.md); nothing while the agent speaks."""
        if trio.current_time() - self._last_sent < self._quiet_after:
            return
        async with self._send_lock:
            if await self._send(KEEP_ALIVE_SILENCE):
                self._last_sent = trio.current_time()

    async def read_events(self, on_event: OnAvatarEvent) -> None:
        """Reader task: `START`, speaking/silent events through `on_event`; raises AvatarSessionEnded when the
        server ends the session or the socket closes. Cancelled by its nursery."""
        while True:
            try:
                message = parse_server_message(await self._ws.receive())
            except WebSocketClosed as exc:
                self.started.set()
                raise AvatarSessionEnded("session_ended", "The Simli session ended (its socket closed).",
                                         upstream_code=exc.code) from None
            if isinstance(message, Started):
                self.started.set()
            elif isinstance(message, Speaking):
                try:
                    on_event(AvatarStateChanged(speaking=message.speaking, turn=self._last_turn))
                except Exception:
                    log.exception("avatar event callback failed")
            elif isinstance(message, Terminated):
                self.terminated = message
                self.started.set()
                raise AvatarSessionEnded("session_ended", session_end_text(message), upstream_code=message.kind)
            elif isinstance(message, Unknown):
                log.debug("simli sent a message the relay does not know: %s", message.text)

    async def end_on_server(self) -> bool:
        """End the session: `SKIP` (nothing left to play back), `DONE`, then read until the server closes the
        socket. True when the session is known to have ended (the server closed after `DONE`, or had ended it
        itself); False when the socket was gone first (the session may run until `maxIdleTime`). Only once the reader
        task is over. Not bounded here: the caller shields and bounds it."""
        if self.terminated is not None:
            return True
        try:
            await self._ws.send_text(CLEAR_BUFFER)
            await self._ws.send_text(FINAL_MESSAGE)
        except WebSocketClosed:
            return False
        while True:
            try:
                await self._ws.receive()
            except WebSocketClosed:
                return True


# ----------------------------------------------------------------------------------------------------------------------
# Sessions and the provider


@dataclass(slots=True)
class _Opened:
    stream: SimliStream
    created_announced: bool = False


class SimliProvider:
    """`AvatarProvider` for Simli. One per process; sessions share the process's HTTP client."""

    name = "simli"

    def __init__(self, settings: Settings, http: httpx2.AsyncClient) -> None:
        self._settings = settings
        self._http = http

    async def _connect(self, stack: AsyncExitStack, opened: list[_Opened]) -> tuple[SimliStream, JoinInfo]:
        """Token, socket, join info. Appends the stream to `opened` the moment the socket is open (the session is
        billed from then on), so the caller ends it whatever happens next. Raises AvatarUnavailable."""
        token = await create_token(self._settings, self._http)
        url = socket_url(self._settings.simli_base_url, token.session_token)
        try:
            ws = await stack.enter_async_context(open_websocket(url, close_timeout=2.0))
        except WebSocketRejected as exc:
            raise to_unavailable(ApiError(exc.status_code, "the socket was refused")) from None
        except WebSocketConnectError as exc:
            raise AvatarUnavailable("upstream_error", f"Could not open Simli's socket ({exc}).") from None
        stream = SimliStream(ws, token.fingerprint, keep_alive_interval(self._settings))
        opened.append(_Opened(stream))
        return stream, await stream.read_join_info()

    async def _end(self, opened: _Opened, on_stop_failed: OnStopFailed | None) -> None:
        """End the session on the server, shielded from the caller's cancellation and bounded by
        RELAY_STOP_TIMEOUT; a failure is logged (and reported to `on_stop_failed`), never raised."""
        stream = opened.stream
        ended = False
        with trio.move_on_after(self._settings.relay_stop_timeout, shield=True):
            ended = await stream.end_on_server()
        if ended:
            log.info("simli session %s ended", stream.session_id)
            return
        log.warning("simli session %s may still run (and bill) until SIMLI_MAX_IDLE_TIME (%d s) passes: its socket "
                    "was gone before DONE, or the server did not close it in time", stream.session_id,
                    self._settings.simli_max_idle_time)
        if opened.created_announced and on_stop_failed is not None:
            with trio.CancelScope(shield=True):
                await on_stop_failed(stream.session_id)

    @asynccontextmanager
    async def open_session(self, on_event: OnAvatarEvent, *, on_created: OnSessionCreated | None = None,
                           on_stop_failed: OnStopFailed | None = None) -> AsyncIterator[StreamedAudioSession]:
        """Create a token, open the socket, read the room; yield the session; end it on every way out.

        The start-up is shielded from cancellation and bounded by RELAY_SETUP_TIMEOUT (or the caller's deadline, if
        sooner: `setup_deadline`): a socket opened after the caller was cancelled is still ended (otherwise it would
        bill until `maxIdleTime`). `on_created(session_id)` runs once the room is known. Raises AvatarUnavailable if
        no session could be opened (timeout included), AvatarSessionEnded out of the body when the server ends the
        session or its socket closes.
        """
        settings = self._settings
        opened: list[_Opened] = []
        deadline = setup_deadline(settings.relay_setup_timeout)
        async with AsyncExitStack() as stack:
            try:
                with trio.CancelScope(shield=True):
                    with trio.move_on_at(deadline) as setup:
                        stream, join = await self._connect(stack, opened)
                    if not setup.cancelled_caught and on_created is not None:
                        opened[0].created_announced = True
                        await on_created(stream.session_id)
                if setup.cancelled_caught:
                    raise AvatarUnavailable("timeout", "Simli did not start the session in time.")
                # A cancellation that arrived while shielded is delivered here, and the finally ends the session.
                await trio.lowlevel.checkpoint()
                info = AvatarInfo(provider="simli", session_id=stream.session_id, livekit_url=join.livekit_url,
                                  access_token=join.livekit_token, simulated=is_simulated(join.livekit_url))
                room_host = urlsplit(join.livekit_url).hostname
                log.info("simli session %s started (simulated=%s, room on %s)", info.session_id, info.simulated,
                         room_host)
                if not info.simulated and not connect_src_allows(settings.relay_page_connect_src, join.livekit_url):
                    log.warning("Simli's room is on %s, which RELAY_PAGE_CONNECT_SRC does not allow: the page cannot "
                                "show the avatar; add wss://%s and https://%s to it", room_host, room_host, room_host)
                try:
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(stream.read_events, on_event)
                        try:
                            yield StreamedAudioSession(info, stream, keep_alive_interval(settings))
                        finally:
                            nursery.cancel_scope.cancel()
                except BaseExceptionGroup as group:
                    # Strict exception groups wrap even one failure; the caller should see the failure itself.
                    only = single(group)
                    if only is None:
                        raise
                    raise only from only.__cause__
            finally:
                if opened:
                    await self._end(opened[0], on_stop_failed)
