"""`BrowserLink`'s numbering when a send is cut short (no sockets): the conversation ending cancels a send that had
not written its message yet; the next message (the ending's `ended`) must not leave a hole in the `seq` run — what
the cut send left is sent first."""

from __future__ import annotations

import orjson
import trio

from relay.conversation.link import BrowserLink


class SlowSocket:
    """Writes every frame at once, except that the first send of a frame containing `stall` waits until cancelled
    (nothing written: as quart's send when cancelled before hypercorn writes)."""

    def __init__(self, stall: str) -> None:
        self.stall = stall
        self.written: list[str | bytes] = []
        self.stalling = trio.Event()

    async def receive(self) -> str | bytes | None:
        await trio.sleep_forever()
        return None  # pragma: no cover

    async def send(self, data: str | bytes) -> None:
        if isinstance(data, str) and self.stall in data and not self.stalling.is_set():
            self.stalling.set()
            await trio.sleep_forever()
        self.written.append(data)

    async def close(self, code: int, reason: str = "") -> None:
        pass


async def test_a_send_cut_short_leaves_no_hole_in_the_seq_run() -> None:
    socket = SlowSocket(stall="avatar_speaking")
    link = BrowserLink(window=20, send_timeout=5, issue_token=lambda: "token")
    link.attach_first(socket)
    await link.send('{"type":"ready","conversation_id":"c"}')
    await link.send('{"type":"agent_response","text":"hi"}')
    async with trio.open_nursery() as nursery:
        nursery.start_soon(link.send, '{"type":"avatar_speaking","text":"hi"}')
        await socket.stalling.wait()
        nursery.cancel_scope.cancel()  # the conversation ends while that send waits
    await link.send('{"type":"ended","reason":"client_stop"}')
    seqs = [orjson.loads(frame).get("seq") for frame in socket.written]
    kinds = [orjson.loads(frame)["type"] for frame in socket.written]
    assert seqs == [None, 1, 2, 3], socket.written
    assert kinds == ["ready", "agent_response", "avatar_speaking", "ended"]
