"""Serve simulators on loopback with hypercorn's trio worker: in-process for demo mode, or standalone
(`avatar-relay sim`). Knows nothing of the relay: which simulators to serve is its caller's (the provider table's)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import trio
from hypercorn.config import Config
from hypercorn.trio import serve

from relay.sim import elevenlabs_sim

AGENT = "elevenlabs"  # the agent's simulator; every other one is an avatar provider's


class SimulatorURLs(dict[str, str]):
    """Each simulator's base URL by name ("elevenlabs", and each provider's); also as attributes (`urls.heygen`)."""

    def __getattr__(self, name: str) -> str:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


def _config(host: str, port: int) -> Config:
    config = Config()
    config.bind = [f"{host}:{port}"]
    config.accesslog = None
    config.errorlog = None
    config.graceful_timeout = 1.0
    config.websocket_max_message_size = 16 * 2**20
    return config


async def serve_simulators(apps: Mapping[str, Callable[..., Any]], host: str = "127.0.0.1",
                           ports: dict[str, int] | None = None, *, faults: dict[str, dict[str, Any]] | None = None,
                           demo: bool = False,
                           task_status: trio.TaskStatus[SimulatorURLs] = trio.TASK_STATUS_IGNORED) -> None:
    """Serve the simulators `apps` (name -> `create_app`; the relay's provider table says which: see
    `relay.providers.table.serve_simulators`) on `host` (port 0 = any free port) until cancelled; reports their base
    URLs once listening. `faults` (by avatar simulator name: the agent's take theirs by `POST /_sim/faults`) are in
    force from the first request. `demo`: the demo page's agent (`elevenlabs_sim.DEMO_FAULTS`: a brief wait in the
    agent's queue)."""
    ports = ports or {}
    faults = faults or {}
    startup_faults = set(apps) - {AGENT}
    unknown = set(faults) - startup_faults
    if unknown:
        raise ValueError(f"start-up faults are for {', '.join(sorted(startup_faults))}, not "
                         f"{', '.join(sorted(unknown))} (use its POST /_sim/faults)")
    urls: dict[str, str] = {}
    if demo:
        faults = {**faults, AGENT: {**elevenlabs_sim.DEMO_FAULTS, **faults.get(AGENT, {})}}
    async with trio.open_nursery() as nursery:
        for name, create_app in apps.items():
            app = create_app(start_faults=faults[name]) if name in faults else create_app()
            binds = await nursery.start(serve, app, _config(host, ports.get(name, 0)))
            urls[name] = binds[0]
        task_status.started(SimulatorURLs(urls))
