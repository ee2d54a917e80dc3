"""A client for the control endpoints every simulator has (`GET /_sim/ledger` and `POST /_sim/faults`), and every
upstream's simulator served in the test's own process for tests that start relay processes (`simulators`)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx2
import trio

from relay.providers.table import serve_simulators
from relay.sim.runner import SimulatorURLs


@asynccontextmanager
async def simulators() -> AsyncIterator[tuple[SimulatorURLs, httpx2.AsyncClient]]:
    """Every upstream's simulator on loopback in this process, and an HTTP client for their ledgers; both shut down
    when the block exits."""
    async with trio.open_nursery() as nursery:
        sims: SimulatorURLs = await nursery.start(serve_simulators, "127.0.0.1")
        async with httpx2.AsyncClient(timeout=5.0) as http:
            yield sims, http
        nursery.cancel_scope.cancel()


class SimControl:
    """One simulator's base URL and its control endpoints."""

    def __init__(self, url: str, http: httpx2.AsyncClient) -> None:
        self.url = url
        self.http = http

    async def ledger(self) -> dict[str, Any]:
        response = await self.http.get(self.url + "/_sim/ledger")
        response.raise_for_status()
        return response.json()  # type: ignore[no-any-return]

    async def faults(self, **faults: Any) -> None:
        response = await self.http.post(self.url + "/_sim/faults", json=faults)
        response.raise_for_status()
