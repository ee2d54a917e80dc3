"""LiveAvatar (LITE mode): the REST calls that create, start and stop a session, and the provider the
conversation drives (`LiveAvatarProvider`), which speaks the agent's audio over the LITE `ws_url` socket
(`relay.avatars.lite`).

Sans-io first: request bodies, the `{code, data, message}` envelope check and the mapping of every refusal to
an `AvatarUnavailable` reason are plain functions. The I/O below them is thin and leak-proof: once
`sessions/token` has answered (a session exists and may be billed), the session is stopped on every way out,
including the caller being cancelled mid-start. This module must never retry `sessions/token` (a retry after
a lost answer creates a second session), and must never put an API key, session token, LiveKit token or the
`ws_url` (its query carries a token) into a log line or an exception message.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx2
import orjson
import trio

from relay.avatars import (
    AvatarInfo,
    AvatarUnavailable,
    OnAvatarEvent,
    OnSessionCreated,
    OnStopFailed,
    alongside,
)
from relay.avatars.lite import LiteSpeaker, open_lite_speaker
from relay.config import Settings
from relay.net.retry import Retryable, call_with_retries, parse_retry_after
from relay.protocol.audio import AudioFormat

logger = logging.getLogger(__name__)

SANDBOX_AVATAR_ID = "dd73ea75-1218-4ef3-92ce-606d5f7fbc0a"
SUCCESS_CODE = 1000
NO_CREDITS_CODE = 4033
# Undocumented upstream; our simulator's choice (see relay/sim/liveavatar_sim.py). Also recognised by message.
CONCURRENT_LIMIT_CODE = 4029
STOP_REASONS = frozenset({
    "UNKNOWN", "USER_DISCONNECTED", "SERVER_ERROR", "IDLE_TIMEOUT", "NO_CREDITS", "USER_CLOSED",
    "AVATAR_DELETED", "MAX_DURATION_REACHED", "ZOMBIE_SESSION_REAP", "AGENT_HANG_UP",
})
# Sent when no key is configured: the simulators accept any key, the real API answers 401 (-> "unauthorized").
PLACEHOLDER_API_KEY = "demo-key"
API_TIMEOUT = httpx2.Timeout(10.0, connect=5.0, pool=5.0)
MAX_MESSAGE_CHARS = 200


# ---------------------------------------------------------------------------------------------------------
# Request bodies


def token_request_body(settings: Settings) -> dict[str, Any]:
    """The `POST /v1/sessions/token` body for a LITE session: the configured avatar (the sandbox avatar when
    none is set), sandbox flag, video settings and maximum duration."""
    return {
        "mode": "LITE",
        "avatar_id": settings.liveavatar_avatar_id or SANDBOX_AVATAR_ID,
        "is_sandbox": settings.liveavatar_sandbox,
        "video_settings": {"quality": settings.liveavatar_quality, "encoding": "H264"},
        "max_session_duration": settings.liveavatar_max_session_duration,
    }


def stop_request_body(session_id: str, reason: str) -> dict[str, Any]:
    """The `POST /v1/sessions/stop` body. Raises ValueError on a reason the API does not define."""
    if reason not in STOP_REASONS:
        raise ValueError(f"unknown stop reason {reason!r}")
    return {"session_id": session_id, "reason": reason}


def keep_alive_request_body(session_id: str) -> dict[str, Any]:
    return {"session_id": session_id}


# ---------------------------------------------------------------------------------------------------------
# Answers


@dataclass(frozen=True, slots=True)
class TokenAnswer:
    session_id: str
    session_token: str


@dataclass(frozen=True, slots=True)
class StartAnswer:
    session_id: str
    livekit_url: str
    livekit_client_token: str
    livekit_agent_token: str | None
    max_session_duration: int | None
    ws_url: str


class LiveAvatarApiError(Exception):
    """A refusal or malformed answer from the LiveAvatar API. `message` is the upstream's text, shortened; it
    never contains our secrets (we never send them in a body the API could echo)."""

    def __init__(self, status: int, code: int | None, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(f"LiveAvatar answered HTTP {status}" + (f" code {code}" if code is not None else "")
                         + (f": {message}" if message else ""))
        self.status = status
        self.code = code
        self.message = message
        self.retry_after = retry_after

    @property
    def retryable(self) -> bool:
        """Safe to repeat for idempotent calls: rate limits and server errors (a concurrency refusal is not)."""
        if self.status == 429:
            return not _is_concurrency_refusal(self)
        return self.status >= 500


def _short(text: object) -> str:
    return str(text)[:MAX_MESSAGE_CHARS] if text is not None else ""


def _validation_message(detail: object) -> str:
    # 422 `{"detail": [{"loc": [...], "msg": "...", "type": "..."}]}`; loc names fields, msg never holds input.
    if not isinstance(detail, list):
        return _short(detail)
    parts = []
    for item in detail[:5]:
        if isinstance(item, dict):
            loc = ".".join(str(p) for p in item.get("loc", []) if p != "body")
            parts.append(f"{loc}: {item.get('msg', '')}" if loc else str(item.get("msg", "")))
    return _short("; ".join(parts))


def parse_envelope(status: int, body: bytes, *, retry_after: str | None = None,
                   success_statuses: tuple[int, ...] = (200,)) -> Any:
    """The `data` of a successful answer. Success is an expected HTTP status AND envelope code 1000 (the web
    SDK rejects anything else even on 2xx). Raises LiveAvatarApiError for every other form: 422 `detail`
    lists, 401 `{"error": ...}`, envelopes with another code, non-JSON bodies."""
    try:
        payload = orjson.loads(body) if body else None
    except orjson.JSONDecodeError:
        payload = None
    wait = parse_retry_after(retry_after)
    if not isinstance(payload, dict):
        raise LiveAvatarApiError(status, None, "answer is not a JSON object", retry_after=wait)
    raw_code = payload.get("code")
    code = raw_code if isinstance(raw_code, int) and not isinstance(raw_code, bool) else None
    if "detail" in payload and code is None:
        raise LiveAvatarApiError(status, None, _validation_message(payload["detail"]), retry_after=wait)
    if "error" in payload and code is None:
        error = payload["error"]
        text = error.get("message") if isinstance(error, dict) else error
        raise LiveAvatarApiError(status, None, _short(text), retry_after=wait)
    message = _short(payload.get("message"))
    if status not in success_statuses or code != SUCCESS_CODE:
        raise LiveAvatarApiError(status, code, message, retry_after=wait)
    return payload.get("data")


def _is_concurrency_refusal(error: LiveAvatarApiError) -> bool:
    return error.code == CONCURRENT_LIMIT_CODE or "concurren" in error.message.lower()


def unavailable_from(error: LiveAvatarApiError) -> AvatarUnavailable:
    """Map an API refusal to the provider-neutral reason (see `AvatarUnavailable`)."""
    status, code = error.status, error.code
    if status == 401:
        reason, text = "unauthorized", "LiveAvatar refused the API key (LIVEAVATAR_API_KEY)."
    elif code == NO_CREDITS_CODE or status == 403:
        reason, text = "no_credits", "The LiveAvatar account has no credits left."
    elif _is_concurrency_refusal(error):
        reason, text = "concurrent_limit", "Too many LiveAvatar sessions are running at once."
    elif status == 429:
        reason, text = "rate_limited", "LiveAvatar is rate limiting requests; try again shortly."
    elif status == 422 or (400 <= status < 500 and status != 408):
        detail = f": {error.message}" if error.message else ""
        reason, text = "bad_config", f"LiveAvatar rejected the session request (HTTP {status}){detail}."
    elif status == 408 or status == 504:
        reason, text = "timeout", "LiveAvatar did not answer in time."
    else:
        reason, text = "upstream_error", f"LiveAvatar failed (HTTP {status}" + (
            f", code {code})." if code is not None else ").")
    return AvatarUnavailable(reason, text, upstream_code=code if code is not None else status,
                             retry_after=error.retry_after)


def parse_token_answer(data: Any) -> TokenAnswer:
    if not isinstance(data, dict):
        raise LiveAvatarApiError(200, SUCCESS_CODE, "token answer has no data")
    session_id, token = data.get("session_id"), data.get("session_token")
    if not isinstance(session_id, str) or not isinstance(token, str) or not session_id or not token:
        raise LiveAvatarApiError(200, SUCCESS_CODE, "token answer lacks session_id or session_token")
    return TokenAnswer(session_id, token)


def parse_start_answer(data: Any, session_id: str) -> StartAnswer:
    if not isinstance(data, dict):
        raise LiveAvatarApiError(201, SUCCESS_CODE, "start answer has no data")
    livekit_url, client_token, ws_url = data.get("livekit_url"), data.get("livekit_client_token"), data.get("ws_url")
    if not all(isinstance(v, str) and v for v in (livekit_url, client_token, ws_url)):
        raise LiveAvatarApiError(201, SUCCESS_CODE, "start answer lacks livekit_url, livekit_client_token or ws_url")
    agent_token = data.get("livekit_agent_token")
    duration = data.get("max_session_duration")
    answered_id = data.get("session_id")
    return StartAnswer(
        session_id=answered_id if isinstance(answered_id, str) and answered_id else session_id,
        livekit_url=str(livekit_url), livekit_client_token=str(client_token),
        livekit_agent_token=agent_token if isinstance(agent_token, str) else None,
        max_session_duration=duration if isinstance(duration, int) else None,
        ws_url=str(ws_url),
    )


def is_simulated_livekit(livekit_url: str) -> bool:
    """The simulators hand out LiveKit URLs on the reserved `.invalid` TLD: there is no real room."""
    host = urlsplit(livekit_url).hostname or ""
    return host.endswith(".invalid")


def avatar_info(start: StartAnswer) -> AvatarInfo:
    """What the browser gets: the LiveKit URL and the viewer's (client) token, never the agent token."""
    return AvatarInfo(provider="liveavatar", session_id=start.session_id, livekit_url=start.livekit_url,
                      access_token=start.livekit_client_token, simulated=is_simulated_livekit(start.livekit_url))


def active_session_ids(data: Any) -> tuple[list[str], bool]:
    """`GET /v1/sessions` data -> (session ids on this page, whether there is a next page)."""
    if not isinstance(data, dict):
        raise LiveAvatarApiError(200, SUCCESS_CODE, "session list has no data")
    results = data.get("results")
    ids = [item["id"] for item in results or [] if isinstance(item, dict) and isinstance(item.get("id"), str)]
    return ids, bool(data.get("next"))


# ---------------------------------------------------------------------------------------------------------
# HTTP


def _api_key(settings: Settings) -> str:
    key = settings.liveavatar_api_key
    return key.get_secret_value() if key is not None else PLACEHOLDER_API_KEY


def _url(settings: Settings, path: str) -> str:
    return settings.liveavatar_base_url.rstrip("/") + path


async def _request(http: httpx2.AsyncClient, method: str, url: str, *, headers: dict[str, str],
                   body: dict[str, Any] | None = None, params: dict[str, Any] | None = None,
                   success_statuses: tuple[int, ...] = (200,)) -> Any:
    """One API call -> envelope data. Raises LiveAvatarApiError for refusals and httpx2.TransportError for
    network failures (both without secrets: httpx messages hold the URL, which has none)."""
    content = orjson.dumps(body) if body is not None else None
    request_headers = {"Accept": "application/json", **headers}
    if content is not None:
        request_headers["Content-Type"] = "application/json"
    response = await http.request(method, url, headers=request_headers, content=content, params=params,
                                  timeout=API_TIMEOUT)
    return parse_envelope(response.status_code, response.content, retry_after=response.headers.get("Retry-After"),
                          success_statuses=success_statuses)


async def _retrying(call: Callable[[], Awaitable[Any]]) -> Any:
    """Run an idempotent call with retries on 429/5xx and network errors."""

    async def attempt() -> Any:
        try:
            return await call()
        except LiveAvatarApiError as exc:
            if exc.retryable:
                raise Retryable(str(exc), retry_after=exc.retry_after) from exc
            raise
        except httpx2.TransportError as exc:
            raise Retryable(f"network error: {type(exc).__name__}") from exc

    return await call_with_retries(attempt, attempts=3)


def _unavailable(exc: BaseException) -> AvatarUnavailable:
    if isinstance(exc, LiveAvatarApiError):
        return unavailable_from(exc)
    if isinstance(exc, Retryable) and isinstance(exc.__cause__, LiveAvatarApiError):
        return unavailable_from(exc.__cause__)
    if isinstance(exc, httpx2.TimeoutException):
        return AvatarUnavailable("timeout", "LiveAvatar did not answer in time.")
    return AvatarUnavailable("upstream_error", f"Could not reach LiveAvatar ({type(exc).__name__}).")


async def list_active_sessions(settings: Settings, http: httpx2.AsyncClient) -> list[str]:
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
    except (LiveAvatarApiError, Retryable, httpx2.HTTPError) as exc:
        raise _unavailable(exc) from None


async def stop_session_by_id(settings: Settings, http: httpx2.AsyncClient, session_id: str, reason: str) -> None:
    """Stop one session with the API key (`POST /v1/sessions/stop`), retrying 429/5xx and network errors.
    Raises AvatarUnavailable if it could not be stopped. Cancelled by the caller's scope."""
    body = stop_request_body(session_id, reason)
    headers = {"X-API-KEY": _api_key(settings)}
    try:
        await _retrying(lambda: _request(http, "POST", _url(settings, "/v1/sessions/stop"), headers=headers,
                                         body=body))
    except (LiveAvatarApiError, Retryable, httpx2.HTTPError) as exc:
        raise _unavailable(exc) from None


# ---------------------------------------------------------------------------------------------------------
# The provider


class LiveAvatarSession:
    """One running LITE session (an `AvatarSession`): audio goes to the LITE socket, keep-alives to both the
    socket and the REST API."""

    def __init__(self, info: AvatarInfo, speaker: LiteSpeaker, keep_alive_interval: float,
                 rest_keep_alive: Callable[[], Awaitable[None]]) -> None:
        self._info = info
        self._speaker = speaker
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
            logger.warning("liveavatar LITE sessions take audio, not text; ignoring speak_text")

    async def speak_audio(self, audio: bytes, audio_format: AudioFormat, turn: int) -> None:
        await self._speaker.speak_audio(audio, audio_format, turn)

    async def end_turn(self, turn: int) -> None:
        await self._speaker.end_turn(turn)

    async def interrupt(self, turn: int) -> None:
        await self._speaker.interrupt(turn)

    async def keep_alive(self) -> None:
        """`session.keep_alive` on the socket, then the REST keep-alive (clients disagree on which one the
        server counts; both are cheap at one per interval). Failures are logged, never raised."""
        await self._speaker.keep_alive()
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
        """Stop the session: shielded from the caller's cancellation, bounded by RELAY_STOP_TIMEOUT, retried
        on 429/5xx/network errors. Never raises; a failure is logged and returns False."""
        body = stop_request_body(token.session_id, reason)
        headers = {"Authorization": f"Bearer {token.session_token}"}
        with trio.move_on_after(self._settings.relay_stop_timeout, shield=True) as scope:
            try:
                await _retrying(lambda: _request(self._http, "POST", _url(self._settings, "/v1/sessions/stop"),
                                                 headers=headers, body=body))
                logger.info("liveavatar session %s stopped (%s)", token.session_id, reason)
                return True
            except (LiveAvatarApiError, Retryable, httpx2.HTTPError) as exc:
                logger.warning("liveavatar session %s may still be running: stop failed (%s)",
                               token.session_id, _unavailable(exc).message)
                return False
        if scope.cancelled_caught:
            logger.warning("liveavatar session %s may still be running: stop timed out after %.1f s",
                           token.session_id, self._settings.relay_stop_timeout)
        return False

    def _rest_keep_alive(self, token: TokenAnswer) -> Callable[[], Awaitable[None]]:
        async def keep_alive() -> None:
            try:
                await _request(self._http, "POST", _url(self._settings, "/v1/sessions/keep-alive"),
                               headers={"Authorization": f"Bearer {token.session_token}"},
                               body=keep_alive_request_body(token.session_id))
            except (LiveAvatarApiError, httpx2.HTTPError) as exc:
                logger.warning("liveavatar keep-alive failed for session %s: %s", token.session_id,
                               _unavailable(exc).message)

        return keep_alive

    async def _create(self, created: list[TokenAnswer], on_created: OnSessionCreated | None) -> StartAnswer:
        """token -> start. Appends the token answer to `created` the moment it exists, so the caller can stop
        the session whatever happens next; `on_created(session_id)` runs alongside the start call."""
        try:
            token = await self._create_token()
        except (LiveAvatarApiError, httpx2.HTTPError) as exc:
            raise _unavailable(exc) from None
        created.append(token)
        try:
            return await alongside(on_created, token.session_id, lambda: self._start(token))
        except (LiveAvatarApiError, httpx2.HTTPError) as exc:
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
        try:
            with trio.CancelScope(shield=True):
                with trio.move_on_after(self._settings.relay_setup_timeout) as setup:
                    start = await self._create(created, on_created)
            if setup.cancelled_caught:
                raise AvatarUnavailable("timeout", "LiveAvatar did not create the session in time.")
            # A cancellation that arrived while shielded is delivered here, and the finally stops the session.
            await trio.lowlevel.checkpoint()
            info = avatar_info(start)
            token = created[0]
            logger.info("liveavatar session %s started (sandbox=%s, simulated=%s)", info.session_id,
                        self._settings.liveavatar_sandbox, info.simulated)
            async with open_lite_speaker(start.ws_url, on_event,
                                         connect_timeout=min(10.0, self._settings.relay_setup_timeout)) as speaker:
                yield LiveAvatarSession(info, speaker, self._settings.relay_keep_alive_interval,
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
