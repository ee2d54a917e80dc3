"""The speech router's inline audio path (issue 26): a session whose avatar offers an `AudioTaker` (LITE) has each
agent chunk resampled and paced in the agent pump's own step; the router's task wakes only for the packets that are
due, a turn's first chunk and its end. What the avatar receives must be what the queued path gives it: packets in
order under the utterance's event id, `agent.speak_end` after the turn gap, nothing of an interrupted turn, audio
after an utterance's end under the next id."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio
import trio.testing

from relay.avatars import AvatarInfo
from relay.avatars.lite import LiteAudioStream
from relay.avatars.streamed import StreamedAudioSession
from relay.conversation.outbox import Outbox
from relay.conversation.speech import TURN_AUDIO_GAP, SpeechRouter
from relay.protocol.audio import AudioFormat
from tests.support.fakes import FakeLiteSocket
from tests.support.steps import TaskSteps

CHUNK = b"\x01\x00" * 4000  # 250 ms at 16 kHz


def lite_router(first_packet_seconds: float = 0.6) -> tuple[SpeechRouter, StreamedAudioSession, FakeLiteSocket]:
    sock = FakeLiteSocket()
    stream = LiteAudioStream(sock, "turn", first_packet_seconds)  # type: ignore[arg-type]
    stream.connected.set()
    session = StreamedAudioSession(AvatarInfo("liveavatar", "s1", None, None, False), stream, 60.0)
    router = SpeechRouter(Outbox())
    router.attach(session)
    router.avatar_connected()
    router.agent_format = AudioFormat("pcm", 16000)
    return router, session, sock


@asynccontextmanager
async def speaking(first_packet_seconds: float = 0.0) -> AsyncIterator[tuple[SpeechRouter, FakeLiteSocket]]:
    """A router on a LITE stream with its task running; on leaving, once the speech has played out, it is stopped."""
    router, session, sock = lite_router(first_packet_seconds)
    async with trio.open_nursery() as tasks:
        tasks.start_soon(router.run, session)
        yield router, sock
        await router.wait_played_out()
        tasks.cancel_scope.cancel()


def frames(sock: FakeLiteSocket) -> list[tuple[object, object]]:
    return [(f["type"], f["event_id"]) for f in sock.sent]


async def burst(inline: bool) -> tuple[list[dict[str, object]], int]:
    """2 s of one turn in a burst, as the agent sends it: the frames the avatar got, and how many steps the router's
    task took for them. `inline` False: the queued path (the router resamples and paces every chunk)."""
    router, session, sock = lite_router()
    if not inline:
        router._taker = None
    steps = TaskSteps("router")
    trio.lowlevel.add_instrument(steps)
    try:
        async with trio.open_nursery() as tasks:
            tasks.start_soon(router.run, session, name="router")
            await trio.testing.wait_all_tasks_blocked()
            before = steps.count
            for _ in range(8):  # each chunk in a read of its own: the router runs between them
                router.agent_audio(CHUNK, 1)
                await trio.testing.wait_all_tasks_blocked()
            await router.wait_played_out()  # the turn ended after the gap: its speak_end is out
            woke = steps.count - before
            tasks.cancel_scope.cancel()
    finally:
        trio.lowlevel.remove_instrument(steps)
    return sock.sent, woke


async def test_a_burst_taken_inline_reaches_the_avatar_as_the_queued_path_sends_it_and_wakes_the_router_less(
        autojump_clock: trio.testing.MockClock) -> None:
    inline, inline_steps = await burst(True)
    queued, queued_steps = await burst(False)
    assert inline == queued
    assert [f["type"] for f in inline][-1] == "agent.speak_end" and len(inline) >= 3
    said = sum(len(base64.b64decode(str(f.get("audio", "")))) for f in inline)
    assert abs(said - 2 * 48000) <= 2 * 48  # 2 s at 24 kHz, give or take the resampler's edges
    # The queued path wakes the router for each of the eight chunks; inline, the chunks the pacer holds cost it
    # nothing: it wakes for the turn's first chunk, the packets due and the turn's end.
    assert queued_steps >= 8
    assert inline_steps <= queued_steps - 3


async def test_audio_of_a_turn_whose_end_is_being_sent_goes_out_as_its_next_utterance(
        autojump_clock: trio.testing.MockClock) -> None:
    async with speaking() as (router, sock):
        router.agent_audio(CHUNK, 1)
        await trio.testing.wait_all_tasks_blocked()
        sock.gate = trio.Event()  # the avatar stops reading: the turn's end (its tail, then speak_end) is stuck
        await trio.sleep(TURN_AUDIO_GAP + 0.05)
        await trio.testing.wait_all_tasks_blocked()
        router.agent_audio(CHUNK, 1)  # more of the same turn, after its gap
        gate = sock.gate
        sock.gate = None
        gate.set()
    assert frames(sock) == [("agent.speak", "turn-1"), ("agent.speak", "turn-1"), ("agent.speak_end", "turn-1"),
                            ("agent.speak", "turn-1.1"), ("agent.speak", "turn-1.1"),
                            ("agent.speak_end", "turn-1.1")]


async def test_a_turn_taken_inline_right_after_an_interruption_still_ends(
        autojump_clock: trio.testing.MockClock) -> None:
    async with speaking() as (router, sock):
        router.agent_audio(CHUNK, 1)
        await trio.testing.wait_all_tasks_blocked()
        # The agent interrupts turn 1 and its next turn's audio follows before the router has run.
        router.interrupt(2)
        router.agent_audio(CHUNK, 2)
        router.agent_audio(CHUNK, 1)  # late audio of the interrupted turn: dropped
    assert frames(sock) == [("agent.speak", "turn-1"), ("agent.interrupt", "turn-1"), ("agent.speak", "turn-2"),
                            ("agent.speak", "turn-2"), ("agent.speak_end", "turn-2")]


async def test_the_next_turns_audio_ends_the_open_turn_first(autojump_clock: trio.testing.MockClock) -> None:
    async with speaking(first_packet_seconds=0.6) as (router, sock):
        for turn in (1, 2):  # no gap between the turns
            for _ in range(3):
                router.agent_audio(CHUNK, turn)
    assert frames(sock) == [("agent.speak", "turn-1"), ("agent.speak", "turn-1"), ("agent.speak_end", "turn-1"),
                            ("agent.speak", "turn-2"), ("agent.speak", "turn-2"), ("agent.speak_end", "turn-2")]


async def test_an_avatar_not_yet_connected_gets_the_queued_path_and_inline_resumes_in_order(
        autojump_clock: trio.testing.MockClock) -> None:
    router = SpeechRouter(Outbox())
    _, session, sock = lite_router(first_packet_seconds=0.0)
    router.attach(session)  # a real avatar that has not said `connected`: its speech is held (copied)
    stream = session._stream
    assert isinstance(stream, LiteAudioStream)
    stream.connected = trio.Event()
    async with trio.open_nursery() as tasks:
        tasks.start_soon(router.run, session)
        router.agent_audio(CHUNK, 1)
        router.agent_audio(CHUNK, 1)
        await trio.testing.wait_all_tasks_blocked()
        assert sock.sent == []
        router.avatar_connected()
        router.agent_audio(CHUNK, 1)  # behind the two queued chunks: not taken inline before them
        stream.connected.set()
        await router.wait_played_out()
        tasks.cancel_scope.cancel()
    assert frames(sock) == [("agent.speak", "turn-1")] * 4 + [("agent.speak_end", "turn-1")]


async def test_an_avatar_lost_mid_turn_leaves_the_browser_the_unsaid_rest_of_what_was_taken_inline(
        autojump_clock: trio.testing.MockClock) -> None:
    router, session, _ = lite_router()
    chunks = [index.to_bytes(2, "little") * 8000 for index in range(1, 5)]  # four 0.5 s chunks of turn 1
    async with trio.open_nursery() as tasks:
        tasks.start_soon(router.run, session)
        start = trio.current_time()
        for pcm in chunks:  # 2 s, taken at once: played back to back from now, by the estimate
            router.agent_audio(pcm, 1)
        await trio.sleep_until(start + 0.75)  # chunk 1 and half of chunk 2 were said
        tasks.cancel_scope.cancel()
    router._outbox = outbox = Outbox()  # only what follows
    router.avatar_lost()
    rest = b""
    while True:
        try:
            frame = outbox._rx.receive_nowait()
        except trio.WouldBlock:
            break
        if isinstance(frame, bytes):
            rest += frame
    whole = b"".join(chunks)
    assert rest == whole[len(chunks[0]) + len(chunks[1]) // 2:]  # neither lost nor repeated
