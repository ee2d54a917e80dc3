"""The agent's queue before `ready` (relay/conversation/agent_queue.py) as a state machine: no trio, no sockets."""

from __future__ import annotations

from relay.conversation.agent_queue import MAX_HELD, AgentQueue, AnswerPing, ShowQueueStatus
from relay.protocol import elevenlabs as el


def test_without_a_queue_the_first_other_event_settles_it_and_is_held() -> None:
    queue = AgentQueue()
    assert queue.receive(el.Ping(7, None)) == AnswerPing(7)
    assert queue.receive(el.MalformedEvent("audio", "no id")) is None
    assert not queue.settled
    reply = el.AgentResponse("Hello", 1)
    assert queue.receive(reply) is None
    assert queue.settled and queue.held == [reply] and not queue.queued


def test_waiting_then_admitted_is_shown_and_events_meanwhile_are_held() -> None:
    queue = AgentQueue()
    assert queue.receive(el.QueueStatus("waiting")) == ShowQueueStatus("waiting", "waiting")
    assert queue.receive(el.QueueStatus("waiting")) == ShowQueueStatus("waiting", None)  # no second log line
    assert queue.queued and not queue.settled
    transcript = el.UserTranscript("hi", 1, True)
    assert queue.receive(transcript) is None
    assert not queue.settled  # still queued: held, not settled
    assert queue.receive(el.QueueStatus("admitted")) == ShowQueueStatus("admitted", "admitted")
    assert queue.settled and queue.held == [transcript]


def test_admitted_without_waiting_settles_quietly_and_timed_out_waits_for_the_close() -> None:
    queue = AgentQueue()
    assert queue.receive(el.QueueStatus("admitted")) == ShowQueueStatus("admitted", None)
    assert queue.settled
    queue = AgentQueue()
    queue.receive(el.QueueStatus("waiting"))
    assert queue.receive(el.QueueStatus("timed_out")) == ShowQueueStatus("timed_out", None)
    assert not queue.settled  # the agent's close 3008 ends the conversation


def test_an_agent_that_talks_while_queued_is_held_only_so_far() -> None:
    queue = AgentQueue()
    queue.receive(el.QueueStatus("waiting"))
    for n in range(MAX_HELD):
        queue.receive(el.VadScore(n / MAX_HELD))
    assert not queue.settled
    queue.receive(el.VadScore(1.0))
    assert queue.settled and len(queue.held) == MAX_HELD + 1
