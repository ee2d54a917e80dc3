"""What lets any website embed the widget (relay.server.embed): livekit-client served by the relay from its pinned
npm copy, its integrity checked (the installed copy is the pinned release; a changed or missing copy is refused with
a line saying what to do), `client-config.json`, and the CORS headers on what a foreign page loads — over a real
relay on loopback for the routes."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from relay.config import Settings
from relay.server import embed
from tests.support.harness import running_relay


def settings(**values: object) -> Settings:
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


@pytest.fixture(scope="module")
def installed() -> Path:
    """relay/client's livekit-client, installed from the npm registry as the README says when it is not there."""
    if not (embed.DEFAULT_LIVEKIT_CLIENT_DIR / embed.LIVEKIT_CLIENT_MODULE).is_file():
        npm = shutil.which("npm")
        if npm is None:
            pytest.fail("npm is not installed: cannot install relay/client (scripts/test installs it)")
        subprocess.run([npm, "ci", "--no-audit", "--no-fund", "--prefix", str(embed.CLIENT_DIR)], check=True,
                       capture_output=True, timeout=300)
    return embed.DEFAULT_LIVEKIT_CLIENT_DIR


def test_the_pin_is_the_same_in_package_json_the_lockfile_and_the_code() -> None:
    package = json.loads((embed.CLIENT_DIR / "package.json").read_text())
    lock = json.loads((embed.CLIENT_DIR / "package-lock.json").read_text())
    assert package["dependencies"] == {"livekit-client": embed.LIVEKIT_CLIENT_VERSION}
    locked = lock["packages"]["node_modules/livekit-client"]
    assert locked["version"] == embed.LIVEKIT_CLIENT_VERSION
    assert locked["integrity"].startswith("sha512-")  # `npm ci` checks the tarball against it
    assert locked["license"] == "Apache-2.0"


def test_the_installed_copy_is_the_pinned_release_with_its_licence(installed: Path) -> None:
    found = embed.find_livekit_client(installed)
    assert isinstance(found, embed.LivekitClient), found
    assert found.integrity == embed.LIVEKIT_CLIENT_SHA384
    assert b"Apache License" in found.license
    assert json.loads((installed / "package.json").read_text())["version"] == embed.LIVEKIT_CLIENT_VERSION


def test_a_changed_copy_is_refused(installed: Path, tmp_path: Path) -> None:
    copy = tmp_path / "livekit-client"
    (copy / "dist").mkdir(parents=True)
    module = (installed / embed.LIVEKIT_CLIENT_MODULE).read_bytes()
    (copy / embed.LIVEKIT_CLIENT_MODULE).write_bytes(module.replace(b"LiveKit", b"LiveKiT", 1))
    (copy / "LICENSE").write_bytes((installed / "LICENSE").read_bytes())
    found = embed.find_livekit_client(copy)
    assert isinstance(found, embed.LivekitClientProblem)
    assert f"is not livekit-client {embed.LIVEKIT_CLIENT_VERSION} as npm ships it" in found.message
    assert "npm ci --prefix relay/client" in found.message


def test_a_missing_copy_says_how_to_install_it_and_warns_only_when_the_widget_needs_it(tmp_path: Path) -> None:
    warnings: list[str] = []
    missing = settings(relay_livekit_client_dir=str(tmp_path))
    found = embed.local_livekit_client(missing, warnings.append)
    assert isinstance(found, embed.LivekitClientProblem)
    assert warnings == []  # demo mode (no keys) never loads it
    real = settings(relay_livekit_client_dir=str(tmp_path), elevenlabs_api_key="k", elevenlabs_agent_id="a",
                    liveavatar_api_key="k", liveavatar_avatar_id="6f1c1a52-9f0e-4d0c-8a51-2f6f0a3b1c01",
                    relay_avatar="liveavatar")
    embed.local_livekit_client(real, warnings.append)
    assert len(warnings) == 1 and "npm ci --prefix relay/client" in warnings[0]
    embed.local_livekit_client(real.model_copy(update={"relay_livekit_client_url": "https://cdn.example/lk.mjs"}),
                               warnings.append)
    assert len(warnings) == 1, "RELAY_LIVEKIT_CLIENT_URL set: the relay's copy is not needed"


def test_client_config_points_at_the_relays_copy_unless_a_url_overrides_it(installed: Path, tmp_path: Path) -> None:
    local = embed.find_livekit_client(installed)
    default = embed.client_config(settings(), local)
    assert default["livekit_client_url"] == "vendor/livekit-client.esm.mjs"
    assert default["livekit_client_integrity"] == embed.LIVEKIT_CLIENT_SHA384
    override = embed.client_config(settings(relay_livekit_client_url="https://cdn.example/lk.mjs"), local)
    assert override["livekit_client_url"] == "https://cdn.example/lk.mjs"
    assert override["livekit_client_integrity"] is None
    pinned = "sha384-" + "A" * 64
    checked = embed.client_config(settings(relay_livekit_client_url="https://cdn.example/lk.mjs",
                                           relay_livekit_client_integrity=pinned), local)
    assert checked["livekit_client_url"] == "https://cdn.example/lk.mjs"
    assert checked["livekit_client_integrity"] == pinned
    none = embed.client_config(settings(), embed.find_livekit_client(tmp_path))
    assert none["livekit_client_url"] is None


def test_what_a_foreign_page_loads_is_embeddable_and_nothing_else() -> None:
    for path in ("/embed.js", "/static/app.js", "/static/capture-worklet.js", "/static/widget.css",
                 "/client-config.json", "/vendor/livekit-client.esm.mjs"):
        assert embed.embeddable(path), path
    for path in ("/", "/ws", "/metrics", "/healthz", "/readyz", "/_demo/simulators", "/embed.jsx"):
        assert not embed.embeddable(path), path


@pytest.mark.timeout(60)
async def test_the_relay_serves_the_widget_and_livekit_client_to_other_origins(installed: Path) -> None:
    async with running_relay(relay_livekit_client_url="") as relay:
        module = await relay.http.get(relay.url + "/embed.js", headers={"origin": "https://shop.example"})
        assert module.status_code == 200 and module.headers["content-type"].startswith("text/javascript")
        assert module.headers["access-control-allow-origin"] == "*"
        assert "from './static/app.js'" in module.text
        for path in ("/static/app.js", "/static/widget.css", "/static/capture-worklet.js", "/client-config.json"):
            answer = await relay.http.get(relay.url + path)
            assert answer.status_code == 200, path
            assert answer.headers["access-control-allow-origin"] == "*", path
            assert answer.headers["cross-origin-resource-policy"] == "cross-origin", path
        config = (await relay.http.get(relay.url + "/client-config.json")).json()
        livekit = await relay.http.get(relay.url + "/" + config["livekit_client_url"])
        assert livekit.status_code == 200 and livekit.headers["content-type"].startswith("text/javascript")
        assert embed.integrity(livekit.content) == config["livekit_client_integrity"] == embed.LIVEKIT_CLIENT_SHA384
        licence = await relay.http.get(relay.url + "/" + embed.LIVEKIT_LICENSE_PATH)
        assert licence.status_code == 200 and "Apache License" in licence.text
        assert (await relay.http.get(relay.url + "/vendor/other.mjs")).status_code == 404
        page = await relay.http.get(relay.url + "/")
        assert "access-control-allow-origin" not in page.headers
        assert "<avatar-relay" in page.text
        types = await relay.http.get(relay.url + "/static/embed.d.ts")
        assert types.status_code == 200 and "export declare class AvatarRelayElement" in types.text
