"""Bounds on what a client frame may hold (L6, L7 of the security review): nesting depth, `user_id` length,
dynamic-variable count — each a clear ProtocolError, never a RecursionError."""

from __future__ import annotations

import orjson
import pytest

from relay.protocol import browser as bp


def nested(depth: int) -> dict[str, object]:
    value: object = 1
    for _ in range(depth - 1):
        value = {"a": value}
    return {"type": "start", "overrides": value}


def test_nesting_up_to_the_limit_is_accepted_and_beyond_it_is_a_protocol_error() -> None:
    assert isinstance(bp.parse_text_frame(orjson.dumps(nested(bp.MAX_DEPTH - 1)).decode()), bp.Start)
    with pytest.raises(bp.ProtocolError, match="nested more than 32 levels"):
        bp.parse_text_frame(orjson.dumps(nested(bp.MAX_DEPTH + 1)).decode())


def test_a_thousand_levels_of_arrays_are_refused_without_recursion() -> None:
    text = '{"type":"start","overrides":{"a":' + "[" * 1000 + "]" * 1000 + "}}"
    with pytest.raises(bp.ProtocolError, match="nested"):
        bp.parse_text_frame(text)


@pytest.mark.parametrize("frame", [
    {"type": "start", "user_id": "u" * 257},
    {"type": "start", "dynamic_variables": {f"v{i}": i for i in range(129)}},
    {"type": "start", "dynamic_variables": {"k" * 129: 1}},
])
def test_start_fields_are_bounded(frame: dict[str, object]) -> None:
    with pytest.raises(bp.ProtocolError, match="invalid 'start'"):
        bp.parse_text_frame(orjson.dumps(frame).decode())
