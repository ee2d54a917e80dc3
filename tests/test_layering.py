"""The package's architecture, enforced: every relay module's imports are read with `ast` (module level, inside
functions, and under `if TYPE_CHECKING:` — a type-only import is still a dependency a reader follows, and mypy
follows it too) and checked against the layer order in README.md "Layout":

    base (relay, relay._util, relay.config)  ->  protocol  ->  net  ->  sim
      ->  avatars (+ relay.elevenlabs, relay.heygen, relay.liveavatar, relay.simli)  ->  providers (the provider table)
      ->  conversation (+ relay.nursery)
      ->  ops  ->  server (+ relay.web)  ->  cli (+ relay.__main__)

A module may import its own layer and the layers before it, never a later one. Besides: relay.protocol stays
sans-I/O (no trio, httpx2, httpx, websockets, quart, quart_trio or hypercorn, directly or through any relay module
it imports, package `__init__`s included); no two relay modules import each other, however indirectly; nothing
imports relay.cli (but `python -m relay`'s `__main__`); the simulators import nothing from the relay but the
HTTP keep-alive guard they share with the relay's app (`relay.net.http_keepalive`, which imports nothing from the
relay).
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from collections.abc import Callable
from functools import cache
from pathlib import Path

import pytest

RELAY = Path(__file__).resolve().parents[1] / "relay"

LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("base", ("relay", "relay._util", "relay.config")),
    ("protocol", ("relay.protocol",)),
    ("net", ("relay.net",)),
    ("sim", ("relay.sim",)),
    ("avatars", ("relay.avatars", "relay.elevenlabs", "relay.heygen", "relay.liveavatar", "relay.simli")),
    ("providers", ("relay.providers",)),
    ("conversation", ("relay.conversation", "relay.nursery")),
    ("ops", ("relay.ops",)),
    ("server", ("relay.server", "relay.web")),
    ("cli", ("relay.cli", "relay.__main__")),
]
IO_LIBRARIES = frozenset({"trio", "httpx2", "httpx", "websockets", "quart", "quart_trio", "hypercorn"})


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(RELAY.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES: dict[str, Path] = {_module_name(p): p for p in sorted(RELAY.rglob("*.py"))}


def _owner(name: str) -> str | None:
    """The relay module that `name` (a module, or a name inside one) lives in."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


@cache
def imports(module: str) -> tuple[frozenset[str], frozenset[str]]:
    """(relay modules, top-level third-party packages) that `module` imports, wherever the import statement is, with
    the package `__init__`s Python runs on the way (those of the targets' packages that are not `module`'s own):
    every rule below holds for what is loaded, not only for what is named."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    ours: set[str] = set()
    theirs: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            targets = [f"{base}.{alias.name}" for alias in node.names] if base == "relay" or base in MODULES \
                else [base]
        else:
            continue
        for target in targets:
            if target.split(".")[0] == "relay":
                owner = _owner(target)
                if owner is not None and owner != module:
                    ours.add(owner)
                    # Python runs the target's package `__init__`s first: what they import is loaded too.
                    ours.update(p for p in _parents(owner) if p in MODULES and p not in _parents(module))
            else:
                theirs.add(target.split(".")[0])
    return frozenset(ours - {module}), frozenset(theirs)


def layer_of(module: str) -> tuple[int, str]:
    """The layer of `module`: the one naming the longest prefix of it ("relay" itself only holds what no other
    layer names)."""
    matches = [(len(prefix), rank, name) for rank, (name, prefixes) in enumerate(LAYERS) for prefix in prefixes
               if module == prefix or module.startswith(prefix + ".")]
    if not matches:
        raise AssertionError(f"{module} is in no layer: add it to LAYERS in tests/test_layering.py and README.md")
    _, rank, name = max(matches)
    return rank, name


def _parents(module: str) -> list[str]:
    """The packages Python imports first when `module` is imported."""
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def test_every_relay_module_has_a_layer() -> None:
    # The package "relay" itself is in the base layer, which must not swallow a new top-level module unseen.
    named = [p for _, prefixes in LAYERS for p in prefixes if p != "relay"]
    unplaced = [m for m in MODULES if m != "relay" and not any(m == p or m.startswith(p + ".") for p in named)]
    assert not unplaced, f"{', '.join(unplaced)}: in no layer; add to LAYERS (tests/test_layering.py) and README.md"


def test_no_module_imports_a_later_layer() -> None:
    problems = []
    for module in MODULES:
        rank, name = layer_of(module)
        for target in imports(module)[0]:
            target_rank, target_name = layer_of(target)
            if target_rank > rank:
                problems.append(f"{module} ({name}) imports {target} ({target_name}): the layer order is "
                                f"{' -> '.join(n for n, _ in LAYERS)}, and a module may only import its own layer "
                                "and earlier ones")
    assert not problems, "\n".join(problems)


def test_protocol_modules_do_no_io() -> None:
    # Breadth first from every protocol module (the package `__init__`s Python runs first included), so each
    # offending import is reported once, by the shortest chain that reaches it.
    found: dict[tuple[str, str], str] = {}  # (module importing the library, library) -> chain from relay.protocol
    for start in sorted(m for m in MODULES if m.startswith("relay.protocol")):
        chains = {start: start}
        queue = [start]
        while queue:
            current = queue.pop(0)
            ours, theirs = imports(current)
            for library in theirs & IO_LIBRARIES:
                chain = chains[current]
                if (current, library) not in found or len(chain) < len(found[current, library]):
                    found[current, library] = chain
            for target in sorted(ours | {p for p in _parents(current) if p in MODULES}):
                if target not in chains:
                    chains[target] = f"{chains[current]} -> {target}"
                    queue.append(target)
    problems = [f"{chain.split(' -> ')[0]} must stay sans-I/O but reaches {library} through {chain}" +
                (f" (which imports {library})" if " -> " in chain else "")
                for (_, library), chain in sorted(found.items())]
    assert not problems, f"relay.protocol must not import {', '.join(sorted(IO_LIBRARIES))}:\n" + "\n".join(problems)


def test_no_import_cycles() -> None:
    # Tarjan's strongly connected components over the explicit imports.
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for target in sorted(imports(module)[0]):
            if target not in index:
                visit(target)
                low[module] = min(low[module], low[target])
            elif target in on_stack:
                low[module] = min(low[module], index[target])
        if low[module] == index[module]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == module:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for module in sorted(MODULES):
        if module not in index:
            visit(module)
    assert not cycles, "import cycles between relay modules (each group imports itself through the others): " + \
        "; ".join(", ".join(group) for group in cycles)


def test_nothing_imports_the_command_line() -> None:
    importers = sorted(m for m in MODULES if "relay.cli" in imports(m)[0] and m != "relay.__main__")
    assert not importers, f"{', '.join(importers)} import(s) relay.cli: the command line is the top; move what they " \
        "need into the layer that owns it (e.g. relay.server.serving)"


# The guard, and the package `__init__` Python runs to reach it: both must import nothing from the relay.
SHARED_WITH_THE_SIMULATORS = frozenset({"relay.net.http_keepalive", "relay.net"})


def test_simulators_import_nothing_from_the_relay() -> None:
    def simulator(name: str) -> bool:  # relay.sim and its modules, not relay.simli (a provider)
        return name == "relay.sim" or name.startswith("relay.sim.")

    problems = [f"{m} imports {t}" for m in MODULES if simulator(m)
                for t in sorted(imports(m)[0]) if not simulator(t) and t not in SHARED_WITH_THE_SIMULATORS]
    assert not problems, "the simulators must import nothing from the relay: " + "; ".join(problems)
    shared = [f"{m} imports {t}" for m in SHARED_WITH_THE_SIMULATORS for t in sorted(imports(m)[0])]
    assert not shared, "what the simulators share with the relay must import nothing from it: " + "; ".join(shared)


# What importing one module loads at run time, package `__init__`s and all (a re-exporting `__init__` once made
# `relay.conversation.record` load the pumps, the avatars and soxr, and `relay.protocol.browser` the ElevenLabs and
# HeyGen wire modules): module -> (what it may load from the relay, libraries it must not load).
PROVIDER_WIRE_MODULES = ("relay.protocol.elevenlabs", "relay.protocol.heygen", "relay.protocol.liveavatar",
                         "relay.protocol.lite")
LOADS: dict[str, tuple[Callable[[str], bool], frozenset[str]]] = {
    # Our protocol: no provider's wire module, nothing above the protocol layer, no I/O library.
    "relay.protocol.browser": (
        lambda m: layer_of(m)[1] in ("base", "protocol") and not m.startswith(PROVIDER_WIRE_MODULES),
        IO_LIBRARIES),
    # Plain data that the ops read: nothing of the engine, no avatar, no wire format, no trio, no audio library.
    "relay.conversation.record": (
        lambda m: m in ("relay", "relay._util", "relay.conversation", "relay.conversation.record"),
        IO_LIBRARIES | {"soxr", "numpy"}),
    # The ops take records, not the engine: no conversation module but the record, no nursery, nothing served.
    "relay.ops.metrics": (
        lambda m: (not m.startswith("relay.conversation.") or m == "relay.conversation.record")
        and layer_of(m)[1] not in ("server", "cli") and m != "relay.nursery",
        frozenset({"quart", "quart_trio", "hypercorn"})),
}


@pytest.mark.parametrize("module", sorted(LOADS))
def test_importing_a_module_loads_only_what_its_layer_rules_allow(module: str) -> None:
    allowed, libraries = LOADS[module]
    script = f"import json, sys, {module}; print(json.dumps(sorted(sys.modules)))"
    loaded = json.loads(subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True,
                                       cwd=RELAY.parent).stdout)
    ours = [m for m in loaded if m == "relay" or m.startswith("relay.")]
    assert module in ours
    wrong = [m for m in ours if not allowed(m)] + sorted(set(loaded) & libraries)
    assert not wrong, f"import {module} loads {', '.join(wrong)}: a package `__init__` re-exporting its modules, " \
        "or an import the layer rules forbid at run time"
