"""An avatar replaced instead of lost (issue #23 §3), with everything a separate process as a user runs it: the
simulators served by `avatar-relay sim`, the relay by `avatar-relay serve`, a browser on a real socket. The avatar
simulators answer a LiveKit room that is not `.invalid`, so the relay treats each avatar as real: the agent's voice
goes to the avatar, and reaches the browser only when the avatar is lost.

- Killed mid-reply through the simulator's fault controls (its socket closed after 2 s of the reply): the browser
  is told `avatar_changed`, hears the rest of the turn as voice (not lost, not repeated from its start), the dead
  session is stopped exactly once, the new one speaks the next turn and is stopped at the end.
- A known session limit (LiveAvatar's sandbox, shortened with `avatar-relay sim --session-limit`; Simli's
  `maxSessionLength`): the relay rotates to a fresh session between turns before the limit — the user hears no
  voice-only gap, the old session was done speaking and is stopped once, before its limit.
- A session ended by its maximum length alone (a limit the relay was not told: the simulators' caps): replaced as
  any death, the voice carrying the turn on, the dead session stopped once.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2
import orjson
import pytest
from trio_websocket import open_websocket_url

from relay.protocol.liveavatar import SANDBOX_AVATAR_ID
from relay.sim.runner import SimulatorURLs
from tests.faults.test_process_faults import base_env, journal_rows
from tests.support.harness import E2E_AVATAR, E2E_SIMLI_FACE, BrowserClient, poll_ledger
from tests.support.processes import relay_process, sim_process
from tests.support.simcontrol import SimControl

ROOM = "wss://livekit.process-test.example"  # not `.invalid`: the relay treats the avatar as a real one
LONG = ("tell me a long story about the lighthouse keeper who counted every ship that passed his rock, and about the "
        "storm that came in the winter when the lamp went out")
TURN = 4.0  # seconds of the agent's reply (the simulator's max_reply_s: LONG is capped to it)
LITE_BYTES_PER_SECOND = 48_000  # what LiveAvatar takes: PCM16 24 kHz

pytestmark = pytest.mark.timeout(120)


@dataclass
class Running:
    browser: BrowserClient
    ready: dict[str, Any]
    sims: SimulatorURLs
    http: httpx2.AsyncClient
    state: Path
    url: str

    def sim(self, name: str) -> SimControl:
        return SimControl(self.sims[name], self.http)

    @property
    def voice_seconds(self) -> float:
        """Seconds of the agent's voice the browser received (binary frames, PCM16 at ready's output rate)."""
        return self.browser.audio_received / (2 * self.ready["output_audio"]["sample_rate"])

    async def say(self, text: str) -> None:
        await self.browser.send(type="text", text=text)

    async def agent_audio_seconds(self) -> float:
        ledger = await self.sim("elevenlabs").ledger()
        return float(ledger["conversations"][-1]["agent_audio_seconds"])

    async def wait_turn_sent(self, seconds: float) -> None:
        """Until the agent has sent `seconds` of audio in all (its paced reply is over)."""
        await poll_ledger(self.sim("elevenlabs").ledger,
                          lambda led: led["conversations"][-1]["agent_audio_seconds"] >= seconds - 0.01,
                          f"the agent's {seconds:g} s of audio", timeout=20)

    async def stop(self) -> None:
        await self.browser.send(type="stop")
        await self.browser.expect("ended", timeout=15)


@asynccontextmanager
async def conversation(tmp_path: Path, provider: str, *sim_args: str, agent: dict[str, Any] | None = None,
                       **env: str) -> AsyncIterator[Running]:
    """`avatar-relay sim SIM_ARGS` and `avatar-relay serve` (RELAY_AVATAR=`provider`, with `env`) as processes; the
    agent replies in real time (`agent` faults on top), without a greeting; one browser, started."""
    async with sim_process(tmp_path, *sim_args) as urls, httpx2.AsyncClient(timeout=5.0) as http:
        sims = SimulatorURLs(urls)
        await SimControl(sims.elevenlabs, http).faults(**{"first_message": "", "reply_pacing": "realtime",
                                                          "max_reply_s": TURN, **(agent or {})})
        state = tmp_path / "state"
        relay_env = base_env(
            ELEVENLABS_BASE_URL=sims.elevenlabs, ELEVENLABS_AGENT_ID="agent_process", ELEVENLABS_API_KEY="xi-process",
            RELAY_AVATAR=provider, RELAY_AUTH="off", RELAY_STATE_DIR=str(state), RELAY_STOP_TIMEOUT="3",
            LIVEAVATAR_BASE_URL=sims.liveavatar, LIVEAVATAR_API_KEY="la-process", LIVEAVATAR_AVATAR_ID=E2E_AVATAR,
            SIMLI_BASE_URL=sims.simli, SIMLI_API_KEY="sm-process", SIMLI_FACE_ID=E2E_SIMLI_FACE)
        relay_env.update(env)
        async with relay_process(relay_env, tmp_path, end="term") as (_, url):
            async with open_websocket_url(url.replace("http", "ws") + "/ws", message_queue_size=10_000) as ws:
                browser = BrowserClient(ws)
                ready = await browser.start()
                assert ready["avatar"]["provider"] == provider.split(",")[0]
                assert ready["avatar"]["simulated"] is False
                yield Running(browser, ready, sims, http, state, url)


def room(provider: str) -> str:
    return f"{provider}=" + orjson.dumps({"livekit_url": ROOM}).decode()


def session(ledger: dict[str, Any], session_id: str) -> dict[str, Any]:
    return ledger["sessions"][session_id]  # type: ignore[no-any-return]


def stopped_once(record: dict[str, Any]) -> bool:
    """A LiveAvatar session the relay stopped exactly once (`sessions/stop` answered once for it)."""
    return record["stop_calls"] == 1 and (record["stopped"] or record["expired"]) is not None


async def test_an_avatar_killed_mid_reply_is_replaced_and_the_rest_of_the_turn_is_heard(tmp_path: Path) -> None:
    async with conversation(tmp_path, "liveavatar", "--faults", room("liveavatar")) as run:
        liveavatar = run.sim("liveavatar")
        first = run.ready["avatar"]["session_id"]
        await liveavatar.faults(drop_ws_after_audio_bytes=2 * LITE_BYTES_PER_SECOND)  # 2 s into the reply
        await run.say(LONG)
        notice = await run.browser.expect("avatar_changed", timeout=20)
        assert notice["reason"] == "session_ended", notice
        assert notice["avatar"]["provider"] == "liveavatar" and notice["avatar"]["session_id"] != first
        assert set(notice["avatar"]) == set(run.ready["avatar"])
        second = notice["avatar"]["session_id"]
        await liveavatar.faults(drop_ws_after_audio_bytes=None)
        ledger = await liveavatar.ledger()
        assert stopped_once(session(ledger, first)), session(ledger, first)  # stopped, its socket gone

        heard_by_the_dead_one = session(ledger, first)["lite"]["audio_seconds"]
        assert 0.5 < heard_by_the_dead_one < TURN, heard_by_the_dead_one
        # The rest of the turn reaches the browser as voice: nothing lost (what the dead avatar had not played by the
        # relay's estimate is said again) ...
        rate = run.ready["output_audio"]["sample_rate"]
        await run.browser.wait_for_audio(int((TURN - heard_by_the_dead_one - 0.05) * 2 * rate), timeout=20)
        await run.wait_turn_sent(TURN)

        await run.say("and what happened next")  # the new avatar speaks the next turn
        await run.browser.expect("agent_response", where=lambda m: "what happened next" in m["text"])
        await poll_ledger(liveavatar.ledger, lambda led: [e["ended_at"] is not None for e in session(
            led, second)["lite"]["events"].values()] == [True], "the new avatar speaking the next turn", timeout=20)
        await run.stop()
        # ... not repeated from its start (the relay counts what it gave as played from when it gave it: at least
        # from the avatar's first chunk to the drop), and nothing of the next turn (the new avatar's).
        lite = session(ledger, first)["lite"]
        played = lite["dropped_at"] - min(event["first_chunk_at"] for event in lite["events"].values())
        assert played > 0 and run.voice_seconds <= TURN - played + 0.1, (run.voice_seconds, played)
        assert await run.agent_audio_seconds() > TURN + 1
        ledger = await poll_ledger(liveavatar.ledger, lambda led: led["active"] == 0, "every session stopped")
        assert len(ledger["sessions"]) == 2
        assert stopped_once(session(ledger, first)) and stopped_once(session(ledger, second))
        assert session(ledger, second)["expired"] is None  # stopped by the relay, not ended by a limit
        assert journal_rows(run.state) == []


@pytest.mark.parametrize(("provider", "sim_args", "env"), [
    pytest.param("liveavatar", ("--session-limit", "liveavatar=12"), {"LIVEAVATAR_SANDBOX": "true",
                                                                     "LIVEAVATAR_AVATAR_ID": SANDBOX_AVATAR_ID},
                 id="liveavatar-sandbox"),
    pytest.param("simli", (), {"SIMLI_MAX_SESSION_LENGTH": "14", "RELAY_MAX_DURATION": "14"},
                 id="simli-maxSessionLength"),
])
async def test_the_relay_rotates_to_a_fresh_session_between_turns_before_a_known_limit(
        tmp_path: Path, provider: str, sim_args: tuple[str, ...], env: dict[str, str]) -> None:
    async with conversation(tmp_path, provider, "--faults", room(provider), *sim_args,
                            agent={"max_reply_s": 2.0}, **env) as run:
        sim = run.sim(provider)
        first = run.ready["avatar"]["session_id"]
        await run.say(LONG)  # a turn, spoken by the first avatar before the limit comes near
        notice = await run.browser.expect("avatar_changed", timeout=20)
        assert notice["reason"] == "session_limit", notice
        second = notice["avatar"]["session_id"]
        assert notice["avatar"]["provider"] == provider and second != first
        ledger = await poll_ledger(sim.ledger, lambda led: second in led["sessions"], "the new session")
        old, new = session(ledger, first), session(ledger, second)
        if provider == "liveavatar":
            assert stopped_once(old) and old["expired"] is None, old  # stopped before its limit, not ended by it
            assert old["stop_reason"] == "MAX_DURATION_REACHED"  # what LiveAvatar's records say: not an error
            assert old["lite"]["audio_seconds"] >= 1.9  # it spoke the turn ...
            assert all(event["ended_at"] is not None for event in old["lite"]["events"].values()), old
            assert old["lite"]["events"] and max(e["ended_at"] for e in old["lite"]["events"].values()) <= \
                old["stopped"]  # ... to its end before it was stopped: no change mid-sentence
            assert new["stopped"] is None and new["expired"] is None  # live
        else:
            assert old["end_reason"] == "DONE" and old["dones"] == 1, old  # ended by the relay, before its limit
            assert old["audio_seconds"] >= 1.9 and old["ended"] < old["started"] + 14
            assert new["ended"] is None  # live
        await run.say("and then")  # the new avatar takes the next turn
        await run.browser.expect("agent_response", where=lambda m: "and then" in m["text"])
        await run.stop()
        assert run.voice_seconds == 0  # no voice-only gap: every word went to an avatar
        metrics = (await run.http.get(run.url + "/metrics")).text
        errors = [line for line in metrics.splitlines()
                  if line.startswith("avatar_relay_upstream_errors_total{") and f'upstream="{provider}"' in line]
        assert errors == []  # a rotation is no error
        ledger = await poll_ledger(sim.ledger, lambda led: led["active"] == 0, "every session stopped")
        assert len(ledger["sessions"]) == 2
        if provider == "liveavatar":
            assert all(stopped_once(record) for record in ledger["sessions"].values())
        else:
            assert [record["end_reason"] for record in ledger["sessions"].values()] == ["DONE", "DONE"]
        assert journal_rows(run.state) == []


@pytest.mark.parametrize(("provider", "cap"), [
    pytest.param("liveavatar", {"unreported_max_duration_s": 6}, id="liveavatar-unreported-plan-limit"),
    pytest.param("simli", {"max_session_length_s": 6}, id="simli-capped-maxSessionLength"),
])
async def test_a_session_ended_by_its_maximum_length_alone_is_replaced_and_the_voice_goes_on(
        tmp_path: Path, provider: str, cap: dict[str, Any]) -> None:
    # The limit is the simulator's alone (the relay asks for RELAY_MAX_DURATION plus a minute and is told nothing
    # shorter), so the relay cannot rotate before it: the session ends mid-reply (a reply of 8 s from the start).
    faults = orjson.dumps({"livekit_url": ROOM, **cap}).decode()
    async with conversation(tmp_path, provider, "--faults", f"{provider}={faults}", agent={"max_reply_s": 8.0}) as run:
        sim = run.sim(provider)
        first = run.ready["avatar"]["session_id"]
        await run.say(LONG)
        notice = await run.browser.expect("avatar_changed", timeout=20)
        assert notice["reason"] == "session_ended", notice
        second = notice["avatar"]["session_id"]
        ledger = await sim.ledger()
        old = session(ledger, first)
        if provider == "liveavatar":
            assert old["end_reason"] == "MAX_DURATION_REACHED" and stopped_once(old), old
        else:
            assert old["end_reason"] == "MAX_SESSION_LENGTH" and old["dones"] == 0, old  # nothing sent to it after
        await run.wait_turn_sent(8.0)
        await run.stop()
        assert 0.5 < run.voice_seconds < 8.0 - 0.5, run.voice_seconds  # the rest of the turn, as voice
        ledger = await poll_ledger(sim.ledger, lambda led: led["active"] == 0, "every session ended")
        assert set(ledger["sessions"]) == {first, second}
        new = session(ledger, second)
        if provider == "liveavatar":
            assert stopped_once(new) and new["expired"] is None
        else:
            assert new["end_reason"] == "DONE"
        assert journal_rows(run.state) == []
