"""Real relay processes for the process tests: a free loopback port, and a relay started as a separate process
(`avatar-relay serve`, or hypercorn's own command line) that the test can kill, signal or let drain.

One helper for every way the tests start and end a relay, so each test says only what differs: which command, which
endpoint says it is up, whether it gets its own process group (to kill the whole group, workers and all), and how it
is ended if the test has not ended it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import IO, Literal

import httpx2
import trio


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def _answers(process: trio.Process, url: str, timeout: float) -> bool:
    """Whether `process` answers 200 at `url` within `timeout` seconds (False as soon as it has exited; fails the
    test if it is still running but silent)."""
    async with httpx2.AsyncClient(timeout=1.0) as http:
        with trio.fail_after(timeout):
            while True:
                try:
                    if (await http.get(url)).status_code == 200:
                        return True
                except httpx2.TransportError:
                    pass
                if process.poll() is not None:
                    return False
                await trio.sleep(0.05)


def serve_command(port: int) -> list[str]:
    """`avatar-relay serve` on `port`."""
    return [sys.executable, "-m", "relay", "serve", "--port", str(port)]


def hypercorn_command(port: int) -> list[str]:
    """The relay under hypercorn's own command line on `port`."""
    return [sys.executable, "-m", "hypercorn", "-k", "trio", "-b", f"127.0.0.1:{port}", "relay.web:app"]


@asynccontextmanager
async def relay_process(env: dict[str, str], cwd: Path, *, command: Callable[[int], list[str]] = serve_command,
                        up_path: str = "/healthz", start_timeout: float = 30.0, own_group: bool = False,
                        end: Literal["kill", "term"] = "kill",
                        stderr: IO[str] | None = None) -> AsyncIterator[tuple[trio.Process, str]]:
    """Start `command(port)` and wait (at most `start_timeout` s) until `up_path` answers 200; yields the process and
    its base URL (`stderr`: a file for its stderr, else the test's own). `own_group`: a new session, so the test
    can kill the whole group. On the way out, a process still
    running is killed (`end="kill"`: SIGKILL, to the group with `own_group`) or asked to drain (`"term"`: SIGTERM,
    10 s, then SIGKILL). A relay that exits at start-up is started again on another port, twice at most: the port was
    free when `free_port` looked, but another process's outgoing connection can take it before the relay binds it
    (`cannot listen on ...: Address already in use`, seen once in a full run); a relay that cannot start fails all
    three."""
    process: trio.Process | None = None
    try:
        for attempt in range(3):  # (an earlier attempt's process has exited: nothing to end)
            port = free_port()
            process = await trio.lowlevel.open_process(command(port), env=env, cwd=cwd, stdout=subprocess.DEVNULL,
                                                       stderr=stderr, start_new_session=own_group)
            url = f"http://127.0.0.1:{port}"
            if await _answers(process, url + up_path, start_timeout) or attempt == 2:
                break
        assert process is not None and process.poll() is None, "the relay exited at start-up"
        yield process, url
    finally:
        if process is not None:
            if process.poll() is None and end == "term":
                process.send_signal(signal.SIGTERM)
                with trio.move_on_after(10):
                    await process.wait()
            if process.poll() is None:
                if own_group:
                    os.killpg(process.pid, signal.SIGKILL)
                else:
                    process.kill()
            with trio.move_on_after(5):
                await process.wait()


@asynccontextmanager
async def sim_process(cwd: Path, *args: str, start_timeout: float = 30.0) -> AsyncIterator[dict[str, str]]:
    """`avatar-relay sim ARGS` as a separate process, as a user runs it; yields each simulator's base URL by name
    ("elevenlabs", "liveavatar", ...: the `<NAME>_BASE_URL=` lines it prints, waited for at most `start_timeout`
    s). SIGTERM on the way out (then SIGKILL after 10 s)."""
    from relay.providers.table import SIMULATOR_APPS

    process = await trio.lowlevel.open_process([sys.executable, "-m", "relay", "sim", *args], cwd=cwd,
                                               stdout=subprocess.PIPE, stderr=None)
    assert process.stdout is not None
    urls: dict[str, str] = {}
    try:
        printed = b""
        with trio.fail_after(start_timeout):
            while len(urls) < len(SIMULATOR_APPS):
                data = await process.stdout.receive_some()
                assert data, f"avatar-relay sim exited at start-up (printed {printed!r})"
                printed += data
                *lines, rest = printed.split(b"\n")
                for line in lines:
                    variable, _, url = line.decode().strip().partition("=")
                    urls[variable.removesuffix("_BASE_URL").lower()] = url
                printed = rest
        yield urls
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            with trio.move_on_after(10):
                await process.wait()
        if process.poll() is None:
            process.kill()
            with trio.move_on_after(5):
                await process.wait()
