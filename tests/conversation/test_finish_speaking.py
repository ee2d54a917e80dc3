"""When the agent ends the conversation (close 1000 after end_call, or max duration), the avatar finishes what it
was given before its session is stopped — bounded by RELAY_FINISH_SPEAKING_TIMEOUT — while `stop`, the browser
leaving and a shutdown still end everything at once. The real agent streams a reply faster than real time and may
close right after its last chunk (elevenlabs/packages#419): here the whole goodbye arrives in one burst. Autojump
clock: the times asserted are the relay's own timers."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from relay.avatars import AvatarStateChanged
from relay.protocol import elevenlabs as el
from tests.support.fakes import FakeProvider, Harness, start_and_ready, wait_until, with_conversation

RATE = 16000
CHUNK = 3200  # 100 ms of PCM16 at 16 kHz


async def burst_goodbye(h: Harness, seconds: float, turn: int = 5) -> None:
    await h.agent.emit(el.AgentResponse("Goodbye, and thanks for calling!", turn))
    for _ in range(int(seconds * RATE * 2) // CHUNK):
        await h.agent.emit(el.AgentAudio(bytes(CHUNK), turn))


def audio_seconds(h: Harness) -> float:
    return sum(len(audio) for audio, _ in h.provider.sessions[0].audio) / (RATE * 2)


@pytest.mark.parametrize("close", [(1000, ""), (1000, "max_duration_exceeded")])
async def test_a_5s_goodbye_then_close_1000_reaches_the_avatar_whole(
        close: tuple[int, str], autojump_clock: trio.testing.MockClock) -> None:
    h = Harness(provider=FakeProvider(takes_audio=True))
    stopped_at: list[float] = []

    async def body(h: Harness) -> None:
        await start_and_ready(h)
        t0 = trio.current_time()
        await burst_goodbye(h, 5.0)
        await h.agent.close_with(*close)
        ended = await h.browser.expect("ended")
        stopped_at.append(trio.current_time() - t0)
        assert ended["reason"] == ("max_duration" if close[1] else "agent_ended")
        assert h.provider.stopped == ["s1"]
        assert audio_seconds(h) == pytest.approx(5.0)  # every chunk reached the avatar before the stop
        assert h.provider.sessions[0].turn_ends == [5]

    await with_conversation(h, body, limit=60)
    assert stopped_at[0] >= 5.0 - 1e-6  # not before the avatar had time to say it all
    assert stopped_at[0] < 6.0
    assert h.browser.closed_with == (1000, "max_duration" if close[1] else "agent_ended")


async def test_the_wait_is_bounded_by_the_finish_speaking_timeout(autojump_clock: trio.testing.MockClock) -> None:
    h = Harness(provider=FakeProvider(takes_audio=True), relay_finish_speaking_timeout=2)

    async def body(h: Harness) -> None:
        await start_and_ready(h)
        t0 = trio.current_time()
        await burst_goodbye(h, 30.0)
        await h.agent.close_with(1000, "")
        await h.browser.expect("ended")
        assert trio.current_time() - t0 == pytest.approx(2.0, abs=0.1)

    await with_conversation(h, body, limit=60)
    assert h.provider.stopped == ["s1"]


async def test_text_avatars_wait_for_the_announced_duration(autojump_clock: trio.testing.MockClock) -> None:
    """A text-mode avatar (HeyGen repeat) announces how long a task lasts (`duration_ms` of streaming.task)."""
    h = Harness(provider=FakeProvider(takes_audio=False))
    text = "Goodbye!" * 10  # the fake announces 50 ms per character: 4 s

    async def body(h: Harness) -> None:
        await start_and_ready(h)
        t0 = trio.current_time()
        await h.agent.emit(el.AgentResponse(text, 2))
        await h.agent.close_with(1000, "")
        await h.browser.expect("ended")
        assert h.provider.sessions[0].spoken == [(text, 2)]
        assert trio.current_time() - t0 == pytest.approx(4.0, abs=0.1)

    await with_conversation(h, body, limit=60)


async def test_stop_while_the_agent_finishes_ends_at_once(autojump_clock: trio.testing.MockClock) -> None:
    h = Harness(provider=FakeProvider(takes_audio=True))

    async def body(h: Harness) -> None:
        await start_and_ready(h)
        await burst_goodbye(h, 10.0)
        await h.agent.close_with(1000, "")
        await wait_until(lambda: audio_seconds(h) > 1)
        t0 = trio.current_time()
        await h.browser.send_raw(bytes(640))  # the microphone goes on meanwhile: not an error
        await h.browser.send_json(type="stop")
        assert await h.browser.expect("ended") == {"type": "ended", "reason": "client_stop"}
        assert trio.current_time() - t0 < 0.5

    await with_conversation(h, body, limit=60)
    assert h.browser.closed_with == (1000, "client_stop")
    assert h.provider.stopped == ["s1"]


async def test_a_failure_close_stops_everything_at_once(autojump_clock: trio.testing.MockClock) -> None:
    h = Harness(provider=FakeProvider(takes_audio=True))

    async def body(h: Harness) -> None:
        await start_and_ready(h)
        t0 = trio.current_time()
        await burst_goodbye(h, 10.0)
        await h.agent.close_with(1011, "internal_error")
        await h.browser.expect("ended")
        assert trio.current_time() - t0 < 0.5

    await with_conversation(h, body, limit=60)
    assert h.browser.closed_with == (1011, "agent_error")


async def test_nothing_is_waited_for_once_the_avatar_is_gone() -> None:
    """An avatar that died (the conversation went on voice-only) has nothing left to say: an ending does not wait
    for the speech it was given and will never play."""
    from relay.conversation.outbox import Outbox
    from relay.conversation.speech import SpeechRouter
    from relay.protocol.browser import AvatarInfo
    from tests.support.fakes import FakeSession

    speech = SpeechRouter(Outbox())
    speech.attach(FakeSession(AvatarInfo("fake", "s1", "wss://room.example", "tok", False), True, 60.0,
                              lambda event: None))
    speech.agent_audio(bytes(32000), 1)  # queued; `run` never takes it (the session died)
    speech.attach(None)
    with trio.fail_after(0.1):
        await speech.wait_played_out()


async def test_the_session_is_stopped_only_after_the_avatar_says_it_finished_the_last_turn(
        autojump_clock: trio.testing.MockClock) -> None:
    """M4: an avatar that reports its speech (LITE `agent.speak_ended`) renders with its own delay after the bytes:
    the stop waits for its end of the last turn, not for the byte-count estimate (which would cut the tail)."""
    h = Harness(provider=FakeProvider(takes_audio=True))
    stopped_at: list[float] = []

    async def body(h: Harness) -> None:
        await start_and_ready(h)
        session = h.provider.sessions[0]
        session.on_event(AvatarStateChanged(speaking=True, turn=4))  # the avatar reports its speech
        session.on_event(AvatarStateChanged(speaking=False, turn=4))
        t0 = trio.current_time()
        await burst_goodbye(h, 5.0)
        await h.agent.close_with(1000, "")
        await wait_until(lambda: session.turn_ends == [5])
        await trio.sleep(6.5)  # the estimate (5 s) is long past: the avatar is still rendering
        assert h.provider.stopped == []
        session.on_event(AvatarStateChanged(speaking=False, turn=5))
        await h.browser.expect("ended")
        stopped_at.append(trio.current_time() - t0)
        assert h.provider.stopped == ["s1"]

    await with_conversation(h, body, limit=60)
    assert 6.5 <= stopped_at[0] < 7.0


async def test_an_avatar_that_never_reports_the_end_is_stopped_at_the_finish_timeout(
        autojump_clock: trio.testing.MockClock) -> None:
    h = Harness(provider=FakeProvider(takes_audio=True), relay_finish_speaking_timeout=9)

    async def body(h: Harness) -> None:
        await start_and_ready(h)
        session = h.provider.sessions[0]
        session.on_event(AvatarStateChanged(speaking=True, turn=4))
        t0 = trio.current_time()
        await burst_goodbye(h, 2.0)
        await h.agent.close_with(1000, "")
        await h.browser.expect("ended")
        assert trio.current_time() - t0 == pytest.approx(9, abs=0.5)
        assert h.provider.stopped == ["s1"]

    await with_conversation(h, body, limit=60)
