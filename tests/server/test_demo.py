"""relay/server/demo.py: demo mode points every upstream at its simulator, keeps what the operator chose, and needs
nothing else to be a complete configuration (no sockets)."""

from __future__ import annotations

from relay.config import Settings
from relay.providers.table import PROVIDERS, base_url, chosen_name, settings_problem
from relay.server.demo import DEMO_AGENT_ID, demo_settings
from relay.sim.runner import AGENT, SimulatorURLs

URLS = SimulatorURLs({name: f"http://127.0.0.1:{7000 + i}" for i, name in enumerate([AGENT, *PROVIDERS])})


def test_demo_settings_point_every_upstream_at_its_simulator() -> None:
    demo = demo_settings(Settings(_env_file=None), URLS)  # type: ignore[call-arg]
    assert demo.elevenlabs_base_url == URLS[AGENT] and demo.elevenlabs_agent_id == DEMO_AGENT_ID
    assert all(base_url(demo, name) == URLS[name] for name in PROVIDERS)
    assert settings_problem(demo) is None and not demo.demo_mode  # keyed now: the relay runs as configured


def test_the_operators_own_choices_are_kept() -> None:
    chosen = Settings(_env_file=None, relay_avatar="heygen", heygen_avatar_id="Own_Avatar")  # type: ignore[call-arg]
    demo = demo_settings(chosen, URLS)
    assert chosen_name(demo) == "heygen" and demo.heygen_avatar_id == "Own_Avatar"
