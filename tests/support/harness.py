"""The real relay (hypercorn, trio worker) and the real simulators on loopback, for end-to-end tests.

`running_relay(...)` serves the simulators and a relay app pointed at them (as a user would with `avatar-relay sim`
and base-URL settings), and hands back a small client: open a browser socket, read or set a simulator's ledger and
faults. Everything stops when the block exits.
"""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2
import orjson
import trio
from hypercorn.config import Config
from hypercorn.trio import serve
from trio_websocket import ConnectionClosed, WebSocketConnection, open_websocket_url

from relay.config import Settings
from relay.ops.journal import JOURNAL_FILE
from relay.providers.table import serve_simulators
from relay.sim.runner import SimulatorURLs
from relay.web import create_app
from tests.support.simcontrol import SimControl


@dataclass
class Relay:
    url: str
    sims: SimulatorURLs
    http: httpx2.AsyncClient
    settings: Settings | None = field(default=None, kw_only=True)  # keyword-only: subclasses add positional fields

    @property
    def ws_url(self) -> str:
        return self.url.replace("http://", "ws://") + "/ws"

    def _sim(self, name: str) -> str:
        return str(getattr(self.sims, name))

    async def ledger(self, name: str) -> dict[str, Any]:
        return await SimControl(self._sim(name), self.http).ledger()

    async def faults(self, name: str, **faults: Any) -> None:
        await SimControl(self._sim(name), self.http).faults(**faults)

    @asynccontextmanager
    async def browser(self) -> AsyncIterator[BrowserClient]:
        async with open_websocket_url(self.ws_url, message_queue_size=1000) as ws:
            yield BrowserClient(ws)

    def journal_rows(self) -> list[tuple[str, str]]:
        """(provider, session id) of every row in this relay's session journal (sessions believed running)."""
        assert self.settings is not None and self.settings.relay_journal and self.settings.relay_state_dir, \
            "this relay runs without a journal"
        path = Path(self.settings.relay_state_dir) / JOURNAL_FILE
        with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
            return [(str(p), str(s)) for p, s in db.execute("SELECT provider, session_id FROM sessions")]

    async def wait_for_ledger(self, name: str, condition: Callable[[dict[str, Any]], bool], what: str, *,
                              timeout: float = 10.0) -> dict[str, Any]:
        """Poll a simulator's ledger until `condition(ledger)` holds and return it; fail naming `what` otherwise."""
        return await poll_ledger(lambda: self.ledger(name), condition, what, timeout=timeout)

    async def wait_all_sessions_stopped(self, provider: str, *, timeout: float = 10.0) -> dict[str, Any]:
        """Poll a provider simulator's ledger until every created session is stopped; return the ledger."""
        with trio.move_on_after(timeout):
            while True:
                ledger = await self.ledger(provider)
                created, stopped = session_counts(ledger)
                if created == stopped:
                    return ledger
                await trio.sleep(0.05)
        ledger = await self.ledger(provider)
        raise AssertionError(f"sessions left running: {session_counts(ledger)}")


async def poll_ledger(read: Callable[[], Awaitable[dict[str, Any]]], condition: Callable[[dict[str, Any]], bool],
                      what: str, *, timeout: float = 10.0) -> dict[str, Any]:
    """Read a ledger until `condition(ledger)` holds and return that ledger; after `timeout` seconds fail with
    `what` and the last ledger read (a generous bound: it only turns a hang into a readable failure)."""
    ledger: dict[str, Any] = {}
    with trio.move_on_after(timeout):
        while True:
            ledger = await read()
            if condition(ledger):
                return ledger
            await trio.sleep(0.02)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}; last ledger: {ledger}")


def session_counts(ledger: dict[str, Any]) -> tuple[int, int]:
    """(created, stopped by the relay) from a HeyGen or LiveAvatar simulator ledger."""
    sessions = ledger["sessions"].values()
    stopped = sum(1 for s in sessions if (s.get("stopped_at") or s.get("stopped")) is not None)
    return len(ledger["sessions"]), stopped


class BrowserClient:
    def __init__(self, ws: WebSocketConnection) -> None:
        self.ws = ws
        self.audio_received = 0

    async def send(self, **frame: Any) -> None:
        await self.ws.send_message(orjson.dumps(frame).decode())

    async def send_raw(self, frame: str | bytes) -> None:
        await self.ws.send_message(frame)

    async def next_message(self) -> dict[str, Any]:
        while True:
            frame = await self.ws.get_message()
            if isinstance(frame, bytes):
                self.audio_received += len(frame)
                continue
            message: dict[str, Any] = orjson.loads(frame)
            message.pop("seq", None)  # the numbering of a resumable conversation: tests/e2e/test_resume.py checks it
            return message

    async def wait_for_audio(self, min_bytes: int = 1, *, timeout: float = 10.0) -> None:
        """Read frames until at least `min_bytes` of agent audio arrived in all (text frames are skipped)."""
        with trio.fail_after(timeout):
            while self.audio_received < min_bytes:
                frame = await self.ws.get_message()
                if isinstance(frame, bytes):
                    self.audio_received += len(frame)

    async def expect(self, kind: str, *, timeout: float = 10.0, where: Any = None) -> dict[str, Any]:
        with trio.fail_after(timeout):
            while True:
                msg = await self.next_message()
                if msg["type"] == kind and (where is None or where(msg)):
                    return msg

    async def start(self, **fields: Any) -> dict[str, Any]:
        await self.send(type="start", **fields)
        return await self.expect("ready")

    async def stream(self, pcm: bytes, *, chunk_bytes: int = 3200, pause: float = 0.005) -> None:
        for i in range(0, len(pcm), chunk_bytes):
            await self.ws.send_message(pcm[i:i + chunk_bytes])
            await trio.sleep(pause)


# A LiveAvatar avatar id (a UUID, as the real API requires) the simulator does not list: sessions open with it.
E2E_AVATAR = "00000000-0000-4000-8000-0000000000e2"
E2E_SIMLI_FACE = "b9e5fba3-071a-4e35-896e-211c4d6eaa7b"  # a Simli preset face the simulator knows


def relay_settings(sims: SimulatorURLs, **overrides: Any) -> Settings:
    """Settings for a relay pointed at the simulators, with the production defaults (the session journal on).

    A relay served with the journal on needs its own `relay_state_dir` (`running_relay` makes one), so that no test
    writes to ~/.local/state or shares a journal with another relay."""
    values: dict[str, Any] = {
        "elevenlabs_base_url": sims.elevenlabs, "elevenlabs_agent_id": "agent_e2e", "elevenlabs_api_key": "xi-test",
        "heygen_base_url": sims.heygen, "heygen_api_key": "hg-test", "heygen_avatar_id": "Wayne_20240711",
        "liveavatar_base_url": sims.liveavatar, "liveavatar_api_key": "la-test", "liveavatar_avatar_id": E2E_AVATAR,
        "simli_base_url": sims.simli, "simli_api_key": "sm-test", "simli_face_id": E2E_SIMLI_FACE,
        "relay_avatar": "heygen", "relay_stop_timeout": 3.0,
        "relay_auth": "off",  # the security tests turn it on
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


@asynccontextmanager
async def running_relay(*, keep_alive_timeout: float | None = None, **overrides: Any) -> AsyncIterator[Relay]:
    """Serve the simulators and a relay pointed at them; the relay journals its sessions, as in production, in a
    state directory of its own that is removed afterwards (pass `relay_journal=False` to turn it off)."""
    with tempfile.TemporaryDirectory(prefix="relay-e2e-state-") as state_dir:
        async with _serving(keep_alive_timeout, {"relay_state_dir": state_dir, **overrides}) as relay:
            yield relay


@asynccontextmanager
async def _serving(keep_alive_timeout: float | None, overrides: dict[str, Any]) -> AsyncIterator[Relay]:
    """The simulators and the relay in one nursery, cancelled when the block exits."""
    async with trio.open_nursery() as nursery:
        sims: SimulatorURLs = await nursery.start(serve_simulators, "127.0.0.1")
        config = Config()
        config.bind = ["127.0.0.1:0"]
        config.accesslog = None
        config.graceful_timeout = 5.0
        if keep_alive_timeout is not None:
            config.keep_alive_timeout = keep_alive_timeout
        settings = relay_settings(sims, **overrides)
        binds = await nursery.start(serve, create_app(settings), config)
        async with httpx2.AsyncClient(timeout=5.0) as http:
            yield Relay(binds[0], sims, http, settings=settings)
        nursery.cancel_scope.cancel()


_SPEECH_CACHE: dict[int, bytes] = {}


def spoken_sentence(rate: int = 16000, text: str = "Hello, what time do you open tomorrow morning?") -> bytes:
    """A real spoken sentence (espeak-ng, resampled by sox) as PCM16 LE mono at `rate`."""
    if rate in _SPEECH_CACHE:
        return _SPEECH_CACHE[rate]
    for tool in ("espeak-ng", "sox"):
        if shutil.which(tool) is None:
            raise RuntimeError(f"{tool} is needed for the end-to-end tests (scripts/test installs it)")
    tmp = Path(subprocess.run(["mktemp", "-d"], capture_output=True, text=True, check=True).stdout.strip())
    wav = tmp / "speech.wav"
    subprocess.run(["espeak-ng", "-w", str(wav), text], check=True, capture_output=True)
    raw = subprocess.run(["sox", str(wav), "-t", "raw", "-r", str(rate), "-c", "1", "-b", "16", "-e", "signed",
                          "-L", "-"], check=True, capture_output=True).stdout
    _SPEECH_CACHE[rate] = raw
    return raw


def silence(seconds: float, rate: int = 16000) -> bytes:
    return b"\x00\x00" * int(seconds * rate)


async def hold_and_record(ws_url: str, seen: list[dict[str, Any]], closes: list[int | None], *,
                          task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """One browser at `ws_url` (ws://host:port/ws): start, report ready (`nursery.start`), then record every text
    message in `seen` and, when the relay closes, the close code in `closes`."""
    async with open_websocket_url(ws_url, message_queue_size=1000) as ws:
        await BrowserClient(ws).start()
        task_status.started()
        try:
            while True:
                frame = await ws.get_message()
                if isinstance(frame, str):
                    seen.append(orjson.loads(frame))
        except ConnectionClosed as exc:
            closes.append(exc.reason.code)
