"""Metrics without sockets: fakes for the agent and the avatar provider."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from relay.avatars import (
    AvatarInfo,
    AvatarSessionEnded,
    AvatarUnavailable,
    OnAvatarEvent,
    OnSessionCreated,
    OnStopFailed,
)
from relay.avatars.hooks import HookedProvider
from relay.conversation.record import ConversationRecord, current_conversation
from relay.ops.metrics import RelayMetrics
from relay.protocol import elevenlabs as el
from relay.protocol.audio import AudioFormat


def sample(metrics: RelayMetrics, name: str, **labels: str) -> float:
    for family in text_string_to_metric_families(metrics.render().decode()):
        for s in family.samples:
            if s.name == name and s.labels == labels:
                return float(s.value)
    return 0.0


def test_each_app_has_its_own_numbers() -> None:
    first, second = RelayMetrics(), RelayMetrics()
    first.conversation_started(ConversationRecord("r-1"))
    assert sample(first, "avatar_relay_conversations_started_total") == 1
    assert sample(second, "avatar_relay_conversations_started_total") == 0


def test_audio_counters_include_live_conversations_and_never_go_down_at_the_end() -> None:
    metrics = RelayMetrics()
    record = ConversationRecord("r-1")
    metrics.conversation_started(record)
    record.traffic.audio_in_frames, record.traffic.audio_in_bytes = 3, 1920
    assert sample(metrics, "avatar_relay_audio_bytes_total", direction="upstream") == 1920
    record.reason = "client_stop"
    metrics.conversation_ended(record)
    record.traffic.audio_in_bytes = 10**6  # a late write after the end is not counted twice
    assert sample(metrics, "avatar_relay_audio_bytes_total", direction="upstream") == 1920
    assert sample(metrics, "avatar_relay_audio_frames_total", direction="upstream") == 3
    assert sample(metrics, "avatar_relay_conversations_open") == 0
    assert sample(metrics, "avatar_relay_conversations_ended_total", reason="client_stop") == 1


class FakeSession:
    def __init__(self) -> None:
        self.info = AvatarInfo("fake", "sess-42", "wss://livekit.simulated.invalid", "tok", True)
        self.takes_audio = True
        self.keep_alive_interval = 60.0
        self.spoken: list[int] = []

    async def speak_text(self, text: str, turn: int) -> None:
        self.spoken.append(turn)

    async def speak_audio(self, audio: bytes, audio_format: AudioFormat, turn: int) -> None:
        self.spoken.append(turn)

    async def end_turn(self, turn: int) -> None: ...

    async def interrupt(self, turn: int) -> None: ...

    async def keep_alive(self) -> None: ...

    async def wait_connected(self) -> None: ...

    async def set_listening(self, listening: bool) -> None: ...


class FakeTaker:
    """An inline audio path (`relay.avatars.AudioTaker`) that records the turns it took."""

    def __init__(self) -> None:
        self.taken: list[int] = []

    def take_audio(self, audio: bytes, audio_format: AudioFormat, turn: int) -> tuple[str, list[memoryview]]:
        self.taken.append(turn)
        return f"turn-{turn}", []

    async def send_packets(self, turn: int, event_id: str, packets: list[memoryview]) -> None: ...


class FakeTakerSession(FakeSession):
    def __init__(self) -> None:
        super().__init__()
        self.audio_taker = FakeTaker()


class FakeProvider:
    name = "fake"

    def __init__(self, *, refuse: bool = False, stop_fails: bool = False, ends: bool = False,
                 inline: bool = False) -> None:
        self.refuse, self.stop_fails, self.ends, self.inline = refuse, stop_fails, ends, inline

    @asynccontextmanager
    async def open_session(self, on_event: OnAvatarEvent, *, on_created: OnSessionCreated | None = None,
                           on_stop_failed: OnStopFailed | None = None) -> AsyncIterator[FakeSession]:
        if self.refuse:
            raise AvatarUnavailable("concurrent_limit", "at the cap", upstream_code=10007)
        session = FakeTakerSession() if self.inline else FakeSession()
        if on_created is not None and session.info.session_id:
            await on_created(session.info.session_id)
        try:
            yield session
            if self.ends:
                raise AvatarSessionEnded("session_ended", "gone", upstream_code=4000)
        finally:
            if self.stop_fails:
                logging.getLogger("relay.fake").warning("fake session %s: stop failed", session.info.session_id)
                if on_stop_failed is not None and session.info.session_id:
                    await on_stop_failed(session.info.session_id)


async def test_sessions_are_counted_created_stopped_and_failed_to_stop() -> None:
    metrics = RelayMetrics()
    for provider in (FakeProvider(), FakeProvider(stop_fails=True)):
        observed = HookedProvider(provider, [metrics.session_hooks])
        assert observed is not None
        async with observed.open_session(lambda event: None) as session:
            assert session.info.session_id == "sess-42"
    assert sample(metrics, "avatar_relay_avatar_sessions_created_total", provider="fake") == 2
    assert sample(metrics, "avatar_relay_avatar_sessions_stopped_total", provider="fake") == 1
    assert sample(metrics, "avatar_relay_avatar_sessions_stop_failed_total", provider="fake") == 1


async def test_refusals_and_session_ends_are_upstream_errors_with_their_codes() -> None:
    metrics = RelayMetrics()
    refusing = HookedProvider(FakeProvider(refuse=True), [metrics.session_hooks])
    assert refusing is not None
    with pytest.raises(AvatarUnavailable):
        async with refusing.open_session(lambda event: None):
            pass
    ending = HookedProvider(FakeProvider(ends=True), [metrics.session_hooks])
    assert ending is not None
    with pytest.raises(AvatarSessionEnded):
        async with ending.open_session(lambda event: None):
            pass
    assert sample(metrics, "avatar_relay_upstream_errors_total", upstream="fake", kind="concurrent_limit",
                  code="10007") == 1
    assert sample(metrics, "avatar_relay_upstream_errors_total", upstream="fake", kind="session_ended",
                  code="4000") == 1
    assert sample(metrics, "avatar_relay_avatar_sessions_created_total", provider="fake") == 1


class FakeAgent:
    def __init__(self, events: list[el.ServerEvent]) -> None:
        self.metadata = el.ConversationMetadata("conv_1", "pcm_16000", "pcm_16000")
        self._events = events
        self.sent: list[str] = []

    async def send(self, text: str) -> None:
        self.sent.append(text)

    async def receive(self) -> el.ServerEvent:
        if not self._events:
            raise el.AgentClosed(1011, "server error")
        return self._events.pop(0)

    async def aclose(self, code: int = 1000, reason: str = "") -> None: ...


@pytest.mark.parametrize("inline", [False, True], ids=["speak_audio", "audio_taker"])
async def test_the_observed_agent_counts_audio_pings_and_times_each_turn_to_the_avatar(inline: bool) -> None:
    metrics = RelayMetrics()
    record = ConversationRecord("r-1")
    metrics.conversation_started(record)
    events: list[el.ServerEvent] = [el.Ping(1, None), el.Ping(2, 40.0), el.AgentResponse("hi", 3),
                                    el.AgentAudio(b"\x00" * 800, 3), el.AgentAudio(b"\x00" * 800, 3),
                                    el.AgentErrorEvent(1002, "quota", None)]
    fake = FakeAgent(events)

    @asynccontextmanager
    async def open_fake(*args: Any, **kwargs: Any) -> AsyncIterator[Any]:
        yield fake

    token = current_conversation.set(record)
    try:
        async with metrics.observe_agent(open_fake)() as agent:
            for _ in range(6):
                await agent.receive()
            with pytest.raises(el.AgentClosed):
                await agent.receive()
            provider = HookedProvider(FakeProvider(inline=inline), [metrics.session_hooks])
            assert provider is not None
            async with provider.open_session(lambda event: None) as session:
                taker = getattr(session, "audio_taker", None)
                assert (taker is not None) is inline  # the observed session offers the inline path it wraps
                for _ in range(2):  # only the turn's first chunk is timed, whichever path gives it
                    if taker is not None:
                        taker.take_audio(b"\x00" * 800, AudioFormat("pcm", 16000), 3)
                    else:
                        await session.speak_audio(b"\x00" * 800, AudioFormat("pcm", 16000), 3)
    finally:
        current_conversation.reset(token)
    assert record.traffic.audio_out_frames == 2 and record.traffic.audio_out_bytes == 1600
    assert sample(metrics, "avatar_relay_agent_ping_seconds_count") == 1
    assert sample(metrics, "avatar_relay_agent_ping_seconds_sum") == pytest.approx(0.04)
    assert sample(metrics, "avatar_relay_audio_to_avatar_seconds_count") == 1
    assert sample(metrics, "avatar_relay_upstream_errors_total", upstream="elevenlabs", kind="error_event",
                  code="1002") == 1
    assert sample(metrics, "avatar_relay_upstream_errors_total", upstream="elevenlabs", kind="closed",
                  code="1011") == 1
    assert record.avatar_session_id == "sess-42"


# ----------------------------------------------------------------------------------------------------------------------
# Where the user is (client_metrics) and avatar time (issue 25)


def test_the_pages_timings_land_in_histograms_per_provider_and_drops_are_counted() -> None:
    from relay.protocol.client_metrics import ClientMetrics, DroppedClientMetrics, TurnTimings

    metrics = RelayMetrics()
    avatar, voice = ConversationRecord("r-1", avatar_provider="liveavatar"), ConversationRecord("r-2")
    metrics.experience.report(avatar, ClientMetrics(type="client_metrics", freezes_ms=(600.0, 2500.0), turns=(
        TurnTimings(event_id=1, speech_to_audio_ms=800.0, speech_to_mouth_ms=1200.0, caption_offset_ms=20.0),
        TurnTimings(event_id=2, speech_to_audio_ms=2600.0))))
    metrics.experience.report(voice, ClientMetrics(type="client_metrics", turns=(
        TurnTimings(speech_to_audio_ms=400.0),)))
    metrics.experience.report(voice, DroppedClientMetrics("too_frequent"))
    name = "avatar_relay_client_speech_to_audio_seconds"
    assert sample(metrics, name + "_count", provider="liveavatar") == 2
    assert sample(metrics, name + "_sum", provider="liveavatar") == pytest.approx(3.4)
    assert sample(metrics, name + "_bucket", provider="liveavatar", le="1.0") == 1
    assert sample(metrics, name + "_count", provider="none") == 1
    assert sample(metrics, "avatar_relay_client_speech_to_mouth_seconds_sum", provider="liveavatar") == 1.2
    assert sample(metrics, "avatar_relay_client_speech_to_mouth_seconds_count", provider="liveavatar") == 1
    assert sample(metrics, "avatar_relay_client_caption_offset_seconds_sum", provider="liveavatar") == 0.02
    assert sample(metrics, "avatar_relay_client_video_freeze_seconds_count", provider="liveavatar") == 2
    assert sample(metrics, "avatar_relay_client_metrics_reports_total") == 2
    assert sample(metrics, "avatar_relay_client_metrics_dropped_total", reason="too_frequent") == 1


async def _run_session(time_: Any, provider: str, *, created: bool = True) -> Any:
    hooks = time_.session_hooks(provider)
    if created:
        await hooks.on_created("s")
    hooks.on_opened(FakeSession())
    return hooks


async def test_avatar_seconds_count_running_sessions_and_stay_bounded_per_subject() -> None:
    from relay.avatars.hooks import SessionOutcome
    from relay.ops.metrics import OTHER_SUBJECTS, AvatarTime

    now = [1000.0]
    time_ = AvatarTime(CollectorRegistry(), subjects=2, clock=lambda: now[0])
    done = SessionOutcome(opened=True, error=None, stop_failed=False)

    def seconds(**labels: str) -> float:
        return sum(v for (p, s), v in time_.totals().items()
                   if labels.get("provider", p) == p and labels.get("subject", s) == s)

    token = current_conversation.set(ConversationRecord("r-1", subject="alice"))
    first = await _run_session(time_, "liveavatar")
    current_conversation.reset(token)
    now[0] += 30
    assert seconds(provider="liveavatar") == 30  # running: counted as it goes
    await first.on_closed(done)
    now[0] += 100
    assert seconds(provider="liveavatar") == 30  # stopped: no more
    for subject, provider in (("bob", "simli"), ("carol", "simli"), (None, "simli")):
        token = current_conversation.set(ConversationRecord("r-x", subject=subject))
        hooks = await _run_session(time_, provider, created=provider != "simli")
        current_conversation.reset(token)
        now[0] += 10
        await hooks.on_closed(done)
    assert seconds(provider="simli") == 30
    assert seconds(subject="alice") == 30 and seconds(subject="bob") == 10
    assert seconds(subject=OTHER_SUBJECTS) == 20  # carol and the anonymous one: past the two subjects labelled
    assert {s for _, s in time_.totals()} == {"alice", "bob", OTHER_SUBJECTS}


async def test_avatar_seconds_appear_in_metrics_per_provider_and_per_subject_only_when_asked() -> None:
    from relay.avatars.hooks import SessionOutcome

    plain, by_subject = RelayMetrics(), RelayMetrics(subjects=5)
    for metrics in (plain, by_subject):
        token = current_conversation.set(ConversationRecord("r-1", subject="alice"))
        hooks = metrics.avatar_time.session_hooks("liveavatar")
        current_conversation.reset(token)
        hooks.on_opened(FakeSession())
        await hooks.on_closed(SessionOutcome(opened=True, error=None, stop_failed=False))
        assert 'avatar_relay_avatar_session_seconds_total{provider="liveavatar"}' in metrics.render().decode()
    assert "avatar_relay_avatar_session_seconds_by_subject" not in plain.render().decode()
    assert ('avatar_relay_avatar_session_seconds_by_subject_total{provider="liveavatar",subject="alice"}'
            in by_subject.render().decode())
