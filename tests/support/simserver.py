"""One avatar simulator served on loopback for a provider's own tests (tests/e2e/test_<provider>_provider.py), with
what those tests share: its control endpoints, settings without a `.env`, and the test signals they send."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from functools import partial
from typing import Any

import httpx2
import numpy as np
import pytest
import trio
from hypercorn.config import Config
from hypercorn.trio import serve

from relay.avatars import AvatarUnavailable
from relay.config import Settings
from tests.support.harness import poll_ledger


@asynccontextmanager
async def served(nursery: trio.Nursery, app: Any) -> AsyncIterator[str]:
    """Serve `app` (a simulator's ASGI app) with hypercorn's trio worker on a free loopback port in `nursery`; yields
    its base URL; shuts it down when the block exits."""
    config = Config()
    config.bind = ["127.0.0.1:0"]
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.test")
    shutdown = trio.Event()
    urls = await nursery.start(partial(serve, app, config, shutdown_trigger=shutdown.wait))
    try:
        yield urls[0]
    finally:
        shutdown.set()


def settings(**values: Any) -> Settings:
    """Settings from `values` alone (no `.env`, no environment file)."""
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


async def faults(http: httpx2.AsyncClient, base: str, **update: Any) -> None:
    (await http.post(f"{base}/_sim/faults", json=update)).raise_for_status()


async def ledger(http: httpx2.AsyncClient, base: str) -> dict[str, Any]:
    response = await http.get(f"{base}/_sim/ledger")
    response.raise_for_status()
    return response.json()  # type: ignore[no-any-return]


def sine_wave(seconds: float, rate: int, freq: float = 440.0) -> np.ndarray:
    """The ideal sine, amplitude 12000, as floats."""
    t = np.arange(int(seconds * rate)) / rate
    return np.sin(2 * np.pi * freq * t) * 12000  # type: ignore[no-any-return]


def chunks_of(data: bytes, sizes: list[int]) -> list[bytes]:
    """`data` cut into chunks of the given sizes, in turn (the last one may be shorter)."""
    out, start, i = [], 0, 0
    while start < len(data):
        size = sizes[i % len(sizes)]
        out.append(data[start:start + size])
        start += size
        i += 1
    return out


async def cancel_while_slow(http: httpx2.AsyncClient, base: str, endpoint: str,
                            open_session: Callable[[], AbstractAsyncContextManager[Any]]) -> bool:
    """Open a session (`open_session()`) with the simulator's `endpoint` answering 1 s late, and cancel the caller
    while that request is in flight (the simulator has counted it). Returns whether the session's body was entered
    (it must not be); the test then reads the ledger: the session must still be stopped."""
    await faults(http, base, latency_ms={endpoint: 1000})
    entered = False

    async def open_it() -> None:
        nonlocal entered
        async with open_session():
            entered = True

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(open_it)
            await poll_ledger(lambda: ledger(http, base), lambda state: state["requests"].get(endpoint) == 1,
                              f"the {endpoint} request")
            nursery.cancel_scope.cancel()
    return entered


async def refusal(http: httpx2.AsyncClient, base: str,
                  open_session: Callable[[], AbstractAsyncContextManager[Any]]) -> AvatarUnavailable:
    """Open a session that must be refused (`open_session()`): its body never runs, and the simulator has nothing
    left running afterwards. Returns the refusal (`AvatarUnavailable`), for the test to check its reason."""
    with trio.fail_after(10), pytest.raises(AvatarUnavailable) as caught:
        async with open_session():
            pytest.fail("the body must not run")
    assert (await ledger(http, base))["active"] == 0
    return caught.value
