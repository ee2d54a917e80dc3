"""Demo mode's simulators: the agent puts each conversation briefly in its queue (so the page shows it), and
`/_sim/reset` keeps that; the plain simulators (tests, `avatar-relay sim`) do not."""

from __future__ import annotations

import httpx2
import pytest
import trio

from relay.providers.table import serve_simulators
from relay.sim.elevenlabs_sim import DEMO_FAULTS

pytestmark = pytest.mark.timeout(60)


@pytest.mark.parametrize("demo", [True, False])
async def test_demo_simulators_queue_each_conversation_briefly(demo: bool) -> None:
    async with trio.open_nursery() as nursery:
        urls = await nursery.start(lambda task_status: serve_simulators("127.0.0.1", demo=demo,
                                                                        task_status=task_status))
        async with httpx2.AsyncClient(timeout=5.0) as http:
            await http.post(f"{urls.elevenlabs}/_sim/reset")
            faults = (await http.post(f"{urls.elevenlabs}/_sim/faults", json={})).json()
        nursery.cancel_scope.cancel()
    assert faults["queue_wait_ms"] == (DEMO_FAULTS["queue_wait_ms"] if demo else 0)
    assert 0 < DEMO_FAULTS["queue_wait_ms"] <= 2000
