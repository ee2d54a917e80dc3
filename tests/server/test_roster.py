"""The roster of live conversations (relay.server.roster), with no sockets: what state an operator sees as a
conversation goes, its avatar time across sessions, and ending it (`admin`, once, by its shutdown scope)."""

from __future__ import annotations

import time

import trio

from relay.avatars.hooks import SessionOutcome
from relay.conversation.endings import why_cut
from relay.conversation.link import BrowserLink
from relay.conversation.record import ConversationRecord
from relay.server.roster import Roster

CLOSED = SessionOutcome(opened=True, error=None, stop_failed=False)


async def test_states_follow_the_conversation_and_its_avatar_sessions() -> None:
    roster = Roster()
    link = BrowserLink(20.0, 1.0, lambda: "token")
    with roster.seat(trio.CancelScope(), "192.0.2.7", "user-1", link) as entry:
        assert entry.state == "starting" and len(roster) == 1
        record = ConversationRecord(relay_id="r-1", conversation_id="conv_1")
        roster.on_start(record)
        hooks = roster.session_hooks("liveavatar")
        assert hooks.on_created is not None and hooks.on_closed is not None
        await hooks.on_created("s-1")
        assert entry.state == "starting"  # before `ready`
        record.ready_at = time.monotonic()
        assert entry.state == "live"
        [shown] = roster.summaries()
        assert shown["id"] == "r-1" and shown["conversation_id"] == "conv_1" and shown["client"] == "192.0.2.7"
        assert shown["subject"] == "user-1" and shown["provider"] == "liveavatar"
        assert shown["avatar_session_id"] == "s-1" and roster.sessions() == {("liveavatar", "s-1")}

        link.held_since = trio.current_time()  # its connection dropped: waiting for a resume
        assert entry.state == "held"
        link.held_since = None

        await hooks.on_closed(CLOSED)  # the session died: a replacement is being opened
        assert entry.state == "replacing" and roster.sessions() == set()
        assert roster.summaries()[0]["avatar_session_id"] is None
        second = roster.session_hooks("simli")
        assert second.on_created is not None
        await second.on_created("s-2")
        assert entry.state == "live" and roster.sessions() == {("simli", "s-2")}
        assert entry.sessions == 2

        record.degraded = True  # no avatar any more: voice only
        assert second.on_closed is not None
        await second.on_closed(CLOSED)
        assert entry.state == "voice_only"
    assert len(roster) == 0 and entry.gone.is_set()


async def test_avatar_seconds_add_up_the_sessions_and_exclude_the_time_between() -> None:
    now = [100.0]
    roster = Roster(clock=lambda: now[0])
    with roster.seat(trio.CancelScope(), "127.0.0.1", None, object()):
        for session_id, seconds in (("s-1", 10.0), ("s-2", 4.0)):
            hooks = roster.session_hooks("heygen")
            assert hooks.on_created is not None and hooks.on_closed is not None
            await hooks.on_created(session_id)
            now[0] += seconds / 2
            assert roster.summaries()[0]["avatar_seconds"] == (5.0 if session_id == "s-1" else 12.0)
            now[0] += seconds / 2
            await hooks.on_closed(CLOSED)
            now[0] += 30  # between sessions (a replacement opening) nothing is billed
        assert roster.summaries()[0]["avatar_seconds"] == 14.0


async def test_no_hooks_outside_a_seated_conversation() -> None:
    roster = Roster()
    roster.on_start(ConversationRecord(relay_id="r-x"))  # a conversation run without a doorway: not listed
    assert roster.session_hooks("heygen").on_created is None
    assert roster.summaries() == []


async def test_ending_cuts_the_shutdown_scope_once_with_reason_admin() -> None:
    roster = Roster()
    scope = trio.CancelScope()
    with roster.seat(scope, "127.0.0.1", None, object()) as entry:
        roster.on_start(ConversationRecord(relay_id="r-2", conversation_id="conv_2"))
        assert roster.end("conv_unknown") is None
        assert roster.end("conv_2") is entry and scope.cancel_called
        assert roster.end("r-2") is entry  # asked again while it ends: the same, no second cut
        assert entry.state == "ending"
        outcome = why_cut(scope)
        assert outcome.reason == "admin" and outcome.error is None and outcome.close_code == 1000
        assert why_cut(scope).reason == "shutdown"  # read once; any other cut is the drain's


def test_a_scope_nobody_cut_short_ends_as_the_drain_says() -> None:
    assert why_cut(trio.CancelScope()).reason == "shutdown"
