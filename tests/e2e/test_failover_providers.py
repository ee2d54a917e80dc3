"""The ordered provider list with the real providers on their simulators (loopback): a LiveAvatar refusal moves on
to Simli, a Simli that hangs gives LiveAvatar its share of the set-up time, and nothing is left running."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx2
import pytest
import trio
from pydantic import SecretStr

from relay.avatars.failover import FailoverProvider
from relay.config import Settings
from relay.liveavatar import LiveAvatarProvider
from relay.sim import liveavatar_sim, simli_sim
from relay.simli import SimliProvider
from tests.support.simserver import served

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
async def sims(nursery: trio.Nursery) -> AsyncIterator[dict[str, str]]:
    async with served(nursery, liveavatar_sim.create_app()) as liveavatar, \
            served(nursery, simli_sim.create_app()) as simli:
        yield {"liveavatar": liveavatar, "simli": simli}


def settings(sims: dict[str, str], **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "elevenlabs_agent_id": "agent", "relay_stop_timeout": 3.0, "relay_setup_timeout": 4.0,
        "liveavatar_api_key": SecretStr("la-key"), "liveavatar_base_url": sims["liveavatar"],
        "liveavatar_avatar_id": "6f1c1a52-9f0e-4d0c-8a51-2f6f0a3b1c01",
        "simli_api_key": SecretStr("sm-key"), "simli_base_url": sims["simli"],
        "simli_face_id": "cace3ef7-a4c4-425d-a8cf-a5358eb0c427",
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


async def ledger(http: httpx2.AsyncClient, base: str) -> dict[str, Any]:
    return (await http.get(base + "/_sim/ledger")).json()  # type: ignore[no-any-return]


async def test_a_liveavatar_at_its_limit_gives_way_to_simli(sims: dict[str, str], http: httpx2.AsyncClient) -> None:
    (await http.post(sims["liveavatar"] + "/_sim/faults", json={"concurrency_limit": 0})).raise_for_status()
    config = settings(sims)
    moved: list[tuple[str, str]] = []
    failover = FailoverProvider([LiveAvatarProvider(config, http), SimliProvider(config, http)],
                                config.relay_setup_timeout, on_moved_on=lambda n, r: moved.append((n, r)))
    with trio.fail_after(10):
        async with failover.open_session(lambda e: None) as session:
            assert session.info.provider == "simli"
    assert moved == [("liveavatar", "concurrent_limit")]
    assert (await ledger(http, sims["liveavatar"]))["sessions"] == {}
    simli = await ledger(http, sims["simli"])
    assert simli["active"] == 0 and [s["end_reason"] for s in simli["sessions"].values()] == ["DONE"]


async def test_a_simli_that_hangs_leaves_liveavatar_its_share_of_the_set_up_time(
        sims: dict[str, str], http: httpx2.AsyncClient) -> None:
    (await http.post(sims["simli"] + "/_sim/faults", json={"latency_ms": {"ws_connect": 30_000}})).raise_for_status()
    config = settings(sims)
    failover = FailoverProvider([SimliProvider(config, http), LiveAvatarProvider(config, http)],
                                config.relay_setup_timeout)
    with trio.fail_after(10):  # a generous bound: the set-up time is 4 s, half of it for Simli
        async with failover.open_session(lambda e: None) as session:
            assert session.info.provider == "liveavatar"
    assert (await ledger(http, sims["simli"]))["active"] == 0
    assert (await ledger(http, sims["liveavatar"]))["active"] == 0
