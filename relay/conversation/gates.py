"""The gates a conversation's frames pass, sans-I/O (each takes `now` from its caller; no trio, no sockets): the
browser's flood limit (`FloodGate`), a rate limit for a frequent, replaceable frame (`Interval`), and the MCP tool
calls awaiting the user's approval (`McpApprovals`). They run on the audio hot path: a few comparisons per frame.
"""

from __future__ import annotations

import math

from relay.protocol import elevenlabs as el


class FloodGate:
    """Counts a conversation's client frames in one-second windows; `over(now)` is True once a window holds more
    than `per_second` frames. A fixed window keeps the per-frame cost to one comparison and one addition (this
    runs on the audio hot path); the bound it gives, at most 2 x per_second in any second, is enough to stop a
    flood, and a well-behaved client (50 audio frames a second) is far below it."""

    __slots__ = ("_count", "_window_end", "per_second")

    def __init__(self, per_second: int) -> None:
        self.per_second = per_second
        self._window_end = 0.0
        self._count = 0

    def over(self, now: float) -> bool:
        if now >= self._window_end:
            self._window_end = now + 1.0
            self._count = 1
            return False
        self._count += 1
        return self._count > self.per_second


class McpApprovals:
    """The agent's MCP tool calls awaiting the user's approval, shared by the two pumps: a call is noted when the
    agent says `awaiting_approval` (with its `approval_timeout_secs`) and forgotten when it succeeds, fails, is
    answered or times out. Only an answer to a call awaiting approval is sent to the agent; anything else (a late
    click, an unknown id) is dropped with a log line. Bounded: at most MAX_AWAITING at once."""

    MAX_AWAITING = 32

    def __init__(self) -> None:
        self._deadlines: dict[str, float] = {}

    def note(self, call: el.McpToolCall, now: float) -> None:
        if call.state == "awaiting_approval":
            if len(self._deadlines) >= self.MAX_AWAITING:
                del self._deadlines[next(iter(self._deadlines))]
            self._deadlines[call.tool_call_id] = now + float(call.approval_timeout_secs or 300)
        else:
            self._deadlines.pop(call.tool_call_id, None)

    def take(self, tool_call_id: str, now: float) -> bool:
        """Whether an answer for `tool_call_id` may go to the agent now (then it is no longer awaited)."""
        deadline = self._deadlines.pop(tool_call_id, None)
        return deadline is not None and now <= deadline


VAD_INTERVAL = 0.1  # seconds between two `vad_score` frames to the browser (at most ~10 a second)


class Interval:
    """`due(now)`: True at most once per `seconds` (rate-limits a frequent, replaceable frame)."""

    __slots__ = ("_next", "seconds")

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._next = -math.inf

    def due(self, now: float) -> bool:
        if now < self._next:
            return False
        self._next = now + self.seconds
        return True
