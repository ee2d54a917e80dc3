"""LiveAvatar (LITE mode): the `AvatarProvider` named "liveavatar" (I/O), the twin of `relay.heygen`.

The REST calls that create, start and stop a session, and the session the conversation drives
(`LiveAvatarSession`), which speaks the agent's audio over the LITE `ws_url` socket (`relay.avatars.lite`); two
operator calls (`list_running_ids`, `stop_by_id`) for reaping orphans. Bodies, the envelope and what a refusal means
are `relay.protocol.liveavatar`.

Leak-proof: once `sessions/token` has answered (a session exists and may be billed), the session is stopped on every
way out, including the caller being cancelled mid-start. This module must never retry `sessions/token` (a retry
after a lost answer creates a second session), and must never put an API key, session token, LiveKit token or the
`ws_url` (its query carries a token) into a log line or an exception message.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx2
import orjson
import trio

from relay.avatars import (
    AvatarInfo,
    AvatarUnavailable,
    OnAvatarEvent,
    OnSessionCreated,
    OnStopFailed,
)
from relay.avatars.common import PLACEHOLDER_API_KEY, alongside, is_simulated, setup_deadline, stop_shielded
from relay.avatars.lite import LiteAudioStream, open_lite_audio_stream
from relay.config import Settings
from relay.net.retry import Retryable, call_with_retries
from relay.protocol.audio import AudioFormat
from relay.protocol.liveavatar import (
    ApiError,
    StartAnswer,
    TokenAnswer,
    active_session_ids,
    keep_alive_request_body,
    parse_start_answer,
    parse_token_answer,
    read_answer,
    stop_request_body,
    unavailable,
)
from relay.protocol.liveavatar import token_request_body as _token_request_body

log = logging.getLogger("relay.liveavatar")

API_TIMEOUT = httpx2.Timeout(10.0, connect=5.0, pool=5.0)


def token_request_body(settings: Settings) -> dict[str, Any]:
    """The `POST /v1/sessions/token` body for these settings (see `relay.protocol.liveavatar.token_request_body`)."""
    return _token_request_body(avatar_id=settings.liveavatar_avatar_id, sandbox=settings.liveavatar_sandbox,
                               quality=settings.liveavatar_quality,
                               max_session_duration=settings.liveavatar_session_duration)


def to_unavailable(error: ApiError) -> AvatarUnavailable:
    """`AvatarUnavailable` for an API refusal, with the provider-neutral reason and a user-safe message."""
    reason, text = unavailable(error)
    return AvatarUnavailable(reason, text, upstream_code=error.code if error.code is not None else error.status,
                             retry_after=error.retry_after)


def avatar_info(start: StartAnswer) -> AvatarInfo:
    """What the browser gets: the LiveKit URL and the viewer's (client) token, never the agent token."""
    return AvatarInfo(provider="liveavatar", session_id=start.session_id, livekit_url=start.livekit_url,
                      access_token=start.livekit_client_token, simulated=is_simulated(start.livekit_url))


# ----------------------------------------------------------------------------------------------------------------------
# The HTTP seam


def _api_key(settings: Settings) -> str:
    key = settings.liveavatar_api_key
    return key.get_secret_value() if key is not None else PLACEHOLDER_API_KEY


def _url(settings: Settings, path: str) -> str:
    return settings.liveavatar_base_url.rstrip("/") + path


async def _request(http: httpx2.AsyncClient, method: str, url: str, *, headers: dict[str, str],
                   body: dict[str, Any] | None = None, params: dict[str, Any] | None = None,
                   success_statuses: tuple[int, ...] = (200,)) -> Any:
    """One API call -> envelope data. Raises ApiError for refusals and httpx2.TransportError for
    network failures (both without secrets: httpx messages hold the URL, which has none)."""
    content = orjson.dumps(body) if body is not None else None
    request_headers = {"Accept": "application/json", **headers}
    if content is not None:
        request_headers["Content-Type"] = "application/json"
    response = await http.request(method, url, headers=request_headers, content=content, params=params,
                                  timeout=API_TIMEOUT)
    return read_answer(response.status_code, response.content, retry_after=response.headers.get("Retry-After"),
                          success_statuses=success_statuses)


async def _retrying(call: Callable[[], Awaitable[Any]]) -> Any:
    """Run an idempotent call with retries on 429/5xx and network errors."""

    async def attempt() -> Any:
        try:
            return await call()
        except ApiError as exc:
            if exc.retryable:
                raise Retryable(str(exc), retry_after=exc.retry_after) from exc
            raise
        except httpx2.TransportError as exc:
            raise Retryable(f"network error: {type(exc).__name__}") from exc

    return await call_with_retries(attempt, attempts=3)


def _unavailable(exc: BaseException) -> AvatarUnavailable:
    if isinstance(exc, ApiError):
        return to_unavailable(exc)
    if isinstance(exc, Retryable) and isinstance(exc.__cause__, ApiError):
        return to_unavailable(exc.__cause__)
    if isinstance(exc, httpx2.TimeoutException):
        return AvatarUnavailable("timeout", "LiveAvatar did not answer in time.")
    return AvatarUnavailable("upstream_error", f"Could not reach LiveAvatar ({type(exc).__name__}).")


# ----------------------------------------------------------------------------------------------------------------------
# Operator calls: find and stop orphaned sessions


async def list_running_ids(settings: Settings, http: httpx2.AsyncClient) -> list[str]:
    """The ids of every active session on the account (`GET /v1/sessions?type=active`, all pages), for an
    operator reaping leaked sessions. Retries 429/5xx; raises AvatarUnavailable when the API refuses."""
    headers = {"X-API-KEY": _api_key(settings)}
    ids: list[str] = []
    try:
        for page in range(1, 1001):

            async def fetch(page: int = page) -> Any:
                return await _request(http, "GET", _url(settings, "/v1/sessions"), headers=headers,
                                      params={"type": "active", "page": page, "page_size": 100})

            found, more = active_session_ids(await _retrying(fetch))
            ids.extend(found)
            if not more or not found:
                break
        return ids
    except (ApiError, Retryable, httpx2.HTTPError) as exc:
        raise _unavailable(exc) from None


async def _stop_call(http: httpx2.AsyncClient, settings: Settings, headers: dict[str, str], session_id: str,
                     reason: str) -> None:
    """`POST /v1/sessions/stop`, retrying 429/5xx and network errors. Raises AvatarUnavailable if the session
    could not be stopped. Cancelled by the caller's scope."""
    body = stop_request_body(session_id, reason)
    try:
        await _retrying(lambda: _request(http, "POST", _url(settings, "/v1/sessions/stop"), headers=headers,
                                         body=body))
    except (ApiError, Retryable, httpx2.HTTPError) as exc:
        raise _unavailable(exc) from None


async def stop_by_id(settings: Settings, http: httpx2.AsyncClient, session_id: str,
                     reason: str = "ZOMBIE_SESSION_REAP") -> None:
    """Stop one session by id with the API key (retried on 429/5xx/network errors, bounded by RELAY_STOP_TIMEOUT,
    shielded), for an operator reaping leaked sessions. Raises AvatarUnavailable if it could not be stopped."""
    headers = {"X-API-KEY": _api_key(settings)}
    problem = await stop_shielded(lambda: _stop_call(http, settings, headers, session_id, reason),
                                  settings.relay_stop_timeout)
    if problem is not None:
        raise problem


# ----------------------------------------------------------------------------------------------------------------------
# Sessions and the provider


class LiveAvatarSession:
    """One running LITE session (an `AvatarSession`): audio goes to the LITE socket, keep-alives to both the
    socket and the REST API."""

    def __init__(self, info: AvatarInfo, stream: LiteAudioStream, keep_alive_interval: float,
                 rest_keep_alive: Callable[[], Awaitable[None]]) -> None:
        self._info = info
        self._stream = stream
        self._keep_alive_interval = keep_alive_interval
        self._rest_keep_alive = rest_keep_alive
        self._warned_text = False

    @property
    def info(self) -> AvatarInfo:
        return self._info

    @property
    def takes_audio(self) -> bool:
        return True

    @property
    def keep_alive_interval(self) -> float:
        return self._keep_alive_interval

    async def speak_text(self, text: str, turn: int) -> None:
        """LITE lip-syncs audio only; text has no way to the avatar. Logged once, then ignored."""
        if not self._warned_text:
            self._warned_text = True
            log.warning("liveavatar LITE sessions take audio, not text; ignoring speak_text")

    async def speak_audio(self, audio: bytes, audio_format: AudioFormat, turn: int) -> None:
        await self._stream.speak_audio(audio, audio_format, turn)

    async def end_turn(self, turn: int) -> None:
        await self._stream.end_turn(turn)

    async def interrupt(self, turn: int) -> None:
        await self._stream.interrupt(turn)

    async def wait_connected(self) -> None:
        await self._stream.wait_connected()

    async def set_listening(self, listening: bool) -> None:
        await self._stream.set_listening(listening)

    async def keep_alive(self) -> None:
        """`session.keep_alive` on the socket, then the REST keep-alive (clients disagree on which one the
        server counts; both are cheap at one per interval). Failures are logged, never raised."""
        await self._stream.keep_alive()
        await self._rest_keep_alive()


class LiveAvatarProvider:
    """`AvatarProvider` for LiveAvatar LITE. One per process; sessions share the process's HTTP client."""

    name = "liveavatar"

    def __init__(self, settings: Settings, http: httpx2.AsyncClient) -> None:
        self._settings = settings
        self._http = http

    async def _create_token(self) -> TokenAnswer:
        data = await _request(self._http, "POST", _url(self._settings, "/v1/sessions/token"),
                              headers={"X-API-KEY": _api_key(self._settings)},
                              body=token_request_body(self._settings))
        return parse_token_answer(data)

    async def _start(self, token: TokenAnswer) -> StartAnswer:
        data = await _request(self._http, "POST", _url(self._settings, "/v1/sessions/start"),
                              headers={"Authorization": f"Bearer {token.session_token}"},
                              body={"session_id": token.session_id}, success_statuses=(200, 201))
        return parse_start_answer(data, token.session_id)

    async def _stop(self, token: TokenAnswer, reason: str) -> bool:
        """Stop the session (`stop_shielded`: shielded from the caller's cancellation, bounded by
        RELAY_STOP_TIMEOUT, retried on 429/5xx/network errors). Never raises; a failure is logged and returns
        False."""
        headers = {"Authorization": f"Bearer {token.session_token}"}
        problem = await stop_shielded(
            lambda: _stop_call(self._http, self._settings, headers, token.session_id, reason),
            self._settings.relay_stop_timeout)
        if problem is None:
            log.info("liveavatar session %s stopped (%s)", token.session_id, reason)
            return True
        log.warning("liveavatar session %s may still be running: stop failed (%s)", token.session_id,
                    problem.message)
        return False

    def _rest_keep_alive(self, token: TokenAnswer) -> Callable[[], Awaitable[None]]:
        async def keep_alive() -> None:
            try:
                await _request(self._http, "POST", _url(self._settings, "/v1/sessions/keep-alive"),
                               headers={"Authorization": f"Bearer {token.session_token}"},
                               body=keep_alive_request_body(token.session_id))
            except (ApiError, httpx2.HTTPError) as exc:
                log.warning("liveavatar keep-alive failed for session %s: %s", token.session_id,
                               _unavailable(exc).message)

        return keep_alive

    async def _create(self, created: list[TokenAnswer], on_created: OnSessionCreated | None) -> StartAnswer:
        """token -> start. Appends the token answer to `created` the moment it exists, so the caller can stop
        the session whatever happens next; `on_created(session_id)` runs alongside the start call."""
        try:
            token = await self._create_token()
        except (ApiError, httpx2.HTTPError) as exc:
            raise _unavailable(exc) from None
        created.append(token)
        try:
            return await alongside(on_created, token.session_id, lambda: self._start(token))
        except (ApiError, httpx2.HTTPError) as exc:
            raise _unavailable(exc) from None

    @asynccontextmanager
    async def open_session(self, on_event: OnAvatarEvent, *, on_created: OnSessionCreated | None = None,
                           on_stop_failed: OnStopFailed | None = None) -> AsyncIterator[LiveAvatarSession]:
        """Create (token, start) and connect a LITE session; yield it; stop it on every way out.

        The create step is shielded from cancellation and bounded by RELAY_SETUP_TIMEOUT: a token answered
        after the caller was cancelled still gives us the id to stop (otherwise a session would run, billed,
        until its idle timeout). Raises AvatarUnavailable if no session could be opened (timeout included),
        AvatarSessionEnded out of the body if the server closes the LITE socket. The stop is sent with reason
        USER_DISCONNECTED on a normal exit or cancellation, SERVER_ERROR on a failure.
        """
        created: list[TokenAnswer] = []
        reason = "SERVER_ERROR"
        deadline = setup_deadline(self._settings.relay_setup_timeout)
        try:
            with trio.CancelScope(shield=True):
                with trio.move_on_at(deadline) as setup:
                    start = await self._create(created, on_created)
            if setup.cancelled_caught:
                raise AvatarUnavailable("timeout", "LiveAvatar did not create the session in time.")
            # A cancellation that arrived while shielded is delivered here, and the finally stops the session.
            await trio.lowlevel.checkpoint()
            info = avatar_info(start)
            token = created[0]
            log.info("liveavatar session %s started (sandbox=%s, simulated=%s)", info.session_id,
                        self._settings.liveavatar_sandbox, info.simulated)
            granted = start.max_session_duration
            if granted is not None and granted < self._settings.relay_max_duration:
                log.warning("liveavatar granted a %d s session, shorter than RELAY_MAX_DURATION (%g s): the avatar "
                            "may end before the conversation (the plan's limit?)", granted,
                            self._settings.relay_max_duration)
            # Not waiting for `connected` here: the stream holds speech until then, the conversation bounds it.
            async with open_lite_audio_stream(start.ws_url, on_event,
                                         connect_timeout=min(10.0, self._settings.relay_setup_timeout)) as stream:
                yield LiveAvatarSession(info, stream, self._settings.relay_keep_alive_interval,
                                        self._rest_keep_alive(token))
            reason = "USER_DISCONNECTED"
        except trio.Cancelled:
            reason = "USER_DISCONNECTED"
            raise
        except BaseExceptionGroup as group:
            if group.split(trio.Cancelled)[1] is None:
                reason = "USER_DISCONNECTED"
            raise
        finally:
            if created and not await self._stop(created[0], reason) and on_stop_failed is not None:
                with trio.CancelScope(shield=True):
                    await on_stop_failed(created[0].session_id)
