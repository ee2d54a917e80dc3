"""Fixtures for the real-browser tests: headless Chromium with a fake microphone, the relay in demo mode.

The relay runs as a subprocess (`python -m relay serve`) on a free loopback port, on its built-in simulators, one
server per avatar choice, shared by the tests of a session; each test tells its conversation apart by the ids the
page reports in `window.__relayDebug`. Chromium plays WAV files made with espeak-ng and sox as its microphone.
livekit-client comes from the npm registry into tests/.artifacts/ (gitignored) and is served on loopback, so the
page can import it exactly as it would import the CDN build. Every page fails its test on any console error or
uncaught page error.
"""

from __future__ import annotations

import functools
import http.server
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import playwright.sync_api as playwright_sync
import pytest

from tests.support.processes import free_port

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = os.environ.get("RELAY_TEST_CHROMIUM", "/usr/bin/chromium")
LIVEKIT_CLIENT_VERSION = "2.15.7"  # the version of the relay's default RELAY_LIVEKIT_CLIENT_URL
NPM_PREFIX = REPO / "tests" / ".artifacts" / "npm"
SENTENCE = "Hello there. Can you tell me what the weather is like today?"

CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--use-fake-device-for-media-stream",
    "--autoplay-policy=no-user-gesture-required",
]

_UPSTREAM_ENV_PREFIXES = ("ELEVENLABS_", "HEYGEN_", "LIVEAVATAR_", "SIMLI_", "RELAY_")



def get_json(url: str, timeout: float = 5.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return json.loads(response.read())


def post_json(url: str, body: dict[str, Any]) -> Any:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=5.0) as response:
        return json.loads(response.read() or b"null")


def wait_until(predicate: Callable[[], Any], timeout: float, message: str) -> Any:
    """Poll `predicate` until it returns something truthy; fail the test with `message` after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s: {message}")
        time.sleep(0.1)


# ---------------------------------------------------------------------------------------------------------------
# Audio for the fake microphone


@pytest.fixture(scope="session")
def wav_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """`speech`: 4.2 s of silence (time to press Start), the sentence once, then 8 s of silence (the test that
    plays it turns the greeting off, so nothing of the agent's can overlap it).
    `silence`: 20 s of silence (typed conversations, no voice activity at all)."""
    for tool in ("espeak-ng", "sox"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is not installed (scripts/test installs it: apt-get install -y espeak-ng sox)")
    folder = tmp_path_factory.mktemp("wav")
    raw = folder / "sentence-raw.wav"
    subprocess.run(["espeak-ng", "-s", "150", "-w", str(raw), SENTENCE], check=True, capture_output=True)
    speech = folder / "speech.wav"
    subprocess.run(["sox", str(raw), "-r", "48000", "-c", "1", "-b", "16", str(speech), "pad", "4.2", "8"],
                   check=True, capture_output=True)
    silence = folder / "silence.wav"
    subprocess.run(["sox", "-n", "-r", "48000", "-c", "1", "-b", "16", str(silence), "trim", "0", "20"],
                   check=True, capture_output=True)
    return {"speech": speech, "silence": silence}


# ---------------------------------------------------------------------------------------------------------------
# livekit-client from npm, served on loopback


class _ModuleHandler(http.server.SimpleHTTPRequestHandler):
    extensions_map = {**http.server.SimpleHTTPRequestHandler.extensions_map,
                      ".mjs": "text/javascript", ".js": "text/javascript", ".map": "application/json"}

    def end_headers(self) -> None:
        # The page imports the module cross-origin (another port), which needs CORS.
        self.send_header("access-control-allow-origin", "*")
        super().end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="session")
def livekit_client_url() -> Iterator[str]:
    """The URL of livekit-client's ES module build, installed from npm and served on 127.0.0.1."""
    dist = NPM_PREFIX / "node_modules" / "livekit-client" / "dist"
    module = dist / "livekit-client.esm.mjs"
    installed = NPM_PREFIX / "node_modules" / "livekit-client" / "package.json"
    if not module.is_file() or json.loads(installed.read_text())["version"] != LIVEKIT_CLIENT_VERSION:
        npm = shutil.which("npm")
        if npm is None:
            pytest.fail("npm is not installed: cannot fetch livekit-client")
        NPM_PREFIX.mkdir(parents=True, exist_ok=True)
        subprocess.run([npm, "install", "--no-audit", "--no-fund", "--no-save", "--prefix", str(NPM_PREFIX),
                        f"livekit-client@{LIVEKIT_CLIENT_VERSION}"], check=True, capture_output=True, timeout=180)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                             functools.partial(_ModuleHandler, directory=str(dist)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/livekit-client.esm.mjs"
    finally:
        server.shutdown()
        server.server_close()


# ---------------------------------------------------------------------------------------------------------------
# The relay


@dataclass
class Relay:
    url: str
    simulators: dict[str, str]
    process: subprocess.Popen[bytes]
    log: Path

    def ledger(self, name: str) -> dict[str, Any]:
        return get_json(self.simulators[name] + "/_sim/ledger")  # type: ignore[no-any-return]

    def faults(self, name: str, body: dict[str, Any]) -> None:
        post_json(self.simulators[name] + "/_sim/faults", body)

    def reset(self, name: str) -> None:
        post_json(self.simulators[name] + "/_sim/reset", {})


def _start_relay(avatar: str, livekit_url: str, log: Path, settings: dict[str, str]) -> Relay:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(_UPSTREAM_ENV_PREFIXES)}
    env.update({"RELAY_AVATAR": avatar, "RELAY_LIVEKIT_CLIENT_URL": livekit_url,
                "PYTHONPATH": str(REPO) + os.pathsep + env.get("PYTHONPATH", "")}, **settings)
    log_file = log.open("wb")
    # The working directory is the log's folder so a developer's .env cannot switch demo mode off.
    process = subprocess.Popen([sys.executable, "-m", "relay", "serve", "--port", str(port)], cwd=log.parent,
                               env=env, stdout=log_file, stderr=subprocess.STDOUT)
    log_file.close()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while True:
        if process.poll() is not None:
            pytest.fail(f"the relay exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            simulators = get_json(url + "/_demo/simulators", timeout=1)
            break
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            if time.monotonic() > deadline:
                process.kill()
                pytest.fail(f"the relay did not start in 20 s:\n{log.read_text()[-3000:]}")
            time.sleep(0.1)
    return Relay(url=url, simulators=simulators, process=process, log=log)


@pytest.fixture(scope="session")
def relays(tmp_path_factory: pytest.TempPathFactory, livekit_client_url: str) -> Iterator[Callable[..., Relay]]:
    """`relays(avatar, **settings)`: the demo-mode relay for RELAY_AVATAR=avatar and these extra environment
    settings (started on first use, shared after)."""
    started: dict[tuple[str, tuple[tuple[str, str], ...]], Relay] = {}
    folder = tmp_path_factory.mktemp("relay")

    def get(avatar: str, **settings: str) -> Relay:
        key = (avatar, tuple(sorted(settings.items())))
        if key not in started:
            name = re.sub(r"[^A-Za-z0-9=_.-]+", "_", "-".join([avatar, *(f"{k}={v}" for k, v in key[1])]))
            started[key] = _start_relay(avatar, livekit_client_url, folder / f"relay-{name}.log", settings)
        return started[key]

    yield get
    for relay in started.values():
        relay.process.terminate()
        try:
            relay.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            relay.process.kill()
            relay.process.wait()


# ---------------------------------------------------------------------------------------------------------------
# The browser


@pytest.fixture(scope="session")
def playwright() -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing (scripts/test installs it: apt-get install -y chromium)")
    with playwright_sync.sync_playwright() as pw:
        yield pw


@pytest.fixture(scope="session")
def browsers(playwright: Any, wav_files: dict[str, Path]) -> Iterator[Callable[[str], Any]]:
    """`browsers(kind)`: a shared headless Chromium whose fake microphone plays `speech` or `silence`, or, for
    `no-permission`, one without the flag that grants the microphone (so the context decides)."""
    launched: dict[str, Any] = {}

    def get(kind: str) -> Any:
        if kind not in launched:
            args = list(CHROMIUM_ARGS)
            if kind == "no-permission":
                args.append(f"--use-file-for-fake-audio-capture={wav_files['silence']}")
            else:
                args += ["--use-fake-ui-for-media-stream",
                         f"--use-file-for-fake-audio-capture={wav_files[kind]}%noloop"]
            launched[kind] = playwright.chromium.launch(executable_path=CHROMIUM, args=args)
        return launched[kind]

    yield get
    for browser in launched.values():
        browser.close()


@dataclass
class PageProblems:
    """Console errors and uncaught exceptions seen on a page; any of them fails the test."""

    errors: list[str] = field(default_factory=list)

    def watch(self, page: Any) -> None:
        page.on("console", lambda msg: self.errors.append(f"console.{msg.type}: {msg.text}")
                if msg.type == "error" else None)
        page.on("pageerror", lambda exc: self.errors.append(f"page error: {exc}"))


@pytest.fixture
def open_page(browsers: Callable[[str], Any]) -> Iterator[Callable[..., Any]]:
    """`open_page(relay, mic="speech", permissions=None)`: a fresh context and page on the relay's `/`."""
    problems = PageProblems()
    contexts: list[Any] = []

    def open_(relay: Relay, mic: str = "speech", permissions: list[str] | None = None) -> Any:
        context = browsers(mic).new_context(viewport={"width": 1280, "height": 760}, permissions=permissions)
        context.set_default_timeout(15_000)
        contexts.append(context)
        page = context.new_page()
        problems.watch(page)
        page.goto(relay.url + "/")
        return page

    open_.problems = problems  # type: ignore[attr-defined]  # a test expecting an error takes it out of the list
    yield open_
    for context in contexts:
        context.close()
    assert not problems.errors, "the page logged errors:\n" + "\n".join(problems.errors)
