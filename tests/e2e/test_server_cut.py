"""A conversation cut by the server — hypercorn cancelling the handlers at the end of its grace period, with nothing
in the app draining first — is told `shutdown` before its socket closes, and its avatar session is stopped. The real
hypercorn (trio worker) and the real app on loopback, simulators in this process."""

from __future__ import annotations

import tempfile
from typing import Any

import httpx2
import pytest
import trio
from hypercorn.config import Config
from hypercorn.trio import serve

from relay.providers.table import serve_simulators
from relay.sim.runner import SimulatorURLs
from relay.web import create_app
from tests.support.harness import hold_and_record, poll_ledger, relay_settings, session_counts
from tests.support.simcontrol import SimControl


@pytest.mark.timeout(60)
async def test_conversations_cut_at_the_end_of_hypercorns_grace_period_are_told_shutdown() -> None:
    """hypercorn's shutdown trigger fires with three conversations open and the app is not told (as under
    `hypercorn.trio.serve` with a trigger of its own): the conversations go on for the grace period, then hypercorn
    cancels them. Each browser still gets `error` `shutdown`, `ended` `shutdown` and close 1001, and every avatar
    session is stopped."""
    with tempfile.TemporaryDirectory(prefix="relay-e2e-state-") as state_dir:
        async with trio.open_nursery() as outer:
            sims: SimulatorURLs = await outer.start(serve_simulators, "127.0.0.1")
            config = Config()
            config.bind = ["127.0.0.1:0"]
            config.accesslog = None
            config.graceful_timeout = 0.5
            stop = trio.Event()
            settings = relay_settings(sims, relay_state_dir=state_dir)
            server_done = trio.Event()

            async def run_server(*, task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED) -> None:
                await serve(create_app(settings), config, shutdown_trigger=stop.wait,  # type: ignore[arg-type]
                            task_status=task_status)
                server_done.set()

            binds: list[str] = await outer.start(run_server)
            ws_url = binds[0].replace("http://", "ws://") + "/ws"
            seen: list[list[dict[str, Any]]] = [[] for _ in range(3)]
            closes: list[int | None] = []
            async with httpx2.AsyncClient(timeout=5.0) as http:
                heygen = SimControl(sims.heygen, http)
                with trio.fail_after(30):  # hang guard
                    async with trio.open_nursery() as browsers:
                        for messages in seen:
                            await browsers.start(hold_and_record, ws_url, messages, closes)
                        assert session_counts(await heygen.ledger()) == (3, 0)
                        stop.set()
                    await server_done.wait()
                ledger = await poll_ledger(heygen.ledger, lambda led: session_counts(led) == (3, 3),
                                           "every session stopped")
            outer.cancel_scope.cancel()
    for messages in seen:
        endings = [(m["type"], m.get("code") or m.get("reason")) for m in messages if m["type"] in ("error", "ended")]
        assert endings == [("error", "shutdown"), ("ended", "shutdown")], messages
    assert closes == [1001, 1001, 1001]
    assert session_counts(ledger) == (3, 3)
