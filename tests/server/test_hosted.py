"""`relay.server.hosted`: what the app does for itself under hypercorn's command line, with the links to hypercorn's
parent faked (a pipe for the parent's sentinel, a plain object for its shutdown event) and no sockets."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import trio

from relay.config import Settings
from relay.server.admission import AdmissionRefused, Registry
from relay.server.hosted import HostLinks, host_links, watch_host


class FakeEvent:
    def __init__(self) -> None:
        self.set_ = False

    def is_set(self) -> bool:
        return self.set_


@contextmanager
def parent_pipe() -> Iterator[tuple[int, int]]:
    """(sentinel, the parent's end): closing the parent's end is the parent dying."""
    read, write = os.pipe()
    try:
        yield read, write
    finally:
        os.close(read)
        try:
            os.close(write)
        except OSError:
            pass


def settings(**values: object) -> Settings:
    return Settings(_env_file=None, relay_drain_timeout=2.0, **values)  # type: ignore[call-arg]


async def hold_one(registry: Registry, ended: list[str], *,
                   task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    async with registry.admit("client") as scope:
        with scope:
            task_status.started()
            await trio.sleep_forever()
        ended.append("shutdown" if scope.cancelled_caught else "other")


def test_outside_a_hypercorn_worker_there_are_no_links() -> None:
    links = host_links()  # the test process is no multiprocessing child
    assert links == HostLinks(None, None)
    assert not links.parent_gone() and not links.hypercorn_shutting_down()


async def test_the_parent_dying_drains_then_ends_the_process() -> None:
    registry = Registry(10, 10)
    exits: list[int] = []
    ended: list[str] = []
    with parent_pipe() as (sentinel, parent_end), trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            await nursery.start(hold_one, registry, ended)
            links = HostLinks(FakeEvent(), sentinel)
            nursery.start_soon(lambda: watch_host(registry, settings(), links, end_process=exits.append))
            await trio.sleep(0.05)
            assert ended == [] and not registry.shutting_down
            os.close(parent_end)  # the parent is killed
            while not exits:
                await trio.sleep(0.01)
    assert ended == ["shutdown"] and exits == [0] and registry.shutting_down


async def test_hypercorns_shutdown_drains_at_once_and_leaves_the_exit_to_hypercorn(autojump_clock: object) -> None:
    """No pre-drain delay (hypercorn has stopped accepting) and no exit of our own (virtual clock)."""
    registry = Registry(10, 10)
    exits: list[int] = []
    ended: list[str] = []
    event = FakeEvent()
    with parent_pipe() as (sentinel, _), trio.fail_after(700):
        async with trio.open_nursery() as nursery:
            await nursery.start(hold_one, registry, ended)
            nursery.start_soon(lambda: watch_host(registry, settings(relay_predrain_delay=60.0),
                                                  HostLinks(event, sentinel), end_process=exits.append))
            event.set_ = True
            while not ended:
                await trio.sleep(0.01)
            assert trio.current_time() < 1  # drained at once, not after the 60 s pre-drain delay
            await trio.sleep(600)  # virtual time: the watcher is done with the drain and waits for hypercorn
            nursery.cancel_scope.cancel()
    assert ended == ["shutdown"] and exits == []
    try:
        async with registry.admit("late"):
            raise AssertionError("admitted while shutting down")
    except AdmissionRefused as exc:
        assert exc.code == "shutdown"
