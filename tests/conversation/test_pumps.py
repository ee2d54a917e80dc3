"""The flood gate (relay/conversation/pumps.py): frames counted per second, with no sockets."""

from __future__ import annotations

from relay.conversation.pumps import FloodGate


def test_flood_gate_counts_frames_per_second() -> None:
    gate = FloodGate(per_second=10)
    assert not any(gate.over(0.01 * i) for i in range(10))
    assert gate.over(0.5)
    assert not gate.over(1.0)  # a new window
