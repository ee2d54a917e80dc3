"""The provider table (relay/providers/table.py) is the one place that lists the avatar providers: no other place of
the relay names one, and every place that must cover each provider (settings, doctor, simulators, demo, page,
`avatar-relay sim`) does. Adding a provider is its own modules plus one line of `PROVIDERS` (docs/architecture.md)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from pydantic import SecretStr

from relay.config import Settings
from relay.providers.entry import Provider
from relay.providers.table import (
    PROVIDERS,
    SIMULATOR_APPS,
    VOICE_ONLY,
    at_base_url,
    base_url,
    chosen,
    entry_for,
    page_config,
    settings_problem,
)
from relay.server.demo import demo_settings
from relay.sim.runner import AGENT, SimulatorURLs

RELAY = Path(__file__).resolve().parents[2] / "relay"


def own_files(name: str) -> set[Path]:
    """A provider's own modules: its client, wire format, simulator and declaration."""
    return {RELAY / f"{name}.py", RELAY / "protocol" / f"{name}.py", RELAY / "sim" / f"{name}_sim.py",
            RELAY / "sim" / f"{name}_sim", RELAY / "providers" / f"{name}.py"}


def _is_own(path: Path, name: str) -> bool:
    return any(path == own or own in path.parents for own in own_files(name))


def _names_in(path: Path) -> set[str]:
    """The string constants of a module that are exactly a provider-looking name (docstrings and comments aside)."""
    tree = ast.parse(path.read_text())
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
                  and node.body and isinstance(node.body[0], ast.Expr)
                  and isinstance(node.body[0].value, ast.Constant)}
    return {node.value for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings}


# The same word, not a provider: LiveAvatar's avatar joins its LiveKit room under the identity "heygen".
NOT_A_PROVIDER = {(RELAY / "protocol" / "liveavatar.py", "heygen")}


def test_no_place_but_a_providers_own_files_and_the_table_names_a_provider() -> None:
    # A provider's name in any other module is a second table to keep in step (a literal "heygen" in a dispatch).
    problems = []
    for path in sorted(RELAY.rglob("*.py")):
        if path in (RELAY / "providers" / "table.py",):
            continue
        for name in sorted(_names_in(path) & set(PROVIDERS)):
            if not _is_own(path, name) and (path, name) not in NOT_A_PROVIDER:
                problems.append(f"{path.relative_to(RELAY.parent)} names {name!r}")
    for path in sorted((RELAY / "static").glob("*.js")):
        problems.extend(f"{path.relative_to(RELAY.parent)} names {name!r}" for name in PROVIDERS
                        if f"'{name}'" in path.read_text() or f'"{name}"' in path.read_text())
    assert not problems, "derive it from relay.providers.table instead:\n" + "\n".join(problems)


def test_every_provider_the_code_has_is_in_the_table() -> None:
    # The other way round: a provider's client, simulator or settings without its line in the table.
    clients = {p.stem for p in RELAY.glob("*.py") if (RELAY / "protocol" / p.name).exists()} - {AGENT, "__init__"}
    stems = {p.name.removesuffix(".py") for p in (RELAY / "sim").iterdir()}
    simulators = {stem.removesuffix("_sim") for stem in stems if stem.endswith("_sim")} - {AGENT}
    keys = {field.removesuffix("_api_key") for field in Settings.model_fields if field.endswith("_api_key")} - {AGENT}
    declarations = {p.stem for p in (RELAY / "providers").glob("*.py")} - {"__init__", "entry", "findings", "table"}
    assert clients == simulators == keys == declarations == set(PROVIDERS)


@pytest.mark.parametrize("entry", PROVIDERS.values(), ids=list(PROVIDERS))
def test_each_declaration_is_complete_and_its_settings_exist(entry: Provider) -> None:
    names = entry.settings
    assert entry.name == entry_for(entry.name).name and entry.name != VOICE_ONLY
    assert names.api_key == f"{entry.name}_api_key"  # demo mode is "no *_api_key set"
    fields = set(Settings.model_fields)
    used = {names.api_key, names.base_url, *(n.setting for n in names.required), *names.demo,
            *(n.unless for n in names.required if n.unless)}
    if names.session_limit is not None:
        used.add(names.session_limit.setting)
    assert used <= fields
    assert all(field.startswith(entry.name + "_") for field in used)
    assert SIMULATOR_APPS[entry.name] is entry.simulator
    assert page_config()[entry.name]["transport"] == entry.page.kind


def test_the_simulators_demo_mode_and_the_page_cover_exactly_the_table() -> None:
    assert set(SIMULATOR_APPS) == {AGENT, *PROVIDERS}
    assert set(page_config()) == set(PROVIDERS)
    urls = SimulatorURLs({name: f"http://127.0.0.1:{9000 + i}" for i, name in enumerate(SIMULATOR_APPS)})
    demo = demo_settings(Settings(_env_file=None), urls)  # type: ignore[call-arg]
    for entry in PROVIDERS.values():
        assert base_url(demo, entry.name) == urls[entry.name]
        assert getattr(demo, entry.settings.api_key) is not None
        assert settings_problem(demo.model_copy(update={"relay_avatar": entry.name})) is None


def test_the_settings_choose_a_provider_in_table_order_and_name_what_is_missing() -> None:
    plain = Settings(_env_file=None, elevenlabs_agent_id="agent")  # type: ignore[call-arg]
    first, *rest = PROVIDERS.values()
    assert chosen(plain) is first  # no key at all: the first (on its simulator in demo mode)
    for entry in rest:
        keyed = plain.model_copy(update={entry.settings.api_key: SecretStr("k")})
        assert chosen(keyed) is entry
        assert chosen(keyed.model_copy(update={first.settings.api_key: SecretStr("k")})) is first
        problem = settings_problem(keyed)
        assert problem is not None and all(n.says in problem for n in entry.settings.required)
    assert chosen(plain.model_copy(update={"relay_avatar": VOICE_ONLY})) is None
    problem = settings_problem(plain)
    assert problem is not None and all(e.settings.key_variable in problem for e in PROVIDERS.values())
    assert "RELAY_AVATAR" in (settings_problem(plain.model_copy(update={"relay_avatar": "puppet"})) or "")


def test_a_journaled_session_is_stopped_where_it_was_opened() -> None:
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    for entry in PROVIDERS.values():
        moved = at_base_url(settings, entry.name, "http://127.0.0.1:1")
        assert base_url(moved, entry.name) == "http://127.0.0.1:1"
        assert at_base_url(settings, entry.name, None) is settings
