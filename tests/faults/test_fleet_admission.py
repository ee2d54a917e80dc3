"""A fleet of real relay processes (`avatar-relay serve`, one under `hypercorn -k trio relay.web:app`) sharing one
real redis-server, against simulators running in this test process (their ledgers outlive any relay): the caps hold
across relays (global and per client, through the token's `sub`), the avatar budget holds across relays (no create
call beyond it), SIGTERM on one relay releases its seats at once, the Redis-outage policy, and a clear one-line
error when Redis cannot be reached at start-up."""

from __future__ import annotations

import signal
import sys
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import httpx2
import pytest
import trio
from trio_websocket import ConnectionClosed, open_websocket_url

from relay.providers.table import serve_simulators
from relay.server.auth import mint_jwt
from relay.sim.runner import SimulatorURLs
from tests.faults.test_process_faults import base_env, relay_env
from tests.support.harness import BrowserClient, session_counts
from tests.support.processes import free_port, hypercorn_command, relay_process
from tests.support.redis import RedisServer

SECRET = "fleet-test-secret-0123456789-abcdefghijklmnop"


def fleet_env(sims: SimulatorURLs, tmp_path: Path, redis: RedisServer, name: str, provider: str = "liveavatar",
              **values: str) -> dict[str, str]:
    env = relay_env(sims, tmp_path, provider)
    env.update(RELAY_REDIS_URL=redis.url, RELAY_STATE_DIR=str(tmp_path / f"state-{name}"),
               RELAY_MAX_STARTS_PER_MINUTE="1000", RELAY_STOP_TIMEOUT="3", **values)
    return env


def hypercorn_relay(env: dict[str, str], cwd: Path) -> AbstractAsyncContextManager[tuple[trio.Process, str]]:
    """The relay under hypercorn's own command line."""
    return relay_process(env, cwd, command=hypercorn_command, start_timeout=20, end="term")


@asynccontextmanager
async def fleet(envs: list[dict[str, str]], cwd: Path, *, hypercorn_last: bool = False
                ) -> AsyncIterator[list[tuple[trio.Process, str]]]:
    async with AsyncExitStack() as stack:
        relays = []
        for index, env in enumerate(envs):
            starter = hypercorn_relay if hypercorn_last and index == len(envs) - 1 else relay_process
            relays.append(await stack.enter_async_context(starter(env, cwd)))
        yield relays


async def open_one(url: str, outcome: list[dict[str, Any]], *, token: str | None = None, address: str | None = None,
                   task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """One browser (from `address`, through X-Forwarded-For): `start` (with `token`), then record every message up to
    `ready` or `error` (the outcome, last); a ready one is held open until cancelled, and then leaves as a page does
    when its user ends the conversation: a close 1000 (a connection merely dropped would be held for a resume)."""
    headers = [("X-Forwarded-For", address)] if address else None
    async with open_websocket_url(url.replace("http", "ws") + "/ws", message_queue_size=1000,
                                  extra_headers=headers) as ws, leaving_cleanly(ws):
        browser = BrowserClient(ws)
        await browser.send(type="start", **({"token": token} if token else {}))
        try:
            while True:
                message = await browser.next_message()
                outcome.append(message)
                if message["type"] in ("ready", "error"):
                    break
        except ConnectionClosed:
            pass
        task_status.started()
        if outcome and outcome[-1]["type"] == "ready":
            try:
                while True:
                    outcome.append(await browser.next_message())
            except ConnectionClosed:
                return


@asynccontextmanager
async def leaving_cleanly(ws: Any) -> AsyncIterator[None]:
    """Close `ws` with 1000 on the way out, even when cancelled (trio-websocket's own close is cut short by the
    cancellation: the relay would see the connection drop)."""
    try:
        yield
    finally:
        with trio.move_on_after(5, shield=True):
            await ws.aclose(1000)


def first(outcome: list[dict[str, Any]]) -> dict[str, Any]:
    """The conversation's `ready` or `error`, whichever came first."""
    return next((m for m in outcome if m["type"] in ("ready", "error")), {"type": "nothing"})


def verdict(outcome: list[dict[str, Any]]) -> str:
    found = first(outcome)
    return "ready" if found["type"] == "ready" else str(found.get("code") or found["type"])


async def wait_for(check: Any, what: str, guard: float = 20.0) -> None:
    with trio.move_on_after(guard):
        while not await check():
            await trio.sleep(0.05)
        return
    raise AssertionError(f"not true within {guard} s: {what}")


@pytest.mark.timeout(150)
async def test_the_fleet_admits_exactly_its_caps_across_relays(redis_server: RedisServer, tmp_path: Path) -> None:
    """Three relays, the fleet's cap 4, 2 per client (the token's `sub`, which the `start` message carries: each
    conversation is admitted under its address, then moved to the `sub`): of
    three conversations for alice spread over the relays exactly two are admitted; the fleet then admits exactly two
    more, and refuses the next with `capacity`; one ending frees its seat at once for another relay."""
    async with trio.open_nursery() as outer:
        sims: SimulatorURLs = await outer.start(serve_simulators, "127.0.0.1")
        envs = [fleet_env(sims, tmp_path, redis_server, str(i), "liveavatar", RELAY_AVATAR="none",
                          RELAY_AUTH="token", RELAY_AUTH_SECRET=SECRET, RELAY_MAX_CONVERSATIONS="4",
                          RELAY_MAX_CONVERSATIONS_PER_CLIENT="2", RELAY_TRUST_FORWARDED_FOR="true")
                for i in range(3)]
        async with fleet(envs, tmp_path, hypercorn_last=True) as relays:
            urls = [url for _, url in relays]
            with trio.fail_after(60):
                async with trio.open_nursery() as held:
                    alice = [[] for _ in range(3)]  # type: list[list[dict[str, Any]]]
                    async with trio.open_nursery() as starting:
                        for index, outcome in enumerate(alice):
                            starting.start_soon(lambda u=urls[index], o=outcome, i=index: held.start(
                                partial(open_one, token=mint_jwt(SECRET, subject="alice"), address=f"10.0.0.{i}"),
                                u, o))
                    verdicts = sorted(verdict(o) for o in alice)
                    assert verdicts == ["capacity", "ready", "ready"], alice
                    assert "for this user" in first(next(o for o in alice if verdict(o) != "ready"))["message"]

                    others = [[] for _ in range(6)]  # type: list[list[dict[str, Any]]]
                    async with trio.open_nursery() as starting:
                        for index, outcome in enumerate(others):
                            starting.start_soon(lambda u=urls[index % 3], o=outcome, i=index: held.start(
                                partial(open_one, token=mint_jwt(SECRET, subject=f"user{i}"), address=f"10.1.0.{i}"), u,
                                o))
                    assert sorted(verdict(o) for o in others) == ["capacity"] * 4 + ["ready"] * 2, others
                    full = [o for o in others if verdict(o) != "ready"]
                    assert all("maximum number of conversations" in first(o)["message"] for o in full)
                    assert redis_server.command("ZCARD", "{avatar-relay}:seats").strip() == "4"
                    held.cancel_scope.cancel()  # every browser leaves: each seat is released at once
            async with httpx2.AsyncClient(timeout=5.0) as http:
                async def all_free() -> bool:
                    return redis_server.command("ZCARD", "{avatar-relay}:seats").strip() == "0"

                await wait_for(all_free, "every seat released when its browser left")
                metrics = "".join([(await http.get(url + "/metrics")).text for url in urls])
                assert metrics.count("avatar_relay_fleet_redis_healthy 1.0") == 3
                # Whichever relays refused them: one per-client refusal and four over the fleet's cap.
                for reason, count in (("per_client", 1), ("max_conversations", 4)):
                    total = sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
                                if line.startswith(f'avatar_relay_admission_refusals_total{{reason="{reason}"}}'))
                    assert total == count, (reason, total)
        outer.cancel_scope.cancel()


@pytest.mark.timeout(150)
async def test_the_avatar_budget_holds_across_relays(redis_server: RedisServer, tmp_path: Path) -> None:
    """Two relays, RELAY_MAX_AVATAR_SESSIONS=2: of five conversations at once, every one is admitted, exactly two
    get an avatar and three go voice-only with `avatar_unavailable` `capacity`; the simulator saw exactly two create
    calls. Once an avatar conversation ends (its session stopped), the next conversation gets an avatar again."""
    async with trio.open_nursery() as outer:
        sims: SimulatorURLs = await outer.start(serve_simulators, "127.0.0.1")
        envs = [fleet_env(sims, tmp_path, redis_server, str(i), RELAY_MAX_AVATAR_SESSIONS="2") for i in range(2)]
        async with fleet(envs, tmp_path) as relays, httpx2.AsyncClient(timeout=5.0) as http:
            urls = [url for _, url in relays]
            with trio.fail_after(60):
                async with trio.open_nursery() as held:
                    outcomes = [[] for _ in range(5)]  # type: list[list[dict[str, Any]]]
                    async with trio.open_nursery() as starting:
                        for index, outcome in enumerate(outcomes):
                            starting.start_soon(lambda u=urls[index % 2], o=outcome: held.start(open_one, u, o))
                    assert [verdict(o) for o in outcomes] == ["ready"] * 5, outcomes
                    with_avatar = [o for o in outcomes if first(o)["avatar"] is not None]
                    voice_only = [o for o in outcomes if first(o)["avatar"] is None]
                    assert len(with_avatar) == 2 and len(voice_only) == 3
                    for outcome in voice_only:
                        notice = next(m for m in outcome if m["type"] == "avatar_unavailable")
                        assert notice["reason"] == "capacity", notice
                    ledger = (await http.get(sims.liveavatar + "/_sim/ledger")).json()
                    assert session_counts(ledger)[0] == 2, f"create calls beyond the budget: {ledger['requests']}"
                    held.cancel_scope.cancel()

            async def stopped() -> bool:
                return session_counts((await http.get(sims.liveavatar + "/_sim/ledger")).json()) == (2, 2)

            await wait_for(stopped, "both avatar sessions stopped")
            again: list[dict[str, Any]] = []
            with trio.fail_after(30):
                async with trio.open_nursery() as held:
                    await held.start(open_one, urls[1], again)
                    assert verdict(again) == "ready" and first(again)["avatar"] is not None, again
                    held.cancel_scope.cancel()
            metrics = (await http.get(urls[0] + "/metrics")).text + (await http.get(urls[1] + "/metrics")).text
            assert 'avatar_relay_admission_refusals_total{reason="avatar_budget"}' in metrics
        outer.cancel_scope.cancel()


@pytest.mark.timeout(150)
async def test_sigterm_on_one_relay_releases_its_seats_at_once(redis_server: RedisServer, tmp_path: Path) -> None:
    """The fleet's cap 2, both seats held by relay A; relay B refuses with `capacity`. SIGTERM to A: its browsers
    get `shutdown`, A exits 0, and B admits at its first attempt after that (the lease is 60 s: only the release
    at the drain can explain it)."""
    async with trio.open_nursery() as outer:
        sims: SimulatorURLs = await outer.start(serve_simulators, "127.0.0.1")
        envs = [fleet_env(sims, tmp_path, redis_server, name, RELAY_MAX_CONVERSATIONS="2", RELAY_FLEET_LEASE="60",
                          RELAY_DRAIN_TIMEOUT="5") for name in "ab"]
        async with fleet(envs, tmp_path) as ((a_process, a_url), (_, b_url)):
            with trio.fail_after(60):
                async with trio.open_nursery() as held:
                    on_a = [[], []]  # type: list[list[dict[str, Any]]]
                    for outcome in on_a:
                        await held.start(open_one, a_url, outcome)
                    assert [verdict(o) for o in on_a] == ["ready", "ready"]
                    refused: list[dict[str, Any]] = []
                    await held.start(open_one, b_url, refused)
                    assert verdict(refused) == "capacity"
                    a_process.send_signal(signal.SIGTERM)
                    assert await a_process.wait() == 0

                    async def told_shutdown() -> bool:
                        return all(("error", "shutdown") in [(m["type"], m.get("code")) for m in o] for o in on_a)

                    await wait_for(told_shutdown, f"both browsers told shutdown: {on_a}")
                    admitted: list[dict[str, Any]] = []
                    await held.start(open_one, b_url, admitted)
                    assert verdict(admitted) == "ready", admitted
                    held.cancel_scope.cancel()
        outer.cancel_scope.cancel()


@pytest.mark.timeout(150)
async def test_a_killed_relays_seats_expire_with_its_lease(redis_server: RedisServer, tmp_path: Path) -> None:
    """The fleet's cap 1, held by relay A; kill -9 A (no drain, no release): B refuses until A's seat has expired
    (RELAY_FLEET_LEASE=3), then admits — no seat is held forever by a dead process."""
    async with trio.open_nursery() as outer:
        sims: SimulatorURLs = await outer.start(serve_simulators, "127.0.0.1")
        envs = [fleet_env(sims, tmp_path, redis_server, name, RELAY_AVATAR="none", RELAY_MAX_CONVERSATIONS="1",
                          RELAY_FLEET_LEASE="3") for name in "ab"]
        async with fleet(envs, tmp_path) as ((a_process, a_url), (_, b_url)):
            with trio.fail_after(60):
                async with trio.open_nursery() as held:
                    on_a: list[dict[str, Any]] = []
                    await held.start(open_one, a_url, on_a)
                    assert verdict(on_a) == "ready"
                    refused: list[dict[str, Any]] = []
                    await held.start(open_one, b_url, refused)
                    assert verdict(refused) == "capacity"
                    a_process.kill()
                    await a_process.wait()
                    assert redis_server.command("ZCARD", "{avatar-relay}:seats").strip() == "1"  # not released

                    async def admitted_on_b() -> bool:
                        outcome: list[dict[str, Any]] = []
                        await held.start(open_one, b_url, outcome)
                        return verdict(outcome) == "ready"

                    await wait_for(admitted_on_b, "B admits once the dead relay's seat expired", guard=30)
                    held.cancel_scope.cancel()
        outer.cancel_scope.cancel()


@pytest.mark.timeout(150)
async def test_redis_outage_refuses_new_conversations_or_admits_them_locally(redis_server: RedisServer,
                                                                              tmp_path: Path) -> None:
    """Redis stops with a conversation open. Under the default policy (`refuse`) /readyz turns 503 and a new
    conversation is refused with `upstream_unavailable`, while the open one goes on (the agent still answers);
    under `local` the relay stays ready and admits. When Redis is back, the refusing relay admits again and its
    open conversation's seat is registered again."""
    async with trio.open_nursery() as outer:
        sims: SimulatorURLs = await outer.start(serve_simulators, "127.0.0.1")
        envs = [fleet_env(sims, tmp_path, redis_server, "refuse", RELAY_AVATAR="none", RELAY_FLEET_LEASE="3"),
                fleet_env(sims, tmp_path, redis_server, "local", RELAY_AVATAR="none", RELAY_FLEET_LEASE="3",
                          RELAY_FLEET_OUTAGE="local")]
        async with fleet(envs, tmp_path) as ((_, refusing), (_, local)), httpx2.AsyncClient(timeout=5.0) as http:
            with trio.fail_after(90):
                async with open_websocket_url(refusing.replace("http", "ws") + "/ws") as ws:
                    browser = BrowserClient(ws)
                    await browser.start()
                    redis_server.stop()

                    async def refusing_not_ready() -> bool:
                        answer = await http.get(refusing + "/readyz")
                        return answer.status_code == 503 and answer.json()["checks"]["redis"] is False

                    await wait_for(refusing_not_ready, "/readyz 503 with redis failing")
                    assert (await http.get(local + "/readyz")).status_code == 200
                    outcome: list[dict[str, Any]] = []
                    async with trio.open_nursery() as held:
                        await held.start(open_one, refusing, outcome)
                        assert verdict(outcome) == "upstream_unavailable", outcome
                        locally: list[dict[str, Any]] = []
                        await held.start(open_one, local, locally)
                        assert verdict(locally) == "ready", locally
                        await browser.send(type="text", text="are you still there?")
                        await browser.expect("agent_response")
                        metrics = (await http.get(refusing + "/metrics")).text
                        assert "avatar_relay_fleet_redis_healthy 0.0" in metrics
                        assert 'avatar_relay_admission_refusals_total{reason="redis_unavailable"} 1.0' in metrics
                        redis_server.start()

                        async def ready_again() -> bool:
                            return (await http.get(refusing + "/readyz")).status_code == 200

                        await wait_for(ready_again, "/readyz 200 once Redis is back")

                        async def registered_again() -> bool:  # the open ones on both relays
                            return redis_server.command("ZCARD", "{avatar-relay}:seats").strip() == "2"

                        await wait_for(registered_again, "the open conversations' seats registered again")
                        after: list[dict[str, Any]] = []
                        await held.start(open_one, refusing, after)
                        assert verdict(after) == "ready", after
                        held.cancel_scope.cancel()
                    await browser.send(type="text", text="and now?")
                    await browser.expect("agent_response")
        outer.cancel_scope.cancel()


@pytest.mark.timeout(120)
@pytest.mark.parametrize("entry", ["serve", "serve --workers 2", "hypercorn"])
async def test_redis_unreachable_at_start_up_is_one_clear_line(entry: str, tmp_path: Path) -> None:
    port = free_port()
    env = base_env(ELEVENLABS_BASE_URL="http://127.0.0.1:9", ELEVENLABS_AGENT_ID="agent_x", ELEVENLABS_API_KEY="xi",
                   RELAY_AVATAR="none", RELAY_AUTH="off", RELAY_STATE_DIR=str(tmp_path / "state"),
                   RELAY_REDIS_URL=f"redis://:hunter2@127.0.0.1:{free_port()}/0")
    if entry == "hypercorn":
        argv = [sys.executable, "-m", "hypercorn", "-k", "trio", "-b", f"127.0.0.1:{port}", "relay.web:app"]
    else:
        argv = [sys.executable, "-m", "relay", *entry.split(), "--port", str(port)]
    with trio.fail_after(60):
        done = await trio.run_process(argv, env=env, cwd=tmp_path, capture_stdout=True, capture_stderr=True,
                                      check=False)
    lines = [line for line in done.stderr.decode().splitlines() if line.strip()]
    assert lines == [lines[0]] and lines[0].startswith("avatar-relay: RELAY_REDIS_URL: cannot use Redis at start-up"), \
        lines
    assert "hunter2" not in done.stderr.decode() + done.stdout.decode() and "***" in lines[0]
    if entry != "hypercorn":  # hypercorn 0.18 exits 0 whatever its worker's status (docs/deploy.md)
        assert done.returncode == 1
