"""Issue 29: SIGTERM to a real `avatar-relay serve` process holding a conversation for a resume. Nobody is there to
tell, so the held conversation ends at once with `client_gone` (not `shutdown` at the end of the drain bound), its
avatar session is stopped, and the process exits 0; a connected conversation beside it is told `shutdown` as
always."""

from __future__ import annotations

import re
import signal
from pathlib import Path
from typing import Any

import httpx2
import pytest
import trio

from relay.providers.table import serve_simulators
from relay.sim.runner import SimulatorURLs
from tests.faults.test_process_faults import hold_conversation, ledger_of, relay_env
from tests.support.harness import session_counts
from tests.support.processes import relay_process
from tests.support.resumable import ResumingBrowser


@pytest.mark.timeout(90)
async def test_sigterm_ends_a_held_conversation_at_once_as_client_gone(tmp_path: Path) -> None:
    async with trio.open_nursery() as outer:
        sims: SimulatorURLs = await outer.start(serve_simulators, "127.0.0.1")
        env = relay_env(sims, tmp_path, "heygen")
        # A window far beyond the drain bound: a held conversation left to its window would be cut as `shutdown`.
        env.update(RELAY_STOP_TIMEOUT="3", RELAY_DRAIN_TIMEOUT="5", RELAY_PREDRAIN_DELAY="0",
                   RELAY_RESUME_WINDOW="600", RELAY_LOG_LEVEL="INFO")
        log = tmp_path / "relay.log"
        connected: list[dict[str, Any]] = []
        async with httpx2.AsyncClient(timeout=5.0) as http:
            with log.open("w") as stderr:
                async with relay_process(env, tmp_path, stderr=stderr) as (process, url):
                    with trio.fail_after(30):  # a hang guard
                        dropped = ResumingBrowser(url)
                        await dropped.connect()
                        await dropped.send(type="start")
                        await dropped.expect("ready")
                        dropped.drop()
                        while "avatar_relay_conversations_held 1.0" not in (await http.get(url + "/metrics")).text:
                            await trio.sleep(0.05)
                        async with trio.open_nursery() as nursery:
                            await nursery.start(hold_conversation, url, connected)
                            process.send_signal(signal.SIGTERM)
                            assert await process.wait() == 0
            ledger = await ledger_of(http, sims, "heygen")
        assert session_counts(ledger) == (2, 2), f"sessions left running after the exit: {ledger['requests']}"
        endings = re.findall(r"conversation ended reason=(\w+)", log.read_text())
        assert sorted(endings) == ["client_gone", "shutdown"], endings
        kinds = [(m["type"], m.get("code") or m.get("reason")) for m in connected if m["type"] in ("error", "ended")]
        assert kinds == [("error", "shutdown"), ("ended", "shutdown")], connected
        outer.cancel_scope.cancel()
