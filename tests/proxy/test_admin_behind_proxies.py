"""The operator's endpoints behind real nginx and real Caddy running the docs/proxies/ snippets (issue 25 §3: never
exposed through the public proxy): through the proxy `/admin/` is refused even with the right token — by the
snippet's rule, and, with that rule taken out, by the relay itself (the request carries the proxy's forwarding
headers) —, while the relay's own port answers it."""

from __future__ import annotations

from pathlib import Path

import httpx2
import pytest

from tests.proxy import proxies
from tests.proxy.fleet import port_of, relay
from tests.proxy.proxies import CADDY_SNIPPET, NGINX_SNIPPET, Proxy, caddy, nginx
from tests.support.simcontrol import simulators

pytestmark = pytest.mark.timeout(180)

TOKEN = "admin-token-behind-the-proxies-0123"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
RULES = {"nginx": ("    location /admin/ { deny all; }  # the operator's endpoints: the relay's own port only\n", ""),
         "caddy": ("/metrics /_demo/* /admin/*", "/metrics /_demo/*")}


@pytest.mark.parametrize("proxy", [pytest.param(nginx, id="nginx"), pytest.param(caddy, id="caddy")])
@pytest.mark.parametrize("with_rule", [True, False], ids=["snippet", "without-its-rule"])
async def test_admin_is_refused_through_the_proxy_and_answered_on_the_relays_port(
        proxy: Proxy, with_rule: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    name = "nginx" if proxy is nginx else "caddy"
    snippet = NGINX_SNIPPET if proxy is nginx else CADDY_SNIPPET
    rule, without = RULES[name]
    assert rule in snippet.read_text(), f"{snippet.name} no longer denies /admin/"
    if not with_rule:
        bare = tmp_path / snippet.name
        bare.write_text(snippet.read_text().replace(rule, without))
        monkeypatch.setattr(proxies, "NGINX_SNIPPET" if proxy is nginx else "CADDY_SNIPPET", bare)
    async with (simulators() as (sims, _), relay(sims, tmp_path, "relay-a", RELAY_ADMIN_TOKEN=TOKEN) as relay_a,
                relay(sims, tmp_path, "relay-b", RELAY_ADMIN_TOKEN=TOKEN) as relay_b,
                proxy(port_of(relay_a), port_of(relay_b), tmp_path) as url):
        async with httpx2.AsyncClient(timeout=10.0) as client:
            through = await client.get(url + "/admin/conversations", headers=AUTH)
            direct = await client.get(relay_a + "/admin/conversations", headers=AUTH)
    assert through.status_code == (403 if with_rule else 404), through.text
    assert direct.status_code == 200 and direct.json()["conversations"] == []
