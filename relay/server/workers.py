"""`avatar-relay serve --workers N`: one relay on every core of a machine. The command's process becomes a
supervisor: it binds the listening socket once, starts N worker processes that all accept on it (each a complete
relay, `avatar-relay serve` with the hidden worker options below), forwards SIGTERM/SIGINT to them so each drains as a
single relay does, and restarts a worker that dies, backing off when one keeps dying.

What the workers share: the listening socket (inherited descriptor, served by hypercorn as `fd://N`), the
conversation cap (`relay.server.seats`), a private directory holding each worker's metrics socket
(`relay.server.worker_metrics`), and the session journal (its rows are claimed one process at a time). The
supervisor runs no app, opens no upstream connection and never reads a key (it checks Redis, the journal and the
transcripts directory once before starting the workers; a worker that still cannot start exits
WORKER_STARTUP_FAILED, and the supervisor stops the others and exits 1 instead of restarting it); it must never
block on a worker for longer than the drain bound.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import trio

from relay.config import Settings
from relay.server.seats import AVATAR_SLOTS, AVATARS, Seats, create_seats_file
from relay.server.serving import hypercorn_config
from relay.server.startup import STARTUP_FAILED, WORKER_STARTUP_FAILED, print_failure

log = logging.getLogger("relay.workers")

SHUTDOWN_MARGIN = 5.0  # seconds beyond a worker's own drain bound before the supervisor kills it


# ----------------------------------------------------------------------------------------------------------------------
# A worker's identity, passed on its command line


@dataclass(frozen=True)
class WorkerRole:
    """What a worker process is told by its supervisor."""

    index: int
    count: int
    listen_fd: int
    seats_fd: int
    directory: str
    supervisor_pid: int

    def argv(self) -> list[str]:
        return ["--worker-of", f"{self.index}/{self.count}", "--listen-fd", str(self.listen_fd), "--seats-fd",
                str(self.seats_fd), "--worker-dir", self.directory, "--supervisor-pid", str(self.supervisor_pid)]

    def metrics_socket(self, index: int) -> Path:
        return Path(self.directory) / f"metrics-{index}.sock"

    def handover_socket(self, index: int) -> Path:
        """Where worker `index` takes over resumes that landed on another worker (relay.server.handover)."""
        return Path(self.directory) / f"handover-{index}.sock"

    def seats(self, limit: int) -> Seats:
        return Seats(self.seats_fd, self.count, self.index, limit)

    def avatar_seats(self, limit: int, slot: int = 0) -> Seats:
        """The machine's avatar-session counters of one budgeted provider (`slot`: its place among them;
        RELAY_MAX_AVATAR_SESSIONS without Redis)."""
        if not 0 <= slot < AVATAR_SLOTS:
            raise ValueError(f"at most {AVATAR_SLOTS} avatar providers can have a budget")
        return Seats(self.seats_fd, self.count, self.index, limit, AVATARS + slot)


def add_worker_options(parser: argparse.ArgumentParser) -> None:
    """The hidden `serve` options a supervisor starts its workers with."""
    for option in ("--worker-of", "--listen-fd", "--seats-fd", "--worker-dir", "--supervisor-pid"):
        parser.add_argument(option, default=None, help=argparse.SUPPRESS)


def role_from_args(args: argparse.Namespace) -> WorkerRole | None:
    """The worker role given on the command line, or None for a supervisor or a single relay."""
    if getattr(args, "worker_of", None) is None:
        return None
    index, count = (int(part) for part in args.worker_of.split("/"))
    return WorkerRole(index, count, int(args.listen_fd), int(args.seats_fd), args.worker_dir,
                      int(args.supervisor_pid))


async def wait_for_supervisor_exit(supervisor_pid: int, interval: float = 1.0) -> None:
    """Return once this worker's supervisor is gone (even by kill -9: the worker is re-parented), so a worker never
    outlives it. Polls the parent pid; cancelled by the caller's scope."""
    while True:  # no event to wait for: the kernel re-parents silently
        if os.getppid() != supervisor_pid:
            return
        await trio.sleep(interval)


# ----------------------------------------------------------------------------------------------------------------------
# Restart policy (plain function)


@dataclass(frozen=True)
class RestartPolicy:
    """Restart a dead worker at once, then after 1, 2, 4, 8 s; more than `max_restarts` unexpected exits within
    `window` seconds and that slot is given up."""

    max_restarts: int = 5
    window: float = 60.0
    base_delay: float = 1.0
    max_delay: float = 30.0


def restart_delay(earlier_exits: Sequence[float], now: float, policy: RestartPolicy = RestartPolicy()) -> float | None:
    """Seconds to wait before restarting a worker that exited unexpectedly at `now`, given the times of its earlier
    unexpected exits; None when it should not be restarted any more."""
    recent = [at for at in earlier_exits if now - at < policy.window]
    if len(recent) >= policy.max_restarts:
        return None
    if not recent:
        return 0.0
    return float(min(policy.max_delay, policy.base_delay * 2 ** (len(recent) - 1)))


def describe_exit(status: int) -> str:
    if status < 0:
        try:
            return f"signal {signal.Signals(-status).name}"
        except ValueError:
            return f"signal {-status}"
    return f"status {status}"


def shutdown_bound(settings: Settings) -> float:
    """How long a draining worker may take (predrain delay, drain, hypercorn's grace for the avatar stops) plus a
    margin; the supervisor kills what is still running after that."""
    return (settings.relay_predrain_delay + settings.relay_drain_timeout + settings.relay_stop_timeout + 2.0
            + SHUTDOWN_MARGIN)


# ----------------------------------------------------------------------------------------------------------------------
# The supervisor


def bind_listener(host: str, port: int, send_timeout: float) -> socket.socket:
    """The listening socket every worker accepts on, made as a single relay makes it (hypercorn's options plus
    TCP_USER_TIMEOUT). Raises OSError when the address cannot be used."""
    config = hypercorn_config(host, port, 0.0, send_timeout)
    sock = config.create_sockets().insecure_sockets[0]
    try:
        sock.listen(config.backlog)
    except OSError:
        sock.close()
        raise
    return sock


@dataclass(frozen=True)
class Plan:
    settings: Settings
    workers: int
    listen_fd: int
    seats_fd: int
    directory: str

    def role(self, index: int) -> WorkerRole:
        return WorkerRole(index, self.workers, self.listen_fd, self.seats_fd, self.directory, os.getpid())

    def command(self, index: int) -> list[str]:
        return [sys.executable, "-m", "relay", "serve", *self.role(index).argv()]


def run_supervisor(settings: Settings, host: str, port: int, workers: int) -> int:
    """Serve `host:port` with `workers` worker processes until SIGTERM/SIGINT; the exit status of `serve`. Cleans up
    the socket, the seats file and the metrics directory whatever happens."""
    try:
        listener = bind_listener(host, port, settings.relay_send_timeout)
    except OSError as exc:
        print_failure(f"cannot listen on {host}:{port}: {exc.strerror}: choose another --port / RELAY_PORT (or stop "
                      "what listens there)", exc, settings)
        return STARTUP_FAILED
    seats_fd = create_seats_file(workers)
    directory = tempfile.mkdtemp(prefix="avatar-relay-")  # mode 0700: the metrics sockets are private
    bound = listener.getsockname()
    log.info("supervisor: %d workers serving http://%s:%d", workers, bound[0], bound[1])
    try:
        return trio.run(_Supervisor(Plan(settings, workers, listener.fileno(), seats_fd, directory)).run)
    finally:
        listener.close()
        os.close(seats_fd)
        shutil.rmtree(directory, ignore_errors=True)


class _Supervisor:
    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.seats = Seats(plan.seats_fd, plan.workers, 0, 0)
        self.processes: dict[int, trio.Process] = {}
        self.stopping = trio.Event()
        self.slots_left = plan.workers
        self.all_gone = trio.Event()
        self.start_failed = trio.Event()  # a worker could not start (it printed why): stop the others, exit 1
        self.status = 0

    async def run(self) -> int:
        """Start the workers, keep them running, drain them on a signal; the supervisor's exit status."""
        try:
            with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async with trio.open_nursery() as nursery:
                    for index in range(self.plan.workers):
                        nursery.start_soon(self._keep_running, index)
                    signalled = False
                    async with trio.open_nursery() as race:
                        async def on_signal() -> None:
                            nonlocal signalled
                            async for _ in signals:
                                signalled = True
                                race.cancel_scope.cancel()

                        async def on_all_gone() -> None:
                            await self.all_gone.wait()
                            race.cancel_scope.cancel()

                        async def on_start_failed() -> None:
                            await self.start_failed.wait()
                            race.cancel_scope.cancel()

                        race.start_soon(on_signal)
                        race.start_soon(on_all_gone)
                        race.start_soon(on_start_failed)
                    if self.start_failed.is_set():
                        await self._stop_all()
                        return STARTUP_FAILED
                    if not signalled:
                        log.error("supervisor: no worker left running; exiting")
                        return 1
                    await self._stop_all()
                # The signal receiver stays open until every worker is gone: a second signal cannot kill the
                # supervisor halfway through the drain.
        finally:
            self.seats.close()
        return self.status

    async def _stop_all(self) -> None:
        self.stopping.set()
        log.info("supervisor: shutting down; %d worker(s) draining", len(self.processes))
        for process in self.processes.values():
            process.send_signal(signal.SIGTERM)
        bound = shutdown_bound(self.plan.settings)
        with trio.move_on_after(bound):
            await self.all_gone.wait()
        if self.processes:
            log.error("supervisor: %d worker(s) still running %.0f s after the signal; killing them",
                      len(self.processes), bound)
            self.status = 1
            for process in self.processes.values():
                process.kill()
        await self.all_gone.wait()

    async def _keep_running(self, index: int) -> None:
        """Run worker `index`, restarting it when it dies unexpectedly (see RestartPolicy) until the supervisor
        stops. Returns when the worker has exited for good."""
        exits: list[float] = []
        try:
            while not self.stopping.is_set():
                process = await trio.lowlevel.open_process(
                    self.plan.command(index), pass_fds=(self.plan.listen_fd, self.plan.seats_fd),
                    process_group=0)  # its own group: a terminal's Ctrl-C reaches the supervisor only
                self.processes[index] = process
                log.info("supervisor: worker %d started (pid %d)", index, process.pid)
                if self.stopping.is_set():
                    process.send_signal(signal.SIGTERM)
                status = await process.wait()
                del self.processes[index]
                self.seats.clear(index)  # its conversations died with it
                if self.stopping.is_set():
                    if status not in (0, -signal.SIGTERM):
                        log.error("supervisor: worker %d (pid %d) ended its drain with %s", index, process.pid,
                                  describe_exit(status))
                        self.status = 1
                    return
                if status == WORKER_STARTUP_FAILED:  # a mistake a restart would only repeat; the line is out
                    self.start_failed.set()
                    return
                now = trio.current_time()
                delay = restart_delay(exits, now)
                exits.append(now)
                if delay is None:
                    log.error("supervisor: worker %d (pid %d) exited with %s: %d unexpected exits within %.0f s; "
                              "not restarting it", index, process.pid, describe_exit(status), len(exits),
                              RestartPolicy().window)
                    return
                log.error("supervisor: worker %d (pid %d) exited unexpectedly with %s; restarting it in %.0f s",
                          index, process.pid, describe_exit(status), delay)
                with trio.move_on_after(delay):
                    await self.stopping.wait()
        finally:
            self.slots_left -= 1
            if self.slots_left == 0:
                self.all_gone.set()
