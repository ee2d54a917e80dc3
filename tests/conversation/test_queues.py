"""The two bounded queues of a conversation: the Outbox (everything sent to the browser) and the SpeechRouter's speech
queue (everything said to the avatar). When one is full, control frames end the conversation, audio and speech are
dropped and counted, and what did fit is delivered in order."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from relay.avatars import AvatarInfo
from relay.conversation import speech
from relay.conversation.endings import ConversationOver
from relay.conversation.outbox import Outbox
from relay.conversation.speech import SpeechRouter
from relay.protocol.audio import AudioFormat
from tests.support.fakes import FakeBrowser, FakeSession, wait_until


def test_a_control_frame_that_does_not_fit_ends_the_conversation_with_timeout() -> None:
    outbox = Outbox(capacity=3)
    for n in range(3):
        outbox.send(f'{{"n":{n}}}')
    with pytest.raises(ConversationOver) as over:
        outbox.send('{"n":3}')
    assert (over.value.reason, over.value.error, over.value.close_code) == ("timeout", "timeout", 1000)
    assert over.value.message == "the browser stopped reading; conversation ended"


def test_audio_that_does_not_fit_is_dropped_and_counted() -> None:
    outbox = Outbox(capacity=3)
    for n in range(5):
        outbox.send_audio(bytes([n, 0]))
    assert outbox.dropped_audio == 2
    with pytest.raises(ConversationOver):  # audio filled it: a control frame now ends the conversation
        outbox.send("{}")


async def test_what_fits_in_the_outbox_is_sent_in_order(autojump_clock: trio.testing.MockClock) -> None:
    outbox = Outbox(capacity=3)
    browser = FakeBrowser()
    outbox.send_audio(b"\x01\x00")
    outbox.send('{"type":"x"}')
    outbox.send_audio(b"\x02\x00")
    outbox.send_audio(b"\x03\x00")  # dropped
    assert outbox.dropped_audio == 1
    async with trio.open_nursery() as tasks:
        tasks.start_soon(outbox.run_sender, browser)
        received = [await browser.next_message(skip_binary=False) for _ in range(3)]
        tasks.cancel_scope.cancel()
    assert received == [b"\x01\x00", {"type": "x"}, b"\x02\x00"]
    assert browser.drain() == []


def audio_session() -> FakeSession:
    """A real (not simulated) avatar session that takes the agent's audio."""
    return FakeSession(AvatarInfo("fake", "s1", None, None, False), takes_audio=True, keep_alive_interval=60,
                       on_event=lambda event: None)


def text_session() -> FakeSession:
    """A real (not simulated) avatar session that speaks the agent's text."""
    return FakeSession(AvatarInfo("fake", "s1", None, None, False), takes_audio=False, keep_alive_interval=60,
                       on_event=lambda event: None)


async def test_speech_audio_that_does_not_fit_is_dropped_and_counted_and_the_rest_spoken_in_order(
        monkeypatch: pytest.MonkeyPatch, autojump_clock: trio.testing.MockClock) -> None:
    monkeypatch.setattr(speech, "SPEECH_QUEUE_ITEMS", 4)
    outbox = Outbox()
    speaker = SpeechRouter(outbox)
    speaker.agent_format = AudioFormat("pcm", 16000)
    session = audio_session()
    speaker.attach(session)
    for n in range(6):
        speaker.agent_audio(bytes([n, 0]), 3)
    assert speaker.dropped == 2
    assert outbox.dropped_audio == 0 and not speaker.voice_to_browser  # a real avatar: the browser gets no voice
    async with trio.open_nursery() as tasks:
        tasks.start_soon(speaker.run, session)
        await wait_until(lambda: len(session.audio) == 4)
        tasks.cancel_scope.cancel()
    assert session.audio == [(bytes([n, 0]), 3) for n in range(4)]


async def test_speech_text_that_does_not_fit_is_dropped_and_counted(
        monkeypatch: pytest.MonkeyPatch, autojump_clock: trio.testing.MockClock) -> None:
    monkeypatch.setattr(speech, "SPEECH_QUEUE_ITEMS", 2)
    speaker = SpeechRouter(Outbox())
    session = text_session()
    speaker.attach(session)
    for n in range(5):
        speaker.agent_text(f"reply {n}", n + 1)
    assert speaker.dropped == 3
    async with trio.open_nursery() as tasks:
        tasks.start_soon(speaker.run, session)
        await wait_until(lambda: len(session.spoken) == 2)
        tasks.cancel_scope.cancel()
    assert session.spoken == [("reply 0", 1), ("reply 1", 2)]
