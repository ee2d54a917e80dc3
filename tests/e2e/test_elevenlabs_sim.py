"""`relay.elevenlabs.open_agent` against the ElevenLabs simulator, on loopback with real sockets.

Each test drives a real conversation (handshake, speech, typed turns, tools, interruptions, faults) and checks
what the client saw and what the simulator's ledger recorded.
"""

from __future__ import annotations

import io
import json
import shutil
import time
import wave
from collections.abc import AsyncIterator, Callable
from functools import partial
from typing import Any

import httpx2
import numpy as np
import pytest
import trio
import trio_websocket
from hypercorn.config import Config
from hypercorn.trio import serve

from relay.elevenlabs import AgentConnection, open_agent
from relay.protocol import elevenlabs as el
from relay.sim import elevenlabs_sim
from relay.sim.elevenlabs_sim import ALL_CLIENT_EVENTS, DEFAULT_CLIENT_EVENTS
from relay.sim.elevenlabs_sim.voice import ULAW_DECODE
from tests.support.simcontrol import SimControl

pytestmark = pytest.mark.timeout(60)

AGENT = "agent_sim_1"
LONG_GREETING = " ".join(["Hello and welcome to the simulated agent, this greeting goes on and on."] * 5)
QUIET = {"first_message": None, "response_latency_ms": 0, "ping_interval_s": 0}


class Sim(SimControl):
    """The simulator's base URL, its control endpoints, and the audio its hook saw."""

    def __init__(self, url: str, http: httpx2.AsyncClient, heard: list[tuple[str, int, float]]) -> None:
        super().__init__(url, http)
        self.heard = heard

    async def only_conversation(self) -> dict[str, Any]:
        conversations = (await self.ledger())["conversations"]
        assert len(conversations) == 1, conversations
        return conversations[0]

    def open(self, *, api_key: str | None = None, initiation: str | None = None, **kwargs: Any) -> Any:
        return open_agent(
            self.http,
            base_url=self.url,
            agent_id=AGENT,
            api_key=api_key,
            initiation=initiation if initiation is not None else el.build_initiation(),
            **kwargs,
        )


@pytest.fixture
async def sim(nursery: trio.Nursery) -> AsyncIterator[Sim]:
    heard: list[tuple[str, int, float]] = []
    app = elevenlabs_sim.create_app(on_user_audio=lambda cid, pcm, at: heard.append((cid, len(pcm), at)))
    config = Config()
    config.bind = ["127.0.0.1:0"]
    config.accesslog = None
    shutdown = trio.Event()
    urls = await nursery.start(partial(serve, app, config, shutdown_trigger=shutdown.wait))
    async with httpx2.AsyncClient(timeout=5.0) as http:
        yield Sim(urls[0], http, heard)
    shutdown.set()


def voice(rate: int, seconds: float, silence: float = 0.9) -> bytes:
    """A voice-like burst (harmonics of a gliding 150 Hz, syllable envelope) followed by silence, PCM16."""
    t = np.arange(int(rate * seconds)) / rate
    phase = 2 * np.pi * np.cumsum(150 + 20 * np.sin(2 * np.pi * 0.8 * t)) / rate
    tone = sum(np.sin(k * phase) / k for k in range(1, 5))
    envelope = 0.6 + 0.4 * np.abs(np.sin(np.pi * 4 * t))
    samples = (tone * envelope * 5000).astype(np.int16)
    return samples.tobytes() + bytes(int(rate * silence) * 2)


def rms(pcm: bytes) -> float:
    samples = np.frombuffer(pcm, dtype=np.int16).astype(np.float64)
    return float(np.sqrt(np.mean(samples * samples))) if len(samples) else 0.0


async def send_audio(conn: AgentConnection, pcm: bytes, chunk_bytes: int = 3200) -> None:
    for offset in range(0, len(pcm), chunk_bytes):
        await conn.send(el.build_user_audio_chunk(pcm[offset : offset + chunk_bytes]))


async def collect(
    conn: AgentConnection, until: Callable[[el.ServerEvent], bool], within: float = 5.0
) -> list[el.ServerEvent]:
    """Events up to and including the first one `until` accepts; pings are answered on the way."""
    seen: list[el.ServerEvent] = []
    with trio.fail_after(within):
        while True:
            event = await conn.receive()
            seen.append(event)
            if isinstance(event, el.Ping):
                await conn.send(el.build_pong(event.event_id))
            if until(event):
                return seen


async def wait_until_closed(sim: Sim) -> dict[str, Any]:
    """The only conversation's ledger record, once the simulator has seen it close (polled: it is another
    server's state)."""
    with trio.fail_after(10):
        while (record := await sim.only_conversation())["closed_at"] is None:
            await trio.sleep(0.02)
    return record


def of(kind: type) -> Callable[[el.ServerEvent], bool]:
    return lambda event: isinstance(event, kind)


# -- handshake ----------------------------------------------------------------------------------------------------


async def test_public_agent_sends_metadata_then_a_greeting_with_audio(sim: Sim) -> None:
    with trio.fail_after(5):
        async with sim.open() as conn:
            assert conn.metadata.conversation_id.startswith("conv_")
            assert conn.metadata.agent_output_audio_format == "pcm_16000"
            events = await collect(conn, of(el.AgentAudio))
    response = next(e for e in events if isinstance(e, el.AgentResponse))
    assert response.text == elevenlabs_sim.DEFAULT_FIRST_MESSAGE
    assert events[-1].event_id == response.event_id
    assert rms(events[-1].audio) > 500  # a voice, not silence
    record = await sim.only_conversation()
    assert (record["id"], record["signed"], record["subprotocol"]) == (conn.metadata.conversation_id, False, None)


async def test_private_agent_is_reached_through_a_fresh_signed_url(sim: Sim) -> None:
    with trio.fail_after(5):
        for _ in range(2):
            async with sim.open(api_key="xi-test-key") as conn:
                assert conn.metadata.conversation_id
    ledger = await sim.ledger()
    assert ledger["signed_urls_issued"] == 2
    assert all(c["signed"] for c in ledger["conversations"])


async def test_invalid_api_key_is_unauthorized_and_the_key_is_not_in_the_message(sim: Sim) -> None:
    await sim.faults(invalid_api_keys=["bad-key-123"])
    with trio.fail_after(5), pytest.raises(el.AgentUnavailable) as caught:
        async with sim.open(api_key="bad-key-123"):
            pass
    assert (caught.value.reason, caught.value.status_code) == ("unauthorized", 401)
    assert "bad-key-123" not in str(caught.value)


async def test_expired_signature_is_refused_at_the_handshake(sim: Sim) -> None:
    await sim.faults(signature_ttl_s=-10)
    with trio.fail_after(5), pytest.raises(el.AgentUnavailable) as caught:
        async with sim.open(api_key="k"):
            pass
    assert caught.value.status_code == 403


async def test_private_agent_refuses_unsigned_sockets(sim: Sim) -> None:
    await sim.faults(require_signed_url=True)
    with trio.fail_after(5), pytest.raises(el.AgentUnavailable) as caught:
        async with sim.open():
            pass
    assert (caught.value.reason, caught.value.status_code) == ("unauthorized", 403)


@pytest.mark.parametrize(("status", "reason"), [(403, "unauthorized"), (429, "rate_limited"), (503, "upstream_error")])
async def test_refused_handshake_surfaces_the_http_status(sim: Sim, status: int, reason: str) -> None:
    await sim.faults(refuse_handshake_status=status)
    with trio.fail_after(5), pytest.raises(el.AgentUnavailable) as caught:
        async with sim.open():
            pass
    assert (caught.value.reason, caught.value.status_code) == (reason, status)


async def test_slow_handshake_times_out(sim: Sim) -> None:
    await sim.faults(handshake_latency_ms=3000)
    with trio.fail_after(5), pytest.raises(el.AgentUnavailable) as caught:
        async with sim.open(connect_timeout=0.3):
            pass
    # A client that ignored connect_timeout would have connected after the 3 s handshake: no error at all.
    assert caught.value.reason == "timeout"


async def test_agent_that_never_sends_metadata_times_out(sim: Sim) -> None:
    await sim.faults(stall_before_metadata=True)
    with trio.fail_after(5), pytest.raises(el.AgentUnavailable) as caught:
        async with sim.open(connect_timeout=0.3):
            pass
    assert caught.value.reason == "timeout"


async def test_overrides_are_refused_by_default_with_an_error_event_then_1008(sim: Sim) -> None:
    """Real agents refuse overrides unless their configuration enables them: an `error` event (override_error)
    then close 1008 (the simulator used to allow them by default, and closed without the event)."""
    initiation = el.build_initiation(overrides={"agent": {"first_message": "Hi"}})
    with trio.fail_after(5), pytest.raises(el.AgentRefused) as caught:
        async with sim.open(initiation=initiation):
            pass
    assert (caught.value.close_code, caught.value.close_reason) == (1008, "override_error")
    assert caught.value.error_type == "override_error" and caught.value.ending.kind == "agent_refused"
    assert "['agent.first_message'] is not allowed" in caught.value.message


async def test_missing_dynamic_variable_is_an_error_event_then_1008(sim: Sim) -> None:
    await sim.faults(required_dynamic_variables=["user_name"])
    with trio.fail_after(5), pytest.raises(el.AgentRefused) as caught:
        async with sim.open():
            pass
    assert (caught.value.close_code, caught.value.close_reason) == (1008, "missing_dynamic_variable")
    assert "Missing required dynamic variables in first message: {'user_name'}" in caught.value.message


async def test_first_message_override_and_dynamic_variables_are_used(sim: Sim) -> None:
    await sim.faults(overrides_allowed=True)  # the agent's security settings allow it
    initiation = el.build_initiation(
        overrides={"agent": {"first_message": "Welcome back, {{user_name}}!"}},
        dynamic_variables={"user_name": "Ana"},
        user_id="user-7",
    )
    with trio.fail_after(5):
        async with sim.open(initiation=initiation) as conn:
            events = await collect(conn, of(el.AgentResponse))
    assert events[-1].text == "Welcome back, Ana!"
    record = await sim.only_conversation()
    assert record["initiation"]["user_id"] == "user-7"
    assert record["initiation"]["dynamic_variables"] == {"user_name": "Ana"}


async def test_formats_come_from_the_agent_and_ulaw_audio_is_a_voice(sim: Sim) -> None:
    await sim.faults(agent_output_audio_format="ulaw_8000", user_input_audio_format="pcm_48000")
    with trio.fail_after(5):
        async with sim.open() as conn:
            assert (conn.metadata.agent_output_audio_format, conn.metadata.user_input_audio_format) == (
                "ulaw_8000",
                "pcm_48000",
            )
            audio = (await collect(conn, of(el.AgentAudio)))[-1]
    assert len(audio.audio) == 2000  # 250 ms at 8 kHz, one byte per sample
    decoded = ULAW_DECODE[np.frombuffer(audio.audio, dtype=np.uint8)]
    assert rms(decoded.tobytes()) > 500


async def test_subprotocol_convai_is_echoed_when_asked_for(sim: Sim) -> None:
    url = el.conversation_ws_url(sim.url, AGENT)
    with trio.fail_after(5):
        async with trio_websocket.open_websocket_url(url, subprotocols=["convai"]) as ws:
            assert ws.subprotocol == "convai"
            await ws.send_message(el.build_initiation())
            assert isinstance(el.parse_server_event(await ws.get_message()), el.ConversationMetadata)
    assert (await sim.only_conversation())["subprotocol"] == "convai"


# -- turns --------------------------------------------------------------------------------------------------------


async def test_spoken_turn_gets_transcripts_then_a_reply_with_audio(sim: Sim) -> None:
    await sim.faults(**QUIET)
    with trio.fail_after(8):
        async with sim.open() as conn:
            await send_audio(conn, voice(16000, 1.2))
            events = await collect(conn, of(el.AgentAudio))
    transcripts = [e for e in events if isinstance(e, el.UserTranscript)]
    assert transcripts[0].final is False
    assert transcripts[-1] == el.UserTranscript("(1.2 s of speech)", transcripts[-1].event_id, final=True)
    response = next(e for e in events if isinstance(e, el.AgentResponse))
    assert "1.2 seconds" in response.text
    assert response.event_id > transcripts[-1].event_id
    assert events[-1].event_id == response.event_id
    assert rms(events[-1].audio) > 500
    record = await sim.only_conversation()
    assert record["turns"] == 1
    assert record["user_audio_seconds"] == pytest.approx(2.1, abs=0.01)
    assert record["user_audio_chunks"] == len(sim.heard)
    assert {cid for cid, _, _ in sim.heard} == {conn.metadata.conversation_id}


async def test_real_speech_from_espeak_is_heard_at_its_own_rate(sim: Sim) -> None:
    if shutil.which("espeak-ng") is None:  # as everywhere in the suite: a missing tool fails, it never skips
        pytest.fail("espeak-ng is needed for the end-to-end tests (scripts/test installs it)")
    done = await trio.run_process(["espeak-ng", "--stdout", "Hello agent, how are you today?"], capture_stdout=True)
    wav = done.stdout
    with wave.open(io.BytesIO(wav)) as reader:
        rate = reader.getframerate()
        pcm = reader.readframes(reader.getnframes())
    await sim.faults(**QUIET, user_input_audio_format=f"pcm_{rate}")
    with trio.fail_after(8):
        async with sim.open() as conn:
            await send_audio(conn, pcm + bytes(rate * 2), chunk_bytes=rate // 5)
            events = await collect(conn, of(el.AgentResponse))
    final = [e for e in events if isinstance(e, el.UserTranscript) and e.final]
    assert len(final) >= 1
    assert events[-1].text.startswith("Turn ")


async def test_typed_message_gets_an_answer_quoting_it(sim: Sim) -> None:
    await sim.faults(**QUIET)
    with trio.fail_after(5):
        async with sim.open() as conn:
            await conn.send(el.build_user_message("hello there"))
            await conn.send(el.build_contextual_update("user is on the pricing page"))
            await conn.send(el.build_user_activity())
            response = (await collect(conn, of(el.AgentResponse)))[-1]
            await conn.send(el.build_feedback("like", response.event_id))
            await collect(conn, of(el.AgentAudio))
    assert response.text == "You said: hello there"
    record = await sim.only_conversation()
    assert record["user_messages"] == ["hello there"]
    assert record["contextual_updates"] == ["user is on the pricing page"]
    assert record["user_activity"] == 1
    assert record["feedback"] == [{"score": "like", "event_id": response.event_id}]


async def test_client_tool_call_round_trip(sim: Sim) -> None:
    await sim.faults(**QUIET, client_events=[*DEFAULT_CLIENT_EVENTS, "client_tool_call"])
    with trio.fail_after(5):
        async with sim.open() as conn:
            await conn.send(el.build_user_message("please use the tool"))
            call = (await collect(conn, of(el.ClientToolCall)))[-1]
            assert call.tool_name == "get_time"
            await conn.send(el.build_client_tool_result(call.tool_call_id, "12:34 UTC", False))
            response = (await collect(conn, of(el.AgentResponse)))[-1]
    assert response.text == "The get_time tool returned: 12:34 UTC"
    record = await sim.only_conversation()
    assert record["tool_results"] == [{"tool_call_id": call.tool_call_id, "result": "12:34 UTC", "is_error": False}]


async def test_talking_over_the_reply_interrupts_it(sim: Sim) -> None:
    # A greeting of about 20 s, so that talking over it after its first chunks is certain to land mid-greeting.
    await sim.faults(response_latency_ms=0, ping_interval_s=0, first_message=LONG_GREETING, max_reply_s=30,
                     reply_pacing="realtime", client_events=[*DEFAULT_CLIENT_EVENTS, "agent_response_correction"])
    chunks = 0

    def third_chunk(event: el.ServerEvent) -> bool:
        nonlocal chunks
        chunks += isinstance(event, el.AgentAudio)
        return chunks == 3

    with trio.fail_after(15):
        async with sim.open() as conn:
            # Chunks come in real time (250 ms each): after the third, part of the greeting has been "spoken".
            greeting = (await collect(conn, third_chunk))[-1]
            await send_audio(conn, voice(16000, 0.5))
            events = await collect(conn, of(el.AgentResponse))
    interruption = next(e for e in events if isinstance(e, el.Interruption))
    correction = next(e for e in events if isinstance(e, el.AgentResponseCorrection))
    assert events.index(interruption) < events.index(correction)
    assert interruption.event_id > greeting.event_id
    assert correction.event_id == greeting.event_id
    assert correction.original == LONG_GREETING
    assert correction.original.startswith(correction.corrected)
    assert 0 < len(correction.corrected) < len(correction.original)
    stale = [e for e in events[events.index(interruption) :] if isinstance(e, el.AgentAudio)]
    assert all(e.event_id >= interruption.event_id for e in stale)
    assert events[-1].event_id > interruption.event_id
    assert (await sim.only_conversation())["interruptions"] == 1


async def test_pings_carry_the_measured_round_trip_after_the_first(sim: Sim) -> None:
    await sim.faults(first_message=None, ping_interval_s=0.05)
    with trio.fail_after(5):
        async with sim.open() as conn:
            pings = [e for e in await collect(conn, lambda e: isinstance(e, el.Ping) and e.event_id == 3)]
    assert [p.event_id for p in pings] == [1, 2, 3]
    assert pings[0].ping_ms is None
    assert pings[2].ping_ms is not None and pings[2].ping_ms >= 0
    assert (await sim.only_conversation())["pongs"] >= 2


# -- closes and faults --------------------------------------------------------------------------------------------


async def test_bad_json_from_the_client_closes_1008_invalid_message(sim: Sim) -> None:
    await sim.faults(**QUIET)
    with trio.fail_after(5):
        async with sim.open() as conn:
            await conn.send("{this is not json")
            with pytest.raises(el.AgentClosed) as caught:
                await collect(conn, lambda e: False)
            with pytest.raises(el.AgentClosed):  # and on every later call
                await conn.receive()
    assert (caught.value.code, caught.value.reason) == (1008, "invalid_message")
    record = await sim.only_conversation()
    assert (record["close_code"], record["close_reason"], record["closed_by"]) == (1008, "invalid_message", "agent")


async def test_unknown_client_message_type_closes_1008(sim: Sim) -> None:
    await sim.faults(**QUIET)
    with trio.fail_after(5):
        async with sim.open() as conn:
            await conn.send('{"type":"made_up"}')
            with pytest.raises(el.AgentClosed) as caught:
                await collect(conn, lambda e: False)
    assert (caught.value.code, caught.value.reason) == (1008, "invalid_message")


@pytest.mark.parametrize(
    ("code", "reason"),
    [
        (1000, "max_duration_exceeded"),
        (1002, "llm_timeout"),
        (1008, "value_error"),
        (1011, ""),
        (3000, "Request error"),
    ],
)
async def test_close_code_faults_surface_in_agent_closed(sim: Sim, code: int, reason: str) -> None:
    await sim.faults(**QUIET, close_code=code, close_reason=reason, close_after_ms=50)
    with trio.fail_after(5):
        async with sim.open() as conn:
            with pytest.raises(el.AgentClosed) as caught:
                await collect(conn, lambda e: False)
    assert (caught.value.code, caught.value.reason) == (code, reason)


async def test_close_on_first_user_audio(sim: Sim) -> None:
    await sim.faults(**QUIET, close_code=1002, close_reason="quota exceeded", close_on_first_user_audio=True)
    with trio.fail_after(5):
        async with sim.open() as conn:
            await conn.send(el.build_user_audio_chunk(bytes(640)))
            with pytest.raises(el.AgentClosed) as caught:
                await collect(conn, lambda e: False)
    assert (caught.value.code, caught.value.reason) == (1002, "quota exceeded")
    assert (await sim.only_conversation())["user_audio_chunks"] == 1


async def test_silence_from_the_client_closes_with_transport_receive_timeout(sim: Sim) -> None:
    await sim.faults(**QUIET, input_timeout_s=0.3)
    with trio.fail_after(5):
        async with sim.open() as conn:
            with pytest.raises(el.AgentClosed) as caught:
                await collect(conn, lambda e: False)
    assert (caught.value.code, caught.value.reason) == (1002, "transport_receive_timeout")


async def test_max_duration_is_an_error_event_then_close_1000(sim: Sim) -> None:
    """Like the real service (asyncapi ErrorType max_duration_exceeded, code 1000): the error event first (the
    simulator used to close without it)."""
    await sim.faults(**QUIET, max_duration_s=0.3)
    seen: list[el.ServerEvent] = []
    with trio.fail_after(5):
        async with sim.open() as conn:
            with pytest.raises(el.AgentClosed) as caught:
                await collect(conn, lambda e: seen.append(e) and False)  # type: ignore[func-returns-value]
    assert (caught.value.code, caught.value.reason) == (1000, "max_duration_exceeded")
    errors = [e for e in seen if isinstance(e, el.AgentErrorEvent)]
    assert len(errors) == 1 and errors[0].code == 1000 and errors[0].error_type == "max_duration_exceeded"


async def test_reply_audio_bursts_ahead_of_real_time_by_default(sim: Sim) -> None:
    """The real agent streams a reply faster than it plays: 6 s of greeting arrive well before 6 s have passed."""
    await sim.faults(ping_interval_s=0, max_reply_s=6.0, first_message=LONG_GREETING)
    with trio.fail_after(10):
        async with sim.open() as conn:
            started = trio.current_time()
            audio = 0
            while audio < 6.0 * 32000 - 3200:
                event = await conn.receive()
                if isinstance(event, el.AgentAudio):
                    audio += len(event.audio)
            assert trio.current_time() - started < 3.0  # a generous guard: in real time this takes 6 s


async def test_an_agent_that_hangs_up_right_after_its_reply(sim: Sim) -> None:
    """`end_call_after_reply`: the reply to the user is a goodbye, then `agent_tool_response` (end_call) when
    enabled, then close 1000 right after the last audio chunk, long before the goodbye has been heard."""
    await sim.faults(**QUIET, end_call_after_reply=True, client_events=[*DEFAULT_CLIENT_EVENTS,
                                                                        "agent_tool_response"])
    seen: list[el.ServerEvent] = []
    with trio.fail_after(10):
        async with sim.open() as conn:
            await conn.send(el.build_user_message("bye"))
            started = trio.current_time()
            with pytest.raises(el.AgentClosed) as caught:
                await collect(conn, lambda e: seen.append(e) and False)  # type: ignore[func-returns-value]
            closed_after = trio.current_time() - started
    assert (caught.value.code, caught.value.reason) == (1000, "")
    audio = sum(len(e.audio) for e in seen if isinstance(e, el.AgentAudio)) / 32000
    assert audio >= 5.0 and closed_after < audio
    assert [(e.tool_name, e.tool_type) for e in seen if isinstance(e, el.AgentToolResponse)] == [("end_call", "system")]
    response = next(e for e in seen if isinstance(e, el.AgentResponse))
    assert "Goodbye" in response.text


async def test_only_the_agents_client_events_are_sent(sim: Sim) -> None:
    """The real default `client_events` has no corrections, client tool calls, text parts or VAD scores; an
    agent that enables them gets them (the simulator used to send corrections and tool calls regardless)."""
    await sim.faults(**QUIET)
    with trio.fail_after(10):
        async with sim.open() as conn:
            await conn.send(el.build_user_message("use the tool"))
            events = await collect(conn, of(el.AgentResponse), within=8)
    assert not any(isinstance(e, el.ClientToolCall | el.AgentChatResponsePart | el.VadScore) for e in events)
    assert events[-1].text == "The get_time tool is not enabled for this client."  # type: ignore[union-attr]

    await sim.faults(**QUIET, client_events=list(ALL_CLIENT_EVENTS))
    with trio.fail_after(10):
        async with sim.open() as conn:
            await send_audio(conn, voice(16000, 0.5))
            events = await collect(conn, of(el.AgentAudio), within=8)
    parts = [e for e in events if isinstance(e, el.AgentChatResponsePart)]
    assert [p.part_type for p in parts] == ["start", *["delta"] * (len(parts) - 2), "stop"] and len(parts) > 3
    assert "".join(p.text for p in parts).startswith("Turn 1:")
    assert any(isinstance(e, el.VadScore) for e in events)


async def test_audio_carries_alignment(sim: Sim) -> None:
    await sim.faults(ping_interval_s=0)
    with trio.fail_after(5):
        async with sim.open() as conn:
            raw = await conn._ws.receive()  # the greeting's agent_response, then its first audio frame
            while '"type":"audio"' not in str(raw):
                raw = await conn._ws.receive()
    alignment = json.loads(raw)["audio_event"]["alignment"]
    assert alignment["chars"] and len(alignment["chars"]) == len(alignment["char_start_times_ms"])


async def test_known_events_with_odd_fields_do_not_end_the_conversation(sim: Sim) -> None:
    await sim.faults(**QUIET, odd_fields=True)
    with trio.fail_after(5):
        async with sim.open() as conn:
            odd = await collect(conn, lambda e: isinstance(e, el.MalformedEvent) and e.type is None)
            await conn.send(el.build_user_message("still there?"))
            response = (await collect(conn, of(el.AgentResponse)))[-1]
    assert response.text == "You said: still there?"
    assert {e.type for e in odd if isinstance(e, el.MalformedEvent)} >= {"audio", "ping", "interruption"}
    assert any(isinstance(e, el.AgentChatResponsePart) for e in odd)


async def test_queue_status_then_admitted_or_timed_out_3008(sim: Sim) -> None:
    await sim.faults(**QUIET, queue_wait_ms=100)
    with trio.fail_after(5):
        async with sim.open() as conn:
            await conn.send(el.build_user_message("hi"))
            events = await collect(conn, of(el.AgentResponse))
    assert [e.status for e in events if isinstance(e, el.QueueStatus)] == ["waiting", "admitted"]

    await sim.faults(queue_times_out=True)
    with trio.fail_after(5):
        async with sim.open() as conn:
            with pytest.raises(el.AgentClosed) as caught:
                await collect(conn, lambda e: False)
    assert caught.value.code == 3008


async def test_bad_json_from_the_agent_is_skipped_and_the_connection_survives(sim: Sim) -> None:
    await sim.faults(**QUIET, send_bad_json=True)
    with trio.fail_after(5):
        async with sim.open() as conn:
            assert isinstance(await conn.receive(), el.MalformedEvent)
            await conn.send(el.build_user_message("still there?"))
            response = (await collect(conn, of(el.AgentResponse)))[-1]
    assert response.text == "You said: still there?"


async def test_unknown_event_types_are_passed_through_harmlessly(sim: Sim) -> None:
    await sim.faults(response_latency_ms=0, ping_interval_s=0, send_unknown_events=True)
    with trio.fail_after(5):
        async with sim.open() as conn:
            events = await collect(conn, of(el.AgentAudio))
    unknown = {e.type for e in events if isinstance(e, el.UnknownEvent)}
    assert "internal_tentative_agent_response" in unknown
    assert any(isinstance(e, el.McpConnectionStatus) for e in events)


@pytest.mark.parametrize("form", ["schema", "flat"])
async def test_error_events_in_both_forms_carry_the_code(sim: Sim, form: str) -> None:
    await sim.faults(**QUIET, error_event={"form": form, "code": 1002, "message": "This request exceeds your quota."})
    with trio.fail_after(5):
        async with sim.open() as conn:
            error = (await collect(conn, of(el.AgentErrorEvent)))[-1]
    assert error.code == 1002
    assert "exceeds your quota" in error.message


async def test_stalled_agent_sends_nothing_and_leaving_is_bounded(sim: Sim) -> None:
    await sim.faults(**QUIET, stall_after_ms=0)
    with trio.fail_after(15):  # generous: leaving waits at most 2 s for the agent's close frame, not for ever
        async with sim.open() as conn:
            with trio.move_on_after(0.5) as waited:
                await conn.receive()
            assert waited.cancelled_caught
            for _ in range(20):
                await conn.send(el.build_user_audio_chunk(bytes(3200)))
        # Leaving did not wait for the agent's close frame for ever (the fail_after above is the bound).
    await wait_until_closed(sim)


async def test_leaving_the_block_closes_the_socket_for_the_agent(sim: Sim) -> None:
    with trio.fail_after(5):
        async with sim.open() as conn:
            await collect(conn, of(el.AgentResponse))
        record = await wait_until_closed(sim)
    assert record["closed_by"] == "client"


# -- REST ---------------------------------------------------------------------------------------------------------


async def test_agent_details_report_the_formats_and_unknown_agents_are_404(sim: Sim) -> None:
    await sim.faults(agent_output_audio_format="pcm_24000", unknown_agent_ids=["ghost"])
    headers = {"xi-api-key": "k"}
    details = await sim.http.get(el.agent_details_url(sim.url, AGENT), headers=headers)
    assert details.status_code == 200
    assert details.json()["conversation_config"]["tts"]["agent_output_audio_format"] == "pcm_24000"
    assert (await sim.http.get(el.agent_details_url(sim.url, "ghost"), headers=headers)).status_code == 404
    assert (await sim.http.get(el.agent_details_url(sim.url, AGENT))).status_code == 401


async def test_signed_url_endpoint_validates_like_the_real_one(sim: Sim) -> None:
    missing = await sim.http.get(sim.url + "/v1/convai/conversation/get-signed-url", headers={"xi-api-key": "k"})
    assert missing.status_code == 422
    unauthenticated = await sim.http.get(el.signed_url_request(sim.url, AGENT))
    assert unauthenticated.status_code == 401
    assert "detail" in unauthenticated.json()
    signed = (await sim.http.get(el.signed_url_request(sim.url, AGENT), headers={"xi-api-key": "k"})).json()
    assert signed["signed_url"].startswith(sim.url.replace("http://", "ws://") + "/v1/convai/conversation?agent_id=")
    assert "conversation_signature=" in signed["signed_url"]


async def test_older_token_form_of_signed_url_is_accepted(sim: Sim) -> None:
    signed = (await sim.http.get(el.signed_url_request(sim.url, AGENT), headers={"xi-api-key": "k"})).json()
    url = signed["signed_url"].replace("conversation_signature=", "token=")
    with trio.fail_after(5):
        async with trio_websocket.open_websocket_url(url) as ws:
            await ws.send_message(el.build_initiation())
            assert isinstance(el.parse_server_event(await ws.get_message()), el.ConversationMetadata)


async def test_the_audio_hook_sees_each_chunk_as_sent(sim: Sim) -> None:
    await sim.faults(**QUIET)
    pcm = voice(16000, 0.2, silence=0)
    with trio.fail_after(5):
        async with sim.open() as conn:
            before = time.monotonic()
            await conn.send(el.build_user_audio_chunk(pcm))
            await conn.send(el.build_user_message("sync"))
            await collect(conn, of(el.AgentResponse))
    assert [(cid, size) for cid, size, _ in sim.heard] == [(conn.metadata.conversation_id, len(pcm))]
    assert sim.heard[0][2] >= before
    assert (await sim.only_conversation())["user_audio_bytes"] == len(pcm)


async def test_multimodal_message_takes_the_asyncapi_shape_only(sim: Sim) -> None:
    """`text` is a `user_message` object; the plain string the simulator used to accept is refused (1008)."""
    await sim.faults(**QUIET)
    with trio.fail_after(5):
        async with sim.open() as conn:
            await conn.send(el.build_multimodal_message("look"))
            assert (await collect(conn, of(el.AgentResponse)))[-1].text == "You said: look"  # type: ignore[union-attr]
            await conn.send(json.dumps({"type": "multimodal_message", "text": "look"}))
            with pytest.raises(el.AgentClosed) as caught:
                await collect(conn, lambda e: False)
    assert (caught.value.code, caught.value.reason) == (1008, "invalid_message")


async def test_an_approval_for_no_awaited_call_is_recorded_and_ignored(sim: Sim) -> None:
    await sim.faults(**QUIET, client_events=list(ALL_CLIENT_EVENTS))
    with trio.fail_after(5):
        async with sim.open() as conn:
            await conn.send(el.build_mcp_tool_approval_result("mcp_nobody", True))
            await conn.send(el.build_user_message("still there?"))
            assert (await collect(conn, of(el.AgentResponse)))[-1].text == "You said: still there?"  # type: ignore[union-attr]
    assert (await sim.only_conversation())["mcp_approvals"] == [{"tool_call_id": "mcp_nobody", "is_approved": True,
                                                                 "awaited": False}]


async def test_an_open_conversation_outlives_the_connect_timeout(sim: Sim) -> None:
    """The connect timeout bounds the opening (handshake and metadata) only: a conversation opened with 0.3 s goes on
    for seconds, answered and closed normally (pings every 0.25 s mark the time passing)."""
    await sim.faults(first_message=None, response_latency_ms=0, ping_interval_s=0.25)
    with trio.fail_after(15):
        async with sim.open(connect_timeout=0.3) as conn:
            await collect(conn, lambda e: isinstance(e, el.Ping) and e.event_id == 8)  # two seconds in
            await conn.send(el.build_user_message("still there?"))
            events = await collect(conn, of(el.AgentResponse))
            assert "still there?" in events[-1].text  # type: ignore[attr-defined]
    record = await wait_until_closed(sim)
    assert record["closed_by"] == "client"  # we ended it, not the agent and not a time-out
