"""A client for the control endpoints every simulator has: `GET /_sim/ledger` and `POST /_sim/faults`."""

from __future__ import annotations

from typing import Any

import httpx2


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
