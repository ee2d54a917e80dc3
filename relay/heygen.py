"""HeyGen Interactive Avatar, Streaming API v1: the `AvatarProvider` named "heygen".

Two layers in one module. The first is sans-io: request bodies, the answer envelope, and the mapping from HTTP
status + HeyGen error codes to the relay's typed failures (`AvatarUnavailable` reasons, "session gone"); plain
functions and frozen dataclasses, unit-tested without sockets. The second is thin I/O around it: one HTTP seam
(`_HeyGenApi.call`), `HeyGenProvider.open_session` (which always stops what it created), the two session kinds
(text: `streaming.task` repeat; realtime: audio over `realtime_endpoint` via `relay.avatars.lite`), and two operator
calls (`list_sessions`, `stop_session_by_id`) for reaping orphans.

This module must never retry `streaming.new` (a retry after a lost answer creates a second billed session),
never leave a session it created running, and never put the API key in a log line, an exception message or
anything that reaches a browser (only `AvatarInfo` does: the viewer's LiveKit token, never the key).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx2
import orjson
import trio

from relay.avatars import (
    AvatarInfo,
    AvatarSession,
    AvatarSessionEnded,
    AvatarSpeaking,
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

log = logging.getLogger(__name__)

# ----------------------------------------------------------------------------------------------------------
# Sans-io: endpoints and request bodies
# ----------------------------------------------------------------------------------------------------------

NEW = "/v1/streaming.new"
START = "/v1/streaming.start"
TASK = "/v1/streaming.task"
INTERRUPT = "/v1/streaming.interrupt"
KEEP_ALIVE = "/v1/streaming.keep_alive"
STOP = "/v1/streaming.stop"
LIST_V1 = "/v1/streaming.list"
LIST_V2 = "/v2/streaming.list"

# Sent when no key is configured (demo mode, on the simulator): the header must be present, and a placeholder
# makes it obvious in the simulator's ledger that no real key was used.
DEMO_API_KEY = "demo-mode-no-key"

# Statuses a v2 list entry can have while the session still runs (and bills).
ACTIVE_STATUSES = frozenset({"new", "connecting", "connected"})


def new_session_body(settings: Settings) -> dict[str, Any]:
    """Body of `streaming.new`.

    The avatar goes in both `avatar_id` (the REST docs) and `avatar_name` (what the official SDK sends): the
    service accepts either, and sending the same value under both names keeps working whichever one a given
    account's backend reads. `version: "v2"` selects LiveKit (without it the retired raw-WebRTC flow is used).
    """
    body: dict[str, Any] = {
        "quality": settings.heygen_quality,
        "version": "v2",
        "video_encoding": "H264",
        "activity_idle_timeout": settings.heygen_idle_timeout,
    }
    if settings.heygen_avatar_id:
        body["avatar_id"] = settings.heygen_avatar_id
        body["avatar_name"] = settings.heygen_avatar_id
    if settings.heygen_voice_id:
        body["voice"] = {"voice_id": settings.heygen_voice_id}
    return body


def session_body(session_id: str) -> dict[str, Any]:
    """Body of `streaming.start`, `.interrupt`, `.keep_alive` and `.stop`."""
    return {"session_id": session_id}


def task_body(session_id: str, text: str) -> dict[str, Any]:
    """Body of `streaming.task`: speak `text` verbatim (`repeat`, not HeyGen's own LLM).

    `task_mode` is "async": the answer comes back at once with `duration_ms`, and HeyGen queues the speech. In
    "sync" mode the call would only return once the avatar finished speaking, so the speaker would sit blocked
    for the whole utterance and an interruption could not cancel the speech by cancelling the call.
    """
    return {"session_id": session_id, "text": text, "task_type": "repeat", "task_mode": "async"}


def list_params(page: int, page_size: int, token: str | None) -> dict[str, str | int]:
    """Query of `GET /v2/streaming.list`; `token` is the previous page's `next_pagination_token`."""
    params: dict[str, str | int] = {"page": page, "page_size": page_size}
    if token:
        params["token"] = token
    return params


# ----------------------------------------------------------------------------------------------------------
# Sans-io: answers
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HeyGenFailure:
    """One failed call, as data. `status` is None when no HTTP answer arrived (`timed_out`: none in time)."""

    status: int | None
    code: int | str | None
    message: str
    retry_after: float | None = None
    timed_out: bool = False


class HeyGenCallError(Exception):
    """A HeyGen call failed; `failure` says how. Its message comes from the failure: no key."""

    def __init__(self, failure: HeyGenFailure) -> None:
        super().__init__(describe_failure(failure))
        self.failure = failure


def _normalize_code(code: object) -> int | str | None:
    if isinstance(code, bool):
        return None
    if isinstance(code, int):
        return code
    if isinstance(code, str):
        stripped = code.strip()
        return int(stripped) if stripped.isdigit() else stripped
    return None


def is_success_code(code: object) -> bool:
    """`100` or ⚠ `"SUCCESS"` (any case; "100" as a string too)."""
    normalized = _normalize_code(code)
    return normalized == 100 or (isinstance(normalized, str) and normalized.upper() == "SUCCESS")


def _message_of(payload: Mapping[str, Any]) -> str:
    for key in ("message", "msg", "detail"):
        value = payload.get(key)
        if isinstance(value, str) and value:
            return value
    error = payload.get("error")
    if isinstance(error, str) and error:
        return error
    if isinstance(error, Mapping):
        inner = error.get("message")
        if isinstance(inner, str) and inner:
            return inner
    return ""


def _code_of(payload: Mapping[str, Any]) -> int | str | None:
    code = _normalize_code(payload.get("code"))
    if code is None and isinstance(payload.get("error"), Mapping):
        code = _normalize_code(payload["error"].get("code"))
    return code


def read_answer(status: int, body: bytes, retry_after: str | None = None) -> Any:
    """Return the `data` of an answer, or raise HeyGenCallError.

    Any non-2xx is an error, whatever its body says. A 2xx is an error too if its envelope carries a code
    other than success (`100` / `"SUCCESS"`) or a non-null `error` (the `create_token` form). `data` missing
    or null is an empty dict.
    """
    try:
        payload = orjson.loads(body) if body else None
    except orjson.JSONDecodeError:
        payload = None
    if not 200 <= status < 300:
        message = ""
        code: int | str | None = None
        if isinstance(payload, Mapping):
            message = _message_of(payload)
            code = _code_of(payload)
        raise HeyGenCallError(HeyGenFailure(status, code, message or f"HTTP {status}",
                                            parse_retry_after(retry_after)))
    if not isinstance(payload, Mapping):
        raise HeyGenCallError(HeyGenFailure(status, None, "the answer was not a JSON object"))
    if "code" in payload and not is_success_code(payload["code"]):
        message = _message_of(payload) or "not successful"
        raise HeyGenCallError(HeyGenFailure(status, _code_of(payload), message))
    if payload.get("error"):
        raise HeyGenCallError(HeyGenFailure(status, _code_of(payload), _message_of(payload) or "error"))
    data = payload.get("data")
    return {} if data is None else data


@dataclass(frozen=True, slots=True)
class NewSession:
    """What `streaming.new` answered. `access_token` is the viewer's LiveKit token (meant for the browser)."""

    session_id: str
    url: str
    access_token: str
    realtime_endpoint: str | None
    session_duration_limit: int | None
    is_paid: bool | None


def session_id_of(data: object) -> str | None:
    """The `session_id` of a `streaming.new` answer, or None. Read first and alone, so a session is stopped
    even when the rest of its answer is malformed."""
    if isinstance(data, Mapping):
        sid = data.get("session_id")
        if isinstance(sid, str) and sid:
            return sid
    return None


def parse_new_session(data: object) -> NewSession:
    """Parse the `data` of `streaming.new`; ValueError names the first missing field."""
    if not isinstance(data, Mapping):
        raise ValueError("streaming.new answered without data")
    session_id = session_id_of(data)
    if session_id is None:
        raise ValueError("streaming.new answered without session_id")
    url = data.get("url")
    token = data.get("access_token")
    if not isinstance(url, str) or not url:
        raise ValueError("streaming.new answered without url")
    if not isinstance(token, str) or not token:
        raise ValueError("streaming.new answered without access_token")
    realtime = data.get("realtime_endpoint")
    limit = data.get("session_duration_limit")
    paid = data.get("is_paid")
    return NewSession(
        session_id=session_id,
        url=url,
        access_token=token,
        realtime_endpoint=realtime if isinstance(realtime, str) and realtime else None,
        session_duration_limit=int(limit) if isinstance(limit, int | float) and not isinstance(limit, bool)
        else None,
        is_paid=paid if isinstance(paid, bool) else None,
    )


@dataclass(frozen=True, slots=True)
class TaskAccepted:
    task_id: str | None
    duration_ms: int | None


def parse_task(data: object) -> TaskAccepted:
    """Parse the `data` of `streaming.task`; missing fields are None (HeyGen sometimes answers them late,
    StreamingAvatar #12), never an error: the task was accepted."""
    if not isinstance(data, Mapping):
        return TaskAccepted(None, None)
    task_id = data.get("task_id")
    duration = data.get("duration_ms")
    return TaskAccepted(
        task_id=str(task_id) if task_id is not None else None,
        duration_ms=int(duration) if isinstance(duration, int | float) and not isinstance(duration, bool)
        and duration >= 0 else None,
    )


def is_simulated(livekit_url: str) -> bool:
    """True when the LiveKit URL is on the reserved `.invalid` TLD (the simulators' room: nothing to join)."""
    host = urlsplit(livekit_url).hostname or ""
    return host.endswith(".invalid")


def keep_alive_interval(settings: Settings) -> float:
    """The configured keep-alive interval, clamped to half the HeyGen idle timeout so one lost keep-alive does
    not let the session expire."""
    return min(settings.relay_keep_alive_interval, settings.heygen_idle_timeout / 2)


# ----------------------------------------------------------------------------------------------------------
# Sans-io: what a failure means
# ----------------------------------------------------------------------------------------------------------

CONCURRENT_LIMIT_CODES = frozenset({10007, 10014})
UNAUTHORIZED_CODES = frozenset({40102})
RATE_LIMIT_CODES = frozenset({400123})
NO_CREDITS_CODES = frozenset({10015})
BAD_AVATAR_CODES = frozenset({10012, 10013, 400014})
# 10001-10005 "session state wrong: new / connecting / connected / closing / closed"; only the last two (and
# the not-found codes) mean the session is gone. 10003 is also used for "avatar version is deprecated".
STATE_CODES = {10001: "new", 10002: "connecting", 10003: "connected", 10004: "closing", 10005: "closed"}
SESSION_GONE_CODES = frozenset({10004, 10005, 10006, 400004})
_GONE_PHRASES = ("session does not exist", "session not found", "state wrong: closed", "state wrong: closing")

_REASON_MESSAGES = {
    "concurrent_limit": "HeyGen refused a new avatar session: the account is at its concurrent session cap.",
    "unauthorized": "HeyGen rejected the API key (check HEYGEN_API_KEY).",
    "no_credits": "HeyGen refused a new avatar session: the account's credits or trial limit are used up.",
    "rate_limited": "HeyGen is rate limiting requests; try again shortly.",
    "bad_config": "HeyGen refused the avatar configuration (check HEYGEN_AVATAR_ID and HEYGEN_BASE_URL).",
    "timeout": "HeyGen did not answer in time.",
    "upstream_error": "HeyGen failed to open an avatar session.",
}


def _is_deprecated_avatar(failure: HeyGenFailure) -> bool:
    return failure.code in (10003, 400014) and "deprecat" in failure.message.lower()


def unavailable_reason(failure: HeyGenFailure) -> str:
    """The `AvatarUnavailable.reason` for a failure while opening a session."""
    code, status = failure.code, failure.status
    if failure.timed_out:
        return "timeout"
    if code in CONCURRENT_LIMIT_CODES:
        return "concurrent_limit"
    if status in (401, 403) or code in UNAUTHORIZED_CODES:
        return "unauthorized"
    if status == 429 or code in RATE_LIMIT_CODES:
        return "rate_limited"
    if status == 402 or code in NO_CREDITS_CODES:
        return "no_credits"
    if code in BAD_AVATAR_CODES or _is_deprecated_avatar(failure):
        return "bad_config"
    if status in (404, 405) and code is None:
        return "bad_config"
    return "upstream_error"


def is_session_gone(failure: HeyGenFailure) -> bool:
    """True when the failure says the session no longer exists or is closing/closed on HeyGen's side."""
    if _is_deprecated_avatar(failure):
        return False
    if failure.code in SESSION_GONE_CODES:
        return True
    message = failure.message.lower()
    in_4xx = failure.status is not None and 400 <= failure.status < 500
    return in_4xx and any(phrase in message for phrase in _GONE_PHRASES)


def is_retryable(failure: HeyGenFailure) -> bool:
    """Worth another attempt for an idempotent call: no answer (network error, timeout), 429 / rate-limit
    code, or a 5xx."""
    if failure.status is None:
        return True
    return failure.status == 429 or failure.code in RATE_LIMIT_CODES or failure.status >= 500


def describe_failure(failure: HeyGenFailure) -> str:
    """One line for logs and exception messages: status, code and HeyGen's own message (never the key, which
    no answer carries and `redact` removes anyway before a failure is built)."""
    parts = []
    if failure.status is not None:
        parts.append(f"HTTP {failure.status}")
    elif failure.timed_out:
        parts.append("timed out")
    else:
        parts.append("no answer")
    if failure.code is not None:
        parts.append(f"code {failure.code}")
    if failure.message:
        parts.append(failure.message[:200])
    return ", ".join(parts)


def to_unavailable(failure: HeyGenFailure, action: str) -> AvatarUnavailable:
    """`AvatarUnavailable` for a failure of `action` ("streaming.new", ...), with a user-safe message."""
    reason = unavailable_reason(failure)
    return AvatarUnavailable(
        reason,
        f"{_REASON_MESSAGES[reason]} ({action}: {describe_failure(failure)})",
        upstream_code=failure.code if failure.code is not None else failure.status,
        retry_after=failure.retry_after,
    )


def to_session_ended(failure: HeyGenFailure, session_id: str) -> AvatarSessionEnded:
    return AvatarSessionEnded(
        "session_gone",
        f"The HeyGen avatar session {session_id} ended ({describe_failure(failure)}).",
        upstream_code=failure.code,
    )


def redact(text: str, secret: str | None) -> str:
    """`text` with every occurrence of `secret` replaced (defence in depth for messages built from upstream
    text or transport errors)."""
    if secret and len(secret) >= 4:
        return text.replace(secret, "[redacted]")
    return text


# ----------------------------------------------------------------------------------------------------------
# I/O: the HTTP seam
# ----------------------------------------------------------------------------------------------------------

# Per-call bound for everything but `streaming.new`/`.start` (those use RELAY_SETUP_TIMEOUT). The pool timeout
# matters: a cancelled request can leave httpcore's pool waiting (httpcore #830).
CALL_TIMEOUT = 10.0


class _RetryableCall(Retryable):
    def __init__(self, error: HeyGenCallError) -> None:
        super().__init__(str(error), retry_after=error.failure.retry_after)
        self.error = error


class _HeyGenApi:
    """The one place that talks HTTP to HeyGen. Holds the key and redacts it from whatever it raises."""

    def __init__(self, settings: Settings, http: httpx2.AsyncClient) -> None:
        self._base = settings.heygen_base_url.rstrip("/")
        self._key = settings.heygen_api_key.get_secret_value() if settings.heygen_api_key else DEMO_API_KEY
        self._http = http

    async def call(self, method: str, path: str, body: Mapping[str, Any] | None = None, *,
                   params: Mapping[str, str | int] | None = None, time_limit: float = CALL_TIMEOUT) -> Any:
        """One request; returns the answer's `data` or raises HeyGenCallError. Bounded by `time_limit` (every
        phase, including waiting for a pooled connection); cancelled by the caller's scope."""
        headers = {"x-api-key": self._key, "accept": "application/json"}
        content = None
        if body is not None:
            headers["content-type"] = "application/json"
            content = orjson.dumps(body)
        try:
            response = await self._http.request(method, self._base + path, content=content, headers=headers,
                                                params=params, timeout=httpx2.Timeout(time_limit))
        except httpx2.TimeoutException as exc:
            raise HeyGenCallError(HeyGenFailure(None, None, self._safe(f"{path}: {type(exc).__name__}"),
                                                timed_out=True)) from None
        except httpx2.HTTPError as exc:
            message = self._safe(f"{path}: {type(exc).__name__}: {exc}")
            raise HeyGenCallError(HeyGenFailure(None, None, message)) from None
        try:
            return read_answer(response.status_code, response.content, response.headers.get("retry-after"))
        except HeyGenCallError as exc:
            failure = exc.failure
            raise HeyGenCallError(HeyGenFailure(failure.status, failure.code, self._safe(failure.message),
                                                failure.retry_after, failure.timed_out)) from None

    async def call_with_retries(self, method: str, path: str, body: Mapping[str, Any] | None = None, *,
                                params: Mapping[str, str | int] | None = None, attempts: int = 3,
                                cap: float = 5.0) -> Any:
        """`call` retried on network errors, timeouts, 429 (honouring Retry-After) and 5xx. Only for calls
        that are safe to repeat. Raises the last HeyGenCallError."""

        async def attempt() -> Any:
            try:
                return await self.call(method, path, body, params=params)
            except HeyGenCallError as exc:
                if is_retryable(exc.failure):
                    raise _RetryableCall(exc) from None
                raise

        try:
            return await call_with_retries(attempt, attempts=attempts, cap=cap)
        except _RetryableCall as exc:
            raise exc.error from None

    def _safe(self, text: str) -> str:
        return redact(text, self._key)


async def _stop(api: _HeyGenApi, session_id: str, stop_timeout: float) -> bool:
    """Stop a session, retrying 429/5xx/network errors within `stop_timeout`. Shielded: runs to the end even
    if the caller is being cancelled. True when the session is known to be stopped (or already gone)."""
    with trio.move_on_after(stop_timeout, shield=True):
        try:
            await api.call_with_retries("POST", STOP, session_body(session_id), attempts=4,
                                        cap=max(0.1, stop_timeout / 2))
        except HeyGenCallError as exc:
            if is_session_gone(exc.failure):
                log.debug("heygen session %s was already gone at stop", session_id)
                return True
            log.warning("heygen session %s: stop failed (%s); it runs until HeyGen's idle timeout unless "
                        "reaped", session_id, exc)
            return False
        log.info("heygen session %s stopped", session_id)
        return True
    log.warning("heygen session %s: stop did not finish within %.1fs; it runs until HeyGen's idle timeout "
                "unless reaped", session_id, stop_timeout)
    return False


# ----------------------------------------------------------------------------------------------------------
# I/O: sessions
# ----------------------------------------------------------------------------------------------------------


class _SessionBase:
    def __init__(self, api: _HeyGenApi, new: NewSession, settings: Settings, on_event: OnAvatarEvent) -> None:
        self._api = api
        self._new = new
        self._on_event = on_event
        self._keep_alive_interval = keep_alive_interval(settings)
        self._info = AvatarInfo(provider="heygen", session_id=new.session_id, livekit_url=new.url,
                                access_token=new.access_token, simulated=is_simulated(new.url))

    @property
    def info(self) -> AvatarInfo:
        return self._info

    @property
    def keep_alive_interval(self) -> float:
        return self._keep_alive_interval

    async def _session_call(self, path: str, *, what: str, retries: bool = False,
                            body: Mapping[str, Any] | None = None) -> Any | None:
        """A call about this session: returns its data, or None after logging a single failure; raises
        AvatarSessionEnded when HeyGen says the session is gone. Cancelled by the caller's scope."""
        sid = self._new.session_id
        try:
            if retries:
                return await self._api.call_with_retries("POST", path, body or session_body(sid))
            return await self._api.call("POST", path, body or session_body(sid))
        except HeyGenCallError as exc:
            if is_session_gone(exc.failure):
                raise to_session_ended(exc.failure, sid) from None
            log.warning("heygen session %s: %s failed (%s)", sid, what, exc)
            return None

    async def interrupt(self, turn: int) -> None:
        """`streaming.interrupt`: stop the current speech and HeyGen's queued tasks."""
        await self._session_call(INTERRUPT, what=f"interrupt of turn {turn}")

    async def _rest_keep_alive(self) -> None:
        await self._session_call(KEEP_ALIVE, what="keep-alive", retries=True)


class _TextSession(_SessionBase):
    """Text mode: the avatar speaks the agent's text with HeyGen's own TTS voice (`streaming.task` repeat)."""

    @property
    def takes_audio(self) -> bool:
        return False

    async def speak_text(self, text: str, turn: int) -> None:
        """Queue `text` with HeyGen and report `AvatarSpeaking(text, duration_ms)`. A failed task is logged
        and dropped; a gone session raises AvatarSessionEnded. Cancelled by the caller's scope (the task may
        still have been queued upstream)."""
        if not text.strip():
            return
        data = await self._session_call(TASK, what=f"task of turn {turn}",
                                        body=task_body(self._new.session_id, text))
        if data is None:
            return
        accepted = parse_task(data)
        self._on_event(AvatarSpeaking(text=text, duration_ms=accepted.duration_ms))

    async def speak_audio(self, audio: bytes, audio_format: AudioFormat, turn: int) -> None:
        """Not used in text mode (`takes_audio` is False): the audio is dropped."""

    async def end_turn(self, turn: int) -> None:
        """Nothing to finish in text mode: each task is a whole utterance."""

    async def keep_alive(self) -> None:
        """`streaming.keep_alive`, retried on 429/5xx/network errors; a gone session raises
        AvatarSessionEnded."""
        await self._rest_keep_alive()


class _RealtimeSession(_SessionBase):
    """Audio mode: the agent's own voice is lip-synced through the session's `realtime_endpoint` (LITE
    protocol)."""

    def __init__(self, api: _HeyGenApi, new: NewSession, settings: Settings, on_event: OnAvatarEvent,
                 speaker: LiteSpeaker) -> None:
        super().__init__(api, new, settings, on_event)
        self._speaker = speaker

    @property
    def takes_audio(self) -> bool:
        return True

    async def speak_text(self, text: str, turn: int) -> None:
        """Not used in audio mode (`takes_audio` is True): HeyGen's TTS would talk over the agent's voice."""

    async def speak_audio(self, audio: bytes, audio_format: AudioFormat, turn: int) -> None:
        await self._speaker.speak_audio(audio, audio_format, turn)

    async def end_turn(self, turn: int) -> None:
        await self._speaker.end_turn(turn)

    async def interrupt(self, turn: int) -> None:
        """`agent.interrupt` on the socket: the avatar drops the turn's buffered audio and no later chunk of
        that turn is sent (HeyGen's TTS is not speaking, so there is nothing to interrupt over REST)."""
        await self._speaker.interrupt(turn)

    async def keep_alive(self) -> None:
        """Keep both the socket and the REST session alive."""
        await self._speaker.keep_alive()
        await self._rest_keep_alive()


# ----------------------------------------------------------------------------------------------------------
# I/O: the provider
# ----------------------------------------------------------------------------------------------------------


class HeyGenProvider:
    """`AvatarProvider` for HeyGen's Streaming API v1. One per process; holds the settings and the shared
    client."""

    name = "heygen"

    def __init__(self, settings: Settings, http: httpx2.AsyncClient) -> None:
        self._settings = settings
        self._api = _HeyGenApi(settings, http)

    @asynccontextmanager
    async def open_session(self, on_event: OnAvatarEvent, *, on_created: OnSessionCreated | None = None,
                           on_stop_failed: OnStopFailed | None = None) -> AsyncIterator[AvatarSession]:
        """`streaming.new` then `streaming.start` (then, in realtime mode, the realtime socket); yields the
        session and stops it on every way out. `on_created(session_id)` runs alongside `streaming.start`.

        `streaming.new` is never retried, and runs shielded (bounded by RELAY_SETUP_TIMEOUT): if the caller is
        cancelled meanwhile, the answer is still awaited so the session it created is known, and the `finally`
        stops it. `streaming.start` and the socket are cancelled by the caller's scope. The stop is shielded,
        bounded by RELAY_STOP_TIMEOUT and retried on 429/5xx/network errors. Raises AvatarUnavailable when no
        session could be opened; AvatarSessionEnded leaves the body when HeyGen ends the session.
        """
        settings = self._settings
        session_id: str | None = None
        try:
            data = await self._create()
            session_id = session_id_of(data)
            if session_id is None:
                raise AvatarUnavailable("upstream_error", "HeyGen answered streaming.new without session id.")
            try:
                new = parse_new_session(data)
            except ValueError as exc:
                raise AvatarUnavailable("upstream_error", f"HeyGen's streaming.new answer: {exc}.") from None
            log.info("heygen session %s created", session_id)
            try:
                await alongside(on_created, session_id, lambda: self._api.call(
                    "POST", START, session_body(session_id), time_limit=settings.relay_setup_timeout))
            except HeyGenCallError as exc:
                raise to_unavailable(exc.failure, "streaming.start") from None
            if settings.heygen_mode == "realtime":
                async with self._open_realtime(new, on_event) as session:
                    yield session
            else:
                yield _TextSession(self._api, new, settings, on_event)
        finally:
            if session_id is not None:
                stopped = await _stop(self._api, session_id, settings.relay_stop_timeout)
                if not stopped and on_stop_failed is not None:
                    with trio.CancelScope(shield=True):
                        await on_stop_failed(session_id)

    async def _create(self) -> Any:
        """`streaming.new`, once, shielded and bounded by RELAY_SETUP_TIMEOUT. Returns its data.

        Nothing after the shielded block may await: a pending cancellation must not fire between this answer
        arriving and the caller recording the session id.
        """
        settings = self._settings
        data: Any = None
        failure: HeyGenFailure | None = None
        with trio.move_on_after(settings.relay_setup_timeout, shield=True):
            try:
                data = await self._api.call("POST", NEW, new_session_body(settings),
                                            time_limit=settings.relay_setup_timeout)
            except HeyGenCallError as exc:
                failure = exc.failure
        if failure is not None:
            raise to_unavailable(failure, "streaming.new")
        if data is None:
            raise to_unavailable(HeyGenFailure(None, None, "streaming.new", timed_out=True), "streaming.new")
        return data

    @asynccontextmanager
    async def _open_realtime(self, new: NewSession, on_event: OnAvatarEvent) -> AsyncIterator[AvatarSession]:
        """The realtime socket (bounded by RELAY_SETUP_TIMEOUT to connect); AvatarSessionEnded leaves the body
        when HeyGen closes it."""
        if new.realtime_endpoint is None:
            raise AvatarUnavailable("bad_config", "HeyGen gave this session no realtime endpoint; set "
                                                  "HEYGEN_MODE=repeat.")
        async with open_lite_speaker(new.realtime_endpoint, on_event,
                                     connect_timeout=self._settings.relay_setup_timeout) as speaker:
            yield _RealtimeSession(self._api, new, self._settings, on_event, speaker)


# ----------------------------------------------------------------------------------------------------------
# Operator calls: find and stop orphaned sessions
# ----------------------------------------------------------------------------------------------------------

_MAX_LIST_PAGES = 100


async def _list_v2(api: _HeyGenApi, page_size: int) -> list[dict[str, Any]]:
    sessions: list[dict[str, Any]] = []
    token: str | None = None
    for page in range(1, _MAX_LIST_PAGES + 1):
        data = await api.call_with_retries("GET", LIST_V2, params=list_params(page, page_size, token))
        if not isinstance(data, Mapping) or not isinstance(data.get("data"), list):
            raise HeyGenCallError(HeyGenFailure(200, None, "v2 list answered without a data list"))
        entries = [entry for entry in data["data"] if isinstance(entry, Mapping)]
        sessions.extend(dict(entry) for entry in entries)
        next_token = data.get("next_pagination_token")
        total = data.get("total")
        if isinstance(next_token, str) and next_token:
            token = next_token
            continue
        if not entries or not isinstance(total, int) or len(sessions) >= total:
            break
        token = None
    return sessions


async def _list_v1(api: _HeyGenApi) -> list[dict[str, Any]]:
    data = await api.call_with_retries("GET", LIST_V1)
    if not isinstance(data, Mapping) or not isinstance(data.get("sessions"), list):
        raise HeyGenCallError(HeyGenFailure(200, None, "v1 list answered without a sessions list"))
    return [dict(entry) for entry in data["sessions"] if isinstance(entry, Mapping)]


async def list_sessions(settings: Settings, http: httpx2.AsyncClient, *, active_only: bool = True,
                        page_size: int = 100) -> list[dict[str, Any]]:
    """The account's streaming sessions (each a dict with at least `session_id` and `status`), from the
    paginated `GET /v2/streaming.list`, falling back to `GET /v1/streaming.list` if v2 fails. With
    `active_only`, only the sessions that still run (status new / connecting / connected). Retries
    429/5xx/network errors; raises AvatarUnavailable if neither list answers. Cancelled by the caller's
    scope."""
    api = _HeyGenApi(settings, http)
    try:
        sessions = await _list_v2(api, page_size)
    except HeyGenCallError as v2_error:
        log.info("heygen v2 session list failed (%s); trying v1", v2_error)
        try:
            sessions = await _list_v1(api)
        except HeyGenCallError as exc:
            raise to_unavailable(exc.failure, "streaming.list") from None
    if active_only:
        sessions = [s for s in sessions if str(s.get("status", "")).lower() in ACTIVE_STATUSES]
    return sessions


async def stop_session_by_id(settings: Settings, http: httpx2.AsyncClient, session_id: str) -> None:
    """Stop one session by id (retried on 429/5xx/network errors, bounded by RELAY_STOP_TIMEOUT, shielded). A
    session that is already gone counts as stopped; any other failure raises AvatarUnavailable."""
    api = _HeyGenApi(settings, http)
    with trio.move_on_after(settings.relay_stop_timeout, shield=True):
        try:
            await api.call_with_retries("POST", STOP, session_body(session_id), attempts=4,
                                        cap=max(0.1, settings.relay_stop_timeout / 2))
        except HeyGenCallError as exc:
            if is_session_gone(exc.failure):
                return
            raise to_unavailable(exc.failure, "streaming.stop") from None
        return
    raise AvatarUnavailable("timeout", f"HeyGen did not confirm stopping session {session_id} in time.")


__all__ = [
    "HeyGenCallError",
    "HeyGenFailure",
    "HeyGenProvider",
    "NewSession",
    "TaskAccepted",
    "is_retryable",
    "is_session_gone",
    "list_sessions",
    "new_session_body",
    "parse_new_session",
    "parse_task",
    "read_answer",
    "session_body",
    "stop_session_by_id",
    "task_body",
    "to_session_ended",
    "to_unavailable",
    "unavailable_reason",
]
