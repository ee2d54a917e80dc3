"""The avatar provider interface, and the choice of provider by configuration.

The conversation nursery drives an avatar only through `AvatarProvider.open_session` and the `AvatarSession`
methods below; it never knows which provider it drives. Each provider lives in its own module (`heygen.py`,
`liveavatar.py`); "none" (voice only) is simply no provider. This module must never do I/O itself.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Protocol, TypeVar

import trio

from relay.protocol.audio import AudioFormat

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class AvatarInfo:
    """What the browser needs to show the avatar; sent as `ready.avatar`. Never holds a server-side secret."""

    provider: str
    session_id: str | None
    livekit_url: str | None
    access_token: str | None
    simulated: bool


# Events a session reports while it runs (delivered through the `on_event` callback; must not block).


@dataclass(frozen=True, slots=True)
class AvatarSpeaking:
    """Text mode: the avatar accepted a task and will speak `text` for about `duration_ms`."""

    text: str | None
    duration_ms: int | None


@dataclass(frozen=True, slots=True)
class AvatarStateChanged:
    """Audio mode: the avatar started (`speaking=True`) or stopped speaking a turn."""

    speaking: bool
    turn: int | None = None


AvatarEvent = AvatarSpeaking | AvatarStateChanged
OnAvatarEvent = Callable[[AvatarEvent], None]
# Awaited with the upstream session id as soon as the session exists upstream (billed from then on), while the
# provider goes on starting it; the journal records the session here so a crash during start-up cannot leak it.
OnSessionCreated = Callable[[str], Awaitable[None]]
# Awaited (shielded, by the provider) with the session id when the provider's last attempt to stop the session
# failed: it may still run, and bill, upstream. The journal keeps it for a later sweep.
OnStopFailed = Callable[[str], Awaitable[None]]


class AvatarError(Exception):
    """Base of avatar failures. `reason` is a short machine word, `message` a sentence safe to show a user."""

    def __init__(self, reason: str, message: str, *, upstream_code: int | str | None = None,
                 retry_after: float | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.upstream_code = upstream_code
        self.retry_after = retry_after


class AvatarUnavailable(AvatarError):
    """The provider refused or failed to open a session (concurrent limit, bad key, no credits, outage, timeout).

    reason is one of: "concurrent_limit", "unauthorized", "no_credits", "rate_limited", "upstream_error",
    "timeout", "bad_config".
    """


class AvatarSessionEnded(AvatarError):
    """A session that was running ended on the provider's side (socket closed, idle expiry, session gone).

    Raised out of the `open_session` context; the session is already stopped (or stopping it was attempted).
    """


class AvatarSession(Protocol):
    """One running avatar session. All methods may block on the network; cancelling the calling scope cancels
    them. None of them raise for a transient failure of a single utterance: they log it and return."""

    @property
    def info(self) -> AvatarInfo: ...

    @property
    def takes_audio(self) -> bool:
        """True: feed it the agent's audio (`speak_audio`); False: feed it the agent's text (`speak_text`)."""
        ...

    @property
    def keep_alive_interval(self) -> float:
        """Seconds between `keep_alive` calls the conversation must make."""
        ...

    async def speak_text(self, text: str, turn: int) -> None:
        """Make the avatar say `text` (agent turn `turn`). Reports `AvatarSpeaking` through on_event."""
        ...

    async def speak_audio(self, audio: bytes, audio_format: AudioFormat, turn: int) -> None:
        """Lip-sync one chunk of the agent's audio (raw bytes in the agent's output format) for turn `turn`."""
        ...

    async def end_turn(self, turn: int) -> None:
        """The agent's audio for `turn` is complete (audio mode; a no-op in text mode)."""
        ...

    async def interrupt(self, turn: int) -> None:
        """Stop speaking now; `turn` is the turn being interrupted (the newest one spoken)."""
        ...

    async def keep_alive(self) -> None:
        """Reset the provider's idle timer."""
        ...


class AvatarProvider(Protocol):
    """Opens avatar sessions. Constructed once per process with the settings and the shared HTTP client."""

    name: str

    def open_session(self, on_event: OnAvatarEvent, *, on_created: OnSessionCreated | None = None,
                     on_stop_failed: OnStopFailed | None = None) -> AbstractAsyncContextManager[AvatarSession]:
        """Create and start a session; on exit (for any reason, including cancellation) stop it, shielded and
        time-bounded. A session whose creation answer arrives after the caller was cancelled is stopped too.
        `on_created(session_id)`, if given, runs as soon as the upstream id exists, concurrently with the rest of
        the start-up (`alongside`); the session is handed over only once it has returned. `on_stop_failed(session_id)`
        runs when the final stop gave up.

        Raises AvatarUnavailable if no session could be opened; raises AvatarSessionEnded out of the body if the
        session dies while in use.
        """
        ...


async def alongside(on_created: OnSessionCreated | None, session_id: str, call: Callable[[], Awaitable[T]]) -> T:
    """`await call()` while `on_created(session_id)` runs concurrently: a provider's next start-up step does not
    wait for the caller's bookkeeping. Returns `call()`'s result, or raises its exception unwrapped (not in a
    group), only once both have finished: a failing `call()` does not cut `on_created` short. Cancelled by the
    caller's scope (both then stop at their next checkpoint, except what `on_created` shields)."""
    if on_created is None:
        return await call()
    failure: Exception | None = None
    results: list[T] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(on_created, session_id)
        try:
            results.append(await call())
        except Exception as exc:
            failure = exc
    if failure is not None:
        raise failure
    return results[0]
