"""What someone without a token can do to a real relay process (`avatar-relay serve`, token mode, demo upstreams):
the attacks of the security review (docs/reliability.md, "What an attacker can do"), each tried the way the review
tried it — idle sockets from many loopback source addresses, maximal and compressed frames — and measured where the
bound is memory."""

from __future__ import annotations

from pathlib import Path

import httpx2
import orjson
import trio
from trio_websocket import open_websocket_url

from relay.server.auth import mint_jwt
from tests.faults.test_process_faults import base_env
from tests.support.harness import BrowserClient
from tests.support.processes import relay_process
from tests.support.wsframes import RawSocket, open_raw_socket

ROOT = Path(__file__).resolve().parents[2]
SECRET = "attack-tests-secret-0123456789abcdef"


def token_env(tmp_path: Path, **values: str) -> dict[str, str]:
    """A demo relay (built-in simulators) that requires client tokens."""
    return base_env(RELAY_AUTH="token", RELAY_AUTH_SECRET=SECRET, XDG_STATE_HOME=str(tmp_path), **values)


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


async def error_of(sock: RawSocket) -> dict[str, object] | None:
    """The first text frame the relay sent on a raw socket (its `error`), or None if it sent none."""
    while (frame := await sock.receive_frame()) is not None:
        opcode, payload = frame
        if opcode == 0x1:
            return orjson.loads(payload)  # type: ignore[no-any-return]
        if opcode == 0x8:
            return None
    return None


async def first_answer(user: BrowserClient) -> dict[str, object]:
    """The relay's first answer to `start` other than queue news (the demo agent has a concurrency queue)."""
    with trio.fail_after(15):
        while (message := await user.next_message())["type"] == "queue_status":
            pass
    return message


async def test_idle_sockets_from_many_addresses_hold_no_seat_and_time_out(tmp_path: Path) -> None:
    """H1: 5 addresses x 20 sockets that never send `start` (2.5 times the conversation cap): a user with a valid
    token still gets a conversation, /readyz stays 200, and every idle socket is closed (refused, pushed out by a
    newer one, or timed out) long before RELAY_IDLE_TIMEOUT."""
    env = token_env(tmp_path, RELAY_MAX_CONVERSATIONS="40", RELAY_START_TIMEOUT="3", RELAY_MAX_PENDING="32",
                    RELAY_IDLE_TIMEOUT="600")
    async with relay_process(env, ROOT) as (_, url), httpx2.AsyncClient(timeout=5) as http:
        port = port_of(url)
        idle: list[RawSocket] = []
        for n in range(2, 7):
            for _ in range(20):
                idle.append(await open_raw_socket(port, source=f"127.0.0.{n}"))
        ready = await http.get(url + "/readyz")
        assert ready.status_code == 200, ready.text
        async with open_websocket_url(url.replace("http", "ws") + "/ws") as ws:
            user = BrowserClient(ws)
            await user.send(type="start", token=mint_jwt(SECRET, subject="alice"))
            assert (await first_answer(user))["type"] == "ready"
            await user.send(type="stop")
        codes = []
        with trio.fail_after(30):
            for sock in idle:
                error = await error_of(sock) if sock.status == 101 else None
                codes.append(None if error is None else error["code"])
                await sock.aclose()
        assert set(codes) <= {"timeout", "capacity", None}, codes
        assert "timeout" in codes and "capacity" in codes
