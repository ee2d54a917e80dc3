"""Fixtures shared by more than one test directory. Shared helpers that are not fixtures (the e2e relay harness, the
conversation fakes, the simulators' control client, frame builders) live in tests/support/; fixtures only one
directory needs stay in that directory (the browser tests' Chromium and relay processes: tests/browser/conftest.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import httpx2
import pytest

from tests.support.redis import RedisServer


@pytest.fixture
async def http() -> AsyncIterator[httpx2.AsyncClient]:
    """A plain httpx2 client for a test's own calls to the simulators (their ledgers and fault controls)."""
    async with httpx2.AsyncClient() as client:
        yield client


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """A real redis-server on a free loopback port, killed after the test."""
    server = RedisServer()
    server.start()
    try:
        yield server
    finally:
        server.close()
