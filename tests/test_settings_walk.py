"""Every setting of relay/config.py, given a wrong value, stops the start-up with one line naming it — the list of
settings comes from the Settings class itself, so a setting added later is walked too. For each field an invalid
value is derived from its type and constraints (a number below its bound or not a number, a word outside a
choice, ...); the fields whose type takes any string are in INVALID, with a wrong value, or in ANY_VALUE, with why
any value is acceptable at start-up. A new field in neither fails this test: decide which it is.

In-process and fast: `check_configuration` is what `serve --workers N` runs before any worker, and the same checks
the app's start-up makes (tests/faults/test_startup_failures.py runs real processes for a subset)."""

from __future__ import annotations

import os
import types
import typing
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import annotated_types
import pytest
from pydantic import SecretStr

from relay.config import Settings
from relay.server.startup import StartupFailure, check_configuration

A_FILE = "{tmp}/a-file"  # a regular file: a directory cannot be created under it

# Fields whose type takes any string: a value the relay must refuse at start-up ...
INVALID: dict[str, str] = {
    "elevenlabs_base_url": "api.elevenlabs.io",
    "heygen_base_url": "api.heygen.com/v1",
    "liveavatar_base_url": "liveavatar",
    "liveavatar_avatar_id": "Wayne_20240711",
    "simli_base_url": "api.simli.ai",
    "relay_host": "0.0.0.0:8000",
    "relay_livekit_client_url": "livekit-client.esm.js",
    "relay_log_level": "LOUD",
    "relay_transcripts_dir": A_FILE + "/transcripts",
    "relay_state_dir": A_FILE + "/state",
    "relay_auth_jwks_url": "ftp://idp.example/keys",
    "relay_auth_public_key": "-----BEGIN PUBLIC KEY-----\nnot a key\n-----END PUBLIC KEY-----",
    "relay_frame_ancestors": "'self'; script-src *",
    "relay_page_connect_src": "wss://*.livekit.cloud, https://*.livekit.cloud",
    "relay_allowed_origins": "shop.example",
    "relay_client_overrides": "agent language",
    "relay_redis_url": "localhost:6379",
    "relay_resume_route": "relay a.example",
    "relay_avatar": "puppet",  # not a provider of relay.providers.table, nor "none"
    "relay_max_avatar_sessions": "liveavatar=lots",  # a number, or provider=number pairs
    "relay_livekit_client_integrity": "sha384:not-base64!",
    "relay_allowed_hosts": "https://relay.example",
    "relay_trusted_proxies": "proxy.internal",
    "relay_client_dynamic_variables": "customer name",
    "relay_admin_token": "too-short",  # at least 16 characters
}
# ... or why any value is acceptable when the relay starts.
ANY_VALUE: dict[str, str] = {
    "elevenlabs_agent_id": "an id: `avatar-relay doctor` checks that the agent exists",
    "elevenlabs_api_key": "a key: `avatar-relay doctor` checks that it is accepted",
    "elevenlabs_branch_id": "the agent's branch id, checked by ElevenLabs",
    "elevenlabs_environment": "a name of the agent's environment, checked by ElevenLabs",
    "heygen_api_key": "a key: `avatar-relay doctor` checks it",
    "heygen_avatar_id": "an avatar name: `avatar-relay doctor` checks it",
    "heygen_voice_id": "a voice id, checked by HeyGen",
    "liveavatar_api_key": "a key: `avatar-relay doctor` checks it",
    "simli_api_key": "a key: `avatar-relay doctor` checks it",
    "simli_face_id": "a face id (or face/emotion): `avatar-relay doctor` checks it",
    "relay_auth_secret": "any secret signs tokens (a short one is warned about at start-up)",
    "relay_auth_issuer": "any string a token's `iss` must equal",
    "relay_auth_audience": "any string a token's `aud` must hold",
    "relay_metrics_token": "any secret a scraper sends as its bearer token",
    "relay_livekit_client_dir": "a folder: a missing or changed livekit-client there is one start-up warning, where a "
                                "real avatar needs it (relay.server.embed), not a refusal",
}


def _strip_optional(annotation: Any) -> list[Any]:
    """The alternatives of a field's type, without None."""
    if get_origin(annotation) in (typing.Union, types.UnionType):
        return [arg for arg in get_args(annotation) if arg is not type(None)]
    return [annotation]


def _bounds(metadata: list[Any]) -> list[str]:
    """Values just outside a numeric field's constraints."""
    values = []
    for item in metadata:
        if isinstance(item, annotated_types.Ge):
            values.append(str(item.ge - 1))
        elif isinstance(item, annotated_types.Gt):
            values.append(str(item.gt))
        elif isinstance(item, annotated_types.Le):
            values.append(str(item.le + 1))
        elif isinstance(item, annotated_types.Lt):
            values.append(str(item.lt))
    return values


def derived_invalid_values(name: str) -> list[str] | None:
    """Wrong values for a field, from its type and constraints; None when its type takes any string."""
    field = Settings.model_fields[name]
    values: list[str] = []
    alternatives = _strip_optional(field.annotation)
    for alternative in alternatives:
        metadata = list(field.metadata)
        if get_origin(alternative) is typing.Annotated:
            alternative, *extra = get_args(alternative)
            metadata += [m for item in extra for m in getattr(item, "metadata", [item])]
        if get_origin(alternative) is Literal:
            values.append("not-one-of-" + "-".join(str(choice) for choice in get_args(alternative)))
        elif alternative is bool:
            values.append("perhaps")
        elif alternative in (int, float):
            values += ["a-few", *_bounds(metadata)]
        elif alternative is str and any(isinstance(m, annotated_types.MinLen) for m in metadata):
            values += ["", "has spaces and / slashes"]
        elif alternative in (str, SecretStr):
            return None
        else:
            raise AssertionError(f"{name}: a type this test cannot derive a wrong value for: {alternative!r}")
    if len(alternatives) > 1:  # `int | Literal["auto"]`: a value neither takes
        values = [value for value in values if not value.startswith("not-one-of-")] or values
    return values


def walk() -> list[tuple[str, str]]:
    cases: list[tuple[str, str]] = []
    for name in Settings.model_fields:
        derived = derived_invalid_values(name)
        if derived is None:
            assert (name in INVALID) != (name in ANY_VALUE), (
                f"{name} takes any string: add a value the relay must refuse to INVALID, or say in ANY_VALUE why "
                "any value is fine at start-up")
            derived = [INVALID[name]] if name in INVALID else []
        cases += [(name, value) for value in derived]
    return cases


def test_every_table_entry_is_a_setting() -> None:
    assert not (set(INVALID) | set(ANY_VALUE)) - set(Settings.model_fields)


# Real upstream settings (demo mode off), nothing called: every check here is local.
GOOD = {"ELEVENLABS_AGENT_ID": "agent_walk", "ELEVENLABS_API_KEY": "xi-walk", "RELAY_AVATAR": "heygen",
        "HEYGEN_API_KEY": "hg-walk", "HEYGEN_AVATAR_ID": "Wayne_20240711", "RELAY_AUTH": "off"}


@pytest.fixture
def environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in list(os.environ):
        if name.upper() in {field.upper() for field in Settings.model_fields}:
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)  # no .env file
    for key, value in GOOD.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("RELAY_STATE_DIR", str(tmp_path / "state"))
    (tmp_path / "a-file").write_text("")
    return tmp_path


async def test_the_good_configuration_starts(environment: Path) -> None:
    await check_configuration()


@pytest.mark.parametrize(("name", "value"), walk())
async def test_a_wrong_value_of_each_setting_is_one_line_naming_it(
        name: str, value: str, environment: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(name.upper(), value.replace("{tmp}", str(environment)))
    with pytest.raises(StartupFailure) as caught:
        await check_configuration()
    line = str(caught.value)
    assert "\n" not in line and name.upper() in line, line
    assert "hg-walk" not in line and "xi-walk" not in line
