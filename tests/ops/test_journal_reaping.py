"""The journal and the reaper in milliseconds, without provider processes (the slow process test in
tests/faults/test_process_faults.py keeps the end-to-end path): a session whose stop failed stays journaled, a
reaper's failed stop gives the row back, reaping repeats every RELAY_REAP_INTERVAL (autojump clock, so the period is
asserted exactly), and a live process that reused a dead owner's pid does not keep its rows from being reaped.

`relay.providers.table.stop_by_id` is replaced by a fake that records the stops (and fails the first ones when asked);
the journal is a real SQLite file. For the clock tests the journal's worker-thread hop is replaced by a direct call,
so the autojump clock never jumps while a thread runs."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import pytest
import trio
import trio.testing

from relay.avatars import AvatarSession, AvatarUnavailable, OnAvatarEvent, OnSessionCreated, OnStopFailed
from relay.avatars.hooks import HookedProvider
from relay.ops.journal import Journal, journal_hooks, open_journal, process_start_marker
from relay.ops.reaper import reap_orphans, reap_periodically
from relay.providers import table as providers
from tests.support.fakes import make_settings

T = TypeVar("T")


class Stops:
    """The fake `providers.stop_by_id`: records (time, session id) of every attempt; the first `failures` fail."""

    def __init__(self, failures: int = 0) -> None:
        self.failures = failures
        self.attempts: list[tuple[float, str]] = []
        self.calls: list[tuple[Any, Any, str, str, str | None]] = []  # what stop_by_id was given
        self.changed = trio.Event()

    async def __call__(self, settings: Any, http: Any, name: str, session_id: str, base_url: str | None = None) -> None:
        self.attempts.append((trio.current_time(), session_id))
        self.calls.append((settings, http, name, session_id, base_url))
        self.changed.set()
        self.changed = trio.Event()
        if len(self.attempts) <= self.failures:
            raise AvatarUnavailable("upstream_error", "the provider is down")


@pytest.fixture
def stops(monkeypatch: pytest.MonkeyPatch) -> Stops:
    fake = Stops()
    monkeypatch.setattr(providers, "stop_by_id", fake)
    return fake


@pytest.fixture
def inline_journal(monkeypatch: pytest.MonkeyPatch) -> None:
    async def run_inline(self: Journal, fn: Callable[[], T]) -> T:
        await trio.lowlevel.checkpoint()
        return fn()

    monkeypatch.setattr(Journal, "_run", run_inline)


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        yield child
    finally:
        child.kill()
        child.wait()


async def journal_as(journal: Journal, pid: int, marker: str, session_id: str) -> int:
    """A row written as if by process (`pid`, `marker`)."""
    ours = journal._pid, journal._pid_started
    journal._pid, journal._pid_started = pid, marker
    try:
        return await journal.opened("liveavatar", session_id, "http://la.example")
    finally:
        journal._pid, journal._pid_started = ours


class StopFailingProvider:
    """Opens one session "s-1"; its stop fails (reported through `on_stop_failed`) when `stop_fails`."""

    name = "liveavatar"

    def __init__(self, stop_fails: bool) -> None:
        self.stop_fails = stop_fails

    @asynccontextmanager
    async def open_session(self, on_event: OnAvatarEvent, *, on_created: OnSessionCreated | None = None,
                           on_stop_failed: OnStopFailed | None = None) -> AsyncIterator[AvatarSession]:
        if on_created is not None:
            await on_created("s-1")
        try:
            yield None  # type: ignore[misc]  # the journal hooks never look at the session
        finally:
            if self.stop_fails and on_stop_failed is not None:
                await on_stop_failed("s-1")


@pytest.mark.parametrize("stop_fails", [False, True])
async def test_a_session_whose_stop_failed_stays_journaled_for_the_next_sweep(tmp_path: Path,
                                                                             stop_fails: bool) -> None:
    async with open_journal(tmp_path) as journal:
        provider = HookedProvider(StopFailingProvider(stop_fails), [journal_hooks(journal, "http://la.example")])
        async with provider.open_session(lambda event: None):
            [entry] = await journal.entries()
            assert entry.session_id == "s-1" and not entry.orphaned  # ours while it runs
        left = await journal.entries()
    if stop_fails:
        assert [(e.session_id, e.pid, e.orphaned) for e in left] == [("s-1", 0, True)]  # abandoned to any sweep
    else:
        assert left == []


async def test_a_reapers_failed_stop_gives_the_row_back_to_its_dead_owner(tmp_path: Path, stops: Stops,
                                                                         sleeper: subprocess.Popen[bytes]) -> None:
    stops.failures = 1
    async with open_journal(tmp_path) as journal:
        await journal_as(journal, sleeper.pid, "not-its-start-time", "s-dead")
        first = await reap_orphans(make_settings(), None, journal)  # type: ignore[arg-type]
        assert (first.stopped, first.failed) == ([], ["s-dead"])
        [entry] = await journal.entries()
        assert (entry.pid, entry.pid_started, entry.orphaned) == (sleeper.pid, "not-its-start-time", True)
        second = await reap_orphans(make_settings(), None, journal)  # type: ignore[arg-type]
        assert (second.stopped, second.failed) == (["s-dead"], [])
        assert await journal.entries() == []
    assert [sid for _, sid in stops.attempts] == ["s-dead", "s-dead"]


async def test_a_live_process_that_reused_a_dead_owners_pid_does_not_keep_its_sessions(
        tmp_path: Path, stops: Stops, sleeper: subprocess.Popen[bytes]) -> None:
    live_marker = process_start_marker(sleeper.pid)
    assert live_marker
    async with open_journal(tmp_path) as journal:
        await journal_as(journal, sleeper.pid, str(int(live_marker) - 1), "s-reused-pid")  # the pid's earlier owner
        await journal_as(journal, sleeper.pid, live_marker, "s-live-owner")
        await journal_as(journal, os.getpid(), "not-my-start-time", "s-my-pid-reused")
        orphaned = {e.session_id: e.orphaned for e in await journal.entries()}
        assert orphaned == {"s-reused-pid": True, "s-live-owner": False, "s-my-pid-reused": True}
        result = await reap_orphans(make_settings(), None, journal)  # type: ignore[arg-type]
        assert sorted(result.stopped) == ["s-my-pid-reused", "s-reused-pid"]
        assert [e.session_id for e in await journal.entries()] == ["s-live-owner"]


async def test_reaping_repeats_every_reap_interval_while_serving(
        tmp_path: Path, stops: Stops, inline_journal: None, sleeper: subprocess.Popen[bytes],
        autojump_clock: trio.testing.MockClock) -> None:
    stops.failures = 2
    async with open_journal(tmp_path) as journal, trio.open_nursery() as nursery:
        await journal_as(journal, sleeper.pid, "not-its-start-time", "s-dead")
        started = trio.current_time()
        nursery.start_soon(reap_periodically, make_settings(relay_reap_interval=30.0), None, journal)
        with trio.fail_after(1000):
            while len(stops.attempts) < 3:
                await stops.changed.wait()
        assert await journal.entries() == []
        nursery.cancel_scope.cancel()
    assert [round(t - started, 3) for t, _ in stops.attempts] == [0.0, 30.0, 60.0]


class StuckJournal:
    """A journal whose disk never answers (a hung NFS mount, a full disk stuck in a retry loop)."""

    async def opened(self, provider: str, session_id: str, base_url: str) -> int:
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    async def closed(self, row: int) -> None:
        await trio.sleep_forever()


async def test_a_journal_write_that_hangs_holds_the_conversation_at_most_its_time_limit(
        autojump_clock: trio.testing.MockClock) -> None:
    from relay.avatars.hooks import SessionOutcome
    from relay.ops.journal import WRITE_TIME_LIMIT

    hooks = journal_hooks(StuckJournal(), "http://la.example")("liveavatar")  # type: ignore[arg-type]
    assert hooks.on_created is not None and hooks.on_closed is not None
    t0 = trio.current_time()
    with trio.CancelScope() as conversation:
        conversation.cancel()  # even a cancelled conversation gives the write its time, and no more
        await hooks.on_created("s-1")
    assert WRITE_TIME_LIMIT == 2.0
    assert trio.current_time() - t0 == 2.0
    await hooks.on_closed(SessionOutcome(opened=True, error=None, stop_failed=False))  # no row: nothing to wait for
    assert trio.current_time() - t0 == 2.0


async def test_each_orphan_is_stopped_where_it_was_opened_and_one_failure_does_not_stop_the_sweep(
        tmp_path: Path, stops: Stops, sleeper: subprocess.Popen[bytes]) -> None:
    stops.failures = 1
    settings, http = make_settings(), object()
    async with open_journal(tmp_path) as journal:
        ours = journal._pid, journal._pid_started
        journal._pid, journal._pid_started = sleeper.pid, "gone"
        await journal.opened("liveavatar", "s-a", "http://la-a.example")
        await journal.opened("heygen", "s-b", "http://hg-b.example")
        journal._pid, journal._pid_started = ours
        result = await reap_orphans(settings, http, journal)  # type: ignore[arg-type]
        assert (result.stopped, result.failed) == (["s-b"], ["s-a"])
        assert [e.session_id for e in await journal.entries()] == ["s-a"]
    assert stops.calls == [(settings, http, "liveavatar", "s-a", "http://la-a.example"),
                           (settings, http, "heygen", "s-b", "http://hg-b.example")]
