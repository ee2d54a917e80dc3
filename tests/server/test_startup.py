"""The one line for each kind of start-up error (no sockets): the clear ones as they are, a lone error inside an
exception group unwrapped, an unexpected one cut to one short line pointing at RELAY_LOG_LEVEL=DEBUG."""

from __future__ import annotations

from relay.config import ConfigError
from relay.ops.fleet import FleetUnavailable
from relay.ops.journal import JournalUnusable
from relay.server.startup import REDIS_ADVICE, StartupFailure, startup_line


def test_clear_errors_are_their_own_line() -> None:
    for error in (ConfigError("invalid configuration: RELAY_PORT: …"), JournalUnusable("RELAY_STATE_DIR …"),
                  StartupFailure("RELAY_TRANSCRIPTS_DIR …")):
        assert startup_line(error) == str(error)


def test_redis_says_what_to_do() -> None:
    assert startup_line(FleetUnavailable("RELAY_REDIS_URL: cannot use Redis")).endswith(REDIS_ADVICE)


def test_a_lone_error_in_a_group_is_unwrapped() -> None:
    assert startup_line(ExceptionGroup("x", [JournalUnusable("the journal")])) == "the journal"


def test_an_unexpected_error_is_one_short_line_pointing_at_the_debug_setting() -> None:
    line = startup_line(RuntimeError("first\nsecond " + "y" * 500))
    assert "\n" not in line and line.startswith("the relay could not start: RuntimeError: first second")
    assert len(line) < 320 and line.endswith("set RELAY_LOG_LEVEL=DEBUG for the traceback")
    assert startup_line(FileNotFoundError(2, "No such file or directory", "/x/y")) == (
        "the relay could not start: No such file or directory (/x/y); set RELAY_LOG_LEVEL=DEBUG to see where")
