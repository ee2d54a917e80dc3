"""`hypercorn -k trio relay.web:app`: what the app does for itself when hypercorn's own command line serves it.

hypercorn's command line runs the app in a worker process (multiprocessing, spawn) under a parent that holds the
listening socket too. On SIGTERM/SIGINT the parent sets a shared event; the worker's trio server polls it (every
0.1 s), stops accepting at once, and cancels whatever handlers are still running `graceful_timeout` later; only then
does the app get the ASGI `lifespan.shutdown` (hypercorn 0.18, `hypercorn/trio/run.py`: `wait_for_shutdown` follows
the server nursery's exit). So the app cannot wait for the lifespan to learn of the shutdown: `watch_host`, started
at the app's start-up, watches three things and drains at the first (`/readyz` 503, new conversations refused with
`shutdown`, open ones told `shutdown` and their avatar sessions stopped — as `avatar-relay serve` does):

- hypercorn's shutdown event (its parent got SIGTERM/SIGINT): drained at once (hypercorn has stopped accepting, so
  nobody could see a 503: no pre-drain delay); hypercorn then ends the process when the last handler returns;
- SIGTERM/SIGINT delivered to the worker itself (systemd signals every process of the service; or a worker is
  signalled alone): RELAY_PREDRAIN_DELAY first (hypercorn still accepts, `/readyz` answers 503), cut short if
  hypercorn's own shutdown begins; then, unless hypercorn is shutting down too, the worker ends itself (status 0:
  hypercorn's parent starts a fresh worker in its place);
- the parent process gone (kill -9 of the hypercorn process): drained at once, then the worker ends itself, so the
  port is free for a restart and nothing serves unnoticed. Detected by multiprocessing's parent sentinel (a pipe
  whose other end only the parent holds: readable the moment the parent dies), exact and without polling.

Ending itself means `os._exit` once the drain is over (bounded by RELAY_DRAIN_TIMEOUT): an ASGI app has no way to
make hypercorn's worker stop. A conversation still closing then is cut; its avatar session stays in the journal and
the next start stops it. Reading hypercorn's shutdown event uses multiprocessing's own record of the worker's
arguments (`hypercorn.run._populate` passes it as `shutdown_event`); without it (another hypercorn, `-w 0`) the app
still drains on a signal of its own and tells its conversations when hypercorn cuts them.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import select
import signal
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import trio

from relay.config import Settings
from relay.server.admission import Registry
from relay.server.serving import drain

log = logging.getLogger("relay.cli")

POLL_INTERVAL = 0.1  # hypercorn polls its shutdown event as often


class SharedEvent(Protocol):
    def is_set(self) -> bool: ...


@dataclass(frozen=True)
class HostLinks:
    """What ties this process to hypercorn's parent: the parent's shutdown event and the parent's sentinel (a file
    descriptor readable once the parent is gone). Either is None when this process is not such a worker."""

    shutdown_event: SharedEvent | None
    parent_sentinel: int | None

    def hypercorn_shutting_down(self) -> bool:
        return self.shutdown_event is not None and self.shutdown_event.is_set()

    async def wait_hypercorn_shutting_down(self) -> None:
        """Return once hypercorn's shutdown event is set (polled: a multiprocessing event has nothing to await)."""
        while True:
            if self.hypercorn_shutting_down():
                return
            await trio.sleep(POLL_INTERVAL)

    def parent_gone(self) -> bool:
        if self.parent_sentinel is None:
            return False
        try:
            readable, _, _ = select.select([self.parent_sentinel], [], [], 0)
        except (OSError, ValueError):
            return True
        return bool(readable)


def host_links() -> HostLinks:
    """This process's links to hypercorn's parent, when it is one of hypercorn's spawned workers."""
    parent = multiprocessing.parent_process()
    if parent is None:
        return HostLinks(None, None)
    arguments: Any = getattr(multiprocessing.current_process(), "_kwargs", None)
    event = arguments.get("shutdown_event") if isinstance(arguments, dict) else None
    if not callable(getattr(event, "is_set", None)):
        event = None
    return HostLinks(event, parent.sentinel)


Cause = Literal["hypercorn", "signal", "orphaned"]


async def wait_for_shutdown(links: HostLinks, signals: AsyncIterator[int]) -> Cause:
    """Return why this worker must shut down, at the first of: hypercorn's shutdown event, a signal, the parent
    gone."""
    cause: Cause | None = None
    async with trio.open_nursery() as nursery:
        def found(what: Cause) -> None:
            nonlocal cause
            if cause is None:
                cause = what
            nursery.cancel_scope.cancel()

        async def hypercorn_event() -> None:
            if links.shutdown_event is None:
                return
            await links.wait_hypercorn_shutting_down()
            found("hypercorn")

        async def signal_received() -> None:
            await signals.__anext__()
            found("signal")

        async def parent_died() -> None:
            if links.parent_sentinel is None:
                return
            await trio.lowlevel.wait_readable(links.parent_sentinel)
            found("orphaned")

        nursery.start_soon(hypercorn_event)
        nursery.start_soon(signal_received)
        nursery.start_soon(parent_died)
    assert cause is not None
    return cause


async def watch_host(registry: Registry, settings: Settings, links: HostLinks, *,
                     end_process: Callable[[int], object] = os._exit) -> None:
    """For the app's whole life under hypercorn's command line: drain on hypercorn's shutdown, on a signal, or when
    the parent is gone, then end the process if hypercorn will not (see the module docstring). Cancelled with the
    app's nursery at the lifespan shutdown."""

    # Open for as long as the worker runs: a second signal must not kill it mid-drain.
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        cause = await wait_for_shutdown(links, signals)
        if cause == "orphaned":
            log.warning("shutting down: hypercorn's parent process is gone; draining %d open conversation(s)",
                        registry.open_count)
        elif cause == "signal":
            log.info("shutting down: signal received")
        await drain(registry, settings, predrain=cause == "signal",
                    cut_short=links.wait_hypercorn_shutting_down if links.shutdown_event is not None else None)
        if links.hypercorn_shutting_down() and not links.parent_gone():
            # hypercorn ends the process once the last handler returns; until then a signal (hypercorn's parent
            # sends SIGTERM to its other workers when one exits) must not kill it: wait here, still receiving.
            await trio.sleep_forever()
        log.info("shutting down: exiting (hypercorn will not stop this worker itself)")
        logging.shutdown()
        end_process(0)
