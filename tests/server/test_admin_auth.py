"""Who the operator's endpoints answer (relay.server.admin.refusal), with no sockets."""

from __future__ import annotations

from relay.server.admin import refusal

TOKEN = "0123456789abcdef-admin"


def test_only_the_bearer_token_itself_is_answered() -> None:
    assert refusal(f"Bearer {TOKEN}", TOKEN) is None
    assert refusal(f"bearer  {TOKEN} ", TOKEN) is None  # the scheme is case-insensitive (RFC 7235)
    assert refusal(None, TOKEN) == "no token"
    assert refusal("", TOKEN) == "no token"
    assert refusal(f"Basic {TOKEN}", TOKEN) == "not a bearer token"
    assert refusal("Bearer", TOKEN) == "not a bearer token"
    assert refusal(f"Bearer {TOKEN[:-1]}", TOKEN) == "wrong token"
    assert refusal(f"Bearer {TOKEN}x", TOKEN) == "wrong token"
    assert refusal("Bearer \u00e9t\u00e9", TOKEN) == "wrong token"  # not ASCII: refused, never an error
