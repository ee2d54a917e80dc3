"""Serve the simulators on loopback with hypercorn's trio worker: in-process for demo mode, or standalone
(`avatar-relay sim`). Knows nothing of the relay; only which simulator apps exist."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import trio
from hypercorn.config import Config
from hypercorn.trio import serve

from relay.sim import elevenlabs_sim, heygen_sim, liveavatar_sim, simli_sim

SIMULATORS: dict[str, Callable[..., Any]] = {
    "elevenlabs": elevenlabs_sim.create_app,
    "heygen": heygen_sim.create_app,
    "liveavatar": liveavatar_sim.create_app,
    "simli": simli_sim.create_app,
}
# The simulators whose faults can be set at start (`avatar-relay sim --faults NAME=JSON`); every simulator also takes
# them at any time through `POST /_sim/faults`.
STARTUP_FAULTS = frozenset({"heygen", "liveavatar", "simli"})


@dataclass(frozen=True)
class SimulatorURLs:
    elevenlabs: str
    heygen: str
    liveavatar: str
    simli: str


def _config(host: str, port: int) -> Config:
    config = Config()
    config.bind = [f"{host}:{port}"]
    config.accesslog = None
    config.errorlog = None
    config.graceful_timeout = 1.0
    config.websocket_max_message_size = 16 * 2**20
    return config


async def serve_simulators(host: str = "127.0.0.1", ports: dict[str, int] | None = None, *,
                           faults: dict[str, dict[str, Any]] | None = None, demo: bool = False,
                           task_status: trio.TaskStatus[SimulatorURLs] = trio.TASK_STATUS_IGNORED) -> None:
    """Serve every simulator (port 0 = any free port) until cancelled; reports their base URLs once listening.
    `faults` (by simulator name, only those in STARTUP_FAULTS) are in force from the first request. `demo`: the
    demo page's agent (`elevenlabs_sim.DEMO_FAULTS`: a brief wait in the agent's queue)."""
    ports = ports or {}
    faults = faults or {}
    unknown = set(faults) - STARTUP_FAULTS
    if unknown:
        raise ValueError(f"start-up faults are for {', '.join(sorted(STARTUP_FAULTS))}, not "
                         f"{', '.join(sorted(unknown))} (use its POST /_sim/faults)")
    urls: dict[str, str] = {}
    if demo:
        faults = {**faults, "elevenlabs": {**elevenlabs_sim.DEMO_FAULTS, **faults.get("elevenlabs", {})}}
    async with trio.open_nursery() as nursery:
        for name, create_app in SIMULATORS.items():
            app = create_app(start_faults=faults[name]) if name in faults else create_app()
            binds = await nursery.start(serve, app, _config(host, ports.get(name, 0)))
            urls[name] = binds[0]
        task_status.started(SimulatorURLs(**urls))
