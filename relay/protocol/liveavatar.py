"""LiveAvatar (LITE mode) REST API, sans-I/O: request bodies, the `{code, data, message}` envelope, the answers, and
the mapping of every refusal to the relay's `UnavailableReason`.

Plain functions and frozen dataclasses; the provider around them is `relay.liveavatar`, the twin of
`relay.heygen`. This module must never do I/O or import trio or httpx2, and must never put an API key, session
token, LiveKit token or the `ws_url` (its query carries a token) into an exception message.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from relay.protocol.http import parse_retry_after
from relay.protocol.vocab import UnavailableReason

SANDBOX_AVATAR_ID = "dd73ea75-1218-4ef3-92ce-606d5f7fbc0a"
AVATAR_PARTICIPANT = "heygen"  # the avatar's identity in the session's LiveKit room (what the page subscribes to)
SUCCESS_CODE = 1000
NO_CREDITS_CODE = 4033
# Undocumented upstream; our simulator's choice (see relay/sim/liveavatar_sim.py). Also recognised by message.
CONCURRENT_LIMIT_CODE = 4029
STOP_REASONS = frozenset({
    "UNKNOWN", "USER_DISCONNECTED", "SERVER_ERROR", "IDLE_TIMEOUT", "NO_CREDITS", "USER_CLOSED",
    "AVATAR_DELETED", "MAX_DURATION_REACHED", "ZOMBIE_SESSION_REAP", "AGENT_HANG_UP",
})
MAX_MESSAGE_CHARS = 200


def token_request_body(*, avatar_id: str | None, sandbox: bool, quality: str,
                       max_session_duration: int) -> dict[str, Any]:
    """The `POST /v1/sessions/token` body for a LITE session: the avatar (the sandbox avatar when none is given),
    sandbox flag, video settings and maximum duration."""
    return {
        "mode": "LITE",
        "avatar_id": avatar_id or SANDBOX_AVATAR_ID,
        "is_sandbox": sandbox,
        "video_settings": {"quality": quality, "encoding": "H264"},
        "max_session_duration": max_session_duration,
    }


def stop_request_body(session_id: str, reason: str) -> dict[str, Any]:
    """The `POST /v1/sessions/stop` body. Raises ValueError on a reason the API does not define."""
    if reason not in STOP_REASONS:
        raise ValueError(f"unknown stop reason {reason!r}")
    return {"session_id": session_id, "reason": reason}


def keep_alive_request_body(session_id: str) -> dict[str, Any]:
    return {"session_id": session_id}


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


class ApiError(Exception):
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


def read_answer(status: int, body: bytes, *, retry_after: str | None = None,
                success_statuses: tuple[int, ...] = (200,)) -> Any:
    """The `data` of a successful answer. Success is an expected HTTP status AND envelope code 1000 (the web
    SDK rejects anything else even on 2xx). Raises ApiError for every other form: 422 `detail`
    lists, 401 `{"error": ...}`, envelopes with another code, non-JSON bodies."""
    try:
        payload = orjson.loads(body) if body else None
    except orjson.JSONDecodeError:
        payload = None
    wait = parse_retry_after(retry_after)
    if not isinstance(payload, dict):
        raise ApiError(status, None, "answer is not a JSON object", retry_after=wait)
    raw_code = payload.get("code")
    code = raw_code if isinstance(raw_code, int) and not isinstance(raw_code, bool) else None
    if "detail" in payload and code is None:
        raise ApiError(status, None, _validation_message(payload["detail"]), retry_after=wait)
    if "error" in payload and code is None:
        error = payload["error"]
        text = error.get("message") if isinstance(error, dict) else error
        raise ApiError(status, None, _short(text), retry_after=wait)
    message = _short(payload.get("message"))
    if status not in success_statuses or code != SUCCESS_CODE:
        raise ApiError(status, code, message, retry_after=wait)
    return payload.get("data")


def _is_concurrency_refusal(error: ApiError) -> bool:
    return error.code == CONCURRENT_LIMIT_CODE or "concurren" in error.message.lower()


def unavailable(error: ApiError) -> tuple[UnavailableReason, str]:
    """An API refusal as the provider-neutral reason (see `AvatarUnavailable`) and a user-safe sentence."""
    status, code = error.status, error.code
    reason: UnavailableReason
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
    return reason, text


def parse_token_answer(data: Any) -> TokenAnswer:
    if not isinstance(data, dict):
        raise ApiError(200, SUCCESS_CODE, "token answer has no data")
    session_id, token = data.get("session_id"), data.get("session_token")
    if not isinstance(session_id, str) or not isinstance(token, str) or not session_id or not token:
        raise ApiError(200, SUCCESS_CODE, "token answer lacks session_id or session_token")
    return TokenAnswer(session_id, token)


def parse_start_answer(data: Any, session_id: str) -> StartAnswer:
    if not isinstance(data, dict):
        raise ApiError(201, SUCCESS_CODE, "start answer has no data")
    livekit_url, client_token, ws_url = data.get("livekit_url"), data.get("livekit_client_token"), data.get("ws_url")
    if not all(isinstance(v, str) and v for v in (livekit_url, client_token, ws_url)):
        raise ApiError(201, SUCCESS_CODE, "start answer lacks livekit_url, livekit_client_token or ws_url")
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


def active_session_ids(data: Any) -> tuple[list[str], bool]:
    """`GET /v1/sessions` data -> (session ids on this page, whether there is a next page)."""
    if not isinstance(data, dict):
        raise ApiError(200, SUCCESS_CODE, "session list has no data")
    results = data.get("results")
    ids = [item["id"] for item in results or [] if isinstance(item, dict) and isinstance(item.get("id"), str)]
    return ids, bool(data.get("next"))
