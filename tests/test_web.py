"""`ASGIWebSocket.send_whole` (relay.server.asgi_ws), the send used when the browser offered permessage-deflate,
with a fake socket send (no sockets): a send that has started finishes even when its caller is cancelled meanwhile,
and a send that cannot finish within RELAY_SEND_TIMEOUT ends the conversation and leaves nothing more to be sent on
that socket (a compressed frame may be lost, so any later frame would be corrupt). The process tests are
tests/faults/test_deflate_endings.py and the `deflate` cases of tests/faults/test_stalled_browser.py."""

from __future__ import annotations

import pytest
import trio

from relay.conversation.endings import ConversationOver
from relay.server.asgi_ws import ASGIWebSocket


def browser_with(raw_send: object, send_timeout: float) -> ASGIWebSocket:
    browser = ASGIWebSocket.__new__(ASGIWebSocket)  # no ASGI connection: the sends are what is tested
    browser._raw_send = raw_send  # type: ignore[assignment]
    browser._send_timeout = send_timeout
    browser.send = browser.send_whole
    return browser


async def test_a_started_send_finishes_although_its_caller_is_cancelled() -> None:
    written: list[str | bytes] = []
    started = trio.Event()

    async def slow_send(data: str | bytes) -> None:
        started.set()
        await trio.sleep(0.05)  # e.g. waiting for the socket's send lock behind hypercorn's pong
        written.append(data)

    browser = browser_with(slow_send, send_timeout=10.0)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(browser.send, "frame")
        await started.wait()
        nursery.cancel_scope.cancel()
    assert written == ["frame"]


async def test_a_send_that_cannot_finish_in_time_ends_the_conversation_and_the_socket_sends_nothing_more() -> None:
    calls: list[str | bytes] = []

    async def stuck_send(data: str | bytes) -> None:
        calls.append(data)
        await trio.sleep_forever()

    browser = browser_with(stuck_send, send_timeout=0.05)
    with trio.fail_after(5):
        with pytest.raises(ConversationOver) as first:
            await browser.send("frame")
    assert first.value.reason == "timeout"
    with pytest.raises(ConversationOver):  # `ended` would not decompress: not sent (the close still is)
        await browser.send('{"type":"ended"}')
    assert calls == ["frame"]
