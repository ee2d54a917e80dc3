"""The operator's endpoints in a fleet of two relays on a real redis-server (hypercorn on loopback, one set of
simulators for both, as one avatar account): either relay lists both relays' conversations, ends one the other
relay holds (its browser told `ended` `admin`, its session stopped), and compares the account's running sessions
with the whole fleet's records — on demand and in the periodic check's metric."""

from __future__ import annotations

import tempfile
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import httpx2
import pytest
import trio
from hypercorn.config import Config
from hypercorn.trio import serve

from relay.providers.table import serve_simulators
from relay.sim.runner import SimulatorURLs
from relay.web import create_app
from tests.e2e.test_admin import AUTH, TOKEN, leak_liveavatar_session, scrape_untracked
from tests.support.harness import BrowserClient, Relay, relay_settings
from tests.support.redis import RedisServer

pytestmark = pytest.mark.timeout(90)


@asynccontextmanager
async def fleet_of_two(redis: RedisServer, **overrides: Any) -> AsyncIterator[tuple[Relay, Relay]]:
    """Two relays sharing `redis` and one set of simulators; each its own state directory."""
    async with trio.open_nursery() as nursery, httpx2.AsyncClient(timeout=10.0) as http:
        sims: SimulatorURLs = await nursery.start(serve_simulators, "127.0.0.1")
        relays = []
        with tempfile.TemporaryDirectory() as one, tempfile.TemporaryDirectory() as two:
            for state_dir in (one, two):
                config = Config()
                config.bind = ["127.0.0.1:0"]
                config.accesslog = None
                config.graceful_timeout = 5.0
                settings = relay_settings(sims, relay_avatar="liveavatar", relay_redis_url=redis.url,
                                          relay_admin_token=TOKEN, relay_state_dir=state_dir, **overrides)
                binds = await nursery.start(serve, create_app(settings), config)
                relays.append(Relay(binds[0], sims, http, settings=settings))
            yield relays[0], relays[1]
            nursery.cancel_scope.cancel()


async def fleet_listing(relay: Relay) -> dict[str, Any]:
    answer = await relay.http.get(relay.url + "/admin/conversations", headers=AUTH)
    assert answer.status_code == 200, answer.text
    return answer.json()  # type: ignore[no-any-return]


async def test_either_relay_lists_the_fleets_conversations_and_ends_one_the_other_holds(
        redis_server: RedisServer) -> None:
    async with fleet_of_two(redis_server) as (one, two), AsyncExitStack() as stack:
        browsers: list[BrowserClient] = []
        readies = []
        for relay in (one, two):
            browser = await stack.enter_async_context(relay.browser())
            readies.append(await browser.start())
            browsers.append(browser)
        wanted = {ready["conversation_id"] for ready in readies}
        for relay in (one, two):
            with trio.fail_after(10):
                while True:
                    listing = await fleet_listing(relay)
                    if {c["conversation_id"] for c in listing["conversations"] if c["state"] == "live"} == wanted:
                        break
                    await trio.sleep(0.05)
            assert len(listing["relays"]) == 2 and listing["error"] is None
            by_id = {c["conversation_id"]: c for c in listing["conversations"]}
            assert {by_id[r["conversation_id"]]["avatar_session_id"] for r in readies} == \
                {r["avatar"]["session_id"] for r in readies}
            assert by_id[readies[0]["conversation_id"]]["relay"] != by_id[readies[1]["conversation_id"]]["relay"]

        # Relay one ends the conversation relay two holds.
        ended = await one.http.post(one.url + f"/admin/conversations/{readies[1]['conversation_id']}/end",
                                    headers=AUTH)
        assert ended.status_code == 200, ended.text
        assert ended.json()["relay"] == (await fleet_listing(two))["relay"] and ended.json()["stopped"] is True
        assert (await browsers[1].expect("ended"))["reason"] == "admin"
        session = (await one.ledger("liveavatar"))["sessions"][readies[1]["avatar"]["session_id"]]
        assert session["stopped"] is not None
        left = (await fleet_listing(one))["conversations"]
        assert [c["conversation_id"] for c in left] == [readies[0]["conversation_id"]]
        missing = await one.http.post(one.url + "/admin/conversations/no-such-conversation/end", headers=AUTH)
        assert missing.status_code == 404


async def test_the_comparison_reads_the_whole_fleets_records(redis_server: RedisServer) -> None:
    # Without the journal, relay two's session is known to relay one through the fleet's registry alone.
    async with fleet_of_two(redis_server, relay_journal=False, relay_untracked_check_interval=0.1) as (one, two), \
            AsyncExitStack() as stack:
        for relay in (one, two):
            await (await stack.enter_async_context(relay.browser())).start()
        leaked = await leak_liveavatar_session(one)
        [finding] = (await one.http.get(one.url + "/admin/avatar-sessions", headers=AUTH)).json()["providers"]
        assert finding["untracked_ids"] == [leaked] and finding["held"] == 2 and finding["running"] == 3
        with trio.fail_after(20):
            while (await scrape_untracked(two)).get("liveavatar") != 1:
                await trio.sleep(0.05)
