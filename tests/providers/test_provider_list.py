"""RELAY_AVATAR as an ordered provider list and RELAY_MAX_AVATAR_SESSIONS per provider (issue #23 §2): what the
settings choose, what they refuse (naming the variable), and each listed provider's budget."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import SecretStr

from relay.config import ConfigError, Settings
from relay.providers.table import avatar_budgets, chosen, chosen_name, listed, load_settings, settings_problem

KEYS: dict[str, Any] = {
    "elevenlabs_agent_id": "agent", "elevenlabs_api_key": SecretStr("xi"),
    "liveavatar_api_key": SecretStr("la"), "liveavatar_avatar_id": "6f1c1a52-9f0e-4d0c-8a51-2f6f0a3b1c01",
    "simli_api_key": SecretStr("sm"), "simli_face_id": "face",
}


def settings(**values: Any) -> Settings:
    return Settings(_env_file=None, **{**KEYS, **values})  # type: ignore[call-arg]


def test_a_comma_list_is_an_ordered_list_of_providers() -> None:
    chosen_settings = settings(relay_avatar="simli, liveavatar")
    assert [p.name for p in listed(chosen_settings)] == ["simli", "liveavatar"]
    assert chosen(chosen_settings) is not None and chosen(chosen_settings).name == "simli"  # type: ignore[union-attr]
    assert chosen_name(chosen_settings) == "simli,liveavatar"
    assert settings_problem(chosen_settings) is None


def test_a_single_name_works_as_before() -> None:
    assert [p.name for p in listed(settings(relay_avatar="liveavatar"))] == ["liveavatar"]
    assert listed(settings(relay_avatar="none")) == []
    assert [p.name for p in listed(settings())] == ["liveavatar"]  # unset: the first whose key is set


@pytest.mark.parametrize(("value", "says"), [
    ("liveavatar,puppet", "'puppet'"),
    ("liveavatar,liveavatar", "twice"),
    ("liveavatar,,simli", "empty"),
    ("liveavatar,none", "none"),
])
def test_a_bad_list_is_refused_naming_the_variable(value: str, says: str) -> None:
    problem = settings_problem(settings(relay_avatar=value))
    assert problem is not None and "RELAY_AVATAR" in problem and says in problem


def test_every_listed_provider_needs_its_settings() -> None:
    problem = settings_problem(settings(relay_avatar="liveavatar,simli", simli_face_id=None))
    assert problem is not None and "SIMLI_FACE_ID" in problem
    with pytest.raises(ConfigError, match="SIMLI_API_KEY"):
        load_settings(_env_file=None, **{**KEYS, "relay_avatar": "liveavatar,simli", "simli_api_key": None})


def test_a_budget_per_provider() -> None:
    budgets = settings(relay_avatar="liveavatar,simli", relay_max_avatar_sessions="liveavatar=20, simli=10")
    assert avatar_budgets(budgets) == {"liveavatar": 20, "simli": 10}
    assert avatar_budgets(settings(relay_avatar="liveavatar,simli",
                                   relay_max_avatar_sessions="simli=3")) == {"simli": 3}
    assert avatar_budgets(settings(relay_avatar="liveavatar,simli")) == {}


def test_a_bare_number_is_the_budget_of_each_listed_provider() -> None:
    assert avatar_budgets(settings(relay_avatar="liveavatar", relay_max_avatar_sessions=2)) == {"liveavatar": 2}
    assert avatar_budgets(settings(relay_avatar="liveavatar,simli", relay_max_avatar_sessions="4")) == \
        {"liveavatar": 4, "simli": 4}


@pytest.mark.parametrize("value", ["0", "-1", "lots", "liveavatar=", "liveavatar=0", "liveavatar:3", "=3",
                                   "liveavatar=2,liveavatar=3"])
def test_a_malformed_budget_is_refused_naming_the_variable(value: str) -> None:
    with pytest.raises(ConfigError, match="RELAY_MAX_AVATAR_SESSIONS"):
        load_settings(_env_file=None, **{**KEYS, "relay_max_avatar_sessions": value})


def test_a_budget_for_a_provider_the_table_does_not_know_is_refused() -> None:
    problem = settings_problem(settings(relay_avatar="liveavatar", relay_max_avatar_sessions="puppet=3"))
    assert problem is not None and "RELAY_MAX_AVATAR_SESSIONS" in problem and "puppet" in problem
