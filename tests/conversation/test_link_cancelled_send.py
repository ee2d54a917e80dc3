"""A numbered message whose send is cancelled before it is written (the conversation ending while the outbox was
sending it: a `stop` mid-reply) still reaches the browser, before anything numbered after it: the `seq` run has no
gap. Seen through nginx and Caddy (tests/proxy/) as `... 45, 47 ended` in about one run in three."""

from __future__ import annotations

import orjson
import trio

from relay.conversation.link import BrowserLink


class StallingSocket:
    """A connection whose sends wait while `open` is not set (a browser or proxy behind on reading); `stalled` is
    set once a send waits."""

    def __init__(self) -> None:
        self.sent: list[tuple[object, object]] = []
        self.open = trio.Event()
        self.stalled = trio.Event()

    async def receive(self) -> str | bytes | None:
        await trio.sleep_forever()

    async def send(self, data: str | bytes) -> None:
        if not self.open.is_set():
            self.stalled.set()
            await self.open.wait()
        assert isinstance(data, str)
        message = orjson.loads(data)
        self.sent.append((message.get("seq"), message["type"]))

    async def close(self, code: int, reason: str = "") -> None:
        pass


async def test_a_message_whose_send_was_cancelled_goes_out_before_the_next_one() -> None:
    socket = StallingSocket()
    link = BrowserLink(window=20, send_timeout=5, issue_token=lambda: "token")
    link.attach_first(socket)
    socket.open.set()
    await link.send('{"type":"ready","conversation_id":"c1"}')
    await link.send('{"type":"agent_response","text":"hello"}')
    socket.open = trio.Event()
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(link.send, '{"type":"agent_alignment","chars":"hel"}')
            await socket.stalled.wait()
            nursery.cancel_scope.cancel()  # the conversation ends while that send waits
        socket.open.set()
        await link.send('{"type":"ended","reason":"client_stop"}')
    assert socket.sent == [(None, "ready"), (1, "agent_response"), (2, "agent_alignment"), (3, "ended")]
