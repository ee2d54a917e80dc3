"""Retry-After parsing (relay/protocol/http.py): seconds only, capped, anything else ignored."""

from __future__ import annotations

import pytest

from relay.protocol.http import parse_retry_after


@pytest.mark.parametrize(("header", "seconds"), [
    ("7", 7.0), (" 2.5 ", 2.5), ("0", 0.0), ("30", 30.0), ("31", 30.0), ("3600", 30.0), ("1e9", 30.0)])
def test_retry_after_is_read_in_seconds_and_capped_at_30_by_default(header: str, seconds: float) -> None:
    assert parse_retry_after(header) == seconds


def test_retry_after_is_capped_at_the_given_cap() -> None:
    assert parse_retry_after("120", cap=10.0) == 10.0
    assert parse_retry_after("9", cap=10.0) == 9.0


@pytest.mark.parametrize("header", ["-1", "-0.5", " -30 ", "-1e9"])
def test_a_negative_retry_after_is_ignored(header: str) -> None:
    assert parse_retry_after(header) is None


@pytest.mark.parametrize("header", [None, "", "soon", "Wed, 21 Oct 2015 07:28:00 GMT", "1,5"])
def test_a_missing_or_date_or_garbled_retry_after_is_ignored(header: str | None) -> None:
    assert parse_retry_after(header) is None
