"""Serve the simulators on loopback with hypercorn's trio worker: in-process for demo mode, or standalone
(`avatar-relay sim`). Knows nothing of the relay; only which simulator apps exist."""

from __future__ import annotations

from dataclasses import dataclass

import trio
from hypercorn.config import Config
from hypercorn.trio import serve

from relay.sim import elevenlabs_sim, heygen_sim, liveavatar_sim

SIMULATORS = {
    "elevenlabs": elevenlabs_sim.create_app,
    "heygen": heygen_sim.create_app,
    "liveavatar": liveavatar_sim.create_app,
}


@dataclass(frozen=True)
class SimulatorURLs:
    elevenlabs: str
    heygen: str
    liveavatar: str


def _config(host: str, port: int) -> Config:
    config = Config()
    config.bind = [f"{host}:{port}"]
    config.accesslog = None
    config.errorlog = None
    config.graceful_timeout = 1.0
    config.websocket_max_message_size = 16 * 2**20
    return config


async def serve_simulators(host: str = "127.0.0.1", ports: dict[str, int] | None = None, *,
                           task_status: trio.TaskStatus[SimulatorURLs] = trio.TASK_STATUS_IGNORED) -> None:
    """Serve every simulator (port 0 = any free port) until cancelled; reports their base URLs once listening."""
    ports = ports or {}
    urls: dict[str, str] = {}
    async with trio.open_nursery() as nursery:
        for name, create_app in SIMULATORS.items():
            binds = await nursery.start(serve, create_app(), _config(host, ports.get(name, 0)))
            urls[name] = binds[0]
        task_status.started(SimulatorURLs(**urls))
