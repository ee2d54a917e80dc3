"""A real `redis-server` (Debian's package; `scripts/test` installs it) on a free loopback port, for the fleet
tests: started, stopped and restarted on the same port (a Redis outage in the middle of a conversation)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from tests.support.processes import free_port


class RedisServer:
    """One redis-server process on 127.0.0.1:`port`, no persistence, its files in a temporary directory."""

    def __init__(self, port: int | None = None, extra: tuple[str, ...] = ()) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed: run scripts/test (it installs Debian's redis-server)")
        self.binary = binary
        self.port = port or free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="relay-redis-"))
        self.process: subprocess.Popen[bytes] | None = None
        self.extra = extra  # more redis-server arguments (cluster mode)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> None:
        """Start the server and wait until it answers PING (a hang guard of `timeout` seconds)."""
        assert self.process is None, "already running"
        self.process = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.dir), "--protected-mode", "no", "--loglevel", "warning",
             "--logfile", str(self.dir / "redis.log"), *self.extra],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while not self.ping():
            if self.process.poll() is not None:
                log = (self.dir / "redis.log").read_text(errors="replace")[-500:] \
                    if (self.dir / "redis.log").exists() else ""
                raise RuntimeError(f"redis-server exited with status {self.process.returncode}: {log}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not answer on port {self.port} within {timeout} s")
            time.sleep(0.02)

    def ping(self) -> bool:
        """True when the server answers PING now."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        """Kill the server (SIGKILL: an outage, not a clean shutdown) and wait for it to be gone."""
        if self.process is not None:
            self.process.kill()
            self.process.wait(timeout=10)
            self.process = None

    def command(self, *args: str) -> str:
        """Run one command with redis-cli and return its output (for assertions on the fleet's keys)."""
        return subprocess.run(["redis-cli", "-p", str(self.port), *args], capture_output=True, text=True,
                              timeout=10, check=True).stdout

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
