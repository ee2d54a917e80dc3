"""`avatar-relay serve` sets TCP_USER_TIMEOUT = RELAY_SEND_TIMEOUT on the sockets it accepts, so a browser that stops
reading cannot pin a connection for good (hypercorn's writes cannot be cancelled; see relay/server/serving.py).
Checked on a socket accepted through the config builder `serve` uses, and on a socket accepted by a real
`avatar-relay serve` process: the test borrows the process's socket with pidfd_getfd(2) (Linux 5.6+)
and reads the option."""

from __future__ import annotations

import ctypes
import os
import socket
import sys
from pathlib import Path

import pytest
import trio

from relay.server.serving import hypercorn_config
from tests.e2e.test_cli import clean_env, free_port, running, wait_until_serving

ROOT = Path(__file__).resolve().parents[2]
SYS_PIDFD_GETFD = 438  # the same number on every Linux architecture (the unified syscall table)


def user_timeout_ms(sock: socket.socket) -> int:
    return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT)


def test_the_config_serve_builds_gives_accepted_sockets_tcp_user_timeout() -> None:
    config = hypercorn_config("127.0.0.1", 0, graceful_timeout=3.0, send_timeout=2.5)
    (listener,) = config.create_sockets().insecure_sockets
    listener.listen()  # as hypercorn's serve does
    with listener, socket.create_connection(listener.getsockname()[:2]) as client:
        accepted, _ = listener.accept()
        with accepted:
            assert accepted.getpeername() == client.getsockname()
            assert user_timeout_ms(accepted) == 2500


def borrowed_sockets(pid: int) -> list[socket.socket]:
    """Duplicates of every socket the process `pid` holds (pidfd_getfd); fails with the reason when the kernel or
    its sandbox refuses."""
    libc = ctypes.CDLL(None, use_errno=True)
    pidfd = os.pidfd_open(pid)
    borrowed: list[socket.socket] = []
    try:
        for name in os.listdir(f"/proc/{pid}/fd"):
            try:
                if not os.readlink(f"/proc/{pid}/fd/{name}").startswith("socket:"):
                    continue
            except FileNotFoundError:  # closed meanwhile
                continue
            fd = libc.syscall(SYS_PIDFD_GETFD, pidfd, int(name), 0)
            if fd < 0:
                errno = ctypes.get_errno()
                if errno == 9:  # EBADF: closed meanwhile
                    continue
                raise AssertionError(f"pidfd_getfd on the relay process failed: {os.strerror(errno)} (this test "
                                     "needs Linux 5.6+ and ptrace rights over its own child process)")
            borrowed.append(socket.socket(fileno=fd))
    finally:
        os.close(pidfd)
    return borrowed


def accepted_socket_option(pid: int, client: socket.socket) -> int | None:
    """TCP_USER_TIMEOUT (ms) of the socket the process `pid` accepted from `client`, None if it holds none yet."""
    found: int | None = None
    for sock in borrowed_sockets(pid):
        with sock:
            if sock.family not in (socket.AF_INET, socket.AF_INET6) or sock.type != socket.SOCK_STREAM:
                continue
            try:
                peer = sock.getpeername()
            except OSError:  # the listening socket, or another unconnected one
                continue
            if peer[:2] == client.getsockname()[:2]:
                found = user_timeout_ms(sock)
    return found


@pytest.mark.timeout(60)
async def test_a_socket_accepted_by_avatar_relay_serve_has_tcp_user_timeout_from_relay_send_timeout(
        tmp_path: Path) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = clean_env(RELAY_SEND_TIMEOUT="3.5", RELAY_STATE_DIR=str(tmp_path / "state"), PYTHONPATH=str(ROOT))
    with running([sys.executable, "-m", "relay", "serve", "--port", str(port)], tmp_path, env) as proc:
        await wait_until_serving(base, proc)
        with socket.create_connection(("127.0.0.1", port)) as client:
            # One request answered on a kept-alive connection: the relay has accepted this very socket.
            client.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            client.settimeout(10)
            assert client.recv(65536).startswith(b"HTTP/1.1 200")
            option = None
            with trio.move_on_after(10):
                while (option := accepted_socket_option(proc.pid, client)) is None:
                    await trio.sleep(0.05)
            assert option is not None, "the relay process holds no socket connected to the test's client"
            assert option == 3500, f"TCP_USER_TIMEOUT on the accepted socket: {option} ms, RELAY_SEND_TIMEOUT=3.5"
