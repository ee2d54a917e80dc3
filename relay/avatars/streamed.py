"""The `AvatarSession` of a provider that lip-syncs the agent's own audio over a socket of its own (LiveAvatar LITE,
Simli): a thin session over the provider's audio stream, which does the work.

No I/O of its own: every method awaits the stream's, may block on its socket, and is cancelled by the caller's scope.
Must never raise for a transient failure of one utterance (the streams log and return).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Protocol

from relay.avatars import AudioTaker, AvatarInfo
from relay.protocol.audio import AudioFormat

log = logging.getLogger("relay.avatars")


class AudioStream(Protocol):
    """What a provider's socket offers a session (`relay.avatars.lite.LiteAudioStream`, `relay.simli.SimliStream`)."""

    async def speak_audio(self, audio: bytes, audio_format: AudioFormat, turn: int) -> None: ...

    async def end_turn(self, turn: int) -> None: ...

    async def interrupt(self, turn: int) -> None: ...

    async def keep_alive(self) -> None: ...

    async def wait_connected(self) -> None: ...

    async def set_listening(self, listening: bool) -> None: ...


class StreamedAudioSession:
    """One running session (an `AvatarSession`) whose avatar takes the agent's audio through `stream`.

    `keep_alive` resets the stream's idle timer, then awaits `also_keep_alive` when given (LiveAvatar's REST keep-alive:
    clients disagree on which one the server counts)."""

    def __init__(self, info: AvatarInfo, stream: AudioStream, keep_alive_interval: float, *,
                 also_keep_alive: Callable[[], Awaitable[None]] | None = None) -> None:
        self._info = info
        self._stream = stream
        self._keep_alive_interval = keep_alive_interval
        self._also_keep_alive = also_keep_alive
        self._warned_text = False
        # The stream itself, when it can take audio inline (LITE): see `relay.avatars.AudioTaker`.
        self.audio_taker: AudioTaker | None = stream if isinstance(stream, AudioTaker) else None

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
        """The avatar lip-syncs audio only; text has no way to it. Logged once, then ignored."""
        if not self._warned_text:
            self._warned_text = True
            log.warning("%s sessions take audio, not text; ignoring speak_text", self._info.provider)

    async def speak_audio(self, audio: bytes, audio_format: AudioFormat, turn: int) -> None:
        await self._stream.speak_audio(audio, audio_format, turn)

    async def end_turn(self, turn: int) -> None:
        await self._stream.end_turn(turn)

    async def interrupt(self, turn: int) -> None:
        await self._stream.interrupt(turn)

    async def wait_connected(self) -> None:
        await self._stream.wait_connected()

    async def set_listening(self, listening: bool) -> None:
        await self._stream.set_listening(listening)

    async def keep_alive(self) -> None:
        """The stream's keep-alive, then `also_keep_alive`; failures are logged by them, never raised."""
        await self._stream.keep_alive()
        if self._also_keep_alive is not None:
            await self._also_keep_alive()
