"""The avatar provider interface: `AvatarProvider`, `AvatarSession`, `AvatarInfo`, the events, the errors and
their `Literal` reasons.

The conversation nursery drives an avatar only through `AvatarProvider.open_session` and the `AvatarSession`
methods below; it never knows which provider it drives. Each provider lives in its own module (`relay.heygen`,
`relay.liveavatar`), declared once in `relay.providers` (listed by `relay.providers.table`); "none" (voice only) is
simply no provider. Alongside: `common` (what both providers share), `hooks` (`SessionHooks`), `lite` (the LITE audio
socket). This module must never do I/O, and imports no trio.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from relay.protocol.audio import AudioFormat
from relay.protocol.browser import AvatarInfo
from relay.protocol.vocab import SessionEndedReason, UnavailableReason

# Events a session reports while it runs (delivered through the `on_event` callback; must not block).


@dataclass(frozen=True, slots=True)
class AvatarSpeaking:
    """Text mode: the avatar accepted a task and will speak `text` for about `duration_ms`."""

    text: str | None
    duration_ms: int | None
    turn: int | None = None


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

    reason: UnavailableReason | SessionEndedReason

    def __init__(self, reason: UnavailableReason | SessionEndedReason, message: str, *,
                 upstream_code: int | str | None = None, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.upstream_code = upstream_code
        self.retry_after = retry_after


class AvatarUnavailable(AvatarError):
    """The provider refused or failed to open a session (concurrent limit, bad key, no credits, outage, timeout)."""

    reason: UnavailableReason

    def __init__(self, reason: UnavailableReason, message: str, *, upstream_code: int | str | None = None,
                 retry_after: float | None = None) -> None:
        super().__init__(reason, message, upstream_code=upstream_code, retry_after=retry_after)


class AvatarSessionEnded(AvatarError):
    """A session that was running ended on the provider's side (socket closed, idle expiry, session gone).

    Raised out of the `open_session` context; the session is already stopped (or stopping it was attempted).
    """

    reason: SessionEndedReason

    def __init__(self, reason: SessionEndedReason, message: str, *, upstream_code: int | str | None = None) -> None:
        super().__init__(reason, message, upstream_code=upstream_code)


class SessionRotated(AvatarSessionEnded):
    """A healthy session the conversation replaces before its known limit (the LiveAvatar sandbox's minute, the length
    granted): raised inside the session's context by the conversation, not by a provider. Not a failure: a provider
    whose stop takes a reason says the maximum length, and no upstream error is counted."""


class AvatarSession(Protocol):
    """One running avatar session. All methods may block on the network; cancelling the calling scope cancels
    them. None of them raise for a transient failure of a single utterance: they log it and return. A session that
    takes audio may also offer an `audio_taker` (`AudioTaker`), the speech router's inline path."""

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

    async def wait_connected(self) -> None:
        """Return once the avatar says it is ready to take speech (LITE `session.state_updated: connected`), at
        once for a session that has no such event. Speech given before then is held, in order, not lost. The
        conversation bounds the wait (RELAY_AVATAR_CONNECT_TIMEOUT)."""
        ...

    async def set_listening(self, listening: bool) -> None:
        """Show (True) or leave (False) the avatar's listening pose while the user speaks; a no-op for a provider
        without one."""
        ...


@runtime_checkable
class AudioTaker(Protocol):
    """The inline audio path a session whose avatar takes the agent's audio may offer as its `audio_taker`
    attribute (`relay.avatars.lite.LiteAudioStream`; None or absent: it has none). The speech router then takes
    each chunk in the agent pump's own step — resampled and paced, no I/O — and queues only the packets that are
    due for its task to send, so a chunk the avatar need not hear yet costs no task switch (issue 26)."""

    def take_audio(self, audio: bytes, audio_format: AudioFormat, turn: int) -> tuple[str, list[memoryview]]:
        """Take one chunk (no I/O, never blocks): the utterance's event id and the packets due now, for
        `send_packets` in order."""
        ...

    async def send_packets(self, turn: int, event_id: str, packets: list[memoryview]) -> None:
        """Send packets `take_audio` returned. May block on the socket; cancelled by the caller's scope."""
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


__all__ = [
    "AudioTaker",
    "AvatarError",
    "AvatarEvent",
    "AvatarInfo",
    "AvatarProvider",
    "AvatarSession",
    "AvatarSessionEnded",
    "AvatarSpeaking",
    "AvatarStateChanged",
    "AvatarUnavailable",
    "OnAvatarEvent",
    "OnSessionCreated",
    "OnStopFailed",
    "SessionEndedReason",
    "SessionRotated",
    "UnavailableReason",
]
