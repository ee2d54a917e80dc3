"""HeyGen Interactive Avatar, Streaming API v1: the `AvatarProvider` named "heygen" (I/O).

One HTTP seam (`_HeyGenApi.call`), `HeyGenProvider.open_session` (which always stops what it created), the two
session kinds (text: `streaming.task` repeat; realtime: audio over `realtime_endpoint` via `relay.avatars.lite`), and
two operator calls (`list_running_ids`, `stop_by_id`) for reaping orphans. Bodies, answers and what a failure means
are `relay.protocol.heygen`; `relay.liveavatar` is this module's twin, with the same verbs.

This module must never retry `streaming.new` (a retry after a lost answer creates a second billed session),
never leave a session it created running, and never put the API key in a log line, an exception message or
anything that reaches a browser (only `AvatarInfo` does: the viewer's LiveKit token, never the key).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import httpx2
import orjson
import trio

from relay.avatars import (
    AudioTaker,
    AvatarInfo,
    AvatarSession,
    AvatarSessionEnded,
    AvatarSpeaking,
    AvatarUnavailable,
    OnAvatarEvent,
    OnSessionCreated,
    OnStopFailed,
)
from relay.avatars.common import PLACEHOLDER_API_KEY, alongside, is_simulated, stop_shielded
from relay.avatars.lite import LiteAudioStream, open_lite_audio_stream
from relay.config import Settings
from relay.net.retry import Retryable, call_with_retries
from relay.protocol.audio import AudioFormat
from relay.protocol.heygen import (
    ACTIVE_STATUSES,
    INTERRUPT,
    KEEP_ALIVE,
    LIST_V1,
    LIST_V2,
    NEW,
    START,
    STOP,
    TASK,
    ApiError,
    HeyGenFailure,
    NewSession,
    describe_failure,
    is_retryable,
    is_session_gone,
    list_params,
    parse_new_session,
    parse_task,
    read_answer,
    redact,
    session_body,
    session_id_of,
    task_body,
    unavailable_message,
    unavailable_reason,
)
from relay.protocol.heygen import new_session_body as _new_session_body

log = logging.getLogger("relay.heygen")


def new_session_body(settings: Settings) -> dict[str, Any]:
    """Body of `streaming.new` for these settings (see `relay.protocol.heygen.new_session_body`)."""
    return _new_session_body(quality=settings.heygen_quality, idle_timeout=settings.heygen_idle_timeout,
                             avatar_id=settings.heygen_avatar_id, voice_id=settings.heygen_voice_id)


def keep_alive_interval(settings: Settings) -> float:
    """The configured keep-alive interval, clamped to half the HeyGen idle timeout so one lost keep-alive does
    not let the session expire."""
    return min(settings.relay_keep_alive_interval, settings.heygen_idle_timeout / 2)


def to_unavailable(failure: HeyGenFailure, action: str) -> AvatarUnavailable:
    """`AvatarUnavailable` for a failure of `action` ("streaming.new", ...), with a user-safe message."""
    return AvatarUnavailable(
        unavailable_reason(failure),
        unavailable_message(failure, action),
        upstream_code=failure.code if failure.code is not None else failure.status,
        retry_after=failure.retry_after,
    )


def to_session_ended(failure: HeyGenFailure, session_id: str) -> AvatarSessionEnded:
    return AvatarSessionEnded(
        "session_gone",
        f"The HeyGen avatar session {session_id} ended ({describe_failure(failure)}).",
        upstream_code=failure.code,
    )


# ----------------------------------------------------------------------------------------------------------------------
# The HTTP seam

# Per-call bound for everything but `streaming.new`/`.start` (those use RELAY_SETUP_TIMEOUT). The pool timeout
# matters: a cancelled request can leave httpcore's pool waiting (httpcore #830).
CALL_TIMEOUT = 10.0


class _RetryableCall(Retryable):
    def __init__(self, error: ApiError) -> None:
        super().__init__(str(error), retry_after=error.failure.retry_after)
        self.error = error


@functools.lru_cache(maxsize=16)
def _timeout(seconds: float) -> httpx2.Timeout:
    """One `httpx2.Timeout` per time limit, made once: building one checks its argument against a runtime
    `typing.Protocol` (`SupportsFloat`), ~3% of the relay's CPU when it ran on every `streaming.task`."""
    return httpx2.Timeout(seconds)


class _HeyGenApi:
    """The one place that talks HTTP to HeyGen. Holds the key and redacts it from whatever it raises."""

    def __init__(self, settings: Settings, http: httpx2.AsyncClient) -> None:
        self._base = settings.heygen_base_url.rstrip("/")
        self._key = settings.heygen_api_key.get_secret_value() if settings.heygen_api_key else PLACEHOLDER_API_KEY
        self._http = http

    async def call(self, method: str, path: str, body: Mapping[str, Any] | None = None, *,
                   params: Mapping[str, str | int] | None = None, time_limit: float = CALL_TIMEOUT) -> Any:
        """One request; returns the answer's `data` or raises ApiError. Bounded by `time_limit` (every
        phase, including waiting for a pooled connection); cancelled by the caller's scope."""
        headers = {"x-api-key": self._key, "accept": "application/json"}
        content = None
        if body is not None:
            headers["content-type"] = "application/json"
            content = orjson.dumps(body)
        try:
            response = await self._http.request(method, self._base + path, content=content, headers=headers,
                                                params=params, timeout=_timeout(time_limit))
        except httpx2.TimeoutException as exc:
            raise ApiError(HeyGenFailure(None, None, self._safe(f"{path}: {type(exc).__name__}"),
                                         timed_out=True)) from None
        except httpx2.HTTPError as exc:
            message = self._safe(f"{path}: {type(exc).__name__}: {exc}")
            raise ApiError(HeyGenFailure(None, None, message)) from None
        try:
            return read_answer(response.status_code, response.content, response.headers.get("retry-after"))
        except ApiError as exc:
            failure = exc.failure
            raise ApiError(HeyGenFailure(failure.status, failure.code, self._safe(failure.message),
                                         failure.retry_after, failure.timed_out)) from None

    async def call_with_retries(self, method: str, path: str, body: Mapping[str, Any] | None = None, *,
                                params: Mapping[str, str | int] | None = None, attempts: int = 3,
                                cap: float = 5.0) -> Any:
        """`call` retried on network errors, timeouts, 429 (honouring Retry-After) and 5xx. Only for calls
        that are safe to repeat. Raises the last ApiError."""

        async def attempt() -> Any:
            try:
                return await self.call(method, path, body, params=params)
            except ApiError as exc:
                if is_retryable(exc.failure):
                    raise _RetryableCall(exc) from None
                raise

        try:
            return await call_with_retries(attempt, attempts=attempts, cap=cap)
        except _RetryableCall as exc:
            raise exc.error from None

    def _safe(self, text: str) -> str:
        return redact(text, self._key)


async def _stop_call(api: _HeyGenApi, session_id: str, stop_timeout: float) -> None:
    """`streaming.stop`, retried on 429/5xx/network errors. A session that is already gone counts as stopped; any
    other failure raises AvatarUnavailable."""
    try:
        await api.call_with_retries("POST", STOP, session_body(session_id), attempts=4, cap=max(0.1, stop_timeout / 2))
    except ApiError as exc:
        if is_session_gone(exc.failure):
            log.debug("heygen session %s was already gone at stop", session_id)
            return
        raise to_unavailable(exc.failure, "streaming.stop") from None


async def _stop(api: _HeyGenApi, session_id: str, stop_timeout: float) -> bool:
    """Stop a session (`stop_shielded`: runs to the end even if the caller is being cancelled, bounded by
    `stop_timeout`). True when the session is known to be stopped (or already gone); a failure is logged."""
    problem = await stop_shielded(lambda: _stop_call(api, session_id, stop_timeout), stop_timeout)
    if problem is None:
        log.info("heygen session %s stopped", session_id)
        return True
    log.warning("heygen session %s: stop failed (%s); it runs until HeyGen's idle timeout unless reaped",
                session_id, problem.message)
    return False


# ----------------------------------------------------------------------------------------------------------------------
# Sessions


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
        except ApiError as exc:
            if is_session_gone(exc.failure):
                raise to_session_ended(exc.failure, sid) from None
            log.warning("heygen session %s: %s failed (%s)", sid, what, exc)
            return None

    async def interrupt(self, turn: int) -> None:
        """`streaming.interrupt`: stop the current speech and HeyGen's queued tasks."""
        await self._session_call(INTERRUPT, what=f"interrupt of turn {turn}")

    async def wait_connected(self) -> None:
        """Repeat mode has no `connected` event: the session is ready once `streaming.start` answered."""

    async def set_listening(self, listening: bool) -> None:
        """Nothing to send: HeyGen v1's `streaming.start_listening` is not a pose but its voice chat (the avatar's
        own LLM takes the user's microphone from the LiveKit room), which must stay off while our agent talks."""

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
        self._on_event(AvatarSpeaking(text=text, duration_ms=accepted.duration_ms, turn=turn))

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
                 stream: LiteAudioStream) -> None:
        super().__init__(api, new, settings, on_event)
        self._stream = stream
        self.audio_taker: AudioTaker | None = stream  # the speech router's inline path (`relay.avatars.AudioTaker`)

    @property
    def takes_audio(self) -> bool:
        return True

    async def speak_text(self, text: str, turn: int) -> None:
        """Not used in audio mode (`takes_audio` is True): HeyGen's TTS would talk over the agent's voice."""

    async def speak_audio(self, audio: bytes, audio_format: AudioFormat, turn: int) -> None:
        await self._stream.speak_audio(audio, audio_format, turn)

    async def end_turn(self, turn: int) -> None:
        await self._stream.end_turn(turn)

    async def interrupt(self, turn: int) -> None:
        """`agent.interrupt` on the socket: the avatar drops the turn's buffered audio and no later chunk of
        that turn is sent (HeyGen's TTS is not speaking, so there is nothing to interrupt over REST)."""
        await self._stream.interrupt(turn)

    async def wait_connected(self) -> None:
        await self._stream.wait_connected()

    async def keep_alive(self) -> None:
        """Keep both the socket and the REST session alive."""
        await self._stream.keep_alive()
        await self._rest_keep_alive()


# ----------------------------------------------------------------------------------------------------------------------
# The provider


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
            except ApiError as exc:
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
            except ApiError as exc:
                failure = exc.failure
        if failure is not None:
            raise to_unavailable(failure, "streaming.new")
        if data is None:
            raise to_unavailable(HeyGenFailure(None, None, "streaming.new", timed_out=True), "streaming.new")
        return data

    @asynccontextmanager
    async def _open_realtime(self, new: NewSession, on_event: OnAvatarEvent) -> AsyncIterator[AvatarSession]:
        """The realtime socket (bounded by RELAY_SETUP_TIMEOUT to connect; `connected` is not awaited here, the
        stream holds speech until it comes); AvatarSessionEnded leaves the body when HeyGen closes it."""
        if new.realtime_endpoint is None:
            raise AvatarUnavailable("bad_config", "HeyGen gave this session no realtime endpoint; set "
                                                  "HEYGEN_MODE=repeat.")
        async with open_lite_audio_stream(new.realtime_endpoint, on_event,
                                          connect_timeout=self._settings.relay_setup_timeout,
                                          first_packet_seconds=self._settings.relay_lite_first_packet_ms / 1000
                                          ) as stream:
            yield _RealtimeSession(self._api, new, self._settings, on_event, stream)


# ----------------------------------------------------------------------------------------------------------------------
# Operator calls: find and stop orphaned sessions

_MAX_LIST_PAGES = 100


async def _list_v2(api: _HeyGenApi, page_size: int) -> list[dict[str, Any]]:
    sessions: list[dict[str, Any]] = []
    token: str | None = None
    for page in range(1, _MAX_LIST_PAGES + 1):
        data = await api.call_with_retries("GET", LIST_V2, params=list_params(page, page_size, token))
        if not isinstance(data, Mapping) or not isinstance(data.get("data"), list):
            raise ApiError(HeyGenFailure(200, None, "v2 list answered without a data list"))
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
        raise ApiError(HeyGenFailure(200, None, "v1 list answered without a sessions list"))
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
    except ApiError as v2_error:
        log.info("heygen v2 session list failed (%s); trying v1", v2_error)
        try:
            sessions = await _list_v1(api)
        except ApiError as exc:
            raise to_unavailable(exc.failure, "streaming.list") from None
    if active_only:
        sessions = [s for s in sessions if str(s.get("status", "")).lower() in ACTIVE_STATUSES]
    return sessions


async def list_running_ids(settings: Settings, http: httpx2.AsyncClient) -> list[str]:
    """The ids of every session still running on the account (see `list_sessions`), for an operator reaping
    leaked sessions. Raises AvatarUnavailable when the API refuses."""
    return [str(s["session_id"]) for s in await list_sessions(settings, http) if s.get("session_id")]


async def stop_by_id(settings: Settings, http: httpx2.AsyncClient, session_id: str) -> None:
    """Stop one session by id (retried on 429/5xx/network errors, bounded by RELAY_STOP_TIMEOUT, shielded). A
    session that is already gone counts as stopped; any other failure raises AvatarUnavailable."""
    api = _HeyGenApi(settings, http)
    problem = await stop_shielded(lambda: _stop_call(api, session_id, settings.relay_stop_timeout),
                                  settings.relay_stop_timeout)
    if problem is not None:
        raise problem
