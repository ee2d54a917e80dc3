"""RELAY_MAX_AVATAR_SESSIONS=liveavatar=1,simli=1 with RELAY_AVATAR=liveavatar,simli in real processes (issue #23
§2): under `serve --workers 2` the machine's workers, and across two relays the Redis fleet, give LiveAvatar one
session and Simli one, whatever worker or relay holds the conversations; the others go voice-only (`capacity`)
without a create call beyond either budget."""

from __future__ import annotations

from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import httpx2
import pytest
import trio

from relay.providers.table import serve_simulators
from relay.sim.runner import SimulatorURLs
from tests.e2e.test_workers import open_until_both_workers_hold_some, relay_env, supervisor
from tests.faults.test_fleet_admission import first, fleet, fleet_env, open_one, verdict
from tests.support.harness import E2E_AVATAR, E2E_SIMLI_FACE, session_counts
from tests.support.redis import RedisServer
from tests.support.simcontrol import simulators

BUDGETS = "liveavatar=1,simli=1"


def both_providers(sims: SimulatorURLs) -> dict[str, str]:
    return {"RELAY_AVATAR": "liveavatar,simli", "RELAY_MAX_AVATAR_SESSIONS": BUDGETS,
            "LIVEAVATAR_BASE_URL": sims.liveavatar, "LIVEAVATAR_API_KEY": "la-budget",
            "LIVEAVATAR_AVATAR_ID": E2E_AVATAR, "SIMLI_BASE_URL": sims.simli, "SIMLI_API_KEY": "sm-budget",
            "SIMLI_FACE_ID": E2E_SIMLI_FACE}


async def created(http: httpx2.AsyncClient, sims: SimulatorURLs) -> tuple[int, int]:
    """(LiveAvatar sessions created, Simli sessions created)."""
    liveavatar = (await http.get(sims.liveavatar + "/_sim/ledger")).json()
    simli = (await http.get(sims.simli + "/_sim/ledger")).json()
    return session_counts(liveavatar)[0], len(simli["sessions"])


@pytest.mark.timeout(120)
async def test_each_providers_budget_is_the_machines_under_workers(tmp_path: Path) -> None:
    async with simulators() as (sims, http):
        env = relay_env(sims, tmp_path, **both_providers(sims))
        async with supervisor(env, tmp_path, http) as relay, AsyncExitStack() as stack:
            browsers = await open_until_both_workers_hold_some(relay, stack, at_least=4)
            assert len(browsers) >= 4
            assert await created(http, sims) == (1, 1)
            failovers = await relay.per_worker("avatar_relay_avatar_failovers_total")
            assert sum(failovers.values()) >= 1  # LiveAvatar's budget used up: moved on (then Simli's)


@pytest.mark.timeout(150)
async def test_each_providers_budget_is_the_fleets(redis_server: RedisServer, tmp_path: Path) -> None:
    async with trio.open_nursery() as outer:
        sims: SimulatorURLs = await outer.start(serve_simulators, "127.0.0.1")
        envs = [fleet_env(sims, tmp_path, redis_server, str(i), **both_providers(sims)) for i in range(2)]
        async with fleet(envs, tmp_path) as relays, httpx2.AsyncClient(timeout=5.0) as http:
            urls = [url for _, url in relays]
            with trio.fail_after(60):
                async with trio.open_nursery() as held:
                    outcomes: list[list[dict[str, Any]]] = [[] for _ in range(4)]
                    for index, outcome in enumerate(outcomes):
                        await held.start(open_one, urls[index % 2], outcome)
                    assert [verdict(o) for o in outcomes] == ["ready"] * 4, outcomes
                    providers = sorted(str((first(o)["avatar"] or {}).get("provider")) for o in outcomes)
                    assert providers == ["None", "None", "liveavatar", "simli"], outcomes
                    assert await created(http, sims) == (1, 1)
                    held.cancel_scope.cancel()
        outer.cancel_scope.cancel()

