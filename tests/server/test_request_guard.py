"""The request guard's decisions, without sockets: which Host names, path spellings and operator requests pass."""

from __future__ import annotations

import pytest

from relay.server.request_guard import GuardPolicy, canonical_path, host_allowed, refusal


@pytest.mark.parametrize(("host", "ok"), [
    ("127.0.0.1:8000", True), ("localhost:8000", True), ("[::1]:8000", True), ("10.1.2.3", True),
    ("relay.example", True), ("RELAY.example:443", True), ("evil.example:8000", False), ("127.0.0.1.nip.io", False),
])
def test_only_addresses_localhost_and_listed_names_are_served(host: str, ok: bool) -> None:
    assert host_allowed(host, frozenset({"relay.example"})) is ok


@pytest.mark.parametrize(("path", "ok"), [
    (b"/", True), (b"/static/app.js", True), (b"/ws", True), (b"//metrics", False), (b"/%6detrics", False),
    (b"/%5Fdemo/simulators", False), (b"/static/./app.js", False), (b"/static/../x", False), (b"/a%20b", True),
])
def test_one_spelling_per_path(path: bytes, ok: bool) -> None:
    assert canonical_path(path) is ok


def test_operator_endpoints_want_the_bearer_token_when_one_is_set() -> None:
    policy = GuardPolicy(frozenset(), "tok")
    headers = [(b"host", b"127.0.0.1")]
    assert refusal("/metrics", b"/metrics", headers, policy) == (401,
                                                                 "a bearer token is required (RELAY_METRICS_TOKEN)")
    assert refusal("/metrics", b"/metrics", [*headers, (b"authorization", b"Bearer tok")], policy) is None
    assert refusal("/", b"/", headers, policy) is None
    assert refusal("/metrics", b"/metrics", headers, GuardPolicy(frozenset())) is None
