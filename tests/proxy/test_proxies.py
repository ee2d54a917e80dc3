"""A fleet of two relays behind real nginx and real Caddy, each running its snippet from docs/proxies/ (issue 29,
"Where it must work"): a conversation opened through the proxy, its TCP connection dropped (a reset, no close frame),
is resumed through the proxy by the relay that holds it, every time (the proxy routes on `?relay=<route>`, which the
page adds to a resume's URL); a resume the proxy sends to the other relay is answered `resume_failed` `elsewhere`
(never a hang) and the token still works at the holder."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from tests.faults.test_process_faults import ledger_of
from tests.proxy.fleet import port_of, relay, route_of, serve_workers, start, wait_workers_up
from tests.proxy.proxies import CADDY_SNIPPET, NGINX_SNIPPET, ROOT, Proxy, caddy, nginx
from tests.support.simcontrol import SimControl, simulators

pytestmark = pytest.mark.timeout(180)

PROXIES = [pytest.param(nginx, id="nginx"), pytest.param(caddy, id="caddy")]
RESUMES = 3  # each would reach the holder by chance with probability 1/2 without the routing


@pytest.mark.parametrize("proxy", PROXIES)
async def test_a_dropped_conversation_resumes_through_the_proxy_at_the_relay_that_holds_it(
        proxy: Proxy, tmp_path: Path) -> None:
    async with (simulators() as (sims, http), relay(sims, tmp_path, "relay-a") as relay_a,
                relay(sims, tmp_path, "relay-b") as relay_b,
                proxy(port_of(relay_a), port_of(relay_b), tmp_path) as url):
        for private in ("/metrics", "/admin/conversations", "/_demo/token"):  # the operator's, not the public's
            assert (await http.get(url + private)).status_code == 403, private
        browser, ready = await start(url)
        token = ready["resume_token"]
        assert route_of(token) in ("relay-a", "relay-b"), token
        for attempt in range(RESUMES):
            browser.drop()
            resumed = await browser.resume(token, path=f"/ws?relay={route_of(token)}")
            assert resumed["type"] == "resumed", (attempt, resumed)
            assert resumed["conversation_id"] == ready["conversation_id"]
            assert route_of(resumed["resume_token"]) == route_of(token)
            token = resumed["resume_token"]
            await browser.send(type="text", text=f"and on day {attempt}?")
            await browser.expect("agent_response", where=lambda m, after=resumed["seq"]: m["seq"] > after)
        await browser.send(type="stop")
        assert (await browser.expect("ended"))["reason"] == "client_stop"
        seqs = browser.seqs
        assert seqs == list(range(1, len(seqs) + 1)), str([(m.get("seq"), m["type"]) for m in browser.messages][-8:])
        assert len((await SimControl(str(sims.elevenlabs), http).ledger())["conversations"]) == 1
        assert len((await ledger_of(http, sims, "liveavatar"))["sessions"]) == 1


@pytest.mark.parametrize("proxy", PROXIES)
async def test_a_resume_the_proxy_sends_to_the_other_relay_is_told_elsewhere_and_the_token_still_works(
        proxy: Proxy, tmp_path: Path) -> None:
    async with (simulators() as (sims, http), relay(sims, tmp_path, "relay-a") as relay_a,
                relay(sims, tmp_path, "relay-b") as relay_b,
                proxy(port_of(relay_a), port_of(relay_b), tmp_path) as url):
        browser, ready = await start(url)
        token = ready["resume_token"]
        other = {"relay-a": "relay-b", "relay-b": "relay-a"}[route_of(token)]
        browser.drop()
        with trio.fail_after(10):  # a hang guard: the other relay answers at once
            refused = await browser.resume(token, path=f"/ws?relay={other}")
            assert refused == {"type": "error", "code": "resume_failed", "reason": "elsewhere",
                               "message": refused["message"]}
            assert (await browser.expect("ended"))["reason"] == "resume_failed"
            assert await browser.read_to_close() == 1008
        browser.connection = None
        resumed = await browser.resume(token, path=f"/ws?relay={route_of(token)}")
        assert resumed["type"] == "resumed", resumed
        assert resumed["conversation_id"] == ready["conversation_id"]
        await browser.send(type="stop")
        assert (await browser.expect("ended"))["reason"] == "client_stop"
        assert len((await SimControl(str(sims.elevenlabs), http).ledger())["conversations"]) == 1


@pytest.mark.parametrize("proxy", PROXIES)
async def test_behind_the_proxy_a_relay_with_two_workers_resumes_whichever_worker_the_resume_lands_on(
        proxy: Proxy, tmp_path: Path) -> None:
    """relay-a is `serve --workers 2`: its tokens name `relay-a-w0` or `relay-a-w1`, the proxy's pattern for relay-a
    takes both, and the worker the kernel gives the resume to hands it to the holder."""
    async with (simulators() as (sims, _), relay(sims, tmp_path, "relay-a", command=serve_workers(2)) as relay_a,
                relay(sims, tmp_path, "relay-b") as relay_b,
                proxy(port_of(relay_a), port_of(relay_b), tmp_path) as url):
        await wait_workers_up(relay_a, 2)
        with trio.fail_after(60):  # the proxy, not the test, picks the relay of a new conversation
            while True:
                browser, ready = await start(url)
                if route_of(ready["resume_token"]).startswith("relay-a-w"):
                    break
                await browser.send(type="stop")
                await browser.expect("ended")
        token = ready["resume_token"]
        for attempt in range(RESUMES):
            browser.drop()
            resumed = await browser.resume(token, path=f"/ws?relay={route_of(token)}")
            assert resumed["type"] == "resumed", (attempt, resumed)
            assert resumed["conversation_id"] == ready["conversation_id"]
            token = resumed["resume_token"]
        await browser.send(type="stop")
        assert (await browser.expect("ended"))["reason"] == "client_stop"
        seqs = browser.seqs
        assert seqs == list(range(1, len(seqs) + 1)), seqs


def test_docs_deploy_quotes_the_tested_snippets_as_they_are() -> None:
    deploy = (ROOT / "docs" / "deploy.md").read_text()
    for snippet in (NGINX_SNIPPET, CADDY_SNIPPET):
        assert snippet.read_text().rstrip("\n") + "\n```" in deploy, f"docs/deploy.md does not quote {snippet.name}"
