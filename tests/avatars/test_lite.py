"""relay/avatars/lite.py without sockets: LITE events become avatar events, and LiteAudioStream's ordering with a
fake socket."""

from __future__ import annotations

import base64

import trio
import trio.testing

from relay.avatars import AvatarStateChanged
from relay.avatars.lite import (
    LiteAudioStream,
    avatar_event_for,
)
from relay.protocol.audio import AudioFormat
from relay.protocol.lite import (
    MAX_SPEAK_PCM_BYTES,
    AgentStateUpdated,
    AudioBufferAppended,
    SpeakEnded,
    SpeakInterrupted,
    SpeakStarted,
    turn_from_event_id,
)
from tests.support.fakes import FakeLiteSocket
from tests.support.steps import TaskSteps


def test_speak_started_and_ended_become_avatar_state_changes() -> None:
    assert avatar_event_for(SpeakStarted("turn-3", None)) == AvatarStateChanged(speaking=True, turn=3)
    assert avatar_event_for(SpeakEnded("turn-3", None)) == AvatarStateChanged(speaking=False, turn=3)
    assert avatar_event_for(SpeakInterrupted("turn-3", None)) == AvatarStateChanged(speaking=False, turn=3)
    assert avatar_event_for(SpeakStarted("other", None)) == AvatarStateChanged(speaking=True, turn=None)
    assert avatar_event_for(AudioBufferAppended("turn-3")) is None
    assert avatar_event_for(AgentStateUpdated("idle", "talking")) is None


# ---------------------------------------------------------------------------------------------------------
# LiteAudioStream ordering, with a fake socket (no network)


def make_speaker(*, connected: bool = True,
                 first_packet_seconds: float = 0.0) -> tuple[LiteAudioStream, FakeLiteSocket]:
    """A stream on a fake socket; `first_packet_seconds` 0 (the default here): every chunk goes out as it comes."""
    sock = FakeLiteSocket()
    speaker = LiteAudioStream(sock, "turn", first_packet_seconds)  # type: ignore[arg-type]
    if connected:
        speaker.connected.set()
    return speaker, sock


PCM24K = AudioFormat("pcm", 24000)


async def test_a_chunk_queued_behind_an_interrupt_is_never_sent() -> None:
    speaker, sock = make_speaker()
    sock.gate = trio.Event()
    chunk = b"\x01\x00" * 2400
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(speaker.speak_audio, chunk, PCM24K, 1)
            await trio.testing.wait_all_tasks_blocked()  # the first chunk is stuck in send
            nursery.start_soon(speaker.speak_audio, chunk, PCM24K, 1)  # the next one waits for the socket
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(speaker.interrupt, 1)
            await trio.testing.wait_all_tasks_blocked()
            sock.gate.set()
    assert [(f["type"], f["event_id"]) for f in sock.sent] == [("agent.speak", "turn-1"),
                                                               ("agent.interrupt", "turn-1")]


async def test_the_packets_due_at_once_and_an_utterance_s_end_go_out_in_one_write_each() -> None:
    speaker, sock = make_speaker()
    three_packets = b"\x01\x00" * (MAX_SPEAK_PCM_BYTES * 3 // 2)
    await speaker.speak_audio(three_packets, PCM24K, 1)
    await speaker.end_turn(1)
    assert sock.writes == [["agent.speak"] * 3, ["agent.speak_end"]]
    pcm16k = b"\x10\x00" * 1600  # resampled: the filter's tail and the end leave together
    await speaker.speak_audio(pcm16k, AudioFormat("pcm", 16000), 2)
    await speaker.end_turn(2)
    assert sock.writes[2:] == [["agent.speak"], ["agent.speak", "agent.speak_end"]]


async def test_after_an_interrupt_older_turns_are_dropped_and_newer_ones_flow() -> None:
    speaker, sock = make_speaker()
    chunk = b"\x00\x01" * 2400
    await speaker.speak_audio(chunk, PCM24K, 5)
    await speaker.interrupt(5)
    await speaker.speak_audio(chunk, PCM24K, 5)
    await speaker.speak_audio(chunk, PCM24K, 4)
    await speaker.end_turn(5)
    await speaker.speak_audio(chunk, PCM24K, 6)
    await speaker.end_turn(6)
    assert [(f["type"], f["event_id"]) for f in sock.sent] == [
        ("agent.speak", "turn-5"), ("agent.interrupt", "turn-5"),
        ("agent.speak", "turn-6"), ("agent.speak_end", "turn-6"),
    ]


async def test_end_turn_flushes_the_resampler_tail_before_speak_end() -> None:
    speaker, sock = make_speaker()
    pcm = b"\x10\x00" * 1600
    await speaker.speak_audio(pcm, AudioFormat("pcm", 16000), 2)
    await speaker.end_turn(2)
    speaks = [f for f in sock.sent if f["type"] == "agent.speak"]
    total = sum(len(base64.b64decode(str(f["audio"]))) for f in speaks)
    assert sock.sent[-1] == {"type": "agent.speak_end", "event_id": "turn-2"}
    assert len(speaks) == 2  # the chunk itself, then the filter's tail
    assert total == 2400 * 2  # 0.1 s at 24 kHz, no more, no less


async def test_a_turn_without_audio_sends_no_speak_end() -> None:
    speaker, sock = make_speaker()
    await speaker.end_turn(9)
    assert sock.sent == []


async def test_control_frames_take_the_free_send_lock_without_a_task_switch_of_their_own() -> None:
    """The listening pose (two a turn), keep-alives and interrupts: the write is the only scheduling point (the
    fake socket has none, so the calling task runs to the end in one step); a stuck write still holds them back."""
    speaker, sock = make_speaker()

    async def controls() -> None:
        await speaker.set_listening(True)
        await speaker.set_listening(False)
        await speaker.keep_alive()
        await speaker.interrupt(1)

    steps = TaskSteps("controls")
    trio.lowlevel.add_instrument(steps)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(controls, name="controls")
    finally:
        trio.lowlevel.remove_instrument(steps)
    assert steps.count == 1
    assert sock.writes == [["agent.start_listening"], ["agent.stop_listening"], ["session.keep_alive"],
                           ["agent.interrupt"]]
    sock.gate = trio.Event()
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(speaker.keep_alive)
            await trio.testing.wait_all_tasks_blocked()  # stuck in its write, holding the lock
            nursery.start_soon(speaker.set_listening, True)
            await trio.testing.wait_all_tasks_blocked()
            assert len(sock.writes) == 4
            sock.gate.set()
    assert sock.writes[4:] == [["session.keep_alive"], ["agent.start_listening"]]


async def test_keep_alive_and_listening_frames_have_distinct_event_ids() -> None:
    speaker, sock = make_speaker()
    await speaker.keep_alive()
    await speaker.keep_alive()
    await speaker.set_listening(True)
    await speaker.set_listening(False)
    assert [f["type"] for f in sock.sent] == ["session.keep_alive", "session.keep_alive",
                                              "agent.start_listening", "agent.stop_listening"]
    assert len({f["event_id"] for f in sock.sent}) == 4


async def test_with_no_first_packet_each_agent_chunk_goes_out_immediately_as_one_packet() -> None:
    speaker, sock = make_speaker(first_packet_seconds=0)
    await speaker.speak_audio(b"\x00\x01" * 2400, PCM24K, 1)
    assert len(sock.sent) == 1
    await speaker.speak_audio(b"\x00\x01" * 240, PCM24K, 1)
    assert len(sock.sent) == 2


async def test_frames_before_connected_are_held_in_order_and_sent_once_it_comes() -> None:
    speaker, sock = make_speaker(connected=False)
    chunk = b"\x00\x01" * 2400
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            async def speak_turn() -> None:
                await speaker.set_listening(False)
                await speaker.speak_audio(chunk, PCM24K, 1)
                await speaker.end_turn(1)

            nursery.start_soon(speak_turn)
            await trio.testing.wait_all_tasks_blocked()
            assert sock.sent == []  # LiveAvatar: "wait for connected before sending any command"
            speaker.connected.set()
    assert [(f["type"], f.get("event_id")) for f in sock.sent] == [
        ("agent.stop_listening", "listen-1"), ("agent.speak", "turn-1"), ("agent.speak_end", "turn-1")]


def packet_ms(sock: FakeLiteSocket) -> list[tuple[str, float]]:
    """(event id, milliseconds of 24 kHz audio) of each `agent.speak` sent; ("end", id) for `agent.speak_end`."""
    out: list[tuple[str, float]] = []
    for frame in sock.sent:
        if frame["type"] == "agent.speak":
            out.append((str(frame["event_id"]), len(base64.b64decode(str(frame["audio"]))) / 48))
        elif frame["type"] == "agent.speak_end":
            out.append(("end", float(str(frame["event_id"]).count("."))))
    return out


CHUNK_250MS = b"\x00\x01" * 6000  # 250 ms at 24 kHz


async def test_a_burst_goes_out_as_a_600ms_first_packet_then_packets_of_up_to_1s() -> None:
    """L2, the LITE guide's cadence ("let the avatar buffer"; livekit-agents 0.6 s, then 1 s): the relay used to
    send every agent chunk as it came."""
    speaker, sock = make_speaker(first_packet_seconds=0.6)
    for _ in range(12):  # 3 s of audio in one burst, as ElevenLabs sends a reply
        await speaker.speak_audio(CHUNK_250MS, PCM24K, 1)
    await speaker.end_turn(1)
    assert [ms for _, ms in packet_ms(sock)] == [750, 1000, 1000, 250, 0]
    assert sock.sent[-1] == {"type": "agent.speak_end", "event_id": "turn-1"}


async def test_audio_that_comes_in_real_time_never_waits_longer_than_the_first_packets_lead(
        autojump_clock: trio.testing.MockClock) -> None:
    speaker, sock = make_speaker(first_packet_seconds=0.6)
    sent_at: list[tuple[float, int]] = []
    for _ in range(8):  # 2 s of audio, 250 ms apart
        await speaker.speak_audio(CHUNK_250MS, PCM24K, 1)
        sent_at.append((trio.current_time(), len(sock.sent)))
        await trio.sleep(0.25)
    await speaker.end_turn(1)
    sizes = [ms for _, ms in packet_ms(sock)][:-1]
    assert sizes[0] == 750 and sum(sizes) == 2000
    assert all(size <= 500 for size in sizes[1:])  # later packets go out within PACKET_MAX_WAIT of their audio


async def test_audio_after_a_turns_speak_end_is_a_new_utterance_with_its_own_speak_end() -> None:
    """L3: one `agent.speak_end` per event id; a pause inside a reply (longer than the turn gap) used to send a
    second `speak_end` for the same id, and audio under an id the service had already committed."""
    speaker, sock = make_speaker()
    await speaker.speak_audio(CHUNK_250MS, PCM24K, 3)
    await speaker.end_turn(3)
    await speaker.speak_audio(CHUNK_250MS, PCM24K, 3)
    await speaker.end_turn(3)
    await speaker.speak_audio(CHUNK_250MS, PCM24K, 3)
    await speaker.interrupt(3)
    assert [(f["type"], f["event_id"]) for f in sock.sent] == [
        ("agent.speak", "turn-3"), ("agent.speak_end", "turn-3"),
        ("agent.speak", "turn-3.1"), ("agent.speak_end", "turn-3.1"),
        ("agent.speak", "turn-3.2"), ("agent.interrupt", "turn-3.2")]
    assert [turn_from_event_id(str(f["event_id"])) for f in sock.sent] == [3] * 6
