"""Resuming a conversation, sans-I/O: the resume token (`issue_token`, `read_token`) and the replay buffer
(`ReplayBuffer`) that numbers the JSON messages a conversation sends after `ready` and keeps them for a resume.

The token is `rt1.<route>.<key>.<expires>.<mac>`: `route` names the relay (and worker) that holds the conversation,
readable by a proxy without any secret; `key` is a random handle of the hold (it names nothing else: neither the
conversation id nor its subject); `expires` the Unix second after which it is refused; `mac` HMAC-SHA256 of the rest
with the relay's secret. Single use is the holder's business (it keeps the one key it last issued). No clock here:
the callers pass `now`.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import itertools
import re
import secrets
from collections import deque
from dataclasses import dataclass
from typing import Final, Literal

TOKEN_PREFIX: Final = "rt1"
MAX_TOKEN_CHARS: Final = 512
_ROUTE = re.compile(r"[A-Za-z0-9_-]{1,64}")
_KEY = re.compile(r"[A-Za-z0-9_-]{22}")

# Why a resume cannot be honoured: the `reason` of `{"type":"error","code":"resume_failed"}` (docs/protocol.md).
ResumeFailure = Literal["expired", "unknown", "unauthorized", "ended", "elsewhere"]


class ResumeRefused(Exception):
    """A resume that cannot be honoured; `reason` is safe to send to anyone (it reveals nothing of another
    subject's conversation)."""

    def __init__(self, reason: ResumeFailure, message: str) -> None:
        super().__init__(message)
        self.reason: ResumeFailure = reason
        self.message = message


def new_key() -> str:
    """A fresh random handle for one hold (128 bits)."""
    return base64.urlsafe_b64encode(secrets.token_bytes(16)).rstrip(b"=").decode()


def _mac(secret: bytes, body: str) -> str:
    digest = hmac.new(secret, body.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def issue_token(secret: bytes, route: str, key: str, expires: int) -> str:
    """The token for the hold `key` on the relay `route`, valid until `expires` (Unix seconds)."""
    if not _ROUTE.fullmatch(route):
        raise ValueError("a route is 1 to 64 characters of [A-Za-z0-9_-]")
    body = f"{TOKEN_PREFIX}.{route}.{key}.{expires}"
    return f"{body}.{_mac(secret, body)}"


def token_route(token: str) -> str | None:
    """The route a proxy reads (no secret needed), or None for something that is not a resume token."""
    parts = token.split(".")
    if len(token) > MAX_TOKEN_CHARS or len(parts) != 5 or parts[0] != TOKEN_PREFIX or not _ROUTE.fullmatch(parts[1]):
        return None
    return parts[1]


def read_token(secret: bytes, route: str, token: str, now: float) -> str:
    """The hold key of a token issued by this relay (`route`) with `secret`. Raises ResumeRefused: `elsewhere`
    for a well-formed token of another relay (checked before the MAC, which only its issuer can check),
    `unknown` for anything unreadable or forged, `expired` past its expiry."""
    their_route = token_route(token)
    if their_route is None:
        raise ResumeRefused("unknown", "this is not a resume token")
    if their_route != route:
        raise ResumeRefused("elsewhere", "this conversation is held by another relay")
    body, _, mac = token.rpartition(".")
    _, _, key, expires = body.split(".")
    if not hmac.compare_digest(_mac(secret, body), mac) or not _KEY.fullmatch(key) or not expires.isdigit():
        raise ResumeRefused("unknown", "this resume token is not valid")
    if int(expires) < now:
        raise ResumeRefused("expired", "this resume token has expired")
    return key


# ----------------------------------------------------------------------------------------------------------------------
# The replay buffer

# Its bound (docs/performance.md): the JSON messages of one conversation kept for a resume. Captions, transcripts
# and tool calls are small (a few hundred bytes); 2,000 messages or 1 MiB is minutes of a lively conversation.
REPLAY_MESSAGES: Final = 2000
REPLAY_BYTES: Final = 1 << 20


class ReplayOverflow(Exception):
    """A message that was never written would have to be dropped to stay within the bound: the conversation must
    end (never a silent loss)."""


def with_seq(frame: str, seq: int) -> str:
    """`frame` (a JSON object's text) with `"seq":seq` as its first member."""
    if not frame.startswith("{"):
        raise ValueError("a numbered message is a JSON object")
    return f'{{"seq":{seq},' + frame[1:] if frame != "{}" else f'{{"seq":{seq}}}'


@dataclass(frozen=True, slots=True)
class Numbered:
    seq: int
    frame: str


class ReplayBuffer:
    """The JSON messages sent after `ready`, numbered from 1, the newest kept within `max_messages` and
    `max_bytes`. `push` numbers a message; `written(seq)` notes it went out on a connection; on a resume,
    `since(last_seq)` is what the browser has not seen. A message is dropped from the buffer only once written
    (and older than the bound); `push` raises ReplayOverflow when the bound can only be kept by dropping one that
    never was, and `since` raises ResumeRefused("expired") when the browser missed one already dropped.

    Kept as the numbered frames' text only (their numbers run without a gap up to `last_seq`): a string is not an
    object the garbage collector tracks, so a buffer that grows with every message does not fill the collector's
    young generation (docs/performance.md, round 12)."""

    def __init__(self, max_messages: int = REPLAY_MESSAGES, max_bytes: int = REPLAY_BYTES) -> None:
        self.max_messages, self.max_bytes = max_messages, max_bytes
        self._kept: deque[str] = deque()  # the frames numbered last_seq - len + 1 ... last_seq
        self.bytes = 0
        self.last_seq = 0  # the newest number given
        self.last_written = 0  # the newest number written on a connection

    def __len__(self) -> int:
        return len(self._kept)

    def push(self, frame: str) -> Numbered:
        """Number `frame` (the next seq) and keep it. Raises ReplayOverflow (and keeps nothing) when the bound would
        need a never-written message dropped."""
        kept = self._kept
        seq = self.last_seq + 1
        text = with_seq(frame, seq)
        size = len(text)
        first = seq - len(kept)  # the number of kept[0]
        drop = 0
        count, total = len(kept) + 1, self.bytes + size
        while drop < len(kept) and (count > self.max_messages or total > self.max_bytes):
            if first + drop > self.last_written:
                raise ReplayOverflow(f"more than {self.max_messages} messages or {self.max_bytes} bytes waited "
                                     "for the browser to come back")
            count -= 1
            total -= len(kept[drop])
            drop += 1
        if count > self.max_messages or total > self.max_bytes:
            raise ReplayOverflow(f"one message of {size} bytes is over the replay bound of {self.max_bytes} bytes")
        for _ in range(drop):
            self.bytes -= len(kept.popleft())
        kept.append(text)
        self.bytes += size
        self.last_seq = seq
        return Numbered(seq, text)

    def written(self, seq: int) -> None:
        """`seq` (and everything before it) went out on a connection."""
        self.last_written = max(self.last_written, seq)

    def acknowledge(self, seq: int) -> bool:
        """The browser has every message up to `seq` (its `ack`, or a resume's `last_seq`): forget them (only those
        written). False, forgetting nothing, for a `seq` never given."""
        if seq > self.last_seq:
            return False
        kept = self._kept
        through = min(seq, self.last_written)
        for _ in range(through - (self.last_seq - len(kept))):
            self.bytes -= len(kept.popleft())
        return True

    def since(self, last_seq: int) -> list[Numbered]:
        """What follows `last_seq` (the newest the browser has), in order. Raises ResumeRefused("expired") when one
        of them is no longer kept, or "unknown" for a `last_seq` the relay never sent."""
        if last_seq > self.last_seq or last_seq < 0:
            raise ResumeRefused("unknown", f"last_seq {last_seq} was never sent")
        first_kept = self.last_seq - len(self._kept) + 1
        if last_seq + 1 < first_kept:
            raise ResumeRefused("expired", "the messages since last_seq are no longer kept")
        missed = itertools.islice(self._kept, last_seq + 1 - first_kept, None)
        return [Numbered(seq, text) for seq, text in enumerate(missed, start=last_seq + 1)]
