"""HTTP/1.1 keep-alive under hypercorn's trio worker, on real sockets: the relay and every simulator answer (or close)
each request on a kept-alive connection, never leave one unanswered.

The trap (docs/reliability.md "HTTP keep-alive"): a response sent before the request's body has arrived (a 404/405,
or a handler that ignores the body) makes hypercorn close the connection inside the app's last `send`; without
KeepAliveGuard quart-trio cancels that `send` half-way, the connection is neither closed nor recycled, and the next
request on it is parked forever. Driven here with h11 on a raw socket, so no client library hides a hang by retrying."""

from __future__ import annotations

import h11
import pytest
import trio
import trio.testing

from relay.providers.table import serve_simulators
from relay.sim.runner import SimulatorURLs
from tests.support.harness import running_relay

HANG_GUARD = 5.0  # generous: an answer takes milliseconds


class OneConnection:
    """A raw HTTP/1.1 client connection (h11 over a trio TCP stream)."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.h11 = h11.Connection(h11.CLIENT)

    async def send(self, *events: h11.Event) -> None:
        await self.stream.send_all(b"".join(self.h11.send(e) or b"" for e in events))

    async def response(self) -> tuple[int, bytes] | None:
        """The next response (status, body), or None when the server closed the connection instead."""
        status, body = 0, b""
        while True:
            event = self.h11.next_event()
            if event is h11.NEED_DATA:
                self.h11.receive_data(await self.stream.receive_some(65536))
            elif isinstance(event, h11.Response):
                status = event.status_code
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                return status, body
            elif isinstance(event, h11.ConnectionClosed):
                return None

    async def get(self, path: str) -> tuple[int, bytes] | None:
        if self.h11.our_state is h11.DONE and self.h11.their_state is h11.DONE:
            self.h11.start_next_cycle()
        await self.send(h11.Request(method="GET", target=path, headers=[("host", "127.0.0.1")]),
                        h11.EndOfMessage())
        return await self.response()


async def late_body_then_next_request(base_url: str, path: str) -> tuple[int, bytes] | None:
    """POST `path` (answered without reading the body), send the body only once the answer is in, then GET `path`
    on the same connection: the GET's answer, or None if the server closed the connection (both are fine)."""
    host, port = base_url.removeprefix("http://").rsplit(":", 1)
    async with await trio.open_tcp_stream(host, int(port)) as stream:
        conn = OneConnection(stream)
        with trio.fail_after(HANG_GUARD):
            await conn.send(h11.Request(method="POST", target=path,
                                        headers=[("host", "127.0.0.1"), ("content-length", "2")]))
            first = await conn.response()
            assert first is not None and first[0] in (404, 405), first
            # The server runs in this Trio run: once every task is blocked, it has finished with that response
            # (recycled, closed or — the bug — neither) before the body arrives.
            await trio.testing.wait_all_tasks_blocked()
            try:
                await conn.send(h11.Data(data=b"{}"), h11.EndOfMessage())
            except trio.BrokenResourceError:
                return None  # closed: fine
        try:
            with trio.fail_after(HANG_GUARD):
                return await conn.get(path)
        except trio.BrokenResourceError:
            return None
        except trio.TooSlowError:
            raise AssertionError(f"{base_url}{path}: the request after a late request body was never answered and "
                                 "the connection never closed") from None


@pytest.mark.timeout(60)
async def test_every_simulator_answers_or_closes_after_a_late_request_body() -> None:
    async with trio.open_nursery() as nursery:
        sims: SimulatorURLs = await nursery.start(serve_simulators, "127.0.0.1")
        for name in ("elevenlabs", "heygen", "liveavatar"):
            answer = await late_body_then_next_request(getattr(sims, name), "/no-such-route")
            assert answer is None or answer[0] == 404, (name, answer)
        nursery.cancel_scope.cancel()


@pytest.mark.timeout(60)
async def test_the_relay_answers_or_closes_after_a_late_request_body() -> None:
    async with running_relay() as relay:
        for path in ("/readyz", "/healthz", "/metrics"):
            answer = await late_body_then_next_request(relay.url, path)
            assert answer is None or answer[0] == 200, (path, answer)


@pytest.mark.timeout(60)
async def test_health_and_metrics_polled_on_one_kept_alive_connection_are_all_answered() -> None:
    """How a load balancer or Prometheus polls: one connection, one request after another."""
    async with running_relay() as relay:
        host, port = relay.url.removeprefix("http://").rsplit(":", 1)
        async with await trio.open_tcp_stream(host, int(port)) as stream:
            conn = OneConnection(stream)
            for i in range(300):
                path = ("/readyz", "/metrics", "/healthz")[i % 3]
                with trio.fail_after(HANG_GUARD):
                    answer = await conn.get(path)
                assert answer is not None and answer[0] == 200, (i, path, answer)
