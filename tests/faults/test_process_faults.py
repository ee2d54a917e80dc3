"""The relay as a real process on simulators running in this test process (so their ledgers outlive the relay):
SIGTERM with conversations open, kill -9 with conversations open (the next start reaps what the dead process left
running), a session whose stop failed (the running relay's sweep retries it), and `avatar-relay reap`."""

from __future__ import annotations

import os
import signal
import sqlite3
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx2
import pytest
import trio
from trio_websocket import ConnectionClosed, open_websocket_url

from relay.ops.journal import JOURNAL_FILE
from relay.providers.table import serve_simulators
from relay.sim.runner import SimulatorURLs
from tests.support.harness import BrowserClient, session_counts
from tests.support.processes import relay_process

ROOT = Path(__file__).resolve().parents[2]



def base_env(**values: str) -> dict[str, str]:
    """A clean environment: no keys from the developer's shell, only what the test says."""
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "VIRTUAL_ENV", "TMPDIR")}
    env.update({"RELAY_LOG_LEVEL": "WARNING", "PYTHONPATH": str(ROOT)}, **values)
    return env


async def hold_conversation(url: str, seen: list[dict[str, Any]], *,
                            task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """One browser: start, report ready, then record everything until the socket closes (by the relay, or because
    the process died): what was seen is the result. Any other error (a frame that is not JSON, ...) fails."""
    async with open_websocket_url(url.replace("http", "ws") + "/ws", message_queue_size=1000) as ws:
        browser = BrowserClient(ws)
        await browser.start()
        task_status.started()
        try:
            while True:
                seen.append(await browser.next_message())
        except ConnectionClosed:
            return


def relay_env(sims: SimulatorURLs, tmp_path: Path, provider: str) -> dict[str, str]:
    """A relay on the simulators in this process (agent + `provider` avatar), journal in `tmp_path`/state."""
    env = base_env(ELEVENLABS_BASE_URL=sims.elevenlabs, ELEVENLABS_AGENT_ID="agent_crash",
                   ELEVENLABS_API_KEY="xi-crash", RELAY_AVATAR=provider, RELAY_AUTH="off",
                   RELAY_STATE_DIR=str(tmp_path / "state"))
    if provider == "heygen":
        env.update(HEYGEN_BASE_URL=sims.heygen, HEYGEN_API_KEY="hg-crash", HEYGEN_AVATAR_ID="Wayne_20240711")
    else:
        env.update(LIVEAVATAR_BASE_URL=sims.liveavatar, LIVEAVATAR_API_KEY="la-crash",
                   LIVEAVATAR_AVATAR_ID="00000000-0000-4000-8000-0000000000e2")
    return env


def heygen_relay_env(sims: SimulatorURLs, tmp_path: Path) -> dict[str, str]:
    """A relay on the simulators in this process, HeyGen avatar, journal in `tmp_path`/state."""
    return relay_env(sims, tmp_path, "heygen")


async def ledger_of(http: httpx2.AsyncClient, sims: SimulatorURLs, provider: str) -> dict[str, Any]:
    """The avatar simulator's ledger (it lives in this process, so it outlives any relay process)."""
    ledger: dict[str, Any] = (await http.get(str(getattr(sims, provider)) + "/_sim/ledger")).json()
    return ledger


@pytest.mark.timeout(90)
@pytest.mark.parametrize("provider", ["heygen", "liveavatar"])
async def test_sigterm_ends_every_conversation_with_shutdown_and_stops_every_session(provider: str,
                                                                                      tmp_path: Path) -> None:
    """Three open conversations, then SIGTERM: each browser sees `error: shutdown` then `ended: shutdown`, the
    process exits 0, and every avatar session was stopped (read from the simulator's ledger after the exit: the
    simulators run in this process, so the relay's exit cannot hide what it left running)."""
    async with trio.open_nursery() as outer:
        sims: SimulatorURLs = await outer.start(serve_simulators, "127.0.0.1")
        env = relay_env(sims, tmp_path, provider)
        env.update(RELAY_STOP_TIMEOUT="3", RELAY_DRAIN_TIMEOUT="5", RELAY_PREDRAIN_DELAY="0")
        seen: list[list[dict[str, Any]]] = [[] for _ in range(3)]
        async with httpx2.AsyncClient(timeout=5.0) as http:
            async with relay_process(env, tmp_path) as (process, url):
                with trio.fail_after(30):  # hang guard: the drain is bounded by RELAY_DRAIN_TIMEOUT and the grace
                    async with trio.open_nursery() as nursery:
                        for messages in seen:
                            await nursery.start(hold_conversation, url, messages)
                        assert session_counts(await ledger_of(http, sims, provider)) == (3, 0)
                        process.send_signal(signal.SIGTERM)
                        assert await process.wait() == 0
            ledger = await ledger_of(http, sims, provider)
        for messages in seen:
            kinds = [(m["type"], m.get("code") or m.get("reason")) for m in messages if m["type"] in ("error",
                                                                                                      "ended")]
            assert kinds == [("error", "shutdown"), ("ended", "shutdown")], messages
        assert session_counts(ledger) == (3, 3), f"sessions left running after the exit; requests {ledger['requests']}"
        outer.cancel_scope.cancel()


async def _open_conversations(url: str, count: int, nursery: trio.Nursery) -> None:
    for _ in range(count):
        await nursery.start(hold_conversation, url, [])


@asynccontextmanager
async def crashed_relay(tmp_path: Path) -> AsyncIterator[tuple[SimulatorURLs, dict[str, str], httpx2.AsyncClient]]:
    """Simulators in this process, a relay process on them with two conversations open, then kill -9."""
    async with trio.open_nursery() as outer:
        sims: SimulatorURLs = await outer.start(serve_simulators, "127.0.0.1")
        env = heygen_relay_env(sims, tmp_path)
        async with httpx2.AsyncClient(timeout=5.0) as http:
            async with relay_process(env, tmp_path) as (process, url):
                with trio.fail_after(10):
                    async with trio.open_nursery() as nursery:
                        await _open_conversations(url, 2, nursery)
                        process.kill()  # SIGKILL: no cleanup at all
                        await process.wait()
            ledger = (await http.get(sims.heygen + "/_sim/ledger")).json()
            assert session_counts(ledger) == (2, 0), "both sessions run on after the crash"
            yield sims, env, http
        outer.cancel_scope.cancel()


async def eventually(check: Callable[[], Awaitable[bool]], seconds: float, describe: Callable[[], str]) -> None:
    """Poll `check` until it is true; fail with `describe()` if it is not within `seconds` (a hang guard)."""
    with trio.move_on_after(seconds):
        while not await check():
            await trio.sleep(0.02)
        return
    raise AssertionError(f"not true within {seconds} s: {check.__name__}: {describe()}")


def journal_rows(state: Path) -> list[tuple[str, int]]:
    """(session id, owner pid) of every row of the session journal in `state` (none while the file does not
    exist yet); read-only, next to the relay process writing it."""
    path = state / JOURNAL_FILE
    if not path.exists():
        return []
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5.0)
    try:
        return [(str(sid), int(pid)) for sid, pid in db.execute("SELECT session_id, pid FROM sessions")]
    except sqlite3.OperationalError:  # the table is created just after the file
        return []
    finally:
        db.close()


async def _wait_stopped(http: httpx2.AsyncClient, sims: SimulatorURLs) -> dict[str, Any]:
    with trio.fail_after(10):
        while True:
            ledger: dict[str, Any] = (await http.get(sims.heygen + "/_sim/ledger")).json()
            if session_counts(ledger) == (2, 2):
                return ledger
            await trio.sleep(0.05)


@pytest.mark.timeout(60)
async def test_after_kill_9_the_next_start_stops_the_sessions_the_dead_relay_left(tmp_path: Path) -> None:
    async with crashed_relay(tmp_path) as (sims, env, http):
        async with relay_process(env, tmp_path):
            ledger = await _wait_stopped(http, sims)
        assert ledger["totals"]["created"] == 2  # the new relay stopped them; it created nothing


@pytest.mark.timeout(90)
async def test_reap_lists_with_dry_run_then_stops_the_orphans(tmp_path: Path) -> None:
    async with crashed_relay(tmp_path) as (sims, env, http):
        dry = await trio.run_process([sys.executable, "-m", "relay", "reap", "--dry-run"], env=env, cwd=tmp_path,
                                     capture_stdout=True)
        listed = dry.stdout.decode().split("\n")
        assert sum(1 for line in listed if line.startswith("heygen ") and "(journal)" in line) == 2, listed
        assert session_counts((await http.get(sims.heygen + "/_sim/ledger")).json()) == (2, 0)
        done = await trio.run_process([sys.executable, "-m", "relay", "reap"], env=env, cwd=tmp_path,
                                      capture_stdout=True)
        assert "stopped 2, failed 0" in done.stdout.decode()
        await _wait_stopped(http, sims)
        again = await trio.run_process([sys.executable, "-m", "relay", "reap", "--dry-run"], env=env, cwd=tmp_path,
                                       capture_stdout=True)
        assert "no orphaned sessions" in again.stdout.decode()


@pytest.mark.timeout(60)
async def test_a_session_killed_while_starting_is_journaled_and_reaped(tmp_path: Path) -> None:
    """kill -9 after `streaming.new` answered but before `streaming.start` did: the session already bills, so it
    must already be in the journal, and the next start stops it."""
    async with trio.open_nursery() as outer:
        sims: SimulatorURLs = await outer.start(serve_simulators, "127.0.0.1")
        env = heygen_relay_env(sims, tmp_path)
        async with httpx2.AsyncClient(timeout=5.0) as http:
            await http.post(sims.heygen + "/_sim/faults", json={"latency_ms": {"streaming.start": 20000}})
            async with relay_process(env, tmp_path) as (process, url):
                async with open_websocket_url(url.replace("http", "ws") + "/ws") as ws:
                    await ws.send_message('{"type":"start"}')
                    with trio.fail_after(10):
                        while not (sessions := (await ledger_of(http, sims, "heygen"))["sessions"]):
                            await trio.sleep(0.02)
                    (session_id,) = sessions

                    async def journaled() -> bool:  # the row is written alongside `streaming.start`
                        return session_id in dict(journal_rows(tmp_path / "state"))

                    await eventually(journaled, 10, lambda: f"journal {journal_rows(tmp_path / 'state')}")
                    ledger = await ledger_of(http, sims, "heygen")
                    assert ledger["requests"].get("streaming.start") == 1 and session_counts(ledger) == (1, 0), \
                        f"streaming.start is still in flight (20 s): {ledger['requests']}"
                    process.kill()
                    await process.wait()
            assert session_counts((await http.get(sims.heygen + "/_sim/ledger")).json()) == (1, 0)
            await http.post(sims.heygen + "/_sim/faults", json={})
            async with relay_process(env, tmp_path):
                with trio.fail_after(10):
                    while session_counts((await http.get(sims.heygen + "/_sim/ledger")).json()) != (1, 1):
                        await trio.sleep(0.05)
        outer.cancel_scope.cancel()


@pytest.mark.timeout(60)
async def test_a_session_whose_stop_failed_stays_journaled_and_is_stopped_by_the_next_sweep(tmp_path: Path) -> None:
    """HeyGen refuses every stop (500) while a conversation ends: the session may still bill, so the journal keeps
    it; once HeyGen answers again, the running relay's periodic sweep stops it."""
    async with trio.open_nursery() as outer:
        sims: SimulatorURLs = await outer.start(serve_simulators, "127.0.0.1")
        env = heygen_relay_env(sims, tmp_path)
        env.update(RELAY_STOP_TIMEOUT="1", RELAY_REAP_INTERVAL="0.5")
        async with httpx2.AsyncClient(timeout=5.0) as http:
            await http.post(sims.heygen + "/_sim/faults", json={"fail": {"streaming.stop": {"status": 500}}})
            async with relay_process(env, tmp_path) as (_, url):
                with trio.fail_after(15):
                    async with open_websocket_url(url.replace("http", "ws") + "/ws") as ws:
                        await BrowserClient(ws).start()
                        await ws.send_message('{"type":"stop"}')
                        while '"ended"' not in str(await ws.get_message()):
                            pass
                ledger = (await http.get(sims.heygen + "/_sim/ledger")).json()
                assert session_counts(ledger) == (1, 0), "HeyGen refused every stop: the session still runs"
                stops_before = ledger["requests"]["streaming.stop"]
                assert stops_before >= 1
                (session_id,) = ledger["sessions"]

                async def a_sweep_failed_and_kept_the_row() -> bool:
                    """A sweep claimed the row (owner: the relay), its stop was refused too (one more stop request
                    than the conversation's own), and it gave the row back to nobody (pid 0)."""
                    stops = (await ledger_of(http, sims, "heygen"))["requests"]["streaming.stop"]
                    return stops > stops_before and journal_rows(tmp_path / "state") == [(session_id, 0)]

                await eventually(a_sweep_failed_and_kept_the_row, 15,
                                 lambda: f"journal {journal_rows(tmp_path / 'state')}, stops before {stops_before}")
                assert session_counts(await ledger_of(http, sims, "heygen")) == (1, 0)
                await http.post(sims.heygen + "/_sim/faults", json={"fail": {"streaming.stop": None}})
                with trio.fail_after(10):
                    while session_counts((await http.get(sims.heygen + "/_sim/ledger")).json())[1] < 1:
                        await trio.sleep(0.1)
        outer.cancel_scope.cancel()
