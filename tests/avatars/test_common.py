"""`relay.avatars.common.alongside`: a provider's next start-up step runs while the caller's `on_created` bookkeeping
(the journal's row) runs, and each promise of its docstring holds. Every test runs on the autojump clock, so a wait that
should not be there shows up as virtual time, and a deadlock as the `fail_after` hang guard firing at once."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from relay.avatars import AvatarUnavailable
from relay.avatars.common import alongside


class Bookkeeping:
    """An `on_created` that takes `seconds` (virtual) to record the session, with an optional shielded part."""

    def __init__(self, seconds: float = 1.0, *, shielded: bool = False) -> None:
        self.seconds = seconds
        self.shielded = shielded
        self.started: list[str] = []
        self.finished: list[str] = []
        self.started_event = trio.Event()

    async def __call__(self, session_id: str) -> None:
        self.started.append(session_id)
        self.started_event.set()
        with trio.CancelScope(shield=self.shielded):
            await trio.sleep(self.seconds)
            self.finished.append(session_id)


async def test_without_on_created_it_is_just_the_call(autojump_clock: trio.testing.MockClock) -> None:
    async def call() -> str:
        return "started"

    assert await alongside(None, "s1", call) == "started"


async def test_the_call_runs_while_on_created_runs(autojump_clock: trio.testing.MockClock) -> None:
    journal_row_written = trio.Event()

    async def on_created(session_id: str) -> None:
        await journal_row_written.wait()  # finishes only once the call has begun: needs both at once

    async def call() -> str:
        journal_row_written.set()
        return "started"

    with trio.fail_after(60):
        assert await alongside(on_created, "s1", call) == "started"


async def test_it_returns_the_calls_result_only_once_on_created_has_finished(
        autojump_clock: trio.testing.MockClock) -> None:
    book = Bookkeeping(seconds=2.0)
    t0 = trio.current_time()

    async def call() -> str:
        await trio.sleep(0.5)
        return "started"

    assert await alongside(book, "s1", call) == "started"
    assert book.finished == ["s1"]
    assert trio.current_time() - t0 == pytest.approx(2.0)  # concurrent: the longer of the two, not the sum


async def test_a_failing_call_comes_out_unwrapped_after_on_created_ran_to_its_end(
        autojump_clock: trio.testing.MockClock) -> None:
    book = Bookkeeping(seconds=3.0)
    refusal = AvatarUnavailable("upstream_error", "streaming.start failed (HTTP 500)")

    async def call() -> None:
        await book.started_event.wait()
        raise refusal

    with pytest.raises(AvatarUnavailable) as caught:  # not an ExceptionGroup
        await alongside(book, "s1", call)
    assert caught.value is refusal
    assert book.finished == ["s1"]  # the failure did not cut the bookkeeping short


async def test_a_call_that_fails_at_once_does_not_cut_on_created_short(
        autojump_clock: trio.testing.MockClock) -> None:
    book = Bookkeeping(seconds=3.0)

    async def call() -> None:
        raise ValueError("bad answer")

    with pytest.raises(ValueError, match="bad answer"):
        await alongside(book, "s1", call)
    assert book.started == ["s1"] and book.finished == ["s1"]


async def test_cancelling_the_caller_stops_both_except_what_on_created_shields(
        autojump_clock: trio.testing.MockClock) -> None:
    unshielded = Bookkeeping(seconds=3.0)
    shielded = Bookkeeping(seconds=3.0, shielded=True)
    calls_finished: list[str] = []

    async def call() -> None:
        await trio.sleep(10)
        calls_finished.append("call")

    for book in (unshielded, shielded):
        with trio.move_on_after(1.0) as scope:
            await alongside(book, "s1", call)
        assert scope.cancelled_caught
    assert calls_finished == []
    assert unshielded.started == ["s1"] and unshielded.finished == []
    assert shielded.finished == ["s1"]
