"""The relay under hypercorn's own command line — `hypercorn -k trio -b 127.0.0.1:PORT relay.web:app`, the real
executable, which runs the app in a worker process under hypercorn's parent — with the simulators in this process
(their ledgers outlive every relay process): SIGTERM tells every browser and stops every session; a worker that
gets the signal itself is not ready and refuses new conversations while it drains; kill -9 of the hypercorn process
leaves no worker serving, so a restart binds the port and no session is left running."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx2
import orjson
import pytest
import trio
from trio_websocket import ConnectionClosed, open_websocket_url

from relay.providers.table import serve_simulators
from relay.sim.runner import SimulatorURLs
from tests.faults.test_process_faults import ledger_of, relay_env
from tests.support.harness import hold_and_record, poll_ledger, session_counts
from tests.support.processes import free_port

HYPERCORN = str(Path(sys.executable).parent / "hypercorn")


def children(pid: int) -> list[int]:
    """The child processes of `pid` (Linux /proc)."""
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except FileNotFoundError:
        return []


def workers(pid: int) -> list[int]:
    """hypercorn's worker processes under `pid` (multiprocessing's spawned children; not its resource tracker)."""
    found = []
    for child in children(pid):
        try:
            if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes():
                found.append(child)
        except FileNotFoundError:
            pass
    return found


def alive(pid: int) -> bool:
    """True while `pid` exists and is not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state != "Z"


async def wait_healthy(url: str, process: trio.Process, seconds: float = 60) -> None:
    async with httpx2.AsyncClient(timeout=1.0) as http:
        with trio.fail_after(seconds):  # hang guard: start-up of hypercorn and of its worker
            while True:
                try:
                    if (await http.get(url + "/healthz")).status_code == 200:
                        return
                except httpx2.TransportError:
                    pass
                assert process.poll() is None, "hypercorn exited at start-up"
                await trio.sleep(0.05)


@asynccontextmanager
async def hypercorn(env: dict[str, str], cwd: Path, port: int, *options: str) -> AsyncIterator[trio.Process]:
    """`hypercorn -k trio -b 127.0.0.1:PORT [options] relay.web:app`, serving; killed (with its workers, which
    this test started through it) if still running at the end."""
    process = await trio.lowlevel.open_process(
        [HYPERCORN, "-k", "trio", "-b", f"127.0.0.1:{port}", *options, "relay.web:app"], env=env, cwd=cwd,
        stdout=subprocess.DEVNULL)
    started: list[int] = []
    try:
        await wait_healthy(f"http://127.0.0.1:{port}", process)
        started = children(process.pid)
        yield process
    finally:
        for pid in [*started, *children(process.pid)]:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
        if process.poll() is None:
            process.kill()
        with trio.move_on_after(5):
            await process.wait()




def endings(messages: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(m["type"], m.get("code") or m.get("reason")) for m in messages if m["type"] in ("error", "ended")]


@pytest.mark.timeout(150)
@pytest.mark.parametrize("options", [(), ("--graceful-timeout", "60"), ("-w", "2"), ("-w", "0")],
                         ids=["defaults", "graceful-timeout-60", "two-workers", "in-process"])
async def test_sigterm_to_hypercorn_tells_every_browser_and_stops_every_session(
        options: tuple[str, ...], tmp_path: Path) -> None:
    """Four conversations open, SIGTERM to the hypercorn process: every browser gets `error` `shutdown`,
    `ended` `shutdown` and close 1001, hypercorn exits 0, and every avatar session is stopped (the ledger). With
    `--graceful-timeout 60` the exit comes well before the grace period's end (hang guard 30 s): the app drains
    itself as soon as hypercorn's shutdown begins. With `-w 2` each worker drains its own. With `-w 0` (the app in
    hypercorn's own process: docs/deploy.md's setting for a start-up failure's exit status) the app drains on the
    signal itself and ends the process with status 0."""
    async with trio.open_nursery() as outer:
        sims: SimulatorURLs = await outer.start(serve_simulators, "127.0.0.1")
        env = relay_env(sims, tmp_path, "heygen")
        env.update(RELAY_STOP_TIMEOUT="3", RELAY_DRAIN_TIMEOUT="5")
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        seen: list[list[dict[str, Any]]] = [[] for _ in range(4)]
        closes: list[int | None] = []
        async with httpx2.AsyncClient(timeout=5.0) as http:
            async with hypercorn(env, tmp_path, port, *options) as process:
                with trio.fail_after(30):  # hang guard, below the 60 s grace period
                    async with trio.open_nursery() as browsers:
                        for messages in seen:
                            await browsers.start(hold_and_record, url.replace("http", "ws") + "/ws", messages, closes)
                        assert session_counts(await ledger_of(http, sims, "heygen")) == (4, 0)
                        process.send_signal(signal.SIGTERM)
                    assert await process.wait() == 0
            ledger = await poll_ledger(lambda: ledger_of(http, sims, "heygen"), lambda led: session_counts(led) ==
                                       (4, 4), "every session stopped")
        outer.cancel_scope.cancel()
    for messages in seen:
        assert endings(messages) == [("error", "shutdown"), ("ended", "shutdown")], messages
    assert closes == [1001] * 4
    assert session_counts(ledger) == (4, 4)


@pytest.mark.timeout(90)
async def test_a_worker_signalled_itself_is_not_ready_and_refuses_new_conversations_while_it_drains(
        tmp_path: Path) -> None:
    """SIGTERM to hypercorn's worker process itself (what systemd's default KillMode does alongside the parent's):
    `/readyz` answers 503 during RELAY_PREDRAIN_DELAY, a new conversation is refused with `error` `shutdown` (close
    1001), then the open one is told `shutdown` and its session stopped; the worker exits and hypercorn, not
    shutting down itself, starts a fresh one that is ready."""
    async with trio.open_nursery() as outer:
        sims: SimulatorURLs = await outer.start(serve_simulators, "127.0.0.1")
        env = relay_env(sims, tmp_path, "heygen")
        env.update(RELAY_STOP_TIMEOUT="3", RELAY_DRAIN_TIMEOUT="5", RELAY_PREDRAIN_DELAY="6")
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        seen: list[dict[str, Any]] = []
        closes: list[int | None] = []
        async with httpx2.AsyncClient(timeout=5.0) as http:
            async with hypercorn(env, tmp_path, port) as process:
                (worker,) = workers(process.pid)
                with trio.fail_after(40):  # hang guard
                    async with trio.open_nursery() as browsers:
                        await browsers.start(hold_and_record, url.replace("http", "ws") + "/ws", seen, closes)
                        os.kill(worker, signal.SIGTERM)
                        while (answer := await http.get(url + "/readyz")).status_code != 503:
                            await trio.sleep(0.02)
                        assert answer.json()["checks"]["accepting"] is False
                        async with open_websocket_url(url.replace("http", "ws") + "/ws") as ws:
                            await ws.send_message('{"type":"start"}')
                            refused: list[dict[str, Any]] = []
                            refused_close: int | None = None
                            try:
                                while True:
                                    refused.append(orjson.loads(await ws.get_message()))
                            except ConnectionClosed as exc:
                                refused_close = exc.reason.code
                        assert endings(seen) == [], "told before the pre-drain delay ended"
                    while alive(worker):
                        await trio.sleep(0.05)
                    while (await http.get(url + "/readyz")).status_code != 200:
                        await trio.sleep(0.05)
                    assert process.poll() is None and worker not in workers(process.pid)
            ledger = await poll_ledger(lambda: ledger_of(http, sims, "heygen"), lambda led: session_counts(led) ==
                                       (1, 1), "the session stopped")
        outer.cancel_scope.cancel()
    assert endings(refused) == [("error", "shutdown"), ("ended", "shutdown")], refused
    assert refused_close == 1001
    assert endings(seen) == [("error", "shutdown"), ("ended", "shutdown")], seen
    assert closes == [1001]
    assert session_counts(ledger) == (1, 1)


@pytest.mark.timeout(90)
async def test_after_kill_9_of_hypercorn_its_worker_drains_and_exits_and_a_restart_binds_the_port(
        tmp_path: Path) -> None:
    """Two conversations open, kill -9 of the hypercorn process (not its process group): the orphaned worker
    notices, tells both browsers `shutdown`, stops both sessions and exits; a new hypercorn on the same port
    starts serving."""
    async with trio.open_nursery() as outer:
        sims: SimulatorURLs = await outer.start(serve_simulators, "127.0.0.1")
        env = relay_env(sims, tmp_path, "heygen")
        env.update(RELAY_STOP_TIMEOUT="3", RELAY_DRAIN_TIMEOUT="5")
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        seen: list[list[dict[str, Any]]] = [[], []]
        closes: list[int | None] = []
        async with httpx2.AsyncClient(timeout=5.0) as http:
            async with hypercorn(env, tmp_path, port) as process:
                (worker,) = workers(process.pid)
                with trio.fail_after(20):  # hang guard: "within a few seconds"
                    async with trio.open_nursery() as browsers:
                        for messages in seen:
                            await browsers.start(hold_and_record, url.replace("http", "ws") + "/ws", messages, closes)
                        assert session_counts(await ledger_of(http, sims, "heygen")) == (2, 0)
                        process.kill()
                        await process.wait()
                    while alive(worker):
                        await trio.sleep(0.05)
                ledger = await poll_ledger(lambda: ledger_of(http, sims, "heygen"),
                                           lambda led: session_counts(led) == (2, 2), "both sessions stopped")
            async with hypercorn(env, tmp_path, port) as restarted:
                assert restarted.poll() is None
                assert (await http.get(url + "/readyz")).status_code == 200
        outer.cancel_scope.cancel()
    for messages in seen:
        assert endings(messages) == [("error", "shutdown"), ("ended", "shutdown")], messages
    assert closes == [1001, 1001]
    assert session_counts(ledger) == (2, 2)


@pytest.mark.timeout(90)
@pytest.mark.parametrize("options", [(), ("-w", "2")], ids=["one-worker", "two-workers"])
async def test_hypercorns_command_line_serves_ws_on_its_own_socket_too(options: tuple[str, ...],
                                                                       tmp_path: Path) -> None:
    """relay.server.direct_ws under `hypercorn -k trio relay.web:app` (the app is built in the worker at its
    lifespan start-up, before hypercorn takes its connection handler): a browser's deflate offer is declined, as
    only the direct socket does, and the conversation works; with RELAY_DIRECT_WEBSOCKET=false hypercorn accepts it."""
    from tests.support.wsframes import client_frame, open_raw_socket

    async with trio.open_nursery() as outer:
        sims: SimulatorURLs = await outer.start(serve_simulators, "127.0.0.1")
        for direct in (True, False):
            env = relay_env(sims, tmp_path, "heygen")
            env["RELAY_DIRECT_WEBSOCKET"] = str(direct).lower()
            port = free_port()
            async with hypercorn(env, tmp_path, port, *options):
                sock = await open_raw_socket(port, deflate=True)
                assert sock.status == 101
                assert ("permessage-deflate" in sock.headers.get("sec-websocket-extensions", "")) is not direct
                if direct:
                    await sock.stream.send_all(client_frame(b'{"type":"start"}'))
                    with trio.fail_after(20):
                        while (frame := await sock.receive_frame()) is not None:
                            if frame[0] == 0x1 and orjson.loads(frame[1])["type"] == "ready":
                                break
                        assert frame is not None, "the connection ended before ready"
                await sock.aclose()
        outer.cancel_scope.cancel()
