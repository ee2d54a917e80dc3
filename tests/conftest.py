"""Fixtures shared by more than one test directory. Shared helpers that are not fixtures (the e2e relay harness, the
conversation fakes, the simulators' control client, frame builders) live in tests/support/; fixtures only one
directory needs stay in that directory (the browser tests' Chromium and relay processes: tests/browser/conftest.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import httpx2
import pytest
from hypothesis import settings as hypothesis_settings

from tests.support.redis import RedisServer

# Hypothesis's per-example deadline (200 ms) measures the machine's load, not the code: a busy CI core made
# test_no_string_crashes_the_verifier fail with DeadlineExceeded. pytest-timeout still bounds every test.
hypothesis_settings.register_profile("relay", deadline=None)
hypothesis_settings.load_profile("relay")


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
