"""Real nginx and real Caddy (the Debian packages: scripts/test installs them) on a loopback port in front of two
relays, each run from its snippet in docs/proxies/ as it is, with only the addresses changed: the site's listen
address to a free loopback port and the two example relays (10.0.0.11:8000, 10.0.0.12:8000) to the test's.

Unprivileged set-up: no port below 1024, the pid file, logs and temporary files in the test's directory, in the
foreground (nginx: `daemon off`; Caddy: `caddy run` without its admin endpoint), ended by the test."""

from __future__ import annotations

import shutil
import signal
import subprocess
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path

import httpx2
import pytest
import trio

from tests.support.processes import free_port

ROOT = Path(__file__).resolve().parents[2]
NGINX_SNIPPET = ROOT / "docs" / "proxies" / "nginx-resume.conf"
CADDY_SNIPPET = ROOT / "docs" / "proxies" / "Caddyfile-resume"
RELAY_A, RELAY_B = "10.0.0.11:8000", "10.0.0.12:8000"

# A proxy in front of two relays: (the relays' ports, the test's directory) -> the proxy's base URL.
Proxy = Callable[[int, int, Path], AbstractAsyncContextManager[str]]


def templated(snippet: Path, replacements: dict[str, str]) -> str:
    """`snippet` with each example address replaced; fails if one is missing (the snippet changed under the test)."""
    text = snippet.read_text()
    for example, loopback in replacements.items():
        assert example in text, f"{snippet.name} no longer has {example!r}"
        text = text.replace(example, loopback)
    return text


def executable(name: str) -> str:
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin")
    if found is None:
        pytest.fail(f"{name} is not installed: scripts/test installs it (apt-get install {name})")
    return found


@asynccontextmanager
async def running(command: list[str], url: str, log: Path, env: dict[str, str] | None = None) -> AsyncIterator[str]:
    """`command` in the foreground until the test is done; yields `url` once /healthz answers 200 through it."""
    with log.open("w") as sink:
        process = await trio.lowlevel.open_process(command, stdout=sink, stderr=subprocess.STDOUT, env=env)
    try:
        async with httpx2.AsyncClient(timeout=2.0) as http:
            with trio.fail_after(30):  # a hang guard
                while True:
                    if process.poll() is not None:
                        raise AssertionError(f"{command[0]} exited at start-up: {await trio.Path(log).read_text()}")
                    try:
                        if (await http.get(url + "/healthz")).status_code == 200:
                            break
                    except httpx2.TransportError:
                        pass
                    await trio.sleep(0.05)
        yield url
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            with trio.move_on_after(5):
                await process.wait()
        if process.poll() is None:
            process.kill()
            await process.wait()


@asynccontextmanager
async def nginx(port_a: int, port_b: int, tmp_path: Path) -> AsyncIterator[str]:
    """nginx on a loopback port with docs/proxies/nginx-resume.conf included in its http block."""
    port, home = free_port(), tmp_path / "nginx"
    home.mkdir()
    (home / "relays.conf").write_text(templated(NGINX_SNIPPET, {
        RELAY_A: f"127.0.0.1:{port_a}", RELAY_B: f"127.0.0.1:{port_b}", "listen 80;": f"listen 127.0.0.1:{port};"}))
    temp = "\n".join(f"    {kind}_temp_path {home / kind};" for kind in ("client_body", "proxy", "fastcgi", "uwsgi",
                                                                           "scgi"))
    (home / "nginx.conf").write_text(f"""daemon off;
worker_processes 1;
pid {home / 'nginx.pid'};
error_log {home / 'error.log'} info;
events {{
    worker_connections 256;
}}
http {{
    access_log {home / 'access.log'};
{temp}
    include {home / 'relays.conf'};
}}
""")
    command = [executable("nginx"), "-p", str(home), "-c", str(home / "nginx.conf"), "-e", str(home / "error.log")]
    async with running(command, f"http://127.0.0.1:{port}", home / "stdout.log") as url:
        yield url


@asynccontextmanager
async def caddy(port_a: int, port_b: int, tmp_path: Path) -> AsyncIterator[str]:
    """Caddy on a loopback port running docs/proxies/Caddyfile-resume (no admin endpoint, no automatic HTTPS: the
    site is plain HTTP on loopback; its data and configuration directories in the test's)."""
    port, home = free_port(), tmp_path / "caddy"
    home.mkdir()
    site = templated(CADDY_SNIPPET, {RELAY_A: f"127.0.0.1:{port_a}", RELAY_B: f"127.0.0.1:{port_b}",
                                     "relay.example.com {": f"http://127.0.0.1:{port} {{"})
    (home / "Caddyfile").write_text("{\n\tadmin off\n\tauto_https off\n}\n\n" + site)
    env = {"PATH": "/usr/bin:/bin", "HOME": str(home), "XDG_DATA_HOME": str(home / "data"),
           "XDG_CONFIG_HOME": str(home / "config")}
    command = [executable("caddy"), "run", "--config", str(home / "Caddyfile"), "--adapter", "caddyfile"]
    async with running(command, f"http://127.0.0.1:{port}", home / "caddy.log", env) as url:
        yield url
