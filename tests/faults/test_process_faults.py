"""The relay as a real process: SIGTERM with conversations open (demo mode), kill -9 with conversations open (the
next start reaps what the dead process left running), and `avatar-relay reap`."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx2
import trio
from trio_websocket import open_websocket_url

from relay.sim.runner import SimulatorURLs, serve_simulators
from tests.e2e.harness import BrowserClient, session_counts

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def base_env(**values: str) -> dict[str, str]:
    """A clean environment: no keys from the developer's shell, only what the test says."""
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "VIRTUAL_ENV", "TMPDIR")}
    env.update({"RELAY_LOG_LEVEL": "WARNING", "PYTHONPATH": str(ROOT)}, **values)
    return env


@asynccontextmanager
async def relay_process(env: dict[str, str], cwd: Path) -> AsyncIterator[tuple[trio.Process, str]]:
    port = free_port()
    process = await trio.lowlevel.open_process([sys.executable, "-m", "relay", "serve", "--port", str(port)],
                                               env=env, cwd=cwd, stdout=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        async with httpx2.AsyncClient(timeout=1.0) as http:
            with trio.fail_after(15):
                while True:
                    try:
                        if (await http.get(url + "/healthz")).status_code == 200:
                            break
                    except httpx2.TransportError:
                        pass
                    assert process.poll() is None, "the relay exited at start-up"
                    await trio.sleep(0.05)
        yield process, url
    finally:
        if process.poll() is None:
            process.kill()
        with trio.move_on_after(5):
            await process.wait()


async def hold_conversation(url: str, seen: list[dict[str, Any]], *,
                            task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """One browser: start, report ready, then record everything until the socket closes."""
    async with open_websocket_url(url.replace("http", "ws") + "/ws", message_queue_size=1000) as ws:
        browser = BrowserClient(ws)
        await browser.start()
        task_status.started()
        try:
            while True:
                seen.append(await browser.next_message())
        except Exception:  # the socket closed (or the process died): what was seen is the result
            return


async def test_sigterm_ends_every_conversation_with_shutdown_and_stops_every_session(tmp_path: Path) -> None:
    env = base_env(RELAY_STOP_TIMEOUT="3", RELAY_DRAIN_TIMEOUT="5", RELAY_PREDRAIN_DELAY="0")
    async with relay_process(env, tmp_path) as (process, url), httpx2.AsyncClient(timeout=2.0) as http:
        sims = (await http.get(url + "/_demo/simulators")).json()
        seen: list[list[dict[str, Any]]] = [[] for _ in range(3)]
        ledgers: list[dict[str, Any]] = []

        async def watch_ledger() -> None:  # the simulators die with the relay: keep the last ledger seen
            while True:
                try:
                    ledgers.append((await http.get(sims["liveavatar"] + "/_sim/ledger")).json())
                except httpx2.HTTPError:
                    return
                await trio.sleep(0.01)

        with trio.fail_after(20):
            async with trio.open_nursery() as nursery:
                for messages in seen:
                    await nursery.start(hold_conversation, url, messages)
                nursery.start_soon(watch_ledger)
                signalled = time.monotonic()
                process.send_signal(signal.SIGTERM)
                assert await process.wait() == 0
                exited = time.monotonic() - signalled
        for messages in seen:
            kinds = [(m["type"], m.get("code") or m.get("reason")) for m in messages if m["type"] in ("error",
                                                                                                      "ended")]
            assert kinds == [("error", "shutdown"), ("ended", "shutdown")], messages
        created, stopped = session_counts(ledgers[-1])
        assert created == stopped == 3
        print(f"SIGTERM: exited {exited:.2f} s after the signal")
        assert exited < 8.0  # stop timeout + hypercorn's grace, with room


async def _open_conversations(url: str, count: int, nursery: trio.Nursery) -> None:
    for _ in range(count):
        await nursery.start(hold_conversation, url, [])


def heygen_relay_env(sims: SimulatorURLs, tmp_path: Path) -> dict[str, str]:
    """A relay on the simulators in this process, HeyGen avatar, journal in `tmp_path`/state."""
    return base_env(ELEVENLABS_BASE_URL=sims.elevenlabs, ELEVENLABS_AGENT_ID="agent_crash",
                    ELEVENLABS_API_KEY="xi-crash", HEYGEN_BASE_URL=sims.heygen, HEYGEN_API_KEY="hg-crash",
                    HEYGEN_AVATAR_ID="Wayne_20240711", RELAY_AVATAR="heygen", RELAY_AUTH="off",
                    RELAY_STATE_DIR=str(tmp_path / "state"))


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


async def _wait_stopped(http: httpx2.AsyncClient, sims: SimulatorURLs) -> dict[str, Any]:
    with trio.fail_after(10):
        while True:
            ledger: dict[str, Any] = (await http.get(sims.heygen + "/_sim/ledger")).json()
            if session_counts(ledger) == (2, 2):
                return ledger
            await trio.sleep(0.05)


async def test_after_kill_9_the_next_start_stops_the_sessions_the_dead_relay_left(tmp_path: Path) -> None:
    async with crashed_relay(tmp_path) as (sims, env, http):
        async with relay_process(env, tmp_path):
            ledger = await _wait_stopped(http, sims)
        assert ledger["totals"]["created"] == 2  # the new relay stopped them; it created nothing


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
                        while session_counts((await http.get(sims.heygen + "/_sim/ledger")).json())[0] == 0:
                            await trio.sleep(0.02)
                    await trio.sleep(0.3)  # streaming.start is still in flight (20 s)
                    process.kill()
                    await process.wait()
            assert session_counts((await http.get(sims.heygen + "/_sim/ledger")).json()) == (1, 0)
            await http.post(sims.heygen + "/_sim/faults", json={})
            async with relay_process(env, tmp_path):
                with trio.fail_after(10):
                    while session_counts((await http.get(sims.heygen + "/_sim/ledger")).json()) != (1, 1):
                        await trio.sleep(0.05)
        outer.cancel_scope.cancel()


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
                assert ledger["requests"]["streaming.stop"] >= 1
                await trio.sleep(1.5)  # sweeps meanwhile fail too, and keep the row
                await http.post(sims.heygen + "/_sim/faults", json={"fail": {"streaming.stop": None}})
                with trio.fail_after(10):
                    while session_counts((await http.get(sims.heygen + "/_sim/ledger")).json())[1] < 1:
                        await trio.sleep(0.1)
        outer.cancel_scope.cancel()
