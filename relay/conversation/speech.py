"""The speech router: the single caller of the avatar session, so speech, interruptions and turn ends reach it in
order; or, without a (real) avatar, the agent's voice goes to the browser.

An interruption raises a watermark: queued items of older turns are skipped, the call in flight for an older turn is
cancelled through its own scope, then `interrupt` is sent. Audio-driven avatars get `end_turn` after TURN_AUDIO_GAP
without audio for the turn (pipecat uses the same gap), or when the next turn's audio starts.

`wait_played_out` is how an ending lets the avatar finish: it returns once every queued item has been given to
the avatar, the open audio turn has been ended, and the avatar has said it: an avatar that reports its speech
(`avatar_state`, LITE `agent.speak_ended`) is waited for until it reports the end of the last turn it was given;
for one that does not, the estimate stands in — audio: its duration from the bytes sent and the rate, played back
to back from when it was sent; text: the `duration_ms` the avatar announced (`avatar_speaking`). An interruption
stops the avatar, so what was playing no longer counts.

Held speech: a real avatar takes speech only once it says `connected`; until then what is given to it waits (the
LITE socket holds it), and the router keeps a copy. If the avatar is not connected `hold_limit` seconds after the
first held chunk (`hold_for_avatar`), the held turns go to the browser as voice instead (and the rest of those turns
too: the avatar never says them); the avatar takes over from the next turn. If the avatar is dropped
(`attach(None)`: never connected, died), what is still held goes to the browser first, in order, before newer speech.

An avatar that dies mid-conversation (`avatar_lost`): the unsaid rest of the turn it was saying goes to the browser
as voice — what was queued for it, what was in flight, and the part of what it was given that had not played yet by
the estimate (the audio's duration, played back to back from when it was given) — then the rest of that turn too;
a replacement avatar (`attach`) takes over from the next turn.

Inline audio (issue 26): when the session offers an `AudioTaker` (LITE), the avatar is connected and no audio item
waits in the queue, `agent_audio` has the taker resample and pace the chunk in the caller's (the agent pump's) step
and queues only what needs the socket — the packets due, the turn's first chunk (which opens the turn in `run`), the
end of the previous turn — so a chunk the pacer holds costs no task switch. The turn gap runs from the newest audio
taken; the rules above (order, watermark, in-flight scope, `avatar_lost`'s estimate) are unchanged: audio taken
inline counts as given to the avatar from then on.

Listening pose (the LITE guide's turn cycle): the avatar takes its listening pose (`set_listening(True)`) when the
agent hears the user (a tentative transcript, or a VAD score of at least VAD_SPEAKING), leaves it when the user's
turn is final (`user_stopped`) or just before the agent's next turn reaches it, in the same queue, so the pose never
lands in the middle of a reply, and takes it again when the avatar reports the end of its last turn.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import trio

from relay.avatars import AudioTaker, AvatarSession
from relay.conversation.outbox import Outbox
from relay.conversation.spans import TurnTrace
from relay.protocol import browser as bp
from relay.protocol.audio import AudioFormat, duration_seconds, to_pcm16
from relay.protocol.elevenlabs import Alignment

# Seconds without agent audio after which an audio-driven avatar is told the turn's audio is complete.
TURN_AUDIO_GAP = 0.35
# The agent's `vad_score` from which the user counts as speaking (the listening pose).
VAD_SPEAKING = 0.5
SPEECH_QUEUE_ITEMS = 2048
# Held agent audio (agent format) beyond this many bytes goes to the browser at once, whatever `hold_limit` says.
HELD_SPEECH_MAX_BYTES = 8 * 2**20
_NO_TURN = -(2**63)


@dataclass(frozen=True, slots=True)
class _SpeakText:
    text: str
    turn: int


@dataclass(frozen=True, slots=True)
class _SpeakAudio:
    audio: bytes
    turn: int


class _SendPackets:
    """Packets of turn `turn` that the avatar's `AudioTaker` took inline and says are due (none: the turn's first
    chunk, which tells `run` the turn is open)."""

    __slots__ = ("event_id", "packets", "turn")

    def __init__(self, turn: int, event_id: str, packets: list[memoryview]) -> None:
        self.turn = turn
        self.event_id = event_id
        self.packets = packets


@dataclass(frozen=True, slots=True)
class _EndTurn:
    turn: int


@dataclass(frozen=True, slots=True)
class _Interrupt:
    turn: int


@dataclass(frozen=True, slots=True)
class _Listen:
    listening: bool


_SpeechItem = _SpeakText | _SpeakAudio | _SendPackets | _EndTurn | _Interrupt | _Listen


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
        self._pending = 0  # items queued and not yet handled by `run`
        self._open_turn: int | None = None  # the audio turn `run` has not ended yet
        self._audio_at = 0.0  # trio time the open turn's latest audio was given (its gap runs from there)
        self._taker: AudioTaker | None = None  # the session's inline audio path, if it has one
        self._takes_audio = False  # the session takes the agent's audio (`AvatarSession.takes_audio`)
        self._queued_audio = 0  # `_SpeakAudio` items queued or in flight (audio is taken inline only when none)
        self._play_until = 0.0  # trio time at which the speech given so far has played out
        self._progress = trio.Event()  # set (and replaced) whenever `run` gets nearer to idle
        self._captions = bp.CaptionAligner()
        self._connected = True  # False while a real avatar has not said `connected`: its speech is held (copied)
        self._held: list[tuple[int, bytes]] = []
        self._held_bytes = 0
        self._held_at = math.inf  # trio time of the first chunk held now
        self._held_arrived = trio.Event()
        self._browser_through = _NO_TURN  # turns held too long: the browser says them, the avatar never does
        self._reports_speech = False  # the avatar reports when it starts and stops speaking (`avatar_state`)
        self._spoken_turn = _NO_TURN  # the newest turn whose audio the avatar accepted
        self._ended_turn = _NO_TURN  # the newest turn the avatar reported finished
        # Audio given to the avatar, played back to back by the estimate: (turn, audio, play start, play end).
        self._given: list[tuple[int, bytes, float, float]] = []
        self._giving: tuple[int, bytes] | None = None  # the audio call in flight
        self.turns: TurnTrace | None = None  # the conversation's turn spans, when it is traced

    def attach(self, session: AvatarSession | None) -> None:
        if session is None:  # no avatar (any more): what was held for it goes to the browser first, in order
            self._release_held()
        self.session = session
        self._taker = getattr(session, "audio_taker", None)
        self._takes_audio = session is not None and session.takes_audio
        self.voice_to_browser = session is None or session.info.simulated
        self._connected = self.voice_to_browser
        if session is None:  # nothing it was given will be played, nothing to wait for
            while True:
                try:
                    self._rx.receive_nowait()
                except trio.WouldBlock:
                    break
            self._pending, self._open_turn, self._play_until, self._queued_audio = 0, None, 0.0, 0
            self._notify()

    def avatar_lost(self) -> None:
        """The avatar died mid-conversation: give the browser, as voice and in order, the unsaid rest of what it was
        given (held, or not yet played by the estimate, in flight, queued), skipping interrupted turns; the rest of
        the turn being spoken follows as voice; then no avatar is attached (`attach(None)`) until a replacement."""
        rest: list[bytes] = []
        if self._connected:
            now, rate = trio.current_time(), self.agent_format.sample_rate
            given = list(self._given)
            if self._giving is not None:
                given.append((*self._giving, max(self._play_until, now), 0.0))
            for turn, audio, start, _ in given:
                if turn < self.watermark or turn <= self._browser_through:
                    continue
                pcm = to_pcm16(audio, self.agent_format)
                if start + len(pcm) / 2 / rate <= now:
                    continue  # played already
                rest.append(pcm[int(max(0.0, now - start) * rate) * 2:])
            while True:
                try:
                    item = self._rx.receive_nowait()
                except trio.WouldBlock:
                    break
                if isinstance(item, _SpeakAudio) and item.turn >= self.watermark and item.turn > self._browser_through:
                    rest.append(to_pcm16(item.audio, self.agent_format))
            self._forget_held()
        for pcm in rest:
            self._outbox.send_audio(pcm)
        self._given, self._giving = [], None
        self.attach(None)  # what was held (an avatar not yet connected) goes to the browser here
        self._browser_through = max(self._browser_through, self._last_turn)

    def avatar_connected(self) -> None:
        """The avatar said `connected`: what is held reaches it now; nothing more is held."""
        self._connected = True
        self._forget_held()

    def _forget_held(self) -> None:
        self._held, self._held_bytes, self._held_at = [], 0, math.inf
        self._held_arrived = trio.Event()

    def _hold(self, turn: int, audio: bytes) -> None:
        if not self._held:
            self._held_at = trio.current_time()
            self._held_arrived.set()
        self._held.append((turn, audio))
        self._held_bytes += len(audio)
        if self._held_bytes > HELD_SPEECH_MAX_BYTES:
            self._release_held()

    def _release_held(self) -> None:
        """Give the held turns (not interrupted) to the browser as voice, and take them from the avatar."""
        held = [(turn, audio) for turn, audio in self._held if turn >= self.watermark]
        self._forget_held()
        if not held:
            return
        for _, audio in held:
            self._outbox.send_audio(to_pcm16(audio, self.agent_format))
        self._browser_through = max(self._browser_through, max(turn for turn, _ in held))
        if self._in_flight is not None and self._in_flight[0] <= self._browser_through:
            self._in_flight[1].cancel()

    async def hold_for_avatar(self, limit: float) -> None:
        """Until cancelled: whenever speech is held for an avatar that has not said `connected`, give it to the
        browser as voice once it has waited `limit` seconds (the first held chunk's wait). Blocks on the clock."""
        while True:
            await self._held_arrived.wait()
            await trio.sleep_until(self._held_at + limit)
            if not self._connected and self._held and trio.current_time() >= self._held_at + limit:
                self._release_held()

    def _queue(self, item: _SpeechItem) -> None:
        try:
            self._tx.send_nowait(item)
        except trio.WouldBlock:
            self.dropped += 1
            return
        self._pending += 1

    def _notify(self) -> None:
        self._progress.set()
        self._progress = trio.Event()

    def _played(self, seconds: float) -> None:
        self._play_until = max(self._play_until, trio.current_time()) + seconds

    def avatar_speaking(self, duration_ms: int | None) -> None:
        """The avatar accepted a text task that lasts `duration_ms` (HeyGen's streaming.task answer)."""
        if self.turns is not None:
            self.turns.avatar_speaking(None)
        if duration_ms:
            self._played(duration_ms / 1000.0)

    def avatar_state(self, speaking: bool, turn: int | None) -> None:
        """The avatar reports that it started (`speaking`) or finished saying `turn` (LITE `agent.speak_started`,
        `agent.speak_ended`/`speak_interrupted`). After the end of its newest turn it takes the listening pose."""
        self._reports_speech = True
        if speaking and self.turns is not None:
            self.turns.avatar_speaking(turn)
        if speaking or turn is None:
            return
        self._ended_turn = max(self._ended_turn, turn)
        self._notify()
        if (self.session is not None and turn == self._last_turn and turn >= self.watermark
                and not self._listening):
            self._listening = True
            self._queue(_Listen(True))

    def _avatar_still_speaking(self) -> bool:
        """The avatar reports its speech and has not yet reported the end of the newest turn it accepted."""
        return (self._reports_speech and self.session is not None and self._spoken_turn >= self.watermark
                and self._spoken_turn > self._browser_through and self._ended_turn < self._spoken_turn)

    async def wait_played_out(self) -> None:
        """Until the speech given so far (queued, in flight, and being played) has played out: until the avatar
        reports the end of its last turn when it reports its speech, else until the estimate says so. Cancelled by
        the caller's scope: bound it (RELAY_FINISH_SPEAKING_TIMEOUT)."""
        while True:
            while self._pending or self._open_turn is not None:
                await self._progress.wait()
            if self._reports_speech and self.session is not None:
                if not self._avatar_still_speaking():
                    return
                await self._progress.wait()
                continue
            if self._play_until <= trio.current_time():
                return
            await trio.sleep_until(self._play_until)

    def user_speaking(self) -> None:
        """The agent hears the user (tentative transcript, VAD): the avatar takes its listening pose."""
        if self.session is not None and not self._listening:
            self._listening = True
            self._queue(_Listen(True))

    def user_stopped(self, *, said: bool = True) -> None:
        """The user's turn is final (the agent's final transcript; `said`: not empty — the agent sends an empty one
        after its first message): the avatar leaves its listening pose."""
        if said and self.turns is not None:
            self.turns.user_ended("speech", self._last_turn)
        if self.session is not None and self._listening:
            self._listening = False
            self._queue(_Listen(False))

    def user_typed(self) -> None:
        """The user sent a typed message (its turn ends there)."""
        if self.turns is not None:
            self.turns.user_ended("text", self._last_turn)

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

    def agent_audio(self, audio: bytes, turn: int, alignment: Alignment | None = None) -> None:
        """A chunk of turn `turn`'s voice: its caption timing (`agent_alignment`, when the agent sent an alignment)
        goes to the browser just before it, whoever plays it; then the audio to the browser and/or the avatar."""
        if turn < self.watermark:
            return
        if self.turns is not None and self.turns.audio_turn != turn:
            self.turns.agent_audio(turn, self.session is not None)
        if turn > self._last_turn:
            self._last_turn = turn
        seconds = duration_seconds(audio, self.agent_format)
        if alignment is None:
            timed = self._captions.chunk(turn, None, None, None, seconds * 1000)
        else:
            timed = self._captions.chunk(turn, alignment.chars, alignment.char_start_times_ms,
                                         alignment.char_durations_ms, seconds * 1000)
        caption = None if timed is None else bp.agent_alignment(turn, timed[0], timed[1])
        if self.voice_to_browser or turn <= self._browser_through:
            self._outbox.send_audio(to_pcm16(audio, self.agent_format), caption)  # one write for both
            if turn <= self._browser_through:
                return
        else:
            if caption is not None:
                self._outbox.send_lossy(caption)
            if not self._connected:
                self._hold(turn, audio)
        if self._takes_audio and self.session is not None:
            if self._listening:
                self._agent_turn_starts()
            if self._taker is not None and self._connected and not self._queued_audio:
                self._take_inline(self._taker, audio, turn, seconds)
            else:
                self._queued_audio += 1
                self._queue(_SpeakAudio(audio, turn))

    def _take_inline(self, taker: AudioTaker, audio: bytes, turn: int, seconds: float) -> None:
        """Give a chunk to the avatar without `run`'s step: the taker resamples and paces it here; only the packets
        due (and the first chunk of a turn, which opens it in `run`) are queued, after what was queued before. The
        previous open turn is ended first, in the queue."""
        opening = turn != self._open_turn
        if opening and self._open_turn is not None:
            self._queue(_EndTurn(self._open_turn))
        event_id, packets = taker.take_audio(audio, self.agent_format, turn)
        self._open_turn = turn
        self._audio_at = now = trio.current_time()
        if packets or opening:
            self._queue(_SendPackets(turn, event_id, packets))
        self._given_now(turn, audio, seconds, now)

    def interrupt(self, new_turn: int | None = None) -> None:
        """Drop every turn before `new_turn` (default: everything said so far) and stop the avatar."""
        interrupted = self._last_turn
        self.watermark = max(self.watermark, new_turn if new_turn is not None else self._last_turn + 1)
        if self.turns is not None:
            self.turns.interrupted("agent" if new_turn is not None else "browser", self.watermark)
            if self.session is None:
                self.turns.interrupt_sent()
        if self._in_flight is not None and self._in_flight[0] < self.watermark:
            self._in_flight[1].cancel()
        self._play_until = 0.0  # the avatar is told to stop: what it was playing no longer counts
        if self.session is not None:
            self._queue(_Interrupt(interrupted))

    async def run(self, session: AvatarSession) -> None:
        """Feed `session` in order until cancelled. Blocks on the avatar's network calls; a call for a turn that
        gets interrupted is cancelled through its own scope. Ends the audio turn after TURN_AUDIO_GAP of silence."""
        while True:
            open_turn = self._open_turn
            item: _SpeechItem | None
            if open_turn is None:
                item = await self._rx.receive()
            else:
                try:  # the agent sends a turn's audio in bursts: no timer for an item already queued
                    item = self._rx.receive_nowait()
                except trio.WouldBlock:
                    item = None
                if item is None:  # (waited for outside the `except`: the exception is not kept alive meanwhile)
                    with trio.move_on_at(self._audio_at + TURN_AUDIO_GAP):
                        item = await self._rx.receive()
                if item is None:
                    if self._open_turn != open_turn or trio.current_time() < self._audio_at + TURN_AUDIO_GAP:
                        continue  # audio was taken inline meanwhile: the gap starts again from it
                    await self._end_open_turn(session, open_turn)
                    continue
                if isinstance(item, _SpeakAudio) and item.turn != open_turn:
                    await self._end_open_turn(session, open_turn)
            try:
                await self._handle(session, item)
            finally:
                self._pending -= 1
                if type(item) is _SpeakAudio:
                    self._queued_audio -= 1
                self._notify()

    async def _end_open_turn(self, session: AvatarSession, turn: int) -> None:
        """End the open audio turn `turn` (its gap passed, or the next turn's audio came through the queue): no
        longer open from now on (audio of it taken inline after this starts its next utterance), counted as queued
        until its end is sent. Nothing is sent for an interrupted turn."""
        self._open_turn = None
        self._pending += 1
        try:
            if turn >= self.watermark:
                await session.end_turn(turn)
        finally:
            self._pending -= 1
            self._notify()

    async def _handle(self, session: AvatarSession, item: _SpeechItem) -> None:
        if isinstance(item, _SendPackets):
            if item.packets and item.turn >= self.watermark and item.turn > self._browser_through:
                assert self._taker is not None
                with trio.CancelScope() as scope:
                    self._in_flight = (item.turn, scope)
                    try:
                        await self._taker.send_packets(item.turn, item.event_id, item.packets)
                    finally:
                        self._in_flight = None
            return
        if isinstance(item, _EndTurn):
            if item.turn >= self.watermark:
                await session.end_turn(item.turn)
            return
        if isinstance(item, _Interrupt):
            if self._open_turn is not None and self._open_turn <= item.turn:
                self._open_turn = None
            await session.interrupt(item.turn)
            if self.turns is not None:
                self.turns.interrupt_sent()
            return
        if isinstance(item, _Listen):
            await session.set_listening(item.listening)
            return
        if item.turn < self.watermark or item.turn <= self._browser_through:
            return
        with trio.CancelScope() as scope:
            self._in_flight = (item.turn, scope)
            try:
                if isinstance(item, _SpeakText):
                    await session.speak_text(item.text, item.turn)
                    if self.turns is not None:
                        self.turns.avatar_given(item.turn)
                else:
                    self._giving = (item.turn, item.audio)
                    await session.speak_audio(item.audio, self.agent_format, item.turn)
                    self._open_turn = item.turn
                    self._audio_at = now = trio.current_time()
                    self._given_now(item.turn, item.audio, duration_seconds(item.audio, self.agent_format), now)
            finally:
                self._in_flight = None
                self._giving = None

    def _given_now(self, turn: int, audio: bytes, seconds: float, now: float) -> None:
        """`seconds` of audio of `turn` were given to the avatar at `now`: the turn's trace, the newest turn spoken,
        the copy kept for `avatar_lost` until it has played (by the estimate) and the play-out estimate."""
        if self.turns is not None:
            self.turns.avatar_given(turn)
        if turn > self._spoken_turn:
            self._spoken_turn = turn
        start = max(self._play_until, now)
        given = self._given
        # Kept in order of play, so the first entry is the oldest: when it is of this turn and still playing, so is
        # every other one and nothing is to be dropped.
        if given and (given[0][0] != turn or given[0][3] <= now):
            self._given = given = [entry for entry in given if entry[0] == turn and entry[3] > now]
        given.append((turn, audio, start, start + seconds))
        self._play_until = start + seconds
