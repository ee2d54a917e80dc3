"""The speech router: the single caller of the avatar session, so speech, interruptions and turn ends reach it in
order; or, without a (real) avatar, the agent's voice goes to the browser.

An interruption raises a watermark: queued items of older turns are skipped, the call in flight for an older turn is
cancelled through its own scope, then `interrupt` is sent. Audio-driven avatars get `end_turn` after TURN_AUDIO_GAP
without audio for the turn (pipecat uses the same gap), or when the next turn's audio starts.

Listening pose: the avatar is told the user is speaking (`set_listening(True)`) when the agent hears them (a
tentative transcript, or a VAD score of at least VAD_SPEAKING), and to leave the pose (`False`) just before the
agent's next turn reaches it, in the same queue, so the pose never lands in the middle of a reply.
"""

from __future__ import annotations

from dataclasses import dataclass

import trio

from relay.avatars import AvatarSession
from relay.conversation.outbox import Outbox
from relay.protocol.audio import AudioFormat, to_pcm16

# Seconds without agent audio after which an audio-driven avatar is told the turn's audio is complete.
TURN_AUDIO_GAP = 0.35
SPEECH_QUEUE_ITEMS = 2048
# The agent's `vad_score` from which the user counts as speaking (the listening pose).
VAD_SPEAKING = 0.5


@dataclass(frozen=True, slots=True)
class _SpeakText:
    text: str
    turn: int


@dataclass(frozen=True, slots=True)
class _SpeakAudio:
    audio: bytes
    turn: int


@dataclass(frozen=True, slots=True)
class _Interrupt:
    turn: int


@dataclass(frozen=True, slots=True)
class _Listen:
    listening: bool


_SpeechItem = _SpeakText | _SpeakAudio | _Interrupt | _Listen


class SpeechRouter:
    """Routes the agent's speech to the avatar (text or audio, as the session wants) or to the browser.

    Interruption: turns below the `watermark` are dropped wherever they are (queued here, or in flight: the current
    avatar call is cancelled through its own scope), then the avatar is told to stop.
    """

    def __init__(self, outbox: Outbox) -> None:
        self._outbox = outbox
        self.agent_format = AudioFormat("pcm", 16000)  # replaced by the agent's announced format before ready
        self._tx, self._rx = trio.open_memory_channel[_SpeechItem](SPEECH_QUEUE_ITEMS)
        self.session: AvatarSession | None = None
        self.voice_to_browser = True
        self.watermark = 0
        self._last_turn = 0
        self._in_flight: tuple[int, trio.CancelScope] | None = None
        self.dropped = 0
        self._listening = False

    def attach(self, session: AvatarSession | None) -> None:
        self.session = session
        self.voice_to_browser = session is None or session.info.simulated

    def _queue(self, item: _SpeechItem) -> None:
        try:
            self._tx.send_nowait(item)
        except trio.WouldBlock:
            self.dropped += 1

    def user_speaking(self) -> None:
        """The agent hears the user (tentative transcript, VAD): the avatar takes its listening pose."""
        if self.session is not None and not self._listening:
            self._listening = True
            self._queue(_Listen(True))

    def vad_score(self, score: float) -> None:
        if score >= VAD_SPEAKING:
            self.user_speaking()

    def _agent_turn_starts(self) -> None:
        if self._listening:
            self._listening = False
            self._queue(_Listen(False))

    def agent_text(self, text: str, turn: int) -> None:
        self._last_turn = max(self._last_turn, turn)
        if self.session is not None and not self.session.takes_audio and turn >= self.watermark:
            self._agent_turn_starts()
            self._queue(_SpeakText(text, turn))

    def agent_audio(self, audio: bytes, turn: int) -> None:
        if turn < self.watermark:
            return
        self._last_turn = max(self._last_turn, turn)
        if self.voice_to_browser:
            self._outbox.send_audio(to_pcm16(audio, self.agent_format))
        if self.session is not None and self.session.takes_audio:
            self._agent_turn_starts()
            self._queue(_SpeakAudio(audio, turn))

    def interrupt(self, new_turn: int | None = None) -> None:
        """Drop every turn before `new_turn` (default: everything said so far) and stop the avatar."""
        interrupted = self._last_turn
        self.watermark = max(self.watermark, new_turn if new_turn is not None else self._last_turn + 1)
        if self._in_flight is not None and self._in_flight[0] < self.watermark:
            self._in_flight[1].cancel()
        if self.session is not None:
            self._queue(_Interrupt(interrupted))

    async def run(self, session: AvatarSession) -> None:
        """Feed `session` in order until cancelled. Blocks on the avatar's network calls; a call for a turn that
        gets interrupted is cancelled through its own scope. Ends the audio turn after TURN_AUDIO_GAP of silence."""
        open_turn: int | None = None
        while True:
            if open_turn is None:
                item = await self._rx.receive()
            else:
                item = None
                with trio.move_on_after(TURN_AUDIO_GAP):
                    item = await self._rx.receive()
                if item is None or (isinstance(item, _SpeakAudio) and item.turn != open_turn):
                    if open_turn >= self.watermark:
                        await session.end_turn(open_turn)
                    open_turn = None
                if item is None:
                    continue
            if item is None:
                continue
            if isinstance(item, _Interrupt):
                open_turn = None
                await session.interrupt(item.turn)
                continue
            if isinstance(item, _Listen):
                await session.set_listening(item.listening)
                continue
            if item.turn < self.watermark:
                continue
            with trio.CancelScope() as scope:
                self._in_flight = (item.turn, scope)
                try:
                    if isinstance(item, _SpeakText):
                        await session.speak_text(item.text, item.turn)
                    else:
                        await session.speak_audio(item.audio, self.agent_format, item.turn)
                        open_turn = item.turn
                finally:
                    self._in_flight = None
