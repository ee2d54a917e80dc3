"""The operator's endpoints under `avatar-relay serve --workers 2` (a real supervisor, real workers on one port, the
simulators in this process): whichever worker answers, the listing holds every worker's conversations, an end
reaches the conversation on whichever worker holds it, and the comparison reads every worker's sessions (a session
of either worker is never flagged; one opened outside the relay is)."""

from __future__ import annotations

from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import pytest
import trio
from trio_websocket import ConnectionClosed

from tests.e2e.test_workers import open_until_both_workers_hold_some, relay_env, supervisor
from tests.support.harness import BrowserClient
from tests.support.simcontrol import simulators

pytestmark = pytest.mark.timeout(120)

TOKEN = "admin-token-for-the-workers-test-0123"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


async def how_it_goes_on(browser: BrowserClient) -> str:
    """`ended`'s reason for a conversation that has ended, "live" for one that still answers a typed message."""
    try:
        await browser.send(type="text", text="are you still there")
    except ConnectionClosed:
        pass
    while True:
        with trio.fail_after(10):
            message = await browser.next_message()
        if message["type"] == "ended":
            return str(message["reason"])
        if message["type"] == "agent_response" and "are you still there" in message["text"]:
            return "live"


async def test_every_workers_conversations_in_one_answer_and_ended_wherever_they_run(tmp_path: Path) -> None:
    async with simulators() as (sims, http):
        env = relay_env(sims, tmp_path, RELAY_ADMIN_TOKEN=TOKEN, RELAY_UNTRACKED_CHECK_INTERVAL="0")
        async with supervisor(env, tmp_path, http) as relay, AsyncExitStack() as stack:
            browsers = await open_until_both_workers_hold_some(relay, stack)
            listings: list[dict[str, Any]] = []
            for _ in range(6):  # the kernel picks the worker of each request: every one gives the same answer
                answer = await http.get(relay.url + "/admin/conversations", headers=AUTH)
                assert answer.status_code == 200, answer.text
                listings.append(answer.json())
            for listing in listings:
                assert listing["workers"] == {"0": True, "1": True}
                assert len(listing["conversations"]) == len(browsers)
                assert {c["worker"] for c in listing["conversations"]} == {0, 1}
                assert {c["state"] for c in listing["conversations"]} == {"live"}
                assert all(c["provider"] == "heygen" and c["avatar_session_id"] for c in listing["conversations"])

            leaked = (await http.post(sims.heygen + "/v1/streaming.new", headers={"x-api-key": "hg-workers"},
                                      json={"version": "v2"})).json()["data"]["session_id"]
            compared = await http.get(relay.url + "/admin/avatar-sessions", headers=AUTH)
            [finding] = compared.json()["providers"]
            assert finding["untracked_ids"] == [leaked]
            assert finding["held"] == len(browsers) and finding["running"] == len(browsers) + 1

            # End one conversation of each worker, through whichever worker takes the request.
            by_worker = {c["worker"]: c for c in listings[0]["conversations"]}
            for conversation in by_worker.values():
                ended = await http.post(relay.url + f"/admin/conversations/{conversation['id']}/end", headers=AUTH)
                assert ended.status_code == 200, ended.text
                assert ended.json()["worker"] == conversation["worker"] and ended.json()["stopped"] is True
            reasons = [await how_it_goes_on(browser) for browser in browsers]
            assert sorted(reasons) == ["admin", "admin"] + ["live"] * (len(browsers) - 2)
            left = (await http.get(relay.url + "/admin/conversations", headers=AUTH)).json()["conversations"]
            assert len(left) == len(browsers) - 2
            ended_ids = {c["id"] for c in by_worker.values()}
            assert not ended_ids & {c["id"] for c in left}
            stopped = {s["session_id"] for s in (await http.get(sims.heygen + "/_sim/ledger")).json()[
                "sessions"].values() if s["stopped_at"] is not None}
            assert {c["avatar_session_id"] for c in by_worker.values()} <= stopped


async def test_one_worker_runs_the_periodic_check_over_every_workers_sessions(tmp_path: Path) -> None:
    async with simulators() as (sims, http):
        # Without the journal (which holds every worker's sessions too) the other worker is asked over its socket.
        env = relay_env(sims, tmp_path, RELAY_UNTRACKED_CHECK_INTERVAL="0.1", RELAY_JOURNAL="false")
        async with supervisor(env, tmp_path, http) as relay, AsyncExitStack() as stack:
            await open_until_both_workers_hold_some(relay, stack)
            with trio.fail_after(20):
                while await relay.per_worker("avatar_relay_untracked_avatar_sessions", provider="heygen") != {"0": 0.0}:
                    await trio.sleep(0.05)
                await http.post(sims.heygen + "/v1/streaming.new", headers={"x-api-key": "hg-workers"},
                                json={"version": "v2"})
                # Worker 1's sessions are read over its admin socket: only the leaked one is counted, by worker 0.
                while await relay.per_worker("avatar_relay_untracked_avatar_sessions", provider="heygen") != {"0": 1.0}:
                    await trio.sleep(0.05)
