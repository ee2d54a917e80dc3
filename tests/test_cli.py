"""`avatar-relay token`: it mints an HS256 JWT the relay accepts (no server)."""

from __future__ import annotations

from pathlib import Path

import jwt
import pytest

from relay.cli import main
from relay.server.auth import KeySet, verify_jwt

SECRET = "a-secret-of-at-least-thirty-two-bytes-for-hs256"


def test_the_token_command_mints_an_hs256_jwt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)  # no developer's .env
    monkeypatch.setenv("RELAY_AUTH_SECRET", SECRET)
    assert main(["token", "--ttl", "120", "--subject", "auth0|user-7"]) == 0
    token = capsys.readouterr().out.strip()
    assert jwt.get_unverified_header(token)["alg"] == "HS256"
    claims = verify_jwt(token, KeySet(secret=SECRET))
    assert claims.subject == "auth0|user-7"
    assert main(["token", "--subject", "not allowed"]) == 2


def test_every_token_has_a_subject_and_its_own_id(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """M2: a token is counted by its `jti` and names its user; without --subject one is made up for it."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RELAY_AUTH_SECRET", SECRET)
    tokens = []
    for _ in range(2):
        assert main(["token"]) == 0
        tokens.append(jwt.decode(capsys.readouterr().out.strip(), SECRET, algorithms=["HS256"]))
    assert all(t["sub"] and t["jti"] for t in tokens)
    assert tokens[0]["sub"] != tokens[1]["sub"] and tokens[0]["jti"] != tokens[1]["jti"]
