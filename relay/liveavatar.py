"""LiveAvatar (LITE mode): the `AvatarProvider` named "liveavatar" (I/O), the twin of `relay.heygen`.

The REST calls that create, start and stop a session, and the session the conversation drives
(a `StreamedAudioSession`), which speaks the agent's audio over the LITE `ws_url` socket (`relay.avatars.lite`); two
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
    SessionRotated,
)
from relay.avatars import ending as avatar_ending
from relay.avatars.common import PLACEHOLDER_API_KEY, alongside, is_simulated, setup_deadline, stop_shielded
from relay.avatars.lite import open_lite_audio_stream
from relay.avatars.streamed import StreamedAudioSession
from relay.config import Settings
from relay.net.retry import Retryable, call_with_retries
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
    """What the browser gets: the LiveKit URL and the viewer's (client) token, never the agent token; and the length
    the start answer granted (`session_seconds`, kept server-side)."""
    return AvatarInfo(provider="liveavatar", session_id=start.session_id, livekit_url=start.livekit_url,
                      access_token=start.livekit_client_token, simulated=is_simulated(start.livekit_url),
                      session_seconds=None if start.max_session_duration is None else float(start.max_session_duration))


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


class LiveAvatarProvider:
    """`AvatarProvider` for LiveAvatar LITE. One per process; sessions share the process's HTTP client."""

    name = "liveavatar"

    def __init__(self, settings: Settings, http: httpx2.AsyncClient) -> None:
        self._settings = settings
        self._http = http
        self._duration_refused = False  # the plan refused our max_session_duration: ask without it from now on

    async def _create_token(self) -> TokenAnswer:
        """`sessions/token`. The per-plan session limits are not published: when the API refuses the
        max_session_duration asked (422 naming the field), the request is made again without it, so the plan's own
        limit applies (`open_session` compares what `start` grants with RELAY_MAX_DURATION), instead of every
        session going voice-only; later sessions ask without it at once."""
        body = token_request_body(self._settings)
        if self._duration_refused:
            body.pop("max_session_duration")
        try:
            data = await _request(self._http, "POST", _url(self._settings, "/v1/sessions/token"),
                                  headers={"X-API-KEY": _api_key(self._settings)}, body=body)
        except ApiError as exc:
            if exc.status != 422 or "max_session_duration" not in exc.message or self._duration_refused:
                raise
            self._duration_refused = True
            log.warning("LiveAvatar refused max_session_duration=%d s (%s): asking without it, so the plan's limit "
                        "applies; lower RELAY_MAX_DURATION (or LIVEAVATAR_MAX_SESSION_DURATION) to what the plan "
                        "allows", body["max_session_duration"], exc.message)
            return await self._create_token()
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
                           on_stop_failed: OnStopFailed | None = None) -> AsyncIterator[StreamedAudioSession]:
        """Create (token, start) and connect a LITE session; yield it; stop it on every way out.

        The create step is shielded from cancellation and bounded by RELAY_SETUP_TIMEOUT: a token answered
        after the caller was cancelled still gives us the id to stop (otherwise a session would run, billed,
        until its idle timeout). Raises AvatarUnavailable if no session could be opened (timeout included),
        AvatarSessionEnded out of the body if the server closes the LITE socket. The stop is sent with reason
        AGENT_HANG_UP when the agent ended the conversation (`relay.avatars.ending`), USER_DISCONNECTED on another
        normal exit or cancellation, MAX_DURATION_REACHED when the conversation rotates the session before its limit
        (`SessionRotated`), SERVER_ERROR on a failure.
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
                log.warning("liveavatar granted a %d s session, shorter than RELAY_MAX_DURATION (%g s) (the plan's "
                            "limit?): the conversation rotates to a fresh session between turns before it", granted,
                            self._settings.relay_max_duration)
            # Not waiting for `connected` here: the stream holds speech until then, the conversation bounds it.
            async with open_lite_audio_stream(
                    start.ws_url, on_event, connect_timeout=min(10.0, self._settings.relay_setup_timeout),
                    first_packet_seconds=self._settings.relay_lite_first_packet_ms / 1000) as stream:
                yield StreamedAudioSession(info, stream, self._settings.relay_keep_alive_interval,
                                           also_keep_alive=self._rest_keep_alive(token))
            reason = "USER_DISCONNECTED"
        except trio.Cancelled:
            reason = "USER_DISCONNECTED"
            raise
        except SessionRotated:
            reason = "MAX_DURATION_REACHED"
            raise
        except BaseExceptionGroup as group:
            if group.split(trio.Cancelled)[1] is None:
                reason = "USER_DISCONNECTED"
            elif group.split((trio.Cancelled, SessionRotated))[1] is None:
                reason = "MAX_DURATION_REACHED"  # rotated before its limit (`SessionRotated`)
            raise
        finally:
            if reason == "USER_DISCONNECTED" and avatar_ending.agent_hung_up():
                reason = "AGENT_HANG_UP"
            if created and not await self._stop(created[0], reason) and on_stop_failed is not None:
                with trio.CancelScope(shield=True):
                    await on_stop_failed(created[0].session_id)
