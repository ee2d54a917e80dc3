"""The gates of relay/conversation/gates.py, with no sockets and no trio: frames counted per second, a rate limit,
the MCP calls awaiting approval."""

from __future__ import annotations

from relay.conversation.gates import FloodGate, Interval, McpApprovals
from relay.protocol import elevenlabs as el


def test_flood_gate_counts_frames_per_second() -> None:
    gate = FloodGate(per_second=10)
    assert not any(gate.over(0.01 * i) for i in range(10))
    assert gate.over(0.5)
    assert not gate.over(1.0)  # a new window


def test_interval_is_due_at_most_once_per_period() -> None:
    gate = Interval(0.1)
    assert gate.due(5.0)
    assert not gate.due(5.05)
    assert gate.due(5.1)


def _call(call_id: str, state: str, timeout: int | None = None) -> el.McpToolCall:
    return el.McpToolCall(tool_call_id=call_id, service_id="s", tool_name="t", tool_description=None, parameters={},
                          state=state, approval_timeout_secs=timeout, error_message=None)


def test_an_approval_is_taken_once_and_only_while_awaited() -> None:
    approvals = McpApprovals()
    assert not approvals.take("mcp_1", 0.0)  # never asked
    approvals.note(_call("mcp_1", "awaiting_approval", 30), now=10.0)
    assert not approvals.take("mcp_1", 40.5)  # too late
    approvals.note(_call("mcp_1", "awaiting_approval", 30), now=10.0)
    assert approvals.take("mcp_1", 40.0)  # the deadline itself is still in time
    assert not approvals.take("mcp_1", 39.0)  # answered already


def test_a_call_that_ends_is_no_longer_awaited_and_the_awaited_are_bounded() -> None:
    approvals = McpApprovals()
    approvals.note(_call("mcp_1", "awaiting_approval"), now=0.0)  # no timeout: the asyncapi default, 300 s
    approvals.note(_call("mcp_1", "failure"), now=1.0)
    assert not approvals.take("mcp_1", 2.0)
    for n in range(McpApprovals.MAX_AWAITING + 1):
        approvals.note(_call(f"mcp_{n}", "awaiting_approval"), now=0.0)
    assert not approvals.take("mcp_0", 1.0)  # the oldest was forgotten
    assert approvals.take(f"mcp_{McpApprovals.MAX_AWAITING}", 300.0)  # the asyncapi default: 300 s
    approvals.note(_call("late", "awaiting_approval"), now=0.0)
    assert not approvals.take("late", 300.5)
