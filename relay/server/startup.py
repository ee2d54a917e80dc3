"""Start-up failures, told the same way under every entry point: one line on stderr, `avatar-relay: ` and a sentence
naming the setting or file and what to do, and exit status 1 — under `avatar-relay serve`, `serve --workers N` and
`hypercorn -k trio relay.web:app`. No traceback, unless RELAY_LOG_LEVEL=DEBUG asks for one (printed after the line).

`StartupGuard` wraps the app's start-up hook: whatever it raises becomes the line (`startup_line`), printed by the
guard. Under `avatar-relay serve` the guard then re-raises, so hypercorn's serve() fails and the command returns 1
(a worker of `serve --workers N` returns WORKER_STARTUP_FAILED, which its supervisor does not restart). Under
hypercorn's command line nobody above the app could say it, so the guard ends the process itself (`os._exit(1)`:
nothing has been served yet; quart and hypercorn would otherwise print their tracebacks). `check_before_workers`
runs the checks a supervisor can make once, before any worker starts.

This module must never put a secret in a line: the messages it passes on are the settings' own (which never hold
one), and an unexpected error's text is cut to one short line.
"""

from __future__ import annotations

import logging
import os
import sys
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, NoReturn

from quart import Quart

from relay.config import ConfigError, Settings
from relay.ops.fleet import FleetUnavailable
from relay.ops.journal import JournalUnusable
from relay.ops.transcripts import TranscriptsDirUnusable
from relay.providers.table import chosen

STARTUP_FAILED = 1
WORKER_STARTUP_FAILED = 3  # a worker of `serve --workers N` that could not start: not restarted
PREFIX = "avatar-relay: "
_CLEAR = (ConfigError, JournalUnusable, TranscriptsDirUnusable)
REDIS_ADVICE = "; check that Redis runs and RELAY_REDIS_URL points at it (`avatar-relay doctor` tells more)"


class StartupFailure(Exception):
    """The relay cannot start; the message is the one line to print (without the `avatar-relay: ` prefix)."""


def startup_line(exc: BaseException) -> str:
    """The one line (without the prefix) for an error raised while starting."""
    if isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        return startup_line(exc.exceptions[0])
    if isinstance(exc, FleetUnavailable):
        return _one_line(f"{exc}{REDIS_ADVICE}")
    if isinstance(exc, (StartupFailure, *_CLEAR)):
        return _one_line(str(exc))
    if isinstance(exc, OSError):
        where = f" ({exc.filename})" if exc.filename else ""
        return _one_line(f"the relay could not start: {exc.strerror or type(exc).__name__}{where}; set "
                         "RELAY_LOG_LEVEL=DEBUG to see where")
    return _one_line(f"the relay could not start: {type(exc).__name__}: {str(exc)[:200]}; set RELAY_LOG_LEVEL=DEBUG "
                     "for the traceback")


def _one_line(text: str) -> str:
    return " ".join(text.split())


def debug_requested(settings: Settings | None = None) -> bool:
    """RELAY_LOG_LEVEL=DEBUG: print the traceback after the line (read from the environment when the settings
    themselves could not be loaded)."""
    level = settings.relay_log_level if settings is not None else os.environ.get("RELAY_LOG_LEVEL", "")
    return level.strip().upper() == "DEBUG"


def print_failure(line: str, exc: BaseException | None = None, settings: Settings | None = None) -> None:
    """Print the line on stderr (and, with RELAY_LOG_LEVEL=DEBUG, the traceback of `exc` after it)."""
    print(PREFIX + line, file=sys.stderr, flush=True)
    if exc is not None and debug_requested(settings):
        traceback.print_exception(exc, file=sys.stderr)
        sys.stderr.flush()


def end_process(line: str, exc: BaseException | None = None, settings: Settings | None = None) -> NoReturn:
    """Print the line and end this process with STARTUP_FAILED at once (nothing has been served yet)."""
    print_failure(line, exc, settings)
    logging.shutdown()
    os._exit(STARTUP_FAILED)


@dataclass
class StartupGuard:
    """Turns whatever the app's start-up hook raises into the one line, printed here. `end_process_on_failure`:
    served by hypercorn's command line, where the guard then ends the process; otherwise it records the line
    (`failure`) and raises StartupFailure, for `avatar-relay serve` to return its exit status."""

    settings: Settings
    end_process_on_failure: bool
    failure: str | None = None
    end: Callable[[str, BaseException | None, Settings | None], NoReturn] = end_process

    def install(self, app: Quart, start: Callable[[], Awaitable[None]]) -> None:
        """Run `start` as `app`'s start-up hook, guarded. quart logs whatever a start-up hook raises, with its
        traceback, as an ERROR: not the StartupFailure raised here, whose line is out already."""
        app.before_serving(self.wrap(start))
        log_exception = app.log_exception

        def log_other_exceptions(exc_info: Any) -> None:
            if not isinstance(exc_info[1], StartupFailure):
                log_exception(exc_info)

        setattr(app, "log_exception", log_other_exceptions)  # noqa: B010 (an instance's own method, replaced)

    def quiet_hypercorn(self) -> None:
        """Drop hypercorn's own lines once the start-up has failed: hypercorn 0.18 goes on to bind and log `Running
        on …` before the failure reaches it (its lifespan task sets `startup` in a `finally`). For the one process
        that serves this app (`avatar-relay serve`): the filter stays on hypercorn's logger."""
        logging.getLogger("hypercorn.error").addFilter(lambda record: self.failure is None)

    def wrap(self, start: Callable[[], Awaitable[None]]) -> Callable[[], Awaitable[None]]:
        async def guarded() -> None:
            try:
                await start()
            except Exception as exc:
                self.failure = line = startup_line(exc)
                if self.end_process_on_failure:
                    self.end(line, exc, self.settings)
                print_failure(line, exc, self.settings)
                raise StartupFailure(line) from exc

        return guarded


async def check_before_workers(settings: Settings) -> None:
    """What `serve --workers N` checks once, before any worker starts (so that a mistake is one line, not one per
    worker, and no worker is restarted for it): the fleet's Redis, the session journal (a damaged one is moved aside
    here, once), the transcripts directory. Raises StartupFailure."""
    from relay.ops import journal as jr
    from relay.ops.transcripts import TranscriptWriter

    if settings.relay_redis_url is not None:
        from relay.ops.fleet_probe import startup_problem

        if (redis_problem := await startup_problem(settings)) is not None:
            raise StartupFailure(redis_problem + REDIS_ADVICE)
    try:
        if settings.relay_journal and chosen(settings) is not None:
            (await jr.open_journal_now(jr.state_dir(settings))).close()
        if settings.relay_transcripts_dir:
            await TranscriptWriter(settings.relay_transcripts_dir).prepare()
    except (JournalUnusable, TranscriptsDirUnusable) as exc:
        raise StartupFailure(str(exc)) from None


async def check_configuration(settings: Settings | None = None) -> Settings:
    """Everything that can be checked about a configuration without an upstream call, in the order the relay meets
    it: the settings' own validation, the authentication settings and key material, the Redis URL's form, then
    `check_before_workers` (Redis answering, the journal, the transcripts directory). The settings, or
    StartupFailure with the line `avatar-relay serve` prints. `serve --workers N` runs it before any worker."""
    from relay.ops.fleet import Fleet
    from relay.providers.table import load_settings
    from relay.server.auth import auth_problem

    try:
        settings = settings or load_settings()
        Fleet.from_settings(settings)
    except ConfigError as exc:
        raise StartupFailure(str(exc)) from None
    if (problem := auth_problem(settings)) is not None:
        raise StartupFailure(f"invalid configuration: {problem}")
    await check_before_workers(settings)
    return settings
