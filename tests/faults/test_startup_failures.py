"""A relay that cannot start says why in one line and exits 1, under each way of running it — `avatar-relay serve`,
`serve --workers 2`, `hypercorn -w 0 -k trio relay.web:app` (the app in hypercorn's own process: its status is the
command's) and `hypercorn -k trio relay.web:app` (hypercorn 0.18 loses the worker's status: docs/upstream/) — real
processes, each mistake a new operator makes about the state directory, the journal, Redis, the port and key
material; a damaged journal does not keep the relay from starting and serving. The settings themselves are walked
in-process by tests/test_settings_walk.py."""

from __future__ import annotations

import re
import shlex
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import trio

from tests.faults.test_process_faults import base_env
from tests.support.processes import free_port

HYPERCORN = str(Path(sys.executable).parent / "hypercorn")

Launcher = Callable[[int], list[str]]
LAUNCHERS: dict[str, Launcher] = {
    "serve": lambda port: [sys.executable, "-m", "relay", "serve", "--port", str(port)],
    "workers": lambda port: [sys.executable, "-m", "relay", "serve", "--port", str(port), "--workers", "2"],
    "hypercorn-w0": lambda port: [HYPERCORN, "-w", "0", "-k", "trio", "-b", f"127.0.0.1:{port}", "relay.web:app"],
    "hypercorn": lambda port: [HYPERCORN, "-k", "trio", "-b", f"127.0.0.1:{port}", "relay.web:app"],
}


def real_env(tmp_path: Path, **values: str) -> dict[str, str]:
    """Real upstream settings (nothing is called before the failure), the journal in `tmp_path`/state."""
    settings = {"ELEVENLABS_AGENT_ID": "agent_startup", "ELEVENLABS_API_KEY": "xi-startup-secret",
                "RELAY_AVATAR": "heygen", "HEYGEN_API_KEY": "hg-startup-secret", "HEYGEN_AVATAR_ID": "Wayne_20240711",
                "HEYGEN_BASE_URL": "http://127.0.0.1:9", "RELAY_AUTH": "off",
                "RELAY_STATE_DIR": str(tmp_path / "state")}
    return base_env(**{**settings, **values})


def run(launcher: str, env: dict[str, str], cwd: Path, port: int | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(LAUNCHERS[launcher](port or free_port()), env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=60)


def assert_one_line(result: subprocess.CompletedProcess[str], launcher: str, *named: str) -> None:
    """Exactly one line on stderr (hypercorn's own INFO lines aside), starting `avatar-relay: ` and naming each of
    `named`; no traceback, no secret; exit status 1 (hypercorn's own command line: see its own test)."""
    lines = [line for line in result.stderr.splitlines() if line.strip() and "[INFO]" not in line]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("avatar-relay: "), lines
    for name in named:
        assert name in lines[0], lines
    assert "Traceback" not in result.stderr and "secret" not in result.stderr
    if launcher != "hypercorn":
        assert result.returncode == 1, (result.returncode, result.stderr)


def unusable_state_dir(tmp_path: Path) -> dict[str, str]:
    (tmp_path / "a-file").write_text("")
    return {"RELAY_STATE_DIR": str(tmp_path / "a-file" / "state")}


def journal_is_a_directory(tmp_path: Path) -> dict[str, str]:
    (tmp_path / "state" / "sessions.sqlite3").mkdir(parents=True)
    return {}


def unreachable_redis(tmp_path: Path) -> dict[str, str]:
    return {"RELAY_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"}


def bad_public_key(tmp_path: Path) -> dict[str, str]:
    return {"RELAY_AUTH": "token", "RELAY_AUTH_PUBLIC_KEY": "-----BEGIN PUBLIC KEY-----\nnot a key\n"}


def unusable_transcripts_dir(tmp_path: Path) -> dict[str, str]:
    (tmp_path / "a-file").write_text("")
    return {"RELAY_TRANSCRIPTS_DIR": str(tmp_path / "a-file" / "transcripts")}


def bad_number(tmp_path: Path) -> dict[str, str]:
    return {"RELAY_MAX_CONVERSATIONS": "lots"}


MISTAKES: dict[str, tuple[Callable[[Path], dict[str, str]], tuple[str, ...]]] = {
    "state-dir": (unusable_state_dir, ("RELAY_STATE_DIR", "a-file/state")),
    "journal-is-a-directory": (journal_is_a_directory, ("sessions.sqlite3", "not a file")),
    "redis": (unreachable_redis, ("RELAY_REDIS_URL",)),
    "key-material": (bad_public_key, ("RELAY_AUTH_PUBLIC_KEY",)),
    "transcripts-dir": (unusable_transcripts_dir, ("RELAY_TRANSCRIPTS_DIR",)),
    "setting": (bad_number, ("RELAY_MAX_CONVERSATIONS",)),
}


# The state directory, the journal and Redis under every launcher; the rest (checked by the same code in every
# launcher) under the single relay and hypercorn's default command line.
EVERYWHERE = ("state-dir", "journal-is-a-directory", "redis")
CASES = [(mistake, launcher) for mistake in MISTAKES for launcher in LAUNCHERS
         if mistake in EVERYWHERE or launcher in ("serve", "hypercorn")]


@pytest.mark.timeout(120)
@pytest.mark.parametrize(("mistake", "launcher"), CASES)
def test_each_mistake_is_one_line_and_exit_status_1_under_each_launcher(
        launcher: str, mistake: str, tmp_path: Path) -> None:
    make, named = MISTAKES[mistake]
    result = run(launcher, real_env(tmp_path, **make(tmp_path)), tmp_path)
    assert_one_line(result, launcher, *named)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("launcher", ["serve", "workers"])
def test_a_port_in_use_is_one_line_naming_it(launcher: str, tmp_path: Path) -> None:
    """(hypercorn's own command line binds in its parent, before the app exists: its OSError is its own.)"""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = run(launcher, real_env(tmp_path), tmp_path, port)
    assert_one_line(result, launcher, f"cannot listen on 127.0.0.1:{port}", "RELAY_PORT")


@pytest.mark.timeout(60)
@pytest.mark.xfail(strict=True, reason="hypercorn 0.18's run() loses its worker's exit status (docs/upstream/"
                                       "hypercorn-exit-status.md); run it with -w 0, or `avatar-relay serve`")
def test_hypercorns_own_command_line_exits_non_zero_when_the_relay_cannot_start(tmp_path: Path) -> None:
    result = run("hypercorn", real_env(tmp_path, **unusable_state_dir(tmp_path)), tmp_path)
    assert result.returncode != 0


@pytest.mark.timeout(60)
def test_debug_log_level_prints_the_traceback_after_the_line(tmp_path: Path) -> None:
    result = run("serve", real_env(tmp_path, RELAY_LOG_LEVEL="DEBUG", **unusable_state_dir(tmp_path)), tmp_path)
    assert result.returncode == 1
    assert result.stderr.startswith("avatar-relay: ") and "RELAY_STATE_DIR" in result.stderr.splitlines()[0]
    assert "Traceback" in result.stderr


def damage_journal(tmp_path: Path) -> Path:
    journal = tmp_path / "state" / "sessions.sqlite3"
    journal.parent.mkdir(parents=True)
    journal.write_bytes(b"half of a copied file, not a database\n" * 50)
    return journal


@pytest.mark.timeout(90)
@pytest.mark.parametrize("launcher", list(LAUNCHERS))
async def test_a_damaged_journal_is_moved_aside_and_the_relay_starts(launcher: str, tmp_path: Path) -> None:
    """One ERROR line says what was moved where; the relay is ready; the damaged file lies beside a fresh journal,
    and /metrics counts it."""
    import httpx2

    from tests.support.processes import relay_process

    journal = damage_journal(tmp_path)
    env = real_env(tmp_path)
    stderr = tmp_path / "stderr.txt"
    with stderr.open("w") as sink:
        async with relay_process(env, tmp_path, command=LAUNCHERS[launcher], up_path="/readyz",
                                 own_group=True, stderr=sink) as (_, url):
            async with httpx2.AsyncClient() as http:
                metrics = (await http.get(url + "/metrics")).text
    moved = sorted(p.name for p in journal.parent.iterdir() if ".damaged-" in p.name)
    assert len(moved) == 1 and journal.read_bytes().startswith(b"SQLite format 3\x00")
    assert re.search(r"^avatar_relay_journals_moved_aside(\{worker=\"\d\"\})? 1\.0$", metrics, re.M), metrics
    lines = [line for line in stderr.read_text().splitlines() if "moved aside" in line]
    assert len(lines) == 1 and "ERROR" in lines[0] and moved[0] in lines[0] and "avatar-relay reap" in lines[0]
    await trio.lowlevel.checkpoint()


def documented_start_check(port: int) -> list[str]:
    """docs/deploy.md's `ExecStartPost=` readiness check (the supervisor setting for hypercorn's worker process), as
    written there, on `port`."""
    deploy = (Path(__file__).parents[2] / "docs" / "deploy.md").read_text()
    match = re.search(r"^ExecStartPost=(.+)$", deploy, re.M)
    assert match is not None, "docs/deploy.md lost its ExecStartPost= line"
    return shlex.split(match.group(1).replace("127.0.0.1:8000", f"127.0.0.1:{port}"))


@pytest.mark.timeout(90)
async def test_the_documented_start_check_fails_a_relay_that_could_not_start_and_passes_one_that_serves(
        tmp_path: Path) -> None:
    port = free_port()
    failed = await trio.run_process(LAUNCHERS["hypercorn"](port), cwd=tmp_path, check=False, capture_stderr=True,
                                    env=real_env(tmp_path, **unusable_state_dir(tmp_path)))
    assert b"RELAY_STATE_DIR" in failed.stderr  # hypercorn's own status is 0 here
    check = await trio.run_process(documented_start_check(port), check=False, capture_stdout=True,
                                   capture_stderr=True)
    assert check.returncode != 0
    from tests.support.processes import relay_process

    async with relay_process(real_env(tmp_path / "good"), tmp_path, command=LAUNCHERS["hypercorn"],
                             own_group=True) as (_, url):
        check = await trio.run_process(documented_start_check(int(url.rsplit(":", 1)[1])), check=False)
        assert check.returncode == 0


@pytest.mark.timeout(60)
async def test_reap_with_a_damaged_journal_lists_the_sessions_read_back_and_a_bad_state_dir_is_one_line(
        tmp_path: Path) -> None:
    from relay.ops.journal import JOURNAL_FILE, open_journal

    state = tmp_path / "state"
    async with open_journal(state) as journal:
        journal._pid, journal._pid_started = 999_999, "gone"  # a relay that died
        for number in range(300):
            await journal.opened("heygen", f"left-{number:03d}-" + "x" * 40, "http://127.0.0.1:9")
        journal._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    data = (state / JOURNAL_FILE).read_bytes()
    (state / JOURNAL_FILE).write_bytes(data[: len(data) // 2])  # a backup copied halfway
    command = [sys.executable, "-m", "relay", "reap", "--dry-run", "--journal-only"]
    listed = await trio.run_process(command, cwd=tmp_path, env=real_env(tmp_path), check=False, capture_stdout=True,
                                    capture_stderr=True)
    assert listed.returncode == 0, listed.stderr
    orphans = [line for line in listed.stdout.decode().splitlines() if line.endswith("(journal)")]
    assert 0 < len(orphans) < 300 and all(line.startswith("heygen left-") for line in orphans)
    assert "moved aside" in listed.stderr.decode()
    bad = await trio.run_process(command, cwd=tmp_path, env=real_env(tmp_path, **unusable_state_dir(tmp_path)),
                                 check=False, capture_stderr=True)
    assert bad.returncode == 1
    (line,) = bad.stderr.decode().strip().splitlines()
    assert line.startswith("avatar-relay: ") and "RELAY_STATE_DIR" in line
