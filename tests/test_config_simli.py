"""Simli's settings: the provider chosen by its key, what it needs, and the limits derived from RELAY_MAX_DURATION."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import SecretStr

from relay.config import ConfigError, Settings
from relay.providers.table import chosen_name, load_settings


def settings(**values: Any) -> Settings:
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


def test_a_simli_key_alone_chooses_simli_and_ends_demo_mode() -> None:
    chosen = settings(elevenlabs_agent_id="agent", simli_api_key=SecretStr("k"), simli_face_id="face")
    assert chosen_name(chosen) == "simli"
    assert not chosen.demo_mode
    assert chosen.simli_base_url == "https://api.simli.ai"


def test_simli_without_a_face_names_the_missing_setting() -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(_env_file=None, elevenlabs_agent_id="agent", relay_avatar="simli")
    assert "SIMLI_API_KEY" in str(caught.value) and "SIMLI_FACE_ID" in str(caught.value)


def test_demo_mode_runs_simli_when_asked() -> None:
    demo = settings(relay_avatar="simli")
    assert demo.demo_mode and chosen_name(demo) == "simli"


def test_the_session_length_follows_relay_max_duration_with_a_minute_to_spare() -> None:
    assert settings(relay_max_duration=600.5).simli_session_length == 661
    assert settings(relay_max_duration=600, simli_max_session_length=900).simli_session_length == 900


def test_a_session_length_shorter_than_the_conversation_is_refused() -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(_env_file=None, relay_max_duration=1800, simli_max_session_length=600)
    assert "SIMLI_MAX_SESSION_LENGTH" in str(caught.value)


@pytest.mark.parametrize("idle", [5, 4000])
def test_an_idle_time_out_of_range_is_refused(idle: int) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(_env_file=None, simli_max_idle_time=idle)
    assert "SIMLI_MAX_IDLE_TIME" in str(caught.value)
