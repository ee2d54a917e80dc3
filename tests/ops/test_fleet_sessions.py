"""The fleet's session registry (relay.ops.fleet_sessions) against a real redis-server: sessions registered when
created and forgotten when stopped (never a secret), a dead relay's sessions claimed by exactly one of many
concurrent relays and stopped once each, a failed stop kept and retried, the one stop gate shared with the journal's
reaper, and sessions opened or stopped during a Redis outage reconciled when it returns."""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx2
import orjson
import pytest
import trio

from relay.config import load_settings
from relay.ops.fleet import Fleet
from relay.ops.fleet_sessions import FleetSessions, SessionEntry
from tests.support.redis import RedisServer

BASE = "http://127.0.0.1:9/heygen"


@asynccontextmanager
async def joined(redis_server: RedisServer, stops: list[str], *, lease: float = 1.5, fail: set[str] | None = None,
                 grace: bool = False) -> AsyncIterator[FleetSessions]:
    """One relay's fleet membership and session registry (its lease renewed in the background); `stops` records
    the session ids its sweeps stop, `fail` holds ids whose stop raises."""
    fleet = Fleet.from_settings(load_settings(relay_redis_url=redis_server.url, relay_fleet_lease=lease))
    assert fleet is not None

    async def stop(entry: SessionEntry) -> None:
        if fail is not None and entry.session_id in fail:
            raise RuntimeError("the provider refused the stop")
        stops.append(entry.session_id)

    sessions = FleetSessions(fleet, stop)
    if not grace:
        sessions.takeover_grace = 0.0
    async with trio.open_nursery() as nursery:
        await nursery.start(fleet.serve)
        yield sessions
        nursery.cancel_scope.cancel()


def registry(redis_server: RedisServer) -> dict[str, dict[str, object]]:
    """The registry hash as Redis holds it: member -> entry."""
    lines = redis_server.command("HGETALL", "{avatar-relay}:sessions").splitlines()
    return {lines[i]: orjson.loads(lines[i + 1]) for i in range(0, len(lines) - 1, 2)}


async def open_and_close(sessions: FleetSessions, session_id: str, stop_failed: bool = False,
                         held: trio.Event | None = None) -> None:
    hooks = sessions.hooks(BASE)("heygen")
    assert hooks.on_created is not None and hooks.on_closed is not None
    await hooks.on_created(session_id)
    if held is not None:
        await held.wait()
    from relay.avatars.hooks import SessionOutcome

    await hooks.on_closed(SessionOutcome(opened=True, error=None, stop_failed=stop_failed))


@pytest.mark.timeout(60)
async def test_a_session_is_registered_when_created_and_forgotten_when_stopped(redis_server: RedisServer) -> None:
    async with joined(redis_server, []) as sessions:
        hooks = sessions.hooks(BASE)("heygen")
        assert hooks.on_created is not None and hooks.on_closed is not None
        await hooks.on_created("s-1")
        (entry,) = registry(redis_server).values()
        assert entry["provider"] == "heygen" and entry["session_id"] == "s-1" and entry["base_url"] == BASE
        assert entry["owner"] == sessions.fleet.relay_id and entry["state"] == "open"
        assert isinstance(entry["opened_at"], float)
        assert set(entry) == {"provider", "session_id", "base_url", "owner", "opened_at", "state"}, \
            "nothing but these: never a key or token"
        assert sessions.held == 1
        from relay.avatars.hooks import SessionOutcome

        await hooks.on_closed(SessionOutcome(opened=True, error=None, stop_failed=False))
        assert registry(redis_server) == {}
        assert sessions.held == 0


@pytest.mark.timeout(60)
async def test_many_relays_race_for_a_dead_relays_sessions_and_exactly_one_stops_each(
        redis_server: RedisServer) -> None:
    """A relay with five sessions dies (its lease deleted as if it expired); twelve relays sweep at once: every
    session is claimed by exactly one of them and stopped exactly once."""
    stops: list[str] = []
    async with joined(redis_server, []) as dying:
        for n in range(5):
            await dying.hooks(BASE)("heygen").on_created(f"s-{n}")  # type: ignore[misc]
        dead_id = dying.fleet.relay_id
    assert redis_server.command("EXISTS", f"{{avatar-relay}}:relay:{dead_id}").strip() == "0"
    assert len(registry(redis_server)) == 5, "the sessions outlive their relay in the registry"
    async with trio.open_nursery() as nursery:
        relays: list[FleetSessions] = []

        async def one(task_status: trio.TaskStatus[None]) -> None:
            async with joined(redis_server, stops) as sessions:
                relays.append(sessions)
                task_status.started()
                await trio.sleep_forever()

        for _ in range(12):
            await nursery.start(one)
        async with trio.open_nursery() as racers:
            for sessions in relays:
                racers.start_soon(sessions.sweep)
        nursery.cancel_scope.cancel()
    assert Counter(stops) == {f"s-{n}": 1 for n in range(5)}
    assert registry(redis_server) == {}
    assert sum(r.stats.lease_expiries for r in relays) == 1, "one relay saw the lease gone and took it over"
    assert sum(r.stats.taken_over for r in relays) == 5
    assert sum(r.stats.takeover_stopped for r in relays) == 5


@pytest.mark.timeout(60)
async def test_one_gate_for_every_stopper(redis_server: RedisServer) -> None:
    """Twenty concurrent claims for one orphan: one wins; a live relay's open session is never claimed; a session
    already stopped says so (the journal's reaper then forgets its row instead of stopping it again)."""
    async with joined(redis_server, []) as owner, joined(redis_server, []) as other:
        await owner.hooks(BASE)("heygen").on_created("live")  # type: ignore[misc]
        assert await other.claim("heygen", "live", BASE) == "held"
        await open_and_close(owner, "gone")
        assert await other.claim("heygen", "gone", BASE) == "done"
        verdicts: list[str] = []

        async def claim() -> None:
            verdicts.append(await other.claim("heygen", "unknown", BASE))

        async with trio.open_nursery() as nursery:
            for _ in range(20):
                nursery.start_soon(claim)
        assert Counter(verdicts) == {"claimed": 1, "busy": 19}
        await other.release("heygen", "unknown", BASE)
        assert await other.claim("heygen", "unknown", BASE) == "claimed", "a released claim can be made again"
        await other.finish("heygen", "unknown")
        assert await owner.claim("heygen", "unknown", BASE) == "done"


@pytest.mark.timeout(60)
async def test_a_failed_takeover_stop_is_kept_and_retried(redis_server: RedisServer) -> None:
    stops: list[str] = []
    fail = {"s-1"}
    async with joined(redis_server, []) as dying:
        await dying.hooks(BASE)("heygen").on_created("s-1")  # type: ignore[misc]
    async with joined(redis_server, stops, fail=fail) as sessions:
        await sessions.sweep()
        assert stops == []
        (entry,) = registry(redis_server).values()
        assert entry["owner"] == sessions.fleet.relay_id and entry["state"] == "orphan"
        assert sessions.stats.takeover_failed == 1
        fail.clear()
        await sessions.sweep()
        assert stops == ["s-1"] and registry(redis_server) == {}


@pytest.mark.timeout(60)
async def test_a_conversations_failed_stop_stays_registered_for_this_relays_sweep(
        redis_server: RedisServer) -> None:
    stops: list[str] = []
    async with joined(redis_server, stops) as sessions:
        await open_and_close(sessions, "s-1", stop_failed=True)
        (entry,) = registry(redis_server).values()
        assert entry["state"] == "orphan" and entry["owner"] == sessions.fleet.relay_id
        await sessions.sweep()
        assert stops == ["s-1"] and registry(redis_server) == {}


@pytest.mark.timeout(60)
async def test_a_new_relay_waits_a_lease_before_taking_over(redis_server: RedisServer) -> None:
    """After its start (or Redis coming back), a relay lets every live relay renew its lease before it believes a
    lease is gone: a Redis restored with stale leases must not get live relays' sessions stopped."""
    stops: list[str] = []
    async with joined(redis_server, []) as dying:
        await dying.hooks(BASE)("heygen").on_created("s-1")  # type: ignore[misc]
    async with joined(redis_server, stops, grace=True) as sessions:
        await sessions.sweep()
        assert stops == [] and len(registry(redis_server)) == 1
        with trio.fail_after(20):
            while not stops:
                await sessions.sweep()
                await trio.sleep(0.1)
        assert stops == ["s-1"]


@pytest.mark.timeout(90)
async def test_sessions_opened_and_stopped_during_an_outage_are_reconciled(redis_server: RedisServer) -> None:
    stops: list[str] = []
    async with joined(redis_server, stops) as sessions:
        before = trio.Event()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(open_and_close, sessions, "before", False, before)  # open across the outage
            with trio.fail_after(10):
                while "heygen:before" not in registry(redis_server):
                    await trio.sleep(0.02)
            redis_server.stop()
            with trio.fail_after(20):
                while sessions.fleet.healthy:
                    await trio.sleep(0.05)
            during = trio.Event()
            nursery.start_soon(open_and_close, sessions, "during", False, during)  # opened in the outage
            with trio.fail_after(10):
                while sessions.held != 2:
                    await trio.sleep(0.02)
            await open_and_close(sessions, "brief")  # opened and stopped in the outage
            await open_and_close(sessions, "failed", stop_failed=True)  # its stop failed in the outage
            before.set()  # stopped in the outage
            with trio.fail_after(10):
                while sessions.held != 1:
                    await trio.sleep(0.02)
            assert sessions.unsynced == 4, "opened: during; stopped: before, brief; failed to stop: failed"
            redis_server.start()  # an empty Redis: everything this relay holds must be written again
            with trio.fail_after(20):
                while set(registry(redis_server)) != {"heygen:during", "heygen:failed"} or sessions.unsynced:
                    await trio.sleep(0.05)
            entries = registry(redis_server)
            assert entries["heygen:during"]["state"] == "open" and entries["heygen:failed"]["state"] == "orphan"
            await sessions.sweep()
            assert stops == ["failed"]
            during.set()
        assert registry(redis_server) == {}


@pytest.mark.timeout(60)
async def test_the_journals_reaper_stops_nothing_the_registry_does_not_grant(redis_server: RedisServer,
                                                                             tmp_path: Path) -> None:
    """Orphaned journal rows (their process is gone): one the fleet stopped already is forgotten, one a live relay
    holds is kept for later, and with Redis unreachable none is stopped (nor forgotten); no provider is called."""
    from relay.ops.journal import open_journal
    from relay.ops.reaper import reap_orphans

    async with open_journal(tmp_path) as writer:
        writer._pid, writer._pid_started = 999_999, "gone"
        for session_id in ("stopped-by-fleet", "held-by-a-live-relay"):
            await writer.opened("heygen", session_id, BASE)
    unreachable = FleetSessions(Fleet.from_settings(load_settings(  # type: ignore[arg-type]
        relay_redis_url=redis_server.url)), _never_stop)  # never served: Redis unreachable for it
    async with joined(redis_server, []) as live, open_journal(tmp_path) as journal, \
            httpx2.AsyncClient(base_url="http://127.0.0.1:9") as http:
        await open_and_close(live, "stopped-by-fleet")
        await live.hooks(BASE)("heygen").on_created("held-by-a-live-relay")  # type: ignore[misc]
        result = await reap_orphans(load_settings(), http, journal, unreachable)
        assert (result.stopped, result.failed) == ([], [])
        assert {e.session_id for e in await journal.entries() if e.orphaned} == {"stopped-by-fleet",
                                                                                  "held-by-a-live-relay"}
        result = await reap_orphans(load_settings(), http, journal, live)
        assert (result.stopped, result.failed) == ([], [])
        (kept,) = await journal.entries()
        assert kept.session_id == "held-by-a-live-relay" and (kept.pid, kept.pid_started) == (999_999, "gone")


async def _never_stop(entry: SessionEntry) -> None:
    raise AssertionError(f"stopped {entry}")


def test_the_registrys_numbers_are_in_metrics() -> None:
    from relay.ops.metrics import RelayMetrics

    fleet = Fleet.from_settings(load_settings(relay_redis_url="redis://127.0.0.1:9/0"))
    assert fleet is not None
    sessions = FleetSessions(fleet, _never_stop)
    sessions.stats.lease_expiries, sessions.stats.taken_over = 1, 3
    sessions.stats.takeover_stopped, sessions.stats.takeover_failed = 2, 1
    metrics = RelayMetrics()
    metrics.observe_fleet_sessions(sessions)
    lines = metrics.render().decode().splitlines()
    for sample in ("avatar_relay_fleet_lease_expiries_total 1.0", "avatar_relay_fleet_sessions_taken_over_total 3.0",
                   'avatar_relay_fleet_orphan_stops_total{result="stopped"} 2.0',
                   'avatar_relay_fleet_orphan_stops_total{result="failed"} 1.0',
                   "avatar_relay_fleet_sessions_held 0.0", "avatar_relay_fleet_sessions_unsynced 0.0"):
        assert sample in lines, sample


def pttl(redis_server: RedisServer, key: str) -> int:
    return int(redis_server.command("PTTL", key).strip())


@pytest.mark.timeout(60)
async def test_a_live_relays_lease_never_lapses_and_its_sessions_are_never_taken_over(
        redis_server: RedisServer) -> None:
    """A running relay renews its lease every third of it: sampled for three leases, the lease key never expires, and
    a peer sweeping all the while (no grace) takes none of its sessions over."""
    stops: list[str] = []
    async with joined(redis_server, []) as live, joined(redis_server, stops) as peer:  # 1.5 s leases
        await live.hooks(BASE)("heygen").on_created("s-live")  # type: ignore[misc]
        lowest = 1500
        with trio.move_on_after(3 * 1.5):
            while True:
                lowest = min(lowest, await trio.to_thread.run_sync(pttl, redis_server, live.fleet.relay_key))
                await peer.sweep()
                await trio.sleep(0.05)
        assert lowest > 0, f"the live relay's lease lapsed (PTTL {lowest})"
        assert stops == [] and peer.stats.taken_over == 0
        assert registry(redis_server)[next(iter(registry(redis_server)))]["owner"] == live.fleet.relay_id


@pytest.mark.timeout(60)
async def test_a_dead_relays_sessions_are_stopped_within_its_lease_plus_one_sweep(redis_server: RedisServer) -> None:
    """A relay dies right after renewing its lease (its key holds 0.3 s more); the survivor, sweeping every third of
    its 1.5 s lease, stops the dead relay's session at its first sweep after the lease is gone: within the dead
    lease plus one sweep interval (a second of slack for a busy machine; one sweep later would be a whole 0.5 s)."""
    stops: list[str] = []
    async with joined(redis_server, []) as dying:
        await dying.hooks(BASE)("heygen").on_created("s-dead")  # type: ignore[misc]
        dead_key = dying.fleet.relay_key
    async with joined(redis_server, stops) as survivor, trio.open_nursery() as nursery:
        redis_server.command("SET", dead_key, "{}", "PX", "300")  # as if killed 0.3 s before its lease ran out
        died = trio.current_time()
        nursery.start_soon(survivor.serve)
        with trio.fail_after(20):
            while not stops:
                await trio.sleep(0.02)
        took = trio.current_time() - died
        nursery.cancel_scope.cancel()
    assert stops == ["s-dead"]
    assert took < 0.3 + 1.5 / 3 + 1.0, f"stopped {took:.2f} s after the relay died"
