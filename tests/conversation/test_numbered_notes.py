"""#22's notes under #29's numbering: a guardrail note, like every JSON message after `ready`, carries `seq` and is
kept for a resume (the conversation talks to a `BrowserLink`, as it does with RELAY_RESUME_WINDOW > 0)."""

from __future__ import annotations

import orjson
import trio

from relay.conversation.link import BrowserLink
from relay.nursery import run_conversation
from relay.protocol import elevenlabs as el
from tests.support.fakes import Harness, start_and_ready


async def test_a_guardrail_note_is_numbered_and_kept_for_a_resume() -> None:
    h = Harness()
    h.provider = None  # type: ignore[assignment]  # voice-only
    link = BrowserLink(window=20, send_timeout=5, issue_token=lambda: "token")
    link.attach_first(h.browser)

    async def run() -> None:
        with link.scope:
            await run_conversation(link, h.upstreams(), h.shutdown_scope)

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(run)
            ready = await start_and_ready(h)
            assert ready["resume_token"] == "token" and "seq" not in ready
            await h.agent.emit(el.parse_server_event(b'{"type":"guardrail_triggered"}'))
            note = await h.browser.expect("guardrail_triggered")
            assert note["seq"] >= 1
            kept = [orjson.loads(numbered.frame) for numbered in link.buffer.since(0)]
            assert {"type": "guardrail_triggered", "seq": note["seq"]} in kept
            await h.browser.send_json(type="stop")
            await h.browser.expect("ended")
