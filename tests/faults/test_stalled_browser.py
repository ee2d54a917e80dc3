"""A browser that stops reading (a real TCP client with a tiny receive buffer that never reads again) must not keep
its avatar session alive nor pin the relay. On the relay's own `/ws` socket (relay.server.direct_ws) a send that
waits RELAY_SEND_TIMEOUT takes the connection as lost, as a dropped one: the conversation is held for the resume
window (a phone in a tunnel stops acknowledging exactly like this), then ended and its session stopped. On
hypercorn's path (permessage-deflate, RELAY_DIRECT_WEBSOCKET=false), whose write cannot be cancelled, the send
watchdog ends the conversation within RELAY_SEND_TIMEOUT. Either way TCP_USER_TIMEOUT breaks the stuck write, so the
conversation's slot is freed too, and memory stays bounded meanwhile: the Outbox is a bounded queue and audio beyond
it is dropped. The relay runs with the socket options `avatar-relay serve` sets
(`relay.server.serving.hypercorn_config`)."""

from __future__ import annotations

import base64
import contextlib
import os
import socket

import orjson
import pytest
import trio

from tests.faults.matrix import running_fault_relay, stopped_at
from tests.support.wsframes import client_frame


async def stalled_client(host: str, port: int, *, deflate: bool = False) -> trio.SocketStream:
    """Connect with a 4 KiB receive buffer, upgrade to a WebSocket (offering permessage-deflate, as browsers do, if
    `deflate`), send `start`; the caller never reads again."""
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    await sock.connect((host, port))
    stream = trio.SocketStream(sock)
    key = base64.b64encode(os.urandom(16)).decode()
    await stream.send_all((f"GET /ws HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                           f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
                           + ("Sec-WebSocket-Extensions: permessage-deflate\r\n" if deflate else "")
                           + "\r\n").encode())
    answer = b""
    while b"\r\n\r\n" not in answer:
        answer += await stream.receive_some(1)  # byte by byte: read nothing beyond the handshake
    assert answer.startswith(b"HTTP/1.1 101"), answer
    await stream.send_all(client_frame(b'{"type":"start"}'))
    return stream


BOUND = 20.0  # seconds: a hang guard, far above RELAY_SEND_TIMEOUT (1 s) + the stop, and the 2 s TCP_USER_TIMEOUT
NO_TCP_TIMEOUT = 600.0  # TCP_USER_TIMEOUT far beyond the test: only the send watchdog can end the conversation


async def _stall(*, tcp_send_timeout: float, wait_for_free: bool, deflate: bool) -> tuple[bool, bool]:
    """Run a stalled client on a relay with the production socket options (TCP_USER_TIMEOUT = `tcp_send_timeout`)
    until its avatar session is stopped and, if `wait_for_free`, its conversation's slot is freed, for at most
    BOUND seconds; returns (stopped, freed). The stalled socket is closed on every way out, so the write hypercorn
    cannot cancel ends and the relay's teardown cannot hang."""
    # With `deflate`, hypercorn's path (the direct socket declines the extension: relay.server.direct_ws).
    async with running_fault_relay(relay_send_timeout=1.0, tcp_send_timeout=tcp_send_timeout,
                                   tcp_send_buffer=16384, relay_idle_timeout=30.0, relay_resume_window=3.0,
                                   relay_direct_websocket=not deflate) as relay:
        await relay.faults("elevenlabs", max_reply_s=6.0)
        host, port = relay.url.removeprefix("http://").split(":")
        stream = await stalled_client(host, int(port), deflate=deflate)
        stopped = freed = False
        try:
            with trio.move_on_after(BOUND):
                while not (await relay.ledger("heygen"))["sessions"]:
                    await trio.sleep(0.05)
                await stream.send_all(client_frame(orjson.dumps({"type": "text", "text": "a long story please " * 8})))
                while not (stopped and (freed or not wait_for_free)):
                    # Still active (so no idle timeout) while the long reply's audio piles up unread.
                    # (TCP_USER_TIMEOUT, once it fires, resets the connection: the stalled browser is gone then.)
                    with trio.move_on_after(0.2), contextlib.suppress(trio.BrokenResourceError):
                        await stream.send_all(client_frame(b'{"type":"activity"}'))
                    await trio.sleep(0.1)
                    sessions = (await relay.ledger("heygen"))["sessions"]
                    stopped = bool(sessions) and all(stopped_at(s) is not None for s in sessions.values())
                    freed = relay.open_conversations == 0
        finally:
            await stream.aclose()
        return stopped, freed


# With permessage-deflate every send the relay starts is shielded (relay.server.asgi_ws.ASGIWebSocket): still bounded.
@pytest.mark.timeout(60)
@pytest.mark.parametrize("deflate", [False, True], ids=["plain", "deflate"])
async def test_the_send_watchdog_stops_the_session_of_a_browser_that_stopped_reading(deflate: bool) -> None:
    stopped, _ = await _stall(tcp_send_timeout=NO_TCP_TIMEOUT, wait_for_free=False, deflate=deflate)
    assert stopped, f"the avatar session of a browser that stopped reading was still running after {BOUND} s"


@pytest.mark.timeout(60)
@pytest.mark.parametrize("deflate", [False, True], ids=["plain", "deflate"])
async def test_tcp_user_timeout_also_frees_the_conversation_of_a_browser_that_stopped_reading(deflate: bool) -> None:
    stopped, freed = await _stall(tcp_send_timeout=2.0, wait_for_free=True, deflate=deflate)
    assert stopped, f"the avatar session of a browser that stopped reading was still running after {BOUND} s"
    assert freed, f"the conversation of a browser that stopped reading still held its slot after {BOUND} s"
