"""The relay's one upstream HTTP client against a server that closes idle keep-alive connections after 5 s (Node's,
uvicorn's and hypercorn's default; our simulators run on hypercorn): a request sent when the connection has been
idle just under 5 s must not go out on a connection the server is closing at that very moment (the server's FIN and
the request cross; the request fails with no answer). A billable create is never retried, so such a loss cost a
conversation its avatar (tests/faults/test_fleet_admission.py failed that way once, 5.0 s after the previous call).

The server here models the crossing deterministically: a request that reaches a connection idle for at least
`CROSSING` seconds is dropped with the connection, unanswered, as the closing server's kernel would."""

from __future__ import annotations

from functools import partial

import trio

from relay.server.upstreams import upstream_http_client

SERVER_IDLE_TIMEOUT = 5.0
CROSSING = 4.5  # a request this late meets the server's close on the wire


async def node_like_server(stream: trio.SocketStream, connections: list[int]) -> None:
    """HTTP/1.1 with keep-alive: answer each request `{}`; close when idle `SERVER_IDLE_TIMEOUT`; a request that
    arrives after `CROSSING` seconds of idle is lost with the connection."""
    connections.append(1)
    buffer = b""
    async with stream:
        idle_since = trio.current_time()
        while True:
            while b"\r\n\r\n" not in buffer:
                with trio.move_on_at(idle_since + SERVER_IDLE_TIMEOUT):
                    data = await stream.receive_some()
                    if not data:
                        return
                    buffer += data
                    continue
                return  # idle timeout: close
            if trio.current_time() - idle_since >= CROSSING:
                return  # the request crossed our close
            head, _, buffer = buffer.partition(b"\r\n\r\n")
            length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                           if line.lower().startswith(b"content-length:")), 0)
            while len(buffer) < length:
                buffer += await stream.receive_some()
            buffer = buffer[length:]
            await stream.send_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}")
            idle_since = trio.current_time()


async def test_a_request_just_before_the_servers_idle_timeout_opens_a_fresh_connection() -> None:
    connections: list[int] = []
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, partial(node_like_server, connections=connections), 0,
                                                host="127.0.0.1"))
        port = listeners[0].socket.getsockname()[1]
        url = f"http://127.0.0.1:{port}/v1/sessions/token"
        async with upstream_http_client() as http:
            assert (await http.post(url, json={})).status_code == 200
            await trio.sleep(CROSSING + 0.2)
            answer = await http.post(url, json={})
            assert answer.status_code == 200 and answer.json() == {}
            assert len(connections) == 2, "the second request should have gone out on a new connection"
            assert (await http.post(url, json={})).status_code == 200
            assert len(connections) == 2, "a connection idle for a moment is still reused"
        nursery.cancel_scope.cancel()
