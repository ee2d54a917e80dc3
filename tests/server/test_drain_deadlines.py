"""Shutdown's timers as deadlines on Trio's autojump clock: the pre-drain delay (not ready, conversations go on)
ends exactly at RELAY_PREDRAIN_DELAY, the drain waits at most RELAY_DRAIN_TIMEOUT for conversations that take long
to end, and hypercorn's shutdown event is noticed within one poll interval."""

from __future__ import annotations

import trio
import trio.testing

from relay.config import Settings
from relay.server.admission import Registry
from relay.server.hosted import POLL_INTERVAL, HostLinks
from relay.server.serving import drain


def settings(**values: object) -> Settings:
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


async def converse(registry: Registry, ended_at: list[float], ending_takes: float = 0.0, *,
                   task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """One open conversation: runs until the drain cancels it, then takes `ending_takes` seconds to end (shielded,
    like a conversation telling its browser and stopping its avatar)."""
    async with registry.admit("client") as scope:
        with scope:
            task_status.started()
            await trio.sleep_forever()
        ended_at.append(trio.current_time())
        with trio.CancelScope(shield=True):
            await trio.sleep(ending_takes)


async def test_open_conversations_go_on_for_the_predrain_delay_then_are_ended(
        autojump_clock: trio.testing.MockClock) -> None:
    registry = Registry(10, 10)
    ended_at: list[float] = []
    async with trio.open_nursery() as nursery:
        await nursery.start(converse, registry, ended_at)
        t0 = trio.current_time()
        await drain(registry, settings(relay_predrain_delay=5.0, relay_drain_timeout=3.0))
        assert registry.shutting_down
    assert [t - t0 for t in ended_at] == [5.0]


async def test_the_drain_waits_at_most_its_timeout_for_conversations_that_end_slowly(
        autojump_clock: trio.testing.MockClock) -> None:
    registry = Registry(10, 10)
    ended_at: list[float] = []
    async with trio.open_nursery() as nursery:
        await nursery.start(converse, registry, ended_at, 100.0)
        await nursery.start(converse, registry, ended_at, 1.0)
        t0 = trio.current_time()
        await drain(registry, settings(relay_predrain_delay=0.0, relay_drain_timeout=3.0))
        assert trio.current_time() - t0 == 3.0
        assert registry.open_count == 1  # the slow one is still ending; the quick one has ended
        nursery.cancel_scope.cancel()


class LaterEvent:
    """hypercorn's multiprocessing shutdown event, set `at` seconds (virtual) from its creation."""

    def __init__(self, at: float) -> None:
        self.at = trio.current_time() + at

    def is_set(self) -> bool:
        return trio.current_time() >= self.at


async def test_hypercorns_shutdown_event_is_noticed_within_one_poll(autojump_clock: trio.testing.MockClock) -> None:
    t0 = trio.current_time()
    links = HostLinks(LaterEvent(1.05), None)  # type: ignore[arg-type]
    await links.wait_hypercorn_shutting_down()
    assert POLL_INTERVAL == 0.1
    assert round(trio.current_time() - t0, 6) == 1.1
