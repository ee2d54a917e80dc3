"""Simli's realtime API, sans-I/O: the `POST /compose/token` request and answers, the `/compose/webrtc/livekit`
socket's messages both ways, the chunking of speech into binary frames, and the mapping of every refusal to the
relay's `UnavailableReason`.

What each public source says, and where they differ, is in docs/protocol.md ("Simli"). Plain functions and frozen
dataclasses; the provider around them is `relay.simli`. This module must never do I/O or import trio or httpx2, and
must never put the API key, a session token or a LiveKit token into an exception message or a `repr`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode, urlsplit, urlunsplit

import orjson

from relay.protocol.http import parse_retry_after
from relay.protocol.vocab import UnavailableReason

SIMLI_SAMPLE_RATE = 16_000  # PCM16 LE mono (the guide, every SDK)
SIMLI_BYTES_PER_SECOND = SIMLI_SAMPLE_RATE * 2
# "preferably sent in chunks of 6000 bytes … the maximum being 65,536 bytes" (the guide); py2 cuts at 6000 too.
AUDIO_FRAME_BYTES = 6000
MAX_AUDIO_FRAME_BYTES = 65_536
AUDIO_INPUT_FORMAT = "pcm16"
# py2's `sendSilence()` default: the shortest silence the SDK sends to keep a quiet session fed.
KEEP_ALIVE_SILENCE = b"\x00\x00" * int(SIMLI_SAMPLE_RATE * 0.1875)
SOCKET_PATH = "/compose/webrtc/livekit"
TOKEN_PATH = "/compose/token"
MAX_MESSAGE_CHARS = 200

CLEAR_BUFFER = "SKIP"  # "stop speaking immediately and ignore all previously sent audio" (asyncapi)
FINAL_MESSAGE = "DONE"  # "the final segment of audio has been sent … close after playing it back" (asyncapi)

# The 4xx `detail` reasons py2 knows (simli/critical_exceptions.py), as refusal kinds.
_DETAIL_REASONS: dict[str, UnavailableReason] = {
    "INVALID_API_KEY": "unauthorized",
    "BILLING_ERROR": "no_credits",
    "MISSING_BILLING_INFO": "no_credits",
    "INVALID_FACE_ID": "bad_config",
    "INVALID_EMOTION": "bad_config",
}
_REASON_TEXT: dict[UnavailableReason, str] = {
    "unauthorized": "Simli refused the API key (SIMLI_API_KEY).",
    "no_credits": "The Simli account has no minutes or billing information left.",
    "concurrent_limit": "Too many Simli sessions are running at once.",
    "rate_limited": "Simli is rate limiting requests; try again shortly.",
    "timeout": "Simli did not answer in time.",
}


# ----------------------------------------------------------------------------------------------------------------------
# The token


def token_request_body(*, face_id: str, max_session_length: int, max_idle_time: int) -> dict[str, Any]:
    """The `POST /compose/token` body: the face, both limits (seconds), idle video while no audio comes
    (`handleSilence`), and PCM16 input. Raises ValueError on an empty face or a limit that is not positive."""
    if not face_id:
        raise ValueError("a Simli session needs a faceId")
    if max_session_length <= 0 or max_idle_time <= 0:
        raise ValueError("maxSessionLength and maxIdleTime must be positive")
    return {
        "faceId": face_id,
        "handleSilence": True,
        "maxSessionLength": max_session_length,
        "maxIdleTime": max_idle_time,
        "audioInputFormat": AUDIO_INPUT_FORMAT,
    }


@dataclass(frozen=True, slots=True)
class TokenAnswer:
    """A session token: it opens the socket (and so the billed session). Never shown: not in `repr`."""

    session_token: str = field(repr=False)

    @property
    def fingerprint(self) -> str:
        """A name for the session before Simli gives it one: `tok-` and the first 16 hex digits of the token's
        SHA-256 (the token itself is a secret; this is not)."""
        return "tok-" + hashlib.sha256(self.session_token.encode()).hexdigest()[:16]


class ApiError(Exception):
    """A refusal or malformed answer from Simli's REST API. `detail` is the upstream's reason, shortened; it never
    contains our secrets (the fail token of a 400 answer is dropped)."""

    def __init__(self, status: int, detail: str, *, retry_after: float | None = None) -> None:
        super().__init__(f"Simli answered HTTP {status}" + (f": {detail}" if detail else ""))
        self.status = status
        self.detail = detail
        self.retry_after = retry_after


def _short(text: object) -> str:
    return str(text)[:MAX_MESSAGE_CHARS] if text is not None else ""


def _detail_text(detail: object) -> str:
    # 422 `{"detail": [{"loc": [...], "msg": "...", "type": "..."}]}`: loc names fields, msg never holds input.
    if isinstance(detail, list):
        parts = []
        for item in detail[:5]:
            if isinstance(item, dict):
                loc = ".".join(str(p) for p in item.get("loc", []) if p != "body")
                parts.append(f"{loc}: {item.get('msg', '')}" if loc else str(item.get("msg", "")))
        return _short("; ".join(parts))
    if isinstance(detail, dict):
        return _short(detail.get("message") or detail.get("error") or "")
    return _short(detail)


def read_token_answer(status: int, body: bytes, *, retry_after: str | None = None) -> TokenAnswer:
    """The session token of a 200 answer. Raises ApiError for every other status (with the `detail` of a
    400/422 answer, or an `{"error": …}` body's text) and for a 200 without a non-empty `session_token`."""
    try:
        payload = orjson.loads(body) if body else None
    except orjson.JSONDecodeError:
        payload = None
    wait = parse_retry_after(retry_after)
    if status != 200:
        detail = ""
        if isinstance(payload, dict):
            detail = _detail_text(payload.get("detail", payload.get("error", payload.get("message"))))
        raise ApiError(status, detail, retry_after=wait)
    token = payload.get("session_token") if isinstance(payload, dict) else None
    if not isinstance(token, str) or not token:
        raise ApiError(status, "token answer lacks session_token")
    return TokenAnswer(token)


def read_session_count(status: int, body: bytes) -> int:
    """`GET /ratelimiter/sessions` -> the account's active-session count (`currentUsage`). Raises ApiError."""
    try:
        payload = orjson.loads(body) if body else None
    except orjson.JSONDecodeError:
        payload = None
    if status != 200:
        detail = _detail_text(payload.get("detail", payload.get("error"))) if isinstance(payload, dict) else ""
        raise ApiError(status, detail)
    count = payload.get("currentUsage") if isinstance(payload, dict) else None
    if not isinstance(count, int) or isinstance(count, bool):
        raise ApiError(status, "answer lacks currentUsage")
    return count


def _rate_reason(text: str) -> UnavailableReason:
    lowered = text.lower()
    return "concurrent_limit" if "concurren" in lowered or "session" in lowered else "rate_limited"


def unavailable(error: ApiError) -> tuple[UnavailableReason, str]:
    """A REST refusal as the provider-neutral reason (see `AvatarUnavailable`) and a user-safe sentence."""
    status = error.status
    by_detail = _DETAIL_REASONS.get(error.detail.strip().upper())
    reason: UnavailableReason
    if by_detail is not None:
        reason = by_detail
    elif status in (401, 403):
        reason = "unauthorized"
    elif status == 402:
        reason = "no_credits"
    elif status == 429:
        reason = _rate_reason(error.detail)
    elif status in (408, 504):
        reason = "timeout"
    elif 400 <= status < 500:
        detail = f": {error.detail}" if error.detail else ""
        return "bad_config", f"Simli rejected the session request (HTTP {status}){detail}."
    else:
        return "upstream_error", f"Simli failed (HTTP {status})."
    if reason == "bad_config":
        return reason, f"Simli rejected the face (SIMLI_FACE_ID): {error.detail}."
    return reason, _REASON_TEXT[reason]


# ----------------------------------------------------------------------------------------------------------------------
# The socket


def socket_url(base_url: str, session_token: str) -> str:
    """`ws(s)://host/compose/webrtc/livekit?session_token=…` from the REST base URL (`http` -> `ws`, as the SDKs
    do). The result carries the token: never log it."""
    parts = urlsplit(base_url.rstrip("/"))
    scheme = {"https": "wss", "http": "ws", "wss": "wss", "ws": "ws"}.get(parts.scheme)
    if scheme is None:
        raise ValueError("SIMLI_BASE_URL must be an http(s) URL")
    return urlunsplit((scheme, parts.netloc, parts.path + SOCKET_PATH, urlencode({"session_token": session_token}),
                       ""))


def connect_src_allows(sources: str, url: str) -> bool:
    """Whether a CSP `connect-src` source list (RELAY_PAGE_CONNECT_SRC) lets the page open `url`: a source with the
    same scheme and host, or `*.` a parent domain of the host (CSP host wildcards; paths and ports are not
    checked). Simli's rooms are on a host no source names, so the operator may have to add it."""
    target = urlsplit(url)
    host = (target.hostname or "").lower()
    for source in sources.split():
        parts = urlsplit(source if "://" in source else f"{target.scheme}://{source}")
        if parts.scheme != target.scheme:
            continue
        pattern = (parts.hostname or "").lower()
        if pattern.startswith("*."):
            if host.endswith(pattern[1:]):
                return True
        elif pattern == host:
            return True
    return False


def audio_frames(pcm16k: bytes, frame_bytes: int = AUDIO_FRAME_BYTES) -> Iterator[memoryview]:
    """Slice 16 kHz PCM16 into binary frames of at most `frame_bytes` (whole samples). Nothing is held back: a
    chunk goes out at once, in pieces only where it is longer than a frame. Empty input gives no frame."""
    if not 2 <= frame_bytes <= MAX_AUDIO_FRAME_BYTES:
        raise ValueError(f"frames hold 2 to {MAX_AUDIO_FRAME_BYTES} bytes")
    step = frame_bytes - (frame_bytes % 2)
    view = memoryview(pcm16k)
    for start in range(0, len(view), step):
        yield view[start:start + step]


@dataclass(frozen=True, slots=True)
class JoinInfo:
    """`{"livekit_url", "livekit_token"}`: the room that hosts the avatar, and a viewer's token for it."""

    livekit_url: str
    livekit_token: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class Destination:
    """`{"destination", "session_id"}`: where the session runs (debugging information, js)."""

    session_id: str | None


@dataclass(frozen=True, slots=True)
class VideoMetadata:
    """`{"video_metadata": {"fps", "width", "height"}}`."""

    fps: float | None


@dataclass(frozen=True, slots=True)
class Started:
    """`START`: the session is ready for audio (py1 waits for it before sending)."""


@dataclass(frozen=True, slots=True)
class Acknowledged:
    """`ACK`."""


@dataclass(frozen=True, slots=True)
class Speaking:
    """`SPEAK` (True): the avatar started speaking; `SILENT` (False): it stopped."""

    speaking: bool


@dataclass(frozen=True, slots=True)
class Terminated:
    """The server ends the session: `ERROR …`, `RATE …`, `CLOSING …`, `STOP`, `ENDFRAME`. `kind` is the first
    word (upper-cased, without a colon), `detail` the rest (shortened)."""

    kind: str
    detail: str


@dataclass(frozen=True, slots=True)
class Unknown:
    """Any other message (newer servers add messages: js logs them as `unknown`)."""

    text: str


ServerMessage = JoinInfo | Destination | VideoMetadata | Started | Acknowledged | Speaking | Terminated | Unknown
_TERMINATIONS = frozenset({"ERROR", "RATE", "CLOSING", "STOP", "ENDFRAME"})


def _json_message(data: dict[str, Any], text: str) -> ServerMessage:
    url, token = data.get("livekit_url"), data.get("livekit_token")
    if isinstance(url, str) and url and isinstance(token, str) and token:
        return JoinInfo(url, token)
    if "livekit_url" in data or "livekit_token" in data:
        # js: "Invalid Join Info, Contact Simli For Support" ends the session.
        return Terminated("ERROR", "invalid join info")
    if "destination" in data:
        session_id = data.get("session_id")
        return Destination(session_id if isinstance(session_id, str) and session_id else None)
    meta = data.get("video_metadata")
    if isinstance(meta, dict):
        fps = meta.get("fps")
        return VideoMetadata(float(fps) if isinstance(fps, int | float) and not isinstance(fps, bool) else None)
    return Unknown(_short(text))


def parse_server_message(message: str | bytes) -> ServerMessage:
    """One message from the socket -> its meaning. Never raises: anything unrecognised is `Unknown` (a binary
    message that is not UTF-8 too)."""
    if isinstance(message, bytes):
        try:
            message = message.decode()
        except UnicodeDecodeError:
            return Unknown(f"<{len(message)} bytes>")
    text = message.strip()
    if text.startswith("{"):
        try:
            data = orjson.loads(text)
        except orjson.JSONDecodeError:
            return Unknown(_short(text))
        return _json_message(data, text) if isinstance(data, dict) else Unknown(_short(text))
    head, _, rest = text.partition(" ")
    word = head.upper().rstrip(":")
    if word == "START":
        return Started()
    if word == "ACK":
        return Acknowledged()
    if word == "SPEAK":
        return Speaking(True)
    if word == "SILENT":
        return Speaking(False)
    if word in _TERMINATIONS:
        return Terminated(word, _short(rest.strip()))
    if "ENDFRAME" in word:  # js matches it anywhere in the first word
        return Terminated("ENDFRAME", _short(rest.strip()))
    return Unknown(_short(text))


def socket_refusal(message: Terminated) -> tuple[UnavailableReason, str]:
    """A termination message received before the session was handed over, as a refusal kind and a user-safe
    sentence: `ERROR: INVALID_API_KEY`, `RATE LIMIT: CONCURRENT_SESSIONS`, …"""
    if message.kind == "RATE":
        reason = _rate_reason(message.detail)
        return reason, _REASON_TEXT[reason]
    words = message.detail.replace(":", " ").upper().split()
    for word in words:
        known = _DETAIL_REASONS.get(word)
        if known == "bad_config":
            return known, f"Simli rejected the face (SIMLI_FACE_ID): {word}."
        if known is not None:
            return known, _REASON_TEXT[known]
    detail = f": {message.detail}" if message.detail else ""
    return "upstream_error", f"Simli ended the session while it started ({message.kind}{detail})."


def session_end_text(message: Terminated) -> str:
    """A user-safe sentence for a termination of a running session."""
    detail = f" {message.detail}" if message.detail else ""
    return f"The Simli session ended ({message.kind}{detail})."
