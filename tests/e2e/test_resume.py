"""Issue 29: a conversation survives a dropped connection. The real relay (hypercorn) and the real simulators; the
browser's TCP connection is reset (no close frame) and a new connection resumes with the token from `ready`."""

from __future__ import annotations

import struct
from typing import Any

import trio

from relay.server.auth import mint_token
from relay.server.state import relay_state
from relay.sim.elevenlabs_sim import ALL_CLIENT_EVENTS
from tests.faults.matrix import running_fault_relay
from tests.support.harness import Relay, running_relay
from tests.support.resumable import ResumingBrowser
from tests.support.wsframes import client_frame

SECRET = "s" * 40


def assert_no_gap_no_duplicate(browser: ResumingBrowser) -> None:
    seqs = browser.seqs
    assert seqs == list(range(1, len(seqs) + 1)), seqs


async def one_conversation_one_session(relay: Relay) -> None:
    agent = await relay.ledger("elevenlabs")
    assert len(agent["conversations"]) == 1
    ledger = await relay.wait_all_sessions_stopped("heygen")
    assert len(ledger["sessions"]) == 1


async def started(relay: Relay, **start: Any) -> tuple[ResumingBrowser, dict[str, Any]]:
    browser = ResumingBrowser(relay.url)
    await browser.connect()
    await browser.send(type="start", **start)
    return browser, await browser.expect("ready")


async def test_ready_carries_a_resume_token_and_every_later_message_a_seq() -> None:
    async with running_relay() as relay:
        browser, ready = await started(relay)
        assert 0 < len(ready["resume_token"]) <= 512 and ready["resume_window"] == 20
        assert "seq" not in ready
        await browser.send(type="text", text="what are your opening hours?")
        await browser.expect("agent_response")
        await browser.send(type="stop")
        await browser.expect("ended")
        assert browser.messages[-1]["seq"] > 1
        assert_no_gap_no_duplicate(browser)


async def test_without_a_window_ready_has_no_token_and_messages_no_seq() -> None:
    async with running_relay(relay_resume_window=0) as relay:
        browser, ready = await started(relay)
        assert "resume_token" not in ready and "resume_window" not in ready
        await browser.send(type="stop")
        await browser.expect("ended")
        assert browser.seqs == []


async def test_a_dropped_connection_while_the_agent_speaks_resumes_the_same_conversation() -> None:
    async with running_relay() as relay:
        browser, ready = await started(relay)
        await browser.send(type="text", text="what are your opening hours?")
        await browser.expect("agent_response")
        browser.drop()  # while the avatar speaks the reply
        resumed = await browser.resume(ready["resume_token"])
        assert resumed["type"] == "resumed", resumed
        assert resumed["conversation_id"] == ready["conversation_id"]
        assert resumed["resume_token"] != ready["resume_token"]
        await browser.send(type="text", text="and on sunday?")
        await browser.expect("agent_response", where=lambda m: m["seq"] > resumed["seq"])
        await browser.send(type="stop")
        assert (await browser.expect("ended"))["reason"] == "client_stop"
        assert_no_gap_no_duplicate(browser)
        await one_conversation_one_session(relay)


async def test_messages_sent_while_held_are_replayed_in_order() -> None:
    async with running_relay() as relay:
        browser, ready = await started(relay)
        await browser.send(type="text", text="what are your opening hours?")
        browser.drop()  # before the reply: the reply is sent while nobody is there
        await relay.wait_for_ledger("elevenlabs", lambda led: led["conversations"][0]["user_messages"],
                                    "the typed message reaching the agent")
        resumed = await browser.resume(ready["resume_token"], last_seq=0)
        assert resumed["type"] == "resumed", resumed
        await browser.expect("agent_response")
        await browser.send(type="stop")
        await browser.expect("ended")
        assert_no_gap_no_duplicate(browser)
        await one_conversation_one_session(relay)


async def test_a_conversation_nobody_comes_back_to_ends_client_gone_with_one_stop() -> None:
    async with running_relay(relay_resume_window=0.5) as relay:
        browser, ready = await started(relay)
        browser.drop()
        ledger = await relay.wait_all_sessions_stopped("heygen")
        assert len(ledger["sessions"]) == 1
        assert ledger["requests"].get("streaming.stop") == 1, ledger["requests"]  # one stop call, no more
        metrics = (await relay.http.get(relay.url + "/metrics")).text
        await _wait_metric(relay, 'avatar_relay_conversations_ended_total{reason="client_gone"} 1.0')
        assert "avatar_relay_conversations_held 0.0" in metrics or "avatar_relay_conversations_held" in metrics
        late = await browser.resume(ready["resume_token"])
        assert late == {"type": "error", "code": "resume_failed", "reason": "expired", "message": late["message"]}
        assert (await browser.expect("ended"))["reason"] == "resume_failed"
        assert await browser.read_to_close() == 1008


async def _wait_metric(relay: Relay, line: str) -> str:
    with trio.fail_after(10):
        while True:
            text = (await relay.http.get(relay.url + "/metrics")).text
            if line in text:
                return text
            await trio.sleep(0.02)


async def test_a_held_conversation_counts_as_held_and_keeps_its_seat() -> None:
    async with running_relay(relay_max_conversations=1) as relay:
        browser, ready = await started(relay)
        browser.drop()
        await _wait_metric(relay, "avatar_relay_conversations_held 1.0")
        other, _ = ResumingBrowser(relay.url), None
        await other.connect()
        await other.send(type="start")
        assert (await other.expect("error"))["code"] == "capacity"
        resumed = await browser.resume(ready["resume_token"])
        assert resumed["type"] == "resumed"
        await _wait_metric(relay, "avatar_relay_conversations_held 0.0")
        await browser.send(type="stop")
        await browser.expect("ended")


async def test_a_resume_token_works_once() -> None:
    async with running_relay() as relay:
        browser, ready = await started(relay)
        browser.drop()
        assert (await browser.resume(ready["resume_token"]))["type"] == "resumed"
        thief = ResumingBrowser(relay.url)
        replayed = await thief.resume(ready["resume_token"])
        assert (replayed["code"], replayed["reason"]) == ("resume_failed", "unknown")
        assert await thief.read_to_close() == 1008
        await browser.send(type="stop")  # the rightful browser goes on
        assert (await browser.expect("ended"))["reason"] == "client_stop"


async def test_a_forged_or_unreadable_token_is_unknown_and_a_foreign_route_elsewhere() -> None:
    async with running_relay() as relay:
        browser, ready = await started(relay)
        prefix, route, key, expires, mac = ready["resume_token"].split(".")
        forged = ".".join((prefix, route, key, str(int(expires) + 3600), mac))
        for token, reason in ((forged, "unknown"), ("garbage", "unknown"),
                              (".".join((prefix, "another-relay", key, expires, mac)), "elsewhere")):
            other = ResumingBrowser(relay.url)
            answer = await other.resume(token)
            assert (answer["code"], answer["reason"]) == ("resume_failed", reason)
            assert route not in answer["message"] and key not in answer["message"]
            assert await other.read_to_close() == 1008
        await browser.send(type="stop")
        assert (await browser.expect("ended"))["reason"] == "client_stop"


async def test_another_subjects_client_token_cannot_resume() -> None:
    async with running_relay(relay_auth="token", relay_auth_secret=SECRET) as relay:
        browser, ready = await started(relay, token=mint_token(SECRET, subject="alice"))
        browser.drop()
        mallory = ResumingBrowser(relay.url)
        mallory.connection = None
        await _resume_with_query_token(mallory, relay, mint_token(SECRET, subject="mallory"), ready["resume_token"],
                                       expect="unauthorized")
        # Alice, even with no client token on the new connection: the resume token is the credential.
        assert (await browser.resume(ready["resume_token"]))["type"] == "resumed"
        await browser.send(type="stop")
        assert (await browser.expect("ended"))["reason"] == "client_stop"


async def test_a_resume_spends_no_use_of_a_one_conversation_client_token() -> None:
    """Issue 29: resuming never counts as a new use. A client token good for one conversation (#30's default) resumes
    it over a connection that carries the same token (its `resume` read by the doorway, in a pre-start slot), and the
    token's one use is still the conversation's: a second `start` with it is refused."""
    async with running_relay(relay_auth="token", relay_auth_secret=SECRET) as relay:
        client_token = mint_token(SECRET, subject="alice")
        browser = ResumingBrowser(relay.url)
        await browser.connect(f"/ws?token={client_token}")
        await browser.send(type="start")
        ready = await browser.expect("ready")
        browser.drop()
        resumed = await browser.resume(ready["resume_token"], path=f"/ws?token={client_token}")
        assert resumed["type"] == "resumed", resumed
        other = ResumingBrowser(relay.url)
        await other.connect(f"/ws?token={client_token}")
        await other.send(type="start")
        refused = await other.expect("error")
        assert refused["code"] == "unauthorized" and "in use" in refused["message"], refused
        await browser.send(type="stop")
        assert (await browser.expect("ended"))["reason"] == "client_stop"
        await one_conversation_one_session(relay)


async def _resume_with_query_token(browser: ResumingBrowser, relay: Relay, client_token: str, resume_token: str, *,
                                   expect: str) -> None:
    from tests.support.resumable import Connection

    browser.connection = await Connection.connect(relay.url, path=f"/ws?token={client_token}")
    await browser.send(type="resume", resume_token=resume_token, last_seq=0)
    answer = await browser.expect("error")
    assert (answer["code"], answer["reason"]) == ("resume_failed", expect)
    assert await browser.read_to_close() == 1008


async def test_a_stop_ends_at_once_and_its_token_then_says_ended() -> None:
    async with running_relay() as relay:
        browser, ready = await started(relay)
        await browser.send(type="stop")
        await browser.expect("ended")
        again = ResumingBrowser(relay.url)
        answer = await again.resume(ready["resume_token"])
        assert (answer["code"], answer["reason"]) == ("resume_failed", "ended")


DEMO_AGENT = {"first_message": "", "client_events": list(ALL_CLIENT_EVENTS), "mcp_server_ids": ["sim-weather"],
              "response_latency_ms": 0,
              "ping_interval_s": 0}


async def test_a_connection_dropped_during_a_client_tool_call_resumes_and_answers_it() -> None:
    async with running_relay() as relay:
        await relay.faults("elevenlabs", **DEMO_AGENT)
        browser, ready = await started(relay)
        await browser.send(type="text", text="use the tool please")
        call = await browser.expect("tool_call")
        browser.drop()
        assert (await browser.resume(ready["resume_token"]))["type"] == "resumed"
        await browser.send(type="tool_result", tool_call_id=call["tool_call_id"], result="12:00")
        reply = await browser.expect("agent_response", where=lambda m: "12:00" in m["text"])
        assert reply["seq"] > call["seq"]
        await browser.send(type="stop")
        await browser.expect("ended")
        assert_no_gap_no_duplicate(browser)
        await one_conversation_one_session(relay)


async def test_a_connection_dropped_during_an_mcp_approval_resumes_and_the_answer_reaches_the_agent() -> None:
    async with running_relay() as relay:
        await relay.faults("elevenlabs", **DEMO_AGENT)
        browser, ready = await started(relay)
        await browser.send(type="text", text="What's the weather in Oslo?")
        asking = await browser.expect("mcp_tool_call", where=lambda m: m["state"] == "loading")
        browser.drop()  # the approval request is sent while nobody is there: it comes with the replay
        resumed = await browser.resume(ready["resume_token"], last_seq=asking["seq"])
        assert resumed["type"] == "resumed"
        asking = await browser.expect("mcp_tool_call", where=lambda m: m["state"] == "awaiting_approval")
        await browser.send(type="mcp_approval", tool_call_id=asking["tool_call_id"], approved=True)
        await browser.expect("mcp_tool_call", where=lambda m: m["state"] in ("success", "failure"))
        await browser.send(type="stop")
        await browser.expect("ended")
        assert_no_gap_no_duplicate(browser)
        agent = await relay.ledger("elevenlabs")
        assert [a["is_approved"] for a in agent["conversations"][0]["mcp_approvals"]] == [True]
        await one_conversation_one_session(relay)


async def test_a_connection_dropped_before_ready_ends_the_conversation_and_stops_its_session() -> None:
    async with running_relay() as relay:
        await relay.faults("elevenlabs", queue_wait_ms=60_000)  # `ready` waits for the agent's queue
        browser = ResumingBrowser(relay.url)
        await browser.connect()
        await browser.send(type="start")
        await browser.expect("queue_status")
        await relay.wait_for_ledger("heygen", lambda led: len(led["sessions"]) == 1, "the avatar session's creation")
        browser.drop()  # no token yet: nothing to resume
        ledger = await relay.wait_all_sessions_stopped("heygen")
        assert len(ledger["sessions"]) == 1
        await _wait_metric(relay, 'avatar_relay_conversations_ended_total{reason="client_gone"} 1.0')


async def test_a_close_1000_without_stop_ends_at_once_not_held() -> None:
    async with running_relay() as relay:  # a 20 s window: the wait below is far shorter
        browser, _ = await started(relay)
        assert browser.connection is not None
        await browser.connection.stream.send_all(client_frame(struct.pack("!H", 1000), opcode=0x8))
        await relay.wait_all_sessions_stopped("heygen", timeout=5)
        await _wait_metric(relay, 'avatar_relay_conversations_ended_total{reason="client_gone"} 1.0')


async def test_the_drain_ends_a_held_conversation_at_once_as_client_gone() -> None:
    async with running_fault_relay() as relay:
        browser, _ = await started(relay)
        browser.drop()
        await _wait_metric(relay, "avatar_relay_conversations_held 1.0")
        still_open = await relay_state(relay.app).registry.drain(5.0)
        assert still_open == 0
        text = await _wait_metric(relay, 'avatar_relay_conversations_ended_total{reason="client_gone"} 1.0')
        assert 'avatar_relay_conversations_ended_total{reason="shutdown"} 1.0' not in text
        await relay.wait_all_sessions_stopped("heygen", timeout=5)


async def test_an_avatar_that_dies_while_held_is_replaced_and_its_avatar_changed_replayed() -> None:
    """#23 §3 meets #29: the held conversation keeps its avatar loop; the replacement's `avatar_changed` is numbered
    and kept like every message, so the browser that comes back learns of the new face, once, in order."""
    async with running_relay(relay_avatar="liveavatar") as relay:
        browser, ready = await started(relay)
        first = ready["avatar"]
        browser.drop()
        await _wait_metric(relay, "avatar_relay_conversations_held 1.0")
        stop = await relay.http.post(relay.sims.liveavatar + "/v1/sessions/stop", headers={"X-API-KEY": "la-test"},
                                     json={"session_id": first["session_id"], "reason": "USER_CLOSED"})
        assert stop.status_code == 200, stop.text
        with trio.fail_after(10):
            while [row[1] for row in relay.journal_rows()] in ([], [first["session_id"]]):
                await trio.sleep(0.02)  # polling the journal for the replacement (a condition, not a timing)
        resumed = await browser.resume(ready["resume_token"])
        assert resumed["type"] == "resumed", resumed
        notice = await browser.expect("avatar_changed")
        assert notice["avatar"]["session_id"] == relay.journal_rows()[0][1] != first["session_id"]
        assert notice["reason"] in ("session_ended", "session_gone") and "seq" in notice
        await browser.send(type="text", text="are you still there")
        await browser.expect("agent_response", where=lambda m: "are you still there" in m["text"])
        await browser.send(type="stop")
        assert (await browser.expect("ended"))["reason"] == "client_stop"
        assert [m["type"] for m in browser.messages].count("avatar_changed") == 1
        assert_no_gap_no_duplicate(browser)
        ledger = await relay.wait_all_sessions_stopped("liveavatar")
        assert len(ledger["sessions"]) == 2


async def test_a_connection_dropped_while_the_avatar_is_being_replaced_resumes_with_the_new_avatar() -> None:
    """The drop lands in the middle of a replacement (the new session's start call held by the simulator): the
    replacement completes while the conversation is held, and the browser that comes back hears of it once."""
    async with running_relay(relay_avatar="liveavatar") as relay:
        browser, ready = await started(relay)
        first = ready["avatar"]
        await relay.faults("liveavatar", latency_ms={"start": 1500})  # the replacement's start is slow
        stop = await relay.http.post(relay.sims.liveavatar + "/v1/sessions/stop", headers={"X-API-KEY": "la-test"},
                                     json={"session_id": first["session_id"], "reason": "USER_CLOSED"})
        assert stop.status_code == 200, stop.text
        await relay.wait_for_ledger("liveavatar", lambda led: led["requests"].get("start", 0) == 2,
                                    "the replacement's start call arriving")
        browser.drop()  # while that start call is in flight
        resumed = await browser.resume(ready["resume_token"])
        assert resumed["type"] == "resumed" and resumed["conversation_id"] == ready["conversation_id"], resumed
        notice = await browser.expect("avatar_changed")
        assert notice["avatar"]["session_id"] != first["session_id"]
        await relay.faults("liveavatar", latency_ms={"start": 0})
        await browser.send(type="text", text="are you still there")
        await browser.expect("agent_response", where=lambda m: "are you still there" in m["text"])
        await browser.send(type="stop")
        assert (await browser.expect("ended"))["reason"] == "client_stop"
        assert [m["type"] for m in browser.messages].count("avatar_changed") == 1
        assert_no_gap_no_duplicate(browser)
        ledger = await relay.wait_all_sessions_stopped("liveavatar")
        assert len(ledger["sessions"]) == 2
        assert len((await relay.ledger("elevenlabs"))["conversations"]) == 1


async def test_a_resume_frame_is_held_to_the_start_frames_limits() -> None:
    """A `resume` is read as a `start` is: over RELAY_MAX_START_BYTES it is refused as it arrives (close 1009);
    malformed (a token over 512 characters, a negative `last_seq`) or late (RELAY_START_TIMEOUT) it gets the same
    clear error and close 1008 as a `start` would; and the held conversation it names is not touched."""
    async with running_relay(relay_max_start_bytes=4096, relay_start_timeout=0.5) as relay:
        browser, ready = await started(relay)
        browser.drop()
        token = ready["resume_token"]
        oversized = ResumingBrowser(relay.url)
        await oversized.connect()
        await oversized.send(type="resume", resume_token=token, last_seq=0, padding="x" * 4200)
        assert await oversized.read_to_close() == 1009
        for frame, words in (({"resume_token": "rt1." + "x" * 600, "last_seq": 0}, "resume"),
                             ({"resume_token": token, "last_seq": -1}, "resume")):
            other = ResumingBrowser(relay.url)
            await other.connect()
            await other.send(type="resume", **frame)
            error = await other.expect("error")
            assert error["code"] == "protocol_error" and words in error["message"], error
            assert await other.read_to_close() == 1008
        late = ResumingBrowser(relay.url)
        await late.connect()  # and says nothing
        assert (await late.expect("error"))["code"] == "timeout"
        resumed = await browser.resume(token)  # the rightful browser's token still works
        assert resumed["type"] == "resumed", resumed
        await browser.send(type="stop")
        assert (await browser.expect("ended"))["reason"] == "client_stop"


async def test_an_acked_message_is_forgotten_and_a_resume_from_after_the_ack_still_replays_the_rest() -> None:
    """The page's `ack` (docs/protocol.md "Resuming"): the relay forgets what the browser says it has, so a resume
    from after the ack replays the rest with no gap, and one from before it finds those messages gone (`expired`,
    the conversation then ends as `client_gone` and its avatar session is stopped)."""
    async with running_relay() as relay:
        browser, ready = await started(relay)
        await browser.send(type="text", text="what are your opening hours?")
        await browser.expect("agent_response")
        acked = browser.last_seq
        assert acked >= 1
        await browser.send(type="ack", seq=acked)
        await browser.send(type="text", text="and on sunday?")  # read after the ack: its answer proves the ack read
        await browser.expect("agent_response", where=lambda m: m["seq"] > acked)
        browser.drop()
        before = len(browser.messages)
        resumed = await browser.resume(ready["resume_token"], last_seq=acked)  # as if the rest was lost in flight
        assert resumed["type"] == "resumed", resumed
        await browser.send(type="ack", seq=resumed["seq"])
        await browser.send(type="text", text="thanks")
        await browser.expect("agent_response", where=lambda m: m["seq"] > resumed["seq"])
        replayed = [m["seq"] for m in browser.messages[before:]]
        assert replayed == list(range(acked + 1, acked + 1 + len(replayed))) and resumed["seq"] in replayed
        browser.drop()
        late = await browser.resume(resumed["resume_token"], last_seq=acked)  # before what it acked since
        assert (late["code"], late["reason"]) == ("resume_failed", "expired"), late
        assert await browser.read_to_close() == 1008
        ledger = await relay.wait_all_sessions_stopped("heygen")
        assert len(ledger["sessions"]) == 1


async def test_an_ack_of_a_message_never_sent_is_a_protocol_error() -> None:
    async with running_relay() as relay:
        browser, _ = await started(relay)
        await browser.send(type="ack", seq=browser.last_seq + 50)
        error = await browser.expect("error")
        assert error["code"] == "protocol_error" and "'ack' of seq" in error["message"], error
        assert (await browser.expect("ended"))["reason"] == "protocol_error"
        assert await browser.read_to_close() == 1008
        await relay.wait_all_sessions_stopped("heygen")
