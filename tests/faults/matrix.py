"""The fault matrix: every way a conversation can end badly, each run next to a healthy conversation on a real relay
(hypercorn on loopback) and the simulators, then measured from the simulators' ledgers.

A scenario is data (faults to inject, what the faulty browser does, what it should see); `run_scenario` runs one
and returns a `Measurement`: avatar sessions created and stopped, the longest cleanup (from the moment the faulty
conversation was ended, by the browser or by the fault, to the session's stop in the ledger: both clocks are this
process's `time.monotonic()`), and whether the relay was back to its baseline (no conversation open in the
registry, no extra task in the app's nursery). `tests/faults/test_fault_matrix.py` asserts on it;
`tests/faults/report.py` runs it N times and prints the table of docs/reliability.md.
"""

from __future__ import annotations

import socket
import struct
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx2
import trio
from hypercorn.config import Config
from hypercorn.trio import serve
from quart_trio import QuartTrio
from trio_websocket import ConnectionClosed

from relay.config import Settings
from relay.providers.table import serve_simulators
from relay.server.serving import hypercorn_config
from relay.sim.runner import SimulatorURLs
from relay.web import create_app, relay_state
from tests.support.harness import BrowserClient, Relay, relay_settings
from tests.support.resumable import ResumingBrowser

FAST = {"relay_stop_timeout": 2.0, "relay_setup_timeout": 2.0, "relay_idle_timeout": 3.0,
        "relay_agent_silence_timeout": 3.0}  # above the agent simulator's 2 s ping interval


@dataclass
class FaultRelay(Relay):
    app: QuartTrio | None = None

    @property
    def open_conversations(self) -> int:
        assert self.app is not None
        return relay_state(self.app).registry.open_count

    @property
    def background_tasks(self) -> int:
        assert self.app is not None
        return len(self.app.nursery.child_tasks)


def production_config(settings: Settings, *, tcp_send_timeout: float | None = None,
                      tcp_send_buffer: int | None = None) -> Config:
    """The hypercorn Config `avatar-relay serve` builds (`relay.server.serving.hypercorn_config`: TCP_USER_TIMEOUT =
    RELAY_SEND_TIMEOUT, or `tcp_send_timeout`, on the listening socket, so on every accepted one) on loopback, any
    free port. `tcp_send_buffer` also shrinks the listening socket's send buffer, so a client that stops reading
    blocks the relay within a second instead of after megabytes."""
    send_timeout = settings.relay_send_timeout if tcp_send_timeout is None else tcp_send_timeout
    config = hypercorn_config("127.0.0.1", 0, 3.0, send_timeout)
    if tcp_send_buffer is not None:
        create_sockets = config.create_sockets

        def with_small_send_buffer():  # type: ignore[no-untyped-def]
            sockets = create_sockets()
            for sock in sockets.insecure_sockets:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, tcp_send_buffer)
            return sockets

        config.create_sockets = with_small_send_buffer  # type: ignore[method-assign]
    return config


@asynccontextmanager
async def running_fault_relay(*, tcp_send_timeout: float | None = None, tcp_send_buffer: int | None = None,
                              **overrides: Any) -> AsyncIterator[FaultRelay]:
    """`tests.support.harness.running_relay` with the app exposed, short timeouts, the session journal on (as in
    production) in a private state directory, and the production socket options (see `production_config`)."""
    with tempfile.TemporaryDirectory(prefix="relay-state-") as state:
        async with trio.open_nursery() as nursery:
            sims: SimulatorURLs = await nursery.start(serve_simulators, "127.0.0.1")
            settings = relay_settings(sims, **{"relay_state_dir": state, "relay_journal": True, **FAST, **overrides})
            config = production_config(settings, tcp_send_timeout=tcp_send_timeout, tcp_send_buffer=tcp_send_buffer)
            app = create_app(settings)
            binds = await nursery.start(serve, app, config)
            async with httpx2.AsyncClient(timeout=5.0) as http:
                yield FaultRelay(binds[0], sims, http, app, settings=settings)
            nursery.cancel_scope.cancel()


def stopped_at(session: dict[str, Any]) -> float | None:
    value = session.get("stopped_at", session.get("stopped"))
    return float(value) if value is not None else None


# ---------------------------------------------------------------------------------------------------------------
# Scenarios


Script = Callable[[BrowserClient, FaultRelay], Awaitable[float]]  # returns the monotonic time the end was caused


async def _vanish_before_start(b: BrowserClient, r: FaultRelay) -> float:
    t = time.monotonic()
    await b.ws.aclose()
    return t


async def _vanish_after(b: BrowserClient, delay: float) -> float:
    await b.send(type="start")
    await trio.sleep(delay)
    t = time.monotonic()
    await b.ws.aclose()
    return t


async def _vanish_during_setup(b: BrowserClient, r: FaultRelay) -> float:
    return await _vanish_after(b, 0.2)


async def _vanish_mid_speech(b: BrowserClient, r: FaultRelay) -> float:
    await b.send(type="start")
    await b.expect("ready")
    await b.send(type="text", text="tell me something long about the sea please")
    await b.expect("agent_response")
    t = time.monotonic()
    await b.ws.aclose()
    return t


async def _vanish_after_ready(b: BrowserClient, r: FaultRelay) -> float:
    await b.start()
    t = time.monotonic()
    await b.ws.aclose()
    return t


async def _reset(b: BrowserClient) -> None:
    """Drop the browser's TCP connection (a reset, no close frame): a lost network, which resuming holds."""
    stream = b.ws._stream  # trio-websocket's own stream: nothing public resets it
    stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    await stream.aclose()
    with trio.fail_after(5):
        while b.ws.closed is None:  # until trio-websocket's reader has seen its stream closed
            await trio.sleep(0.01)


async def _dropped_during_setup(b: BrowserClient, r: FaultRelay) -> float:
    await b.send(type="start")
    await trio.sleep(0.2)
    t = time.monotonic()
    await _reset(b)
    return t


async def _dropped_mid_speech(b: BrowserClient, r: FaultRelay) -> float:
    """Dropped while the agent speaks, and nobody comes back: held for the window, then `client_gone`."""
    await b.start()
    await b.send(type="text", text="tell me something long about the sea please")
    await b.expect("agent_response")
    t = time.monotonic()
    await _reset(b)
    return t


async def _dropped_then_resumed(b: BrowserClient, r: FaultRelay) -> float:
    """Dropped while the agent speaks, resumed on a new connection, then stopped there."""
    ready = await b.start()
    await b.send(type="text", text="tell me something long about the sea please")
    await b.expect("agent_response")
    await _reset(b)
    again = ResumingBrowser(r.url)
    resumed = await again.resume(ready["resume_token"], last_seq=0)
    assert resumed["type"] == "resumed", resumed
    t = time.monotonic()
    await again.send(type="stop")
    assert (await again.expect("ended"))["reason"] == "client_stop"
    await again.read_to_close()
    assert again.connection is not None
    await again.connection.stream.aclose()
    return t


async def _stop_after_ready(b: BrowserClient, r: FaultRelay) -> float:
    await b.start()
    t = time.monotonic()
    await b.send(type="stop")
    await b.expect("ended")
    return t


async def _talk_then_stop(b: BrowserClient, r: FaultRelay) -> float:
    await b.start()
    await b.send(type="text", text="are you there")
    await b.expect("agent_response")
    t = time.monotonic()
    await b.send(type="stop")
    await b.expect("ended")
    return t


async def _start_and_wait_for_end(b: BrowserClient, r: FaultRelay) -> float:
    t = time.monotonic()
    await b.send(type="start")
    await b.expect("ended", timeout=8.0)
    return t


async def _start_active_until_end(b: BrowserClient, r: FaultRelay) -> float:
    """A live user (activity every 0.5 s, so the browser idle timeout never fires) waiting for the relay to end it."""
    t = time.monotonic()
    await b.send(type="start")
    with trio.fail_after(8.0):
        while True:
            with trio.move_on_after(0.5):
                if (await b.next_message())["type"] == "ended":
                    return t
            await b.send(type="activity")


@dataclass(frozen=True)
class Scenario:
    name: str
    script: Script
    provider: str = "heygen"
    faults: dict[str, dict[str, Any]] = field(default_factory=dict)
    expect_error: str | None = None  # the `error` code the faulty browser must see (None: not checked)
    expect_ended: str | None = None
    expect_degraded: bool = False  # the faulty browser is told `avatar_unavailable` and the conversation goes on
    expect_created: int | None = None  # sessions created for the faulty conversation
    expect_requests: dict[str, int] = field(default_factory=dict)  # provider simulator request counts
    settings: dict[str, Any] = field(default_factory=dict)


NO_GREETING = {"elevenlabs": {"first_message": ""}}

SCENARIOS: list[Scenario] = [
    # The browser vanishes at each phase.
    Scenario("browser gone before start", _vanish_before_start, expect_created=0),
    Scenario("browser gone during streaming.new", _vanish_during_setup,
             faults={"heygen": {"latency_ms": {"streaming.new": 500}}}, expect_created=1),
    Scenario("browser gone during streaming.start", _vanish_during_setup,
             faults={"heygen": {"latency_ms": {"streaming.start": 500}}}, expect_created=1),
    Scenario("browser gone mid-speech", _vanish_mid_speech, faults=NO_GREETING, expect_created=1),
    Scenario("browser gone, slow stop", _vanish_after_ready,
             faults={"heygen": {"latency_ms": {"streaming.stop": 800}}}, expect_created=1),
    # The browser's connection drops (a TCP reset: resuming holds the conversation) at each phase.
    Scenario("browser dropped during streaming.new", _dropped_during_setup,
             faults={"heygen": {"latency_ms": {"streaming.new": 500}}}, expect_created=1),
    Scenario("browser dropped mid-speech, nobody comes back", _dropped_mid_speech, faults=NO_GREETING,
             expect_created=1, settings={"relay_resume_window": 1.0}),
    Scenario("browser dropped mid-speech, resumed, stopped", _dropped_then_resumed, faults=NO_GREETING,
             expect_created=1),
    Scenario("liveavatar browser dropped mid-speech, nobody comes back", _dropped_mid_speech, provider="liveavatar",
             faults=NO_GREETING, expect_created=1, settings={"relay_resume_window": 1.0}),
    # ElevenLabs misbehaves.
    Scenario("agent refuses handshake (403)", _start_and_wait_for_end,
             faults={"elevenlabs": {"refuse_handshake_status": 403}}, expect_error="upstream_unavailable"),
    *[Scenario(f"agent closes {code}", _start_and_wait_for_end,
               faults={"elevenlabs": {"close_code": code, "close_reason": "fault", "close_after_ms": 300}},
               expect_error="agent_error", expect_created=1) for code in (1002, 1008, 1011)],
    # A malformed frame is skipped, as the official clients do (it used to end the conversation with agent_error).
    Scenario("agent sends bad JSON", _talk_then_stop,
             faults={"elevenlabs": {"send_bad_json": True, "first_message": ""}}, expect_ended="client_stop",
             expect_created=1),
    Scenario("agent sends known events with odd fields", _talk_then_stop,
             faults={"elevenlabs": {"odd_fields": True, "first_message": ""}}, expect_ended="client_stop",
             expect_created=1),
    Scenario("agent sends unknown events", _talk_then_stop,
             faults={"elevenlabs": {"send_unknown_events": True, "first_message": ""}}, expect_ended="client_stop",
             expect_created=1),
    Scenario("agent stops answering", _start_active_until_end,
             faults={"elevenlabs": {"stall_after_ms": 200, "ping_interval_s": 0}}, expect_error="agent_error",
             expect_created=1),
    # HeyGen misbehaves.
    Scenario("heygen 10007 concurrent limit", _talk_then_stop,
             faults={"heygen": {"concurrency_limit": 1}, **NO_GREETING}, expect_created=0,
             expect_ended="client_stop"),
    Scenario("heygen 401", _talk_then_stop, faults={"heygen": {"invalid_keys": "*"}, **NO_GREETING},
             expect_created=0, expect_ended="client_stop"),
    Scenario("heygen 429 on streaming.new (not retried)", _talk_then_stop,
             faults={"heygen": {"fail": {"streaming.new": {"status": 429, "retry_after": 1}}}, **NO_GREETING},
             expect_created=0, expect_ended="client_stop", expect_requests={"streaming.new": 2}),
    Scenario("heygen 500 on streaming.new (not retried)", _talk_then_stop,
             faults={"heygen": {"fail": {"streaming.new": {"status": 500}}}, **NO_GREETING},
             expect_created=0, expect_ended="client_stop", expect_requests={"streaming.new": 2}),
    Scenario("heygen 500 on streaming.start (journaled)", _talk_then_stop,
             faults={"heygen": {"fail": {"streaming.start": {"status": 500}}}, **NO_GREETING}, expect_created=1,
             expect_degraded=True, expect_ended="client_stop"),
    Scenario("heygen streaming.new times out", _talk_then_stop,
             faults={"heygen": {"hang": ["streaming.new"]}, **NO_GREETING}, expect_created=0,
             expect_ended="client_stop"),
    Scenario("heygen 429 + Retry-After on stop", _stop_after_ready,
             faults={"heygen": {"fail": {"streaming.stop": {"status": 429, "retry_after": 0.3, "times": 1}}}},
             expect_created=1, expect_requests={"streaming.stop": 3}),
    Scenario("heygen 503 on stop", _stop_after_ready,
             faults={"heygen": {"fail": {"streaming.stop": {"status": 503, "times": 2}}}}, expect_created=1,
             expect_requests={"streaming.stop": 4}),
    Scenario("heygen slow stop", _stop_after_ready, faults={"heygen": {"latency_ms": {"streaming.stop": 800}}},
             expect_created=1, expect_ended="client_stop"),
    # LiveAvatar, main exits.
    Scenario("liveavatar client stop", _stop_after_ready, provider="liveavatar", expect_created=1,
             expect_ended="client_stop"),
    Scenario("liveavatar browser gone mid-speech", _vanish_mid_speech, provider="liveavatar", faults=NO_GREETING,
             expect_created=1),
    Scenario("liveavatar browser gone during start", _vanish_during_setup, provider="liveavatar",
             faults={"liveavatar": {"latency_ms": {"start": 500}}}, expect_created=1),
    Scenario("liveavatar agent closes 1011", _start_and_wait_for_end, provider="liveavatar",
             faults={"elevenlabs": {"close_code": 1011, "close_reason": "fault", "close_after_ms": 300}},
             expect_error="agent_error", expect_created=1),
    Scenario("liveavatar 500 on start (journaled)", _talk_then_stop, provider="liveavatar",
             faults={"liveavatar": {"fail": {"start": {"status": 500}}}, **NO_GREETING}, expect_created=1,
             expect_degraded=True, expect_ended="client_stop"),
    Scenario("liveavatar 429 + Retry-After on stop", _stop_after_ready, provider="liveavatar",
             faults={"liveavatar": {"fail": {"stop": {"status": 429, "retry_after": 0.3, "times": 1}}}},
             expect_created=1, expect_requests={"stop": 3}),
    # An ordered list (RELAY_AVATAR=liveavatar,simli, the healthy conversation on LiveAvatar): each refusal moves on
    # to Simli, and every session of either provider is stopped on every way out.
    Scenario("list: liveavatar at its limit, simli takes over, client stop", _talk_then_stop,
             provider="liveavatar,simli", faults={"liveavatar": {"concurrency_limit": 1}, **NO_GREETING},
             expect_created=1, expect_ended="client_stop"),
    Scenario("list: liveavatar 500 on start (journaled), simli takes over", _talk_then_stop,
             provider="liveavatar,simli", faults={"liveavatar": {"fail": {"start": {"status": 500}}}, **NO_GREETING},
             expect_created=2, expect_ended="client_stop"),
    Scenario("list: browser gone while simli's socket opens after liveavatar refused", _vanish_during_setup,
             provider="liveavatar,simli",
             faults={"liveavatar": {"concurrency_limit": 1}, "simli": {"latency_ms": {"ws_connect": 500}}}),
    # (no expect_created: on a loaded machine the browser may leave before Simli's token is asked; either way
    # nothing may be left running)
    Scenario("list: agent closes 1011 with simli's avatar", _start_and_wait_for_end, provider="liveavatar,simli",
             faults={"liveavatar": {"concurrency_limit": 1},
                     "elevenlabs": {"close_code": 1011, "close_reason": "fault", "close_after_ms": 300}},
             expect_error="agent_error", expect_created=1),
    Scenario("list: the avatar's socket keeps closing, each session replaced and stopped", _talk_then_stop,
             provider="liveavatar,simli",
             faults={"liveavatar": {"close_ws_after_ms": 100}, "simli": {"concurrency_limit": 0}, **NO_GREETING},
             expect_ended="client_stop"),
    Scenario("list: every provider refuses, voice only", _talk_then_stop, provider="liveavatar,simli",
             faults={"liveavatar": {"concurrency_limit": 1}, "simli": {"no_credits": True}, **NO_GREETING},
             expect_created=0, expect_degraded=True, expect_ended="client_stop"),
    # Simli: every way out ends the session with SKIP + DONE ("stopped" in its ledger); refusals degrade to voice.
    Scenario("simli client stop", _stop_after_ready, provider="simli", expect_created=1, expect_ended="client_stop"),
    Scenario("simli browser gone mid-speech", _vanish_mid_speech, provider="simli", faults=NO_GREETING,
             expect_created=1),
    Scenario("simli browser gone while its socket opens", _vanish_during_setup, provider="simli",
             faults={"simli": {"latency_ms": {"ws_connect": 500}}}, expect_created=1),
    Scenario("simli agent closes 1011", _start_and_wait_for_end, provider="simli",
             faults={"elevenlabs": {"close_code": 1011, "close_reason": "fault", "close_after_ms": 300}},
             expect_error="agent_error", expect_created=1),
    Scenario("simli RATE (concurrency) on its socket", _talk_then_stop, provider="simli",
             faults={"simli": {"concurrency_limit": 1}, **NO_GREETING}, expect_created=0, expect_degraded=True,
             expect_ended="client_stop"),
    Scenario("simli no credits", _talk_then_stop, provider="simli", faults={"simli": {"no_credits": True},
             **NO_GREETING}, expect_created=0, expect_degraded=True, expect_ended="client_stop"),
]


@dataclass
class Measurement:
    scenario: str
    created: int
    stopped: int
    cleanup_seconds: float
    healthy_completed: bool
    relay_back_to_baseline: bool
    error: str | None
    ended: str | None
    avatar_unavailable: str | None  # the reason the faulty browser was given, if it was told
    faulty_created: int
    requests: dict[str, int]


async def _healthy(relay: FaultRelay, faulty_done: trio.Event, ready: trio.Event, result: dict[str, Any]) -> None:
    async with relay.browser() as browser:
        msg = await browser.start()
        result["session_id"] = (msg.get("avatar") or {}).get("session_id")
        ready.set()
        while not faulty_done.is_set():  # a live user: keeps the idle timeout away while the faulty one runs
            await browser.send(type="activity")
            with trio.move_on_after(0.5):
                await faulty_done.wait()
        await browser.send(type="text", text="healthy conversation check")
        await browser.expect("agent_response", where=lambda m: "healthy" in m["text"])
        await browser.send(type="stop")
        result["ended"] = (await browser.expect("ended"))["reason"]


_LIVEAVATAR_DEFAULTS = {"no_credits": False, "invalid_keys": []}


def undo_faults(simulator: str, faults: dict[str, Any]) -> dict[str, Any] | None:
    """The fault update that puts an avatar simulator back to normal (ElevenLabs conversations read their faults
    once, at connection: nothing to undo for the healthy one)."""
    if simulator == "elevenlabs":
        return None
    undo: dict[str, Any] = {}
    for key, value in faults.items():
        if isinstance(value, dict):
            undo[key] = {inner: 0 if key == "latency_ms" else None for inner in value}
        else:
            undo[key] = _LIVEAVATAR_DEFAULTS.get(key) if simulator == "liveavatar" else None
    return undo


async def run_scenario(scenario: Scenario) -> Measurement:
    """Run one scenario next to a healthy conversation on a fresh relay; measure it from the ledgers."""
    async with running_fault_relay(relay_avatar=scenario.provider, **scenario.settings) as relay:
        baseline_tasks = relay.background_tasks
        healthy: dict[str, Any] = {}
        faulty: dict[str, Any] = {}
        ready, faulty_done = trio.Event(), trio.Event()
        with trio.fail_after(25):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_healthy, relay, faulty_done, ready, healthy)
                await ready.wait()
                for name, faults in scenario.faults.items():
                    await relay.faults(name, **faults)
                await _faulty_capturing(relay, scenario, faulty)
                for provider in scenario.provider.split(","):
                    await _wait_faulty_sessions_stopped(relay, provider, healthy.get("session_id"))
                for name, faults in scenario.faults.items():  # the healthy conversation finishes unhindered
                    if (undo := undo_faults(name, faults)) is not None:
                        await relay.faults(name, **undo)
                faulty_done.set()
            ledgers = [await relay.wait_all_sessions_stopped(provider, timeout=10.0)
                       for provider in scenario.provider.split(",")]
            ledger = {**ledgers[0], "sessions": {k: v for one in ledgers for k, v in one["sessions"].items()}}
        with trio.move_on_after(10.0):  # a leaked conversation or task never goes away: then `back` is False
            while not _at_baseline(relay, baseline_tasks):
                await trio.sleep(0.02)
        back = _at_baseline(relay, baseline_tasks)
        sessions = ledger["sessions"]
        faulty_sessions = {k: v for k, v in sessions.items() if k != healthy.get("session_id")}
        cleanup = max((stopped_at(s) or 0.0) - faulty["t_end"] for s in faulty_sessions.values()) \
            if faulty_sessions else 0.0
        return Measurement(
            scenario=scenario.name, created=len(sessions),
            stopped=sum(1 for s in sessions.values() if stopped_at(s) is not None),
            cleanup_seconds=max(0.0, cleanup), healthy_completed=healthy.get("ended") == "client_stop",
            relay_back_to_baseline=back, error=faulty.get("error"), ended=faulty.get("ended"),
            avatar_unavailable=faulty.get("avatar_unavailable"), faulty_created=len(faulty_sessions),
            requests=dict(ledger.get("requests", {})))


def _at_baseline(relay: FaultRelay, baseline_tasks: int) -> bool:
    """No conversation open in the registry and no task beyond the baseline in the app's nursery."""
    return relay.open_conversations == 0 and relay.background_tasks <= baseline_tasks


async def _wait_faulty_sessions_stopped(relay: FaultRelay, provider: str, healthy_session: str | None) -> None:
    """Faults stay in place until the faulty conversation's sessions are stopped (a slow or failing stop must
    really be slow or failing); gives up after 10 s, and the caller's ledger check then reports the leak."""
    with trio.move_on_after(10.0):
        while True:
            await trio.sleep(0.02)  # the relay's stop request is on its way
            sessions = (await relay.ledger(provider))["sessions"]
            if all(stopped_at(s) is not None for k, s in sessions.items() if k != healthy_session):
                return


async def _faulty_capturing(relay: FaultRelay, scenario: Scenario, result: dict[str, Any]) -> None:
    """The faulty browser; errors and endings it sees are captured even when the script consumed them."""
    async with relay.browser() as browser:
        original = browser.next_message

        async def capturing() -> dict[str, Any]:
            msg = await original()
            if msg["type"] == "error":
                result.setdefault("error", msg["code"])
            elif msg["type"] == "ended":
                result.setdefault("ended", msg["reason"])
            elif msg["type"] == "avatar_unavailable":
                result.setdefault("avatar_unavailable", msg["reason"])
            return msg

        browser.next_message = capturing  # type: ignore[method-assign]
        try:
            result["t_end"] = await scenario.script(browser, relay)
        except ConnectionClosed as closed:
            raise AssertionError(f"{scenario.name}: the relay closed the faulty browser's socket before the script "
                                 f"was done ({closed.reason}); the browser saw {result}") from None
        if "ended" not in result and not browser.ws.closed:
            with trio.move_on_after(0.5):
                while "ended" not in result:
                    await browser.next_message()
