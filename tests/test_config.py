"""Settings (relay/config.py, checked against the providers by relay/providers/table.py): demo mode is chosen only
when nothing upstream is configured; a partial configuration is an error that names what is missing and never shows
a secret."""

from __future__ import annotations

from typing import Any

import pytest

from relay.config import ConfigError, Settings
from relay.providers.table import chosen_name, load_settings

SIM_AVATAR = "6f1c1a52-9f0e-4d0c-8a51-2f6f0a3b1c01"


def settings(**values: Any) -> Settings:
    return load_settings(_env_file=None, **values)


def test_nothing_set_is_demo_mode_on_liveavatar() -> None:
    s = settings()
    assert s.demo_mode and chosen_name(s) == "liveavatar"


def test_a_complete_liveavatar_configuration() -> None:
    s = settings(elevenlabs_agent_id="agent", liveavatar_api_key="la-key", liveavatar_avatar_id=SIM_AVATAR)
    assert not s.demo_mode and chosen_name(s) == "liveavatar"


def test_a_complete_heygen_configuration_picks_heygen() -> None:
    s = settings(elevenlabs_agent_id="agent", heygen_api_key="hg-key", heygen_avatar_id="av")
    assert chosen_name(s) == "heygen"


def test_voice_only_needs_just_the_agent() -> None:
    assert chosen_name(settings(elevenlabs_agent_id="agent", relay_avatar="none")) == "none"


def test_liveavatar_sandbox_needs_no_avatar_id() -> None:
    chosen = settings(elevenlabs_agent_id="a", liveavatar_api_key="k", liveavatar_sandbox=True)
    assert chosen_name(chosen) == "liveavatar"


@pytest.mark.parametrize(("values", "missing"), [
    ({"elevenlabs_agent_id": "agent"}, "LIVEAVATAR_API_KEY or HEYGEN_API_KEY"),
    ({"heygen_api_key": "hg-secret-value"}, "ELEVENLABS_AGENT_ID"),
    ({"elevenlabs_api_key": "xi-secret-value"}, "ELEVENLABS_AGENT_ID"),
    ({"elevenlabs_agent_id": "a", "heygen_api_key": "hg-secret-value"}, "HEYGEN_AVATAR_ID"),
    ({"elevenlabs_agent_id": "a", "relay_avatar": "liveavatar"}, "LIVEAVATAR_API_KEY"),
    ({"elevenlabs_agent_id": "a", "liveavatar_api_key": "la-secret-value"}, "LIVEAVATAR_AVATAR_ID"),
])
def test_some_keys_but_not_all_is_an_error_never_demo_mode(values: dict[str, Any], missing: str) -> None:
    with pytest.raises(ConfigError) as caught:
        settings(**values)
    message = str(caught.value)
    assert missing in message and "demo mode is off" in message
    assert "secret-value" not in message


@pytest.mark.parametrize(("values", "variable"), [
    ({"heygen_quality": "ultra"}, "HEYGEN_QUALITY"),
    ({"relay_avatar": "puppet"}, "RELAY_AVATAR"),
    ({"relay_port": 70000}, "RELAY_PORT"),
    ({"relay_idle_timeout": 0}, "RELAY_IDLE_TIMEOUT"),
    ({"heygen_idle_timeout": 10}, "HEYGEN_IDLE_TIMEOUT"),
    ({"relay_finish_speaking_timeout": -1}, "RELAY_FINISH_SPEAKING_TIMEOUT"),
])
def test_a_bad_value_names_its_variable(values: dict[str, Any], variable: str) -> None:
    with pytest.raises(ConfigError) as caught:
        settings(**values)
    assert variable in str(caught.value)


def test_keys_never_show_in_a_repr() -> None:
    s = settings(elevenlabs_agent_id="a", heygen_api_key="hg-secret-value", heygen_avatar_id="av",
                 relay_auth="off")
    assert "hg-secret-value" not in repr(s) and "hg-secret-value" not in str(s.model_dump())


@pytest.mark.parametrize("avatar_id", ["Wayne_20240711", "e2e-avatar", "6f1c1a52-9f0e-4d0c-8a51"])
def test_a_liveavatar_avatar_id_that_is_not_a_uuid_is_a_start_up_error_naming_the_variable(avatar_id: str) -> None:
    with pytest.raises(ConfigError) as caught:
        settings(elevenlabs_agent_id="a", liveavatar_api_key="la-secret-value", liveavatar_avatar_id=avatar_id)
    assert "LIVEAVATAR_AVATAR_ID" in str(caught.value) and "UUID" in str(caught.value)
    assert "la-secret-value" not in str(caught.value)


def test_the_liveavatar_session_outlasts_the_longest_conversation_by_default() -> None:
    assert settings().liveavatar_session_duration >= settings().relay_max_duration
    assert settings(relay_max_duration=3600).liveavatar_session_duration >= 3600
    assert settings(liveavatar_max_session_duration=2000).liveavatar_session_duration == 2000


def test_a_liveavatar_session_shorter_than_the_conversation_is_a_start_up_error() -> None:
    with pytest.raises(ConfigError) as caught:
        settings(liveavatar_max_session_duration=600, relay_max_duration=1800)
    assert "LIVEAVATAR_MAX_SESSION_DURATION" in str(caught.value) and "RELAY_MAX_DURATION" in str(caught.value)


def test_liveavatar_is_the_default_whenever_its_key_is_set() -> None:
    s = settings(elevenlabs_agent_id="a", liveavatar_api_key="k", liveavatar_avatar_id=SIM_AVATAR,
                 heygen_api_key="h", heygen_avatar_id="Wayne_20240711")
    assert chosen_name(s) == "liveavatar"
