"""relay/server/page.py without a server: what `client-config.json` tells the page (each provider's avatar, never a
secret) and which static paths are served."""

from __future__ import annotations

from pydantic import SecretStr

from relay.providers.table import PROVIDERS
from relay.server import embed
from relay.server.page import client_config, static_response
from tests.support.fakes import make_settings


def test_the_client_configuration_says_how_each_providers_avatar_is_shown_and_holds_no_secret() -> None:
    settings = make_settings(relay_client_frame_ms=40, **{p.settings.api_key: SecretStr("sekret-key")
                                                         for p in PROVIDERS.values()})
    config = client_config(settings, embed.local_livekit_client(settings, lambda line: None))
    assert config["frame_ms"] == 40
    assert set(config["avatars"]) == set(PROVIDERS)
    assert all(page["transport"] == "livekit" for page in config["avatars"].values())
    assert "sekret-key" not in repr(config)


def test_only_the_pages_own_files_are_served() -> None:
    assert static_response("index.html").status_code == 200
    assert static_response("livekit.js").content_type.startswith("text/javascript")
    for path in ("../config.py", "", ".hidden", "nested/../../x", "no-such-file.js"):
        assert static_response(path).status_code == 404, path
