"""What someone without a token can do to a real relay process (`avatar-relay serve`, token mode, demo upstreams):
the attacks of the security review (docs/reliability.md, "What an attacker can do"), each tried the way the review
tried it — idle sockets from many loopback source addresses, maximal and compressed frames — and measured where the
bound is memory."""

from __future__ import annotations

import subprocess
from pathlib import Path

import httpx2
import orjson
import pytest
import trio
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from prometheus_client.parser import text_string_to_metric_families
from trio_websocket import ConnectionRejected, open_websocket_url

from relay.server.auth import mint_jwt, mint_token
from relay.server.startup import STARTUP_FAILED
from tests.faults.test_process_faults import base_env
from tests.support.harness import BrowserClient
from tests.support.processes import free_port, relay_process, serve_command
from tests.support.wsframes import RawSocket, client_frame, deflated_zeros, open_raw_socket

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


def memory_of(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of process `pid`, in bytes: its resident memory now and at its peak."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, rest = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            values[name] = int(rest.split()[0]) * 1024
    return values["VmRSS"], values["VmHWM"]


async def settled_peak(pid: int, http: httpx2.AsyncClient, url: str) -> int:
    """The relay's peak resident memory once it has answered an HTTP request after the last frame was sent (so
    it has read everything that reached it)."""
    assert (await http.get(url + "/healthz")).status_code == 200
    return memory_of(pid)[1]


@pytest.mark.parametrize("direct", [True, False], ids=["direct", "hypercorn"])
async def test_a_compressed_frame_cannot_inflate_past_the_frame_limit(tmp_path: Path, direct: bool) -> None:
    """H2: one permessage-deflate frame of 64 MiB of zeros (65 KiB on the wire), before any token: on hypercorn's
    path (RELAY_DIRECT_WEBSOCKET=false) refused with 1009 as soon as it inflates past RELAY_MAX_FRAME_BYTES; on the
    direct socket, which declines the extension, refused with 1002 before inflating anything. Either way the relay's
    peak memory hardly moves."""
    env = token_env(tmp_path, RELAY_DIRECT_WEBSOCKET=str(direct).lower())
    async with relay_process(env, ROOT) as (process, url), httpx2.AsyncClient(timeout=5) as http:
        before = await settled_peak(process.pid, http, url)
        sock = await open_raw_socket(port_of(url), deflate=True)
        negotiated = "permessage-deflate" in sock.headers.get("sec-websocket-extensions", "")
        assert sock.status == 101 and negotiated is not direct
        await sock.stream.send_all(client_frame(deflated_zeros(64 * 2**20), rsv1=True))
        with trio.fail_after(15):
            assert await sock.close_code() == (1002 if direct else 1009)
        await sock.aclose()
        grew = await settled_peak(process.pid, http, url) - before
        assert grew < 16 * 2**20, f"peak memory grew by {grew / 2**20:.0f} MiB"


async def hostile(port: int, source: str, compressed: bool, limit: int) -> RawSocket:
    """A socket that sends, before `start`, the most a pre-start socket can make the relay hold: an unfinished
    text message of `limit` bytes less 1 KiB, or (compressed) an unfinished message of 8 MiB of zeros in 8 KiB."""
    sock = await open_raw_socket(port, source=source, deflate=compressed)
    if sock.status == 101:
        try:
            if compressed:
                await sock.stream.send_all(client_frame(deflated_zeros(8 * 2**20), fin=False, rsv1=True))
            else:
                await sock.stream.send_all(client_frame(b"x" * (limit - 1024), fin=False))
        except trio.BrokenResourceError:
            pass  # closed by the relay already
    return sock


async def test_five_hundred_hostile_sockets_before_start_stay_under_100_mb(tmp_path: Path) -> None:
    """H2: 500 sockets from 63 addresses, none with a token, half sending an unfinished maximal `start`
    (RELAY_MAX_START_BYTES), half an unfinished compressed one (refused at once with 1002 on the direct socket, which
    declines the extension): the relay's peak resident memory grows by less than 100 MB (docs/reliability.md has the
    numbers)."""
    limit = 64 * 1024
    async with relay_process(token_env(tmp_path), ROOT) as (process, url), httpx2.AsyncClient(timeout=5) as http:
        before = await settled_peak(process.pid, http, url)
        port = port_of(url)
        socks = []
        for n in range(500):
            socks.append(await hostile(port, f"127.0.1.{2 + n // 8}", n % 2 == 1, limit))
        grew = await settled_peak(process.pid, http, url) - before
        for sock in socks:
            await sock.aclose()
        assert grew < 100 * 10**6, f"peak memory grew by {grew / 10**6:.0f} MB"


async def exit_of(env: dict[str, str]) -> tuple[int | None, str]:
    """Run `avatar-relay serve` on a free port for at most 20 s: its exit status (None: still running, killed) and
    its standard error."""
    process = await trio.lowlevel.open_process(serve_command(free_port()), env=env, cwd=ROOT,
                                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert process.stderr is not None
    errors = bytearray()
    with trio.move_on_after(20):
        while chunk := await process.stderr.receive_some():
            errors += chunk
        await process.wait()
    if process.poll() is None:
        process.kill()
        await process.wait()
        return None, errors.decode()
    return process.returncode, errors.decode()


@pytest.mark.parametrize("key", ["RELAY_AUTH_JWKS_URL", "RELAY_AUTH_PUBLIC_KEY"])
async def test_identity_provider_keys_without_an_audience_refuse_to_start(tmp_path: Path, key: str) -> None:
    """M1: with a JWKS or a public key, tokens minted for any other application of the same identity provider would
    be accepted without an audience: the relay says so in one line and does not start."""
    public = ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    value = "http://127.0.0.1:9/jwks.json" if key == "RELAY_AUTH_JWKS_URL" else public
    status, errors = await exit_of(base_env(RELAY_AUTH="token", XDG_STATE_HOME=str(tmp_path), **{key: value}))
    assert status == STARTUP_FAILED, errors  # #28: every start-up failure is one line and status 1
    lines = [line for line in errors.splitlines() if line.strip()]
    assert len(lines) == 1 and "RELAY_AUTH_AUDIENCE" in lines[0], errors
    async with relay_process(base_env(RELAY_AUTH="token", XDG_STATE_HOME=str(tmp_path),
                                      RELAY_AUTH_AUDIENCE="relay.example", **{key: value}), ROOT):
        pass  # with an audience it serves


async def answer_to(url: str, **start: object) -> dict[str, object]:
    """Open a socket, send `start` with `start`'s fields, and return the relay's first answer (then leave)."""
    async with open_websocket_url(url.replace("http", "ws") + "/ws") as ws:
        user = BrowserClient(ws)
        await user.send(type="start", **start)
        return await first_answer(user)


async def test_a_token_buys_one_conversation(tmp_path: Path) -> None:
    """M2: a token opens one conversation at a time and, by default, one in all — a token with a subject or
    without one, JWT or v1; another token for the same user opens its own."""
    async with relay_process(token_env(tmp_path), ROOT) as (_, url), httpx2.AsyncClient(timeout=5) as http:
        for token in (mint_jwt(SECRET, subject="alice"), mint_jwt(SECRET), mint_token(SECRET, subject="bob")):
            ended = await conversations_ended(http, url)
            async with open_websocket_url(url.replace("http", "ws") + "/ws") as ws:
                first = BrowserClient(ws)
                await first.send(type="start", token=token)
                assert (await first_answer(first))["type"] == "ready"
                again = await answer_to(url, token=token)
                assert again["type"] == "error" and again["code"] == "unauthorized", again
                assert "already in use" in str(again["message"])
                await first.send(type="stop")
                await first.expect("ended")
            with trio.fail_after(10):  # ended on the relay too, its seat and its token's use given back
                while await conversations_ended(http, url) == ended or await open_conversations(http, url):
                    await trio.sleep(0.02)
            later = await answer_to(url, token=token)
            assert later["type"] == "error" and later["code"] == "unauthorized", later
            assert "used for its conversation already" in str(later["message"])
        assert (await answer_to(url, token=mint_jwt(SECRET, subject="alice")))["type"] == "ready"
        more = mint_jwt(SECRET, subject="carol", relay_max_conversations=2)
        answers = []
        for _ in range(3):
            answers.append((await answer_to(url, token=more))["type"])
            with trio.fail_after(10):  # the conversation has given its seat back, so its token's use too (released
                while await open_conversations(http, url):  # inside the seat): "ended" is counted before either
                    await trio.sleep(0.02)
        assert answers == ["ready", "ready", "error"]


async def open_conversations(http: httpx2.AsyncClient, url: str) -> int:
    """How many conversations hold a seat on the relay, by its /readyz."""
    return int((await http.get(url + "/readyz")).json()["open_conversations"])


async def conversations_ended(http: httpx2.AsyncClient, url: str) -> float:
    """How many conversations the relay has ended, by its /metrics."""
    for family in text_string_to_metric_families((await http.get(url + "/metrics")).text):
        if family.name == "avatar_relay_conversations_ended":
            return sum(sample.value for sample in family.samples if sample.name.endswith("_total"))
    return 0.0


async def initiations(http: httpx2.AsyncClient, url: str) -> list[dict[str, object]]:
    """What the demo agent received from the relay for each conversation (`conversation_initiation_client_data`)."""
    sims = (await http.get(url + "/_demo/simulators")).json()
    ledger = (await http.get(sims["elevenlabs"] + "/_sim/ledger")).json()
    return [c["initiation"] for c in ledger["conversations"] if c.get("initiation")]


async def test_the_token_says_who_the_user_is(tmp_path: Path) -> None:
    """M3: the token's subject is the agent's user_id and its dynamic variables win over the browser's; a browser
    may set only the dynamic variables the operator allows, and may not name another user."""
    env = token_env(tmp_path, RELAY_CLIENT_DYNAMIC_VARIABLES="topic,customer_id")
    async with relay_process(env, ROOT) as (_, url), httpx2.AsyncClient(timeout=5) as http:
        token = mint_jwt(SECRET, subject="alice", relay_dynamic_variables={"customer_id": "c-1"})
        ready = await answer_to(url, token=token, dynamic_variables={"customer_id": "c-42", "topic": "shoes"})
        assert ready["type"] == "ready", ready
        with trio.fail_after(10):
            while not (sent := await initiations(http, url)):
                await trio.sleep(0.05)
        assert sent[-1]["user_id"] == "alice"
        assert sent[-1]["dynamic_variables"] == {"customer_id": "c-1", "topic": "shoes"}
        for start in ({"user_id": "bob"}, {"dynamic_variables": {"is_admin": True}}):
            refused = await answer_to(url, token=mint_jwt(SECRET, subject="alice"), **start)
            assert refused["type"] == "error" and refused["code"] == "unauthorized", refused
        assert len(await initiations(http, url)) == 1


async def test_dns_rebinding_and_path_variants_are_refused(tmp_path: Path) -> None:
    """L1, L2, I2: a request naming a host the relay is not (a rebound name) is refused (421, and no WebSocket
    opens even with a matching Origin); path spellings a proxy rule would not match are refused (400) instead of
    served or redirected; /metrics wants its bearer token when RELAY_METRICS_TOKEN is set."""
    env = token_env(tmp_path, RELAY_ALLOWED_HOSTS="relay.example", RELAY_METRICS_TOKEN="metrics-secret-123")
    async with relay_process(env, ROOT) as (_, url), httpx2.AsyncClient(timeout=5) as http:
        port = port_of(url)
        rebound = await http.get(url + "/", headers={"host": f"evil.example:{port}"})
        assert rebound.status_code == 421
        assert (await http.get(url + "/static//app.js", headers={"host": "evil.example"})).status_code in (400, 421)
        sock = await open_raw_socket(port, host=f"evil.example:{port}",
                                     headers=(("Origin", f"http://evil.example:{port}"),))
        assert sock.status != 101
        await sock.aclose()
        assert (await http.get(url + "/", headers={"host": "relay.example"})).status_code == 200
        for path in ("//metrics", "/%6detrics", "//_demo/simulators", "/%5fdemo/simulators", "/_demo//simulators"):
            assert (await http.get(url + path)).status_code == 400, path
        assert (await http.get(url + "/metrics")).status_code == 401
        assert (await http.get(url + "/_demo/simulators")).status_code == 401
        scraped = await http.get(url + "/metrics", headers={"authorization": "Bearer metrics-secret-123"})
        assert scraped.status_code == 200 and "avatar_relay" in scraped.text


async def error_after_start(port: int, source: str, forwarded_for: str) -> object:
    """The `error` code a socket from `source` claiming X-Forwarded-For `forwarded_for` gets for a token-less start."""
    sock = await open_raw_socket(port, source=source, headers=(("X-Forwarded-For", forwarded_for),))
    try:
        await sock.stream.send_all(client_frame(b'{"type":"start"}'))
        with trio.fail_after(10):
            error = await error_of(sock)
        return None if error is None else error["code"]
    finally:
        await sock.aclose()


async def test_forwarded_for_counts_only_from_a_trusted_proxy(tmp_path: Path) -> None:
    """L5: X-Forwarded-For names the client only when the socket's peer is one of RELAY_TRUSTED_PROXIES: a client
    reaching the relay directly cannot spread its starts over made-up addresses."""
    env = token_env(tmp_path, RELAY_TRUST_FORWARDED_FOR="true", RELAY_TRUSTED_PROXIES="127.0.0.2",
                    RELAY_MAX_STARTS_PER_MINUTE="2")
    async with relay_process(env, ROOT) as (_, url):
        port = port_of(url)
        direct = [await error_after_start(port, "127.0.0.5", f"203.0.113.{n}") for n in range(3)]
        assert direct == ["unauthorized", "unauthorized", "capacity"]
        proxied = [await error_after_start(port, "127.0.0.2", f"203.0.113.{n}") for n in range(3)]
        assert proxied == ["unauthorized"] * 3
        # What the client forges left of the address the proxy saw changes nothing: one client, 203.0.113.9.
        spoofed = [await error_after_start(port, "127.0.0.2", f"198.51.100.{n}, 127.0.0.2, 203.0.113.9")
                   for n in range(3)]
        assert spoofed == ["unauthorized", "unauthorized", "capacity"]


async def test_a_token_can_ride_in_the_websocket_protocol_header_instead_of_the_url(tmp_path: Path) -> None:
    """L3: a client that cannot send the token in `start` puts it in Sec-WebSocket-Protocol (never logged by
    proxies as a URL is): `avatar-relay` plus `avatar-relay.token.<token>`; the relay answers `avatar-relay`."""
    async with relay_process(token_env(tmp_path), ROOT) as (_, url):
        ws_url = url.replace("http", "ws") + "/ws"
        token = mint_jwt(SECRET, subject="alice")
        async with open_websocket_url(ws_url, subprotocols=["avatar-relay", f"avatar-relay.token.{token}"]) as ws:
            assert ws.subprotocol == "avatar-relay"
            user = BrowserClient(ws)
            await user.send(type="start")
            assert (await first_answer(user))["type"] == "ready"
        with pytest.raises(ConnectionRejected) as refused:
            async with open_websocket_url(ws_url, subprotocols=["avatar-relay", "avatar-relay.token.forged"]):
                pass
        assert refused.value.status_code == 401


async def test_behind_a_trusted_tls_proxy_a_plain_http_origin_is_refused(tmp_path: Path) -> None:
    """I3: when a trusted proxy says the page came over https (X-Forwarded-Proto), the relay's own origin must be
    https too: a page served over plain http under the relay's name (a network attacker's) cannot open sockets."""
    env = token_env(tmp_path, RELAY_TRUSTED_PROXIES="127.0.0.2")
    async with relay_process(env, ROOT) as (_, url):
        port = port_of(url)
        answers = {}
        for scheme in ("http", "https"):
            sock = await open_raw_socket(port, source="127.0.0.2", headers=(
                ("Origin", f"{scheme}://127.0.0.1:{port}"), ("X-Forwarded-Proto", "https")))
            answers[scheme] = sock.status
            await sock.aclose()
        assert answers == {"http": 403, "https": 101}
