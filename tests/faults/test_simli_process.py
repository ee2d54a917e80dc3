"""Simli with the relay as a real process, on simulators in this test process (their ledgers outlive the relay):
SIGTERM ends every Simli session with DONE; after kill -9 nothing can stop the dead relay's Simli sessions (Simli
has no stop by id), so the next start forgets their journal rows, and each session ends by itself `maxIdleTime`
after its last audio — the bound docs/deploy.md states."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import httpx2
import pytest
import trio

from relay.providers.table import serve_simulators
from relay.sim.runner import SimulatorURLs
from tests.faults.test_process_faults import base_env, hold_conversation, journal_rows
from tests.support.processes import relay_process

MAX_IDLE = 1.0  # the simulator's cap on maxIdleTime: the crash bound, short for the test


def simli_env(sims: SimulatorURLs, tmp_path: Path) -> dict[str, str]:
    return base_env(ELEVENLABS_BASE_URL=sims.elevenlabs, ELEVENLABS_AGENT_ID="agent_crash",
                    ELEVENLABS_API_KEY="xi-crash", RELAY_AVATAR="simli", RELAY_AUTH="off",
                    RELAY_STATE_DIR=str(tmp_path / "state"), SIMLI_BASE_URL=sims.simli, SIMLI_API_KEY="sm-crash",
                    SIMLI_FACE_ID="cace3ef7-a4c4-425d-a8cf-a5358eb0c427")


async def simli_ledger(http: httpx2.AsyncClient, sims: SimulatorURLs) -> dict[str, Any]:
    return (await http.get(sims.simli + "/_sim/ledger")).json()  # type: ignore[no-any-return]


async def wait_for(http: httpx2.AsyncClient, sims: SimulatorURLs, what: str, condition: Any) -> dict[str, Any]:
    with trio.move_on_after(15):
        while True:
            ledger = await simli_ledger(http, sims)
            if condition(ledger):
                return ledger
            await trio.sleep(0.05)
    raise AssertionError(f"{what}: {await simli_ledger(http, sims)}")


@pytest.mark.timeout(90)
async def test_sigterm_ends_every_simli_session_with_done(tmp_path: Path) -> None:
    async with trio.open_nursery() as outer:
        sims: SimulatorURLs = await outer.start(serve_simulators, "127.0.0.1")
        env = simli_env(sims, tmp_path)
        env.update(RELAY_STOP_TIMEOUT="3", RELAY_DRAIN_TIMEOUT="5", RELAY_PREDRAIN_DELAY="0")
        async with httpx2.AsyncClient(timeout=5.0) as http:
            async with relay_process(env, tmp_path) as (process, url):
                with trio.fail_after(30):
                    async with trio.open_nursery() as nursery:
                        for _ in range(3):
                            await nursery.start(hold_conversation, url, [])
                        assert (await simli_ledger(http, sims))["active"] == 3
                        process.send_signal(signal.SIGTERM)
                        assert await process.wait() == 0
            ledger = await simli_ledger(http, sims)
        assert ledger["active"] == 0
        assert [s["end_reason"] for s in ledger["sessions"].values()] == ["DONE"] * 3
        outer.cancel_scope.cancel()


@pytest.mark.timeout(90)
async def test_after_kill_9_a_simli_session_ends_within_max_idle_time_and_the_journal_forgets_it(
        tmp_path: Path) -> None:
    async with trio.open_nursery() as outer:
        sims: SimulatorURLs = await outer.start(serve_simulators, "127.0.0.1")
        env = simli_env(sims, tmp_path)
        async with httpx2.AsyncClient(timeout=5.0) as http:
            (await http.post(sims.simli + "/_sim/faults", json={"max_idle_time_s": MAX_IDLE})).raise_for_status()
            async with relay_process(env, tmp_path) as (process, url):
                with trio.fail_after(15):
                    async with trio.open_nursery() as nursery:
                        for _ in range(2):
                            await nursery.start(hold_conversation, url, [])
                        await wait_for(http, sims, "two sessions journaled",
                                       lambda _: len(journal_rows(tmp_path / "state")) == 2)
                        process.kill()  # SIGKILL: no DONE, no cleanup at all
                        await process.wait()
            ledger = await wait_for(http, sims, "both sessions ended by maxIdleTime",
                                    lambda led: led["active"] == 0 and len(led["sessions"]) == 2)
            for session in ledger["sessions"].values():
                assert session["end_reason"] == "IDLE_TIMEOUT" and session["dones"] == 0
                assert session["ended"] >= (session["last_audio"] or session["started"]) + MAX_IDLE
            assert len(journal_rows(tmp_path / "state")) == 2  # the dead relay's rows
            async with relay_process(env, tmp_path):  # the next start's sweep forgets them (nothing to call)
                await wait_for(http, sims, "the journal swept", lambda _: journal_rows(tmp_path / "state") == [])
        outer.cancel_scope.cancel()
