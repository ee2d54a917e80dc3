"""An avatar that dies mid-turn (issue #23 §3), in the speech router alone (no sockets, the autojump clock): the
browser gets the unsaid rest of the turn as voice — what was queued for the avatar and the part of what it was given
that had not played yet — neither lost nor repeated; the rest of that turn follows as voice; a replacement avatar
takes over from the next turn."""

from __future__ import annotations

import orjson
import trio
import trio.testing

from relay.conversation.outbox import Outbox
from relay.conversation.speech import SpeechRouter
from relay.protocol.audio import AudioFormat
from relay.protocol.browser import AvatarInfo
from relay.protocol.elevenlabs import Alignment
from tests.support.fakes import FakeSession

CHUNK = 16000  # bytes of PCM16 at 16 kHz: 0.5 s


def session(name: str) -> FakeSession:
    fake = FakeSession(AvatarInfo("fake", name, "wss://room.example", "tok", False), True, 60.0, lambda event: None)
    fake.connected.set()
    return fake


def queued_frames(outbox: Outbox) -> list[str | bytes]:
    """Every frame queued for the browser so far (taken off the queue)."""
    frames: list[str | bytes] = []
    while True:
        try:
            frames.append(outbox._rx.receive_nowait())
        except trio.WouldBlock:
            return frames


def browser_audio(outbox: Outbox) -> bytes:
    """Every audio frame queued for the browser so far (taken off the queue)."""
    return b"".join(frame for frame in queued_frames(outbox) if isinstance(frame, bytes))


def chunk(index: int) -> bytes:
    """A recognisable 0.5 s chunk: every sample holds `index`."""
    return index.to_bytes(2, "little") * (CHUNK // 2)


def connected_router() -> tuple[Outbox, SpeechRouter, FakeSession]:
    """An outbox, a speech router on 16 kHz PCM and the avatar session `s1` attached to it and connected."""
    outbox = Outbox()
    speech = SpeechRouter(outbox)
    speech.agent_format = AudioFormat("pcm", 16000)
    first = session("s1")
    speech.attach(first)
    speech.avatar_connected()  # as the conversation's `_await_connected` says
    return outbox, speech, first


async def test_the_unsaid_rest_of_the_turn_reaches_the_browser_once(autojump_clock: trio.testing.MockClock) -> None:
    outbox, speech, first = connected_router()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(speech.run, first)
        start = trio.current_time()  # no time passes while `run` gives the chunks to the avatar
        for index in range(1, 5):
            speech.agent_audio(chunk(index), 1)  # 2 s of turn 1, all given to the avatar at once
        await trio.testing.wait_all_tasks_blocked()
        for index in range(5, 7):
            speech.agent_audio(chunk(index), 1)  # given right after: 3 s in all, played back to back
        await trio.sleep_until(start + 0.75)  # the avatar played 0.75 s of it: chunk 1 and half of chunk 2
        nursery.cancel_scope.cancel()
    assert browser_audio(outbox) == b""
    speech.avatar_lost()
    rest = browser_audio(outbox)
    said = chunk(1) + chunk(2)[:CHUNK // 2]
    whole = b"".join(chunk(i) for i in range(1, 7))
    assert whole.startswith(said) and rest == whole[len(said):]  # not lost, not repeated
    speech.agent_audio(chunk(7), 1)  # the rest of the turn follows as voice
    assert browser_audio(outbox) == chunk(7)

    second = session("s2")
    speech.attach(second)  # the replacement: the turn being spoken stays in the browser
    speech.agent_audio(chunk(8), 1)
    assert browser_audio(outbox) == chunk(8)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(speech.run, second)
        speech.agent_audio(chunk(9), 2)  # the next turn is the new avatar's
        while not second.audio:
            await trio.sleep(0.01)
        nursery.cancel_scope.cancel()
    assert [turn for _, turn in second.audio] == [2]
    assert browser_audio(outbox) == b""


async def test_an_interrupted_turn_is_not_said_after_the_avatar_died(autojump_clock: trio.testing.MockClock) -> None:
    outbox, speech, first = connected_router()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(speech.run, first)
        speech.agent_audio(chunk(1), 1)
        speech.agent_audio(chunk(2), 1)
        await trio.testing.wait_all_tasks_blocked()
        speech.interrupt()
        await trio.sleep(0.1)
        nursery.cancel_scope.cancel()
    speech.avatar_lost()
    assert browser_audio(outbox) == b""


async def test_speech_with_its_caption_timing_is_held_for_an_avatar_not_yet_connected(
        autojump_clock: trio.testing.MockClock) -> None:
    outbox = Outbox()
    speech = SpeechRouter(outbox)
    speech.agent_format = AudioFormat("pcm", 16000)
    speech.attach(session("s1"))  # started, not yet `connected`
    timing = Alignment(("h", "i"), (0, 200), (200, 200))
    speech.agent_audio(chunk(1), 1, timing)
    frames = queued_frames(outbox)
    assert [orjson.loads(frame)["type"] for frame in frames] == ["agent_alignment"]  # the caption, not the voice
    async with trio.open_nursery() as nursery:
        nursery.start_soon(speech.hold_for_avatar, 1.0)
        await trio.sleep(1.5)  # the avatar never said `connected`: the held speech goes to the browser as voice
        assert browser_audio(outbox) == chunk(1)
        nursery.cancel_scope.cancel()
