"""The page's JavaScript modules (relay/static/) tested in node, without a browser: node's built-in test runner runs
each tests/js/*.test.mjs file on a DOM parsed from the page's index.html (linkedom, from npm) and a clock the test
drives (tests/js/harness.mjs). Seconds for the lot, so the page's timers and state machine off the happy path are
in the fast tiers; the real-browser tier (tests/browser/) keeps the end-to-end paths.

linkedom is installed from the npm registry into tests/js/node_modules (git-ignored) when missing, by `scripts/test`
or by this file; a missing node or npm fails here, nothing is skipped."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

JS = Path(__file__).parent / "js"
NODE_FILES = sorted(JS.glob("*.test.mjs"))


def install_js_test_dependencies() -> None:
    """`npm install` in tests/js unless every pinned devDependency is there at its version."""
    wanted = json.loads((JS / "package.json").read_text())["devDependencies"]
    for name, version in wanted.items():
        installed = JS / "node_modules" / name / "package.json"
        if not installed.is_file() or json.loads(installed.read_text())["version"] != version:
            break
    else:
        return
    npm = shutil.which("npm")
    if npm is None:
        pytest.fail("npm is not installed: cannot install the page tests' DOM (linkedom); scripts/test installs it")
    done = subprocess.run([npm, "install", "--no-audit", "--no-fund"], cwd=JS, capture_output=True, text=True,
                          timeout=300)
    if done.returncode != 0:
        pytest.fail(f"npm install in tests/js failed:\n{done.stdout}\n{done.stderr}")


@pytest.fixture(scope="module")
def node() -> str:
    found = shutil.which("node")
    if found is None:
        pytest.fail("node is not installed (Debian's nodejs, which npm depends on); scripts/test installs it")
    install_js_test_dependencies()
    return found


def test_there_are_page_tests() -> None:
    assert {f.name for f in NODE_FILES} >= {"app.test.mjs", "captions.test.mjs", "player.test.mjs"}


@pytest.mark.timeout(120)
@pytest.mark.parametrize("test_file", NODE_FILES, ids=[f.name for f in NODE_FILES])
def test_page_module(node: str, test_file: Path) -> None:
    done = subprocess.run([node, "--test", "--test-reporter=tap", str(test_file)], cwd=JS, capture_output=True,
                          text=True, timeout=100)
    if done.returncode != 0:
        failures = [block for block in done.stdout.split("# Subtest: ") if "\nnot ok " in block]
        pytest.fail(f"node --test {test_file.name} failed (exit {done.returncode}):\n"
                    + ("\n".join(failures) or done.stdout[-6000:]) + done.stderr[-3000:], pytrace=False)
