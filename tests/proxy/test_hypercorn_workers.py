"""`hypercorn -k trio -w 2 relay.web:app` (hypercorn's own multi-worker command line, issue 29): its workers share
one listening socket and know nothing of each other, so a resume may land on the worker that does not hold the
conversation. That worker must answer at once, `resume_failed` reason `elsewhere` (the page then tries again), never
`unknown` (which the page takes as the end) and never a hang — even with one `RELAY_RESUME_ROUTE` for the relay, as
a proxy in front of it needs (docs/deploy.md "Resuming behind a proxy")."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import trio

from tests.proxy.fleet import relay, route_of, start
from tests.support.simcontrol import SimControl, simulators

pytestmark = pytest.mark.timeout(180)


def hypercorn_workers(port: int) -> list[str]:
    return [sys.executable, "-m", "hypercorn", "-k", "trio", "-w", "2", "-b", f"127.0.0.1:{port}", "relay.web:app"]


async def test_a_resume_on_the_other_hypercorn_worker_is_elsewhere_and_a_retry_reaches_the_holder(
        tmp_path: Path) -> None:
    async with simulators() as (sims, http), relay(sims, tmp_path, "relay-a", command=hypercorn_workers) as url:
        browser, ready = await start(url)
        token = ready["resume_token"]
        assert route_of(token).startswith("relay-a-p"), token  # the relay's name, then the worker's own part
        answers: list[str] = []
        with trio.fail_after(60):  # a hang guard: the kernel, not the test, picks the worker of each attempt
            while not (answers and answers[-1] == "resumed" and "elsewhere" in answers):
                if browser.connection is not None:
                    browser.drop()
                answer = await browser.resume(token)
                if answer["type"] == "resumed":
                    answers.append("resumed")
                    assert answer["conversation_id"] == ready["conversation_id"]
                    assert answer["seq"] >= browser.last_seq, (answer, browser.last_seq)  # the replay follows
                    token = answer["resume_token"]
                else:
                    answers.append(answer["reason"])
                    assert answer["reason"] == "elsewhere", answers
                    assert (await browser.expect("ended"))["reason"] == "resume_failed"
                    assert await browser.read_to_close() == 1008
                    browser.connection = None
        await browser.send(type="text", text="and on sunday?")
        await browser.expect("agent_response", where=lambda m: m["seq"] > browser.seqs[0])
        await browser.send(type="stop")
        assert (await browser.expect("ended"))["reason"] == "client_stop"
        seqs = browser.seqs
        assert seqs == list(range(1, len(seqs) + 1)), str([(m.get("seq"), m["type"]) for m in browser.messages])
        ledger = await SimControl(str(sims.elevenlabs), http).ledger()
        assert len(ledger["conversations"]) == 1
