"""Relays for the proxy tests: the simulators in the test's process (so their ledgers outlive any relay), relay
processes on loopback ports with their own `RELAY_RESUME_ROUTE`, and the resume round trip every test here makes."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx2
import trio

from relay.sim.runner import SimulatorURLs
from tests.faults.test_process_faults import relay_env
from tests.support.processes import relay_process, serve_command
from tests.support.resumable import ResumingBrowser


@asynccontextmanager
async def relay(sims: SimulatorURLs, tmp_path: Path, route: str, *,
                command: Callable[[int], list[str]] = serve_command, **env: str) -> AsyncIterator[str]:
    """One relay process (LiveAvatar and the agent on `sims`) whose resume tokens name it `route`; yields its base
    URL once /healthz answers. Its stderr goes to `tmp_path`/<route>.log; it runs in its own process group, killed
    whole on the way out (hypercorn's workers with it)."""
    values = relay_env(sims, tmp_path / route, "liveavatar")
    values.update(RELAY_RESUME_ROUTE=route, RELAY_MAX_CONVERSATIONS_PER_CLIENT="1000",
                  RELAY_MAX_STARTS_PER_MINUTE="1000", **env)
    (tmp_path / route).mkdir(parents=True, exist_ok=True)
    with (tmp_path / f"{route}.log").open("w") as stderr:
        async with relay_process(values, tmp_path / route, command=command, stderr=stderr,
                                 start_timeout=60, own_group=True) as (_, url):
            yield url


def serve_workers(count: int) -> Callable[[int], list[str]]:
    """`avatar-relay serve --workers count` on a port."""
    return lambda port: [*serve_command(port), "--workers", str(count)]


async def wait_workers_up(url: str, count: int) -> None:
    """Until the merged /metrics of `serve --workers` says every one of `count` workers answers."""
    async with httpx2.AsyncClient(timeout=2.0) as http:
        with trio.fail_after(60):  # a hang guard: N Python processes importing on a busy machine
            while True:
                text = (await http.get(url + "/metrics")).text
                if all(f'avatar_relay_worker_up{{worker="{i}"}} 1.0' in text for i in range(count)):
                    return
                await trio.sleep(0.05)


def route_of(token: str) -> str:
    """The route a resume token names (its second dot-separated part: readable without the relay's secret)."""
    return token.split(".")[1]


async def start(url: str) -> tuple[ResumingBrowser, dict[str, Any]]:
    """A browser that started a conversation at `url` and had a reply to a typed message; its `ready`."""
    browser = ResumingBrowser(url)
    await browser.connect()
    await browser.send(type="start")
    ready = await browser.expect("ready")
    await browser.send(type="text", text="what are your opening hours?")
    await browser.expect("agent_response")
    return browser, ready


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1])
