"""The commands a user types: `avatar-relay serve` / `python -m relay` in demo mode, `hypercorn -k trio relay.web:app`,
configuration errors, `avatar-relay sim`. Each runs as a real subprocess on loopback, in an empty working directory
(so no developer `.env` is read) with no upstream variables in its environment."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx2
import orjson
import pytest
import trio
from trio_websocket import open_websocket_url

from tests.support.processes import free_port

VENV_BIN = Path(sys.executable).parent
UPSTREAM_PREFIXES = ("ELEVENLABS_", "HEYGEN_", "LIVEAVATAR_", "RELAY_")


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(UPSTREAM_PREFIXES)}
    env.update(extra)
    return env



@contextmanager
def running(cmd: list[str], cwd: Path, env: dict[str, str]) -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


async def wait_until_serving(base: str, proc: subprocess.Popen[str]) -> None:
    async with httpx2.AsyncClient() as http:
        with trio.fail_after(20):
            while True:
                assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
                try:
                    if (await http.get(base + "/healthz")).status_code == 200:
                        return
                except httpx2.TransportError:
                    pass
                await trio.sleep(0.1)


async def typed_conversation(base: str) -> list[dict[str, object]]:
    seen: list[dict[str, object]] = []
    async with open_websocket_url(base.replace("http://", "ws://") + "/ws", message_queue_size=1000) as ws:
        await ws.send_message('{"type":"start"}')
        with trio.fail_after(15):
            while True:
                frame = await ws.get_message()
                if isinstance(frame, bytes):
                    continue
                msg = orjson.loads(frame)
                seen.append(msg)
                if msg["type"] == "ready":
                    await ws.send_message('{"type":"text","text":"hello from the test"}')
                if msg["type"] == "agent_response" and "hello from the test" in msg["text"]:
                    await ws.send_message('{"type":"stop"}')
                if msg["type"] == "ended":
                    return seen


@pytest.mark.timeout(90)
@pytest.mark.parametrize("command", ["console_script", "python_m"])
async def test_serve_with_no_keys_runs_a_conversation_on_the_simulators(command: str, tmp_path: Path) -> None:
    port = free_port()
    cmd = ([str(VENV_BIN / "avatar-relay"), "serve"] if command == "console_script"
           else [sys.executable, "-m", "relay", "serve"])
    with running([*cmd, "--port", str(port)], tmp_path, clean_env()) as proc:
        base = f"http://127.0.0.1:{port}"
        await wait_until_serving(base, proc)
        async with httpx2.AsyncClient() as http:
            page = await http.get(base + "/")
            assert page.status_code == 200 and "<html" in page.text.lower()
            sims = (await http.get(base + "/_demo/simulators")).json()
        messages = await typed_conversation(base)
        ready = next(m for m in messages if m["type"] == "ready")
        assert ready["avatar"]["provider"] == "liveavatar" and ready["avatar"]["simulated"] is True  # type: ignore[index]
        assert {k: v for k, v in messages[-1].items() if k != "seq"} == {"type": "ended", "reason": "client_stop"}
        async with httpx2.AsyncClient() as http:
            ledger = (await http.get(sims["liveavatar"] + "/_sim/ledger")).json()
        (session,) = ledger["sessions"].values()  # the one conversation's avatar session, stopped
        assert session["stopped"] is not None, session
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=15)
    assert proc.returncode == 0
    demo_lines = [line for line in output.splitlines() if "demo mode" in line]
    assert len(demo_lines) == 1, output
    assert "simulators" in demo_lines[0]


async def test_hypercorn_command_line_serves_the_same_app(tmp_path: Path) -> None:
    port = free_port()
    env = clean_env(RELAY_AVATAR="heygen")
    with running([str(VENV_BIN / "hypercorn"), "-k", "trio", "--bind", f"127.0.0.1:{port}", "relay.web:app"],
                 tmp_path, env) as proc:
        base = f"http://127.0.0.1:{port}"
        await wait_until_serving(base, proc)
        messages = await typed_conversation(base)
        ready = next(m for m in messages if m["type"] == "ready")
        assert ready["avatar"]["provider"] == "heygen"  # type: ignore[index]
        assert {k: v for k, v in messages[-1].items() if k != "seq"} == {"type": "ended", "reason": "client_stop"}
        async with httpx2.AsyncClient() as http:
            sims = (await http.get(base + "/_demo/simulators")).json()
            ledger = (await http.get(sims["heygen"] + "/_sim/ledger")).json()
        (session,) = ledger["sessions"].values()
        assert session["stopped_at"] is not None


def test_a_dot_env_file_is_read(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("ELEVENLABS_AGENT_ID=agent_from_dotenv\n")
    result = subprocess.run([sys.executable, "-m", "relay", "serve", "--port", str(free_port())], cwd=tmp_path,
                            env=clean_env(), capture_output=True, text=True, timeout=30)
    # an agent id alone is not a complete configuration: the .env file was read, and demo mode was not chosen
    assert result.returncode == 1
    assert "LIVEAVATAR_API_KEY or SIMLI_API_KEY (or RELAY_AVATAR=none" in result.stderr


@pytest.mark.parametrize(("env", "named"), [
    ({"HEYGEN_API_KEY": "hg-secret-1234567890"}, "ELEVENLABS_AGENT_ID"),
    ({"ELEVENLABS_AGENT_ID": "a", "RELAY_AVATAR": "heygen", "HEYGEN_API_KEY": "hg-secret-1234567890"},
     "HEYGEN_AVATAR_ID"),
    ({"ELEVENLABS_AGENT_ID": "a", "HEYGEN_API_KEY": "hg-secret-1234567890", "HEYGEN_AVATAR_ID": "Wayne"},
     "retired its Streaming API v1 on 2026-03-31: move to LiveAvatar (set LIVEAVATAR_API_KEY and LIVEAVATAR_AVATAR_ID"),
    ({"RELAY_AVATAR": "puppet"}, "RELAY_AVATAR"),
    ({"RELAY_PORT": "eighty"}, "RELAY_PORT"),
    ({"HEYGEN_QUALITY": "ultra"}, "HEYGEN_QUALITY"),
])
def test_a_bad_configuration_is_refused_with_a_message_naming_the_variable(
        env: dict[str, str], named: str, tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "relay", "serve"], cwd=tmp_path, env=clean_env(**env),
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 1
    assert named in result.stderr
    assert "Traceback" not in result.stderr
    assert "hg-secret-1234567890" not in result.stderr


def test_serve_on_a_busy_port_says_so(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = subprocess.run([sys.executable, "-m", "relay", "serve", "--port", str(port)], cwd=tmp_path,
                                env=clean_env(), capture_output=True, text=True, timeout=30)
    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr
    assert "Traceback" not in result.stderr


def test_sim_command_prints_the_simulator_urls(tmp_path: Path) -> None:
    with running([sys.executable, "-m", "relay", "sim"], tmp_path, clean_env()) as proc:
        assert proc.stdout is not None
        lines = [proc.stdout.readline().strip() for _ in range(4)]
        urls = dict(line.split("=", 1) for line in lines)
        assert set(urls) == {"ELEVENLABS_BASE_URL", "HEYGEN_BASE_URL", "LIVEAVATAR_BASE_URL", "SIMLI_BASE_URL"}
        for url in urls.values():
            assert httpx2.get(url + "/_sim/ledger").status_code == 200


def test_sim_command_takes_start_up_faults(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "relay", "sim", "--faults", 'liveavatar={"withhold_connected": true}',
               "--faults", 'heygen={"retired": 410}']
    with running(command, tmp_path, clean_env()) as proc:
        assert proc.stdout is not None
        lines = [proc.stdout.readline().strip() for _ in range(3)]
        urls = dict(line.split("=", 1) for line in lines)
        answer = httpx2.post(urls["LIVEAVATAR_BASE_URL"] + "/_sim/faults", json={})
        assert answer.json()["withhold_connected"] is True
        retired = httpx2.post(urls["HEYGEN_BASE_URL"] + "/v1/streaming.new", json={}, headers={"x-api-key": "k"})
        assert retired.status_code == 410


def test_sim_command_shortens_the_simulators_session_limits(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "relay", "sim", "--session-limit", "liveavatar=20", "--session-limit",
               "simli=8.5"]
    with running(command, tmp_path, clean_env()) as proc:
        assert proc.stdout is not None
        urls = dict(proc.stdout.readline().strip().split("=", 1) for _ in range(4))
        liveavatar = httpx2.post(urls["LIVEAVATAR_BASE_URL"] + "/_sim/faults", json={}).json()
        simli = httpx2.post(urls["SIMLI_BASE_URL"] + "/_sim/faults", json={}).json()
        assert liveavatar["sandbox_duration_s"] == 20 and simli["max_session_length_s"] == 8.5


@pytest.mark.parametrize("spec", ["heygen=20", "liveavatar=0", "simli=soon", "liveavatar"])
def test_sim_command_refuses_a_session_limit_it_cannot_use(tmp_path: Path, spec: str) -> None:
    result = subprocess.run([sys.executable, "-m", "relay", "sim", "--session-limit", spec], cwd=tmp_path,
                            env=clean_env(), capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "--session-limit takes NAME=SECONDS" in result.stderr and "Traceback" not in result.stderr


def test_sim_command_refuses_faults_it_cannot_read(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "relay", "sim", "--faults", "liveavatar=nope"], cwd=tmp_path,
                            env=clean_env(), capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "--faults takes NAME=JSON-object" in result.stderr and "Traceback" not in result.stderr
