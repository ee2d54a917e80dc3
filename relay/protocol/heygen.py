"""HeyGen Interactive Avatar, Streaming API v1, sans-I/O: request bodies, the answer envelope, and what each failure
means (the relay's `UnavailableReason`s, "session gone", "worth a retry").

Plain functions and frozen dataclasses, unit-tested without sockets; the provider around them is `relay.heygen`.
This module must never do I/O or import trio or httpx2, and never put the API key in a message (`redact`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from relay.protocol.http import parse_retry_after
from relay.protocol.vocab import UnavailableReason

NEW = "/v1/streaming.new"
START = "/v1/streaming.start"
TASK = "/v1/streaming.task"
INTERRUPT = "/v1/streaming.interrupt"
KEEP_ALIVE = "/v1/streaming.keep_alive"
STOP = "/v1/streaming.stop"
LIST_V1 = "/v1/streaming.list"
LIST_V2 = "/v2/streaming.list"

# Statuses a v2 list entry can have while the session still runs (and bills).
ACTIVE_STATUSES = frozenset({"new", "connecting", "connected"})


def new_session_body(*, quality: str, idle_timeout: int, avatar_id: str | None, voice_id: str | None) -> dict[str, Any]:
    """Body of `streaming.new`.

    The avatar goes in both `avatar_id` (the REST docs) and `avatar_name` (what the official SDK sends): the
    service accepts either, and sending the same value under both names keeps working whichever one a given
    account's backend reads. `version: "v2"` selects LiveKit (without it the retired raw-WebRTC flow is used).
    """
    body: dict[str, Any] = {
        "quality": quality,
        "version": "v2",
        "video_encoding": "H264",
        "activity_idle_timeout": idle_timeout,
    }
    if avatar_id:
        body["avatar_id"] = avatar_id
        body["avatar_name"] = avatar_id
    if voice_id:
        body["voice"] = {"voice_id": voice_id}
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


# ----------------------------------------------------------------------------------------------------------------------
# Sans-io: answers


@dataclass(frozen=True, slots=True)
class HeyGenFailure:
    """One failed call, as data. `status` is None when no HTTP answer arrived (`timed_out`: none in time)."""

    status: int | None
    code: int | str | None
    message: str
    retry_after: float | None = None
    timed_out: bool = False


class ApiError(Exception):
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
    """Return the `data` of an answer, or raise ApiError.

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
        raise ApiError(HeyGenFailure(status, code, message or f"HTTP {status}", parse_retry_after(retry_after)))
    if not isinstance(payload, Mapping):
        raise ApiError(HeyGenFailure(status, None, "the answer was not a JSON object"))
    if "code" in payload and not is_success_code(payload["code"]):
        message = _message_of(payload) or "not successful"
        raise ApiError(HeyGenFailure(status, _code_of(payload), message))
    if payload.get("error"):
        raise ApiError(HeyGenFailure(status, _code_of(payload), _message_of(payload) or "error"))
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


# ----------------------------------------------------------------------------------------------------------------------
# Sans-io: what a failure means

CONCURRENT_LIMIT_CODES = frozenset({10007, 10014})
UNAUTHORIZED_CODES = frozenset({40102})
RATE_LIMIT_CODES = frozenset({400123})
NO_CREDITS_CODES = frozenset({10015})
BAD_AVATAR_CODES = frozenset({10012, 10013, 400014})
# HTTP 401 with 400112: the key is fine, the avatar or voice is not enabled for streaming
# (HeyGen-Official/StreamingAvatarSDK#3).
NOT_STREAMING_ENABLED_CODES = frozenset({400112})
# "Your account doesn't have API access": the plan has no API (or no longer has the Streaming API).
NO_API_ACCESS_CODES = frozenset({400599})
# What a switched-off endpoint answers: HeyGen retired Streaming API v1 on 2026-03-31 (docs/deploy.md).
RETIRED_STATUSES = frozenset({404, 410})
RETIRED_MESSAGE = ("HeyGen's Streaming API v1 answers as if it were switched off: HeyGen retired it on 2026-03-31 "
                   "and LiveAvatar is its successor; set LIVEAVATAR_API_KEY and LIVEAVATAR_AVATAR_ID (LiveAvatar "
                   "has its own keys) or RELAY_AVATAR=none")
NOT_STREAMING_ENABLED_MESSAGE = ("HeyGen accepted the key but this avatar or voice is not enabled for streaming "
                                 "(code 400112): pick a streaming (Interactive) avatar for HEYGEN_AVATAR_ID and a "
                                 "voice it allows (HEYGEN_VOICE_ID), or move to LiveAvatar")
NO_API_ACCESS_MESSAGE = ("this HeyGen account has no API access (code 400599): its plan does not include the "
                         "API; upgrade it, or move to LiveAvatar (HeyGen's successor to Streaming v1)")
# 10001-10005 "session state wrong: new / connecting / connected / closing / closed"; only the last two (and
# the not-found codes) mean the session is gone. 10003 is also used for "avatar version is deprecated".
STATE_CODES = {10001: "new", 10002: "connecting", 10003: "connected", 10004: "closing", 10005: "closed"}
SESSION_GONE_CODES = frozenset({10004, 10005, 10006, 400004})
_GONE_PHRASES = ("session does not exist", "session not found", "state wrong: closed", "state wrong: closing")

_REASON_MESSAGES: dict[UnavailableReason, str] = {
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


def looks_retired(failure: HeyGenFailure) -> bool:
    """A 404/410 with no HeyGen error code of its own (or its status as code): the endpoint is not there any more."""
    return failure.status in RETIRED_STATUSES and failure.code in (None, failure.status)


def unavailable_reason(failure: HeyGenFailure) -> UnavailableReason:
    """The `AvatarUnavailable.reason` for a failure while opening a session."""
    code, status = failure.code, failure.status
    if failure.timed_out:
        return "timeout"
    if code in CONCURRENT_LIMIT_CODES:
        return "concurrent_limit"
    if code in NOT_STREAMING_ENABLED_CODES or looks_retired(failure):
        return "bad_config"
    if code in NO_API_ACCESS_CODES:
        return "unauthorized"
    if status in (401, 403) or code in UNAUTHORIZED_CODES:
        return "unauthorized"
    if status == 429 or code in RATE_LIMIT_CODES:
        return "rate_limited"
    if status == 402 or code in NO_CREDITS_CODES:
        return "no_credits"
    if code in BAD_AVATAR_CODES or _is_deprecated_avatar(failure):
        return "bad_config"
    if status == 405 and code is None:
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


def unavailable_message(failure: HeyGenFailure, action: str) -> str:
    """A user-safe sentence for a failure of `action` ("streaming.new", ...)."""
    return f"{plain_words(failure)} ({action}: {describe_failure(failure)})"


def plain_words(failure: HeyGenFailure) -> str:
    """What the failure means and what to do, in plain words (also the doctor's)."""
    if failure.code in NOT_STREAMING_ENABLED_CODES:
        return NOT_STREAMING_ENABLED_MESSAGE + "."
    if failure.code in NO_API_ACCESS_CODES:
        return NO_API_ACCESS_MESSAGE[0].upper() + NO_API_ACCESS_MESSAGE[1:] + "."
    if looks_retired(failure):
        return RETIRED_MESSAGE + "."
    return _REASON_MESSAGES[unavailable_reason(failure)]


def redact(text: str, secret: str | None) -> str:
    """`text` with every occurrence of `secret` replaced (defence in depth for messages built from upstream
    text or transport errors)."""
    if secret and len(secret) >= 4:
        return text.replace(secret, "[redacted]")
    return text
