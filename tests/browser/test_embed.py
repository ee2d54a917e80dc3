"""The widget on somebody else's website (docs/embedding.md), in real headless Chromium.

A host page is served from a second loopback origin with the strict Content-Security-Policy the contract names (no
'unsafe-inline', no 'unsafe-eval'; only the relay's origin added to script-src, connect-src, media-src and
worker-src) and a report-uri. It embeds the widget with the one-tag snippet and a `token-url` on the host site that
answers only with the host's session cookie (the page's credentials) and mints a real HS256 token for a relay that
requires tokens and admits only the host's origin on /ws. The relay serves livekit-client from its own pinned copy
(RELAY_LIVEKIT_CLIENT_URL unset). Every test fails on a console error, a page error, a CSP violation (event or
report) or a request to any origin other than the host's and the relay's.
"""

from __future__ import annotations

import json
import secrets
import shutil
import subprocess
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from relay.server.auth import mint_jwt
from relay.server.embed import CLIENT_DIR, DEFAULT_LIVEKIT_CLIENT_DIR, LIVEKIT_CLIENT_MODULE
from tests.browser.conftest import CHROMIUM_ARGS, REPO, Relay, wait_until
from tests.browser.test_page import agent_faults, take_screenshot
from tests.support.processes import free_port

pytestmark = pytest.mark.timeout(180)

SECRET = secrets.token_urlsafe(32)
SESSION = "host-session=signed-in"

HOST_SCRIPT = """
// The host site's own script (its CSP allows no inline script): it records what a host page can see.
window.__host = { violations: [], events: [], states: [] };
document.addEventListener('securitypolicyviolation', (e) => {
  window.__host.violations.push(`${e.violatedDirective} ${e.blockedURI}`);
});
const followed = ['relay:ready', 'relay:agent_response', 'relay:user_transcript', 'relay:interruption', 'relay:ended'];
for (const type of followed) {
  document.addEventListener(type, (e) => window.__host.events.push({ type: e.type, from: e.target.id }));
}
document.addEventListener('relay:state', (e) => window.__host.states.push(`${e.target.id}:${e.detail.state}`));
"""

HOSTILE_CSS = """
* { all: unset; }
html, body { display: block; font: 31px/3 "Comic Sans MS", serif; color: #f0f; background: #ff0; }
button { background: red !important; }
div, p, section { display: inline; }
"""


@dataclass
class HostSite:
    """The foreign website: its origin, what its token endpoint and CSP report endpoint saw."""

    origin: str
    relay: Relay
    token_requests: list[str] = field(default_factory=list)  # the Cookie header of each token request
    reports: list[Any] = field(default_factory=list)
    token_status: int = 200

    def page_url(self, **query: str) -> str:
        return self.origin + "/" + ("?" + "&".join(f"{k}={v}" for k, v in query.items()) if query else "")


def host_page(relay_url: str, query: dict[str, list[str]]) -> str:
    lang = query.get("lang", [""])[0]
    count = int(query.get("widgets", ["1"])[0])
    widgets = "\n".join(
        f'<avatar-relay id="w{i}" token-url="/avatar-token"{f" lang={lang!r}" if lang else ""}'
        f""" dynamic-variables='{{"visitor": "w{i}"}}'></avatar-relay>""" for i in range(1, count + 1))
    hostile = '<link rel="stylesheet" href="/hostile.css">' if "hostile" in query else ""
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Acme Bikes — help</title><link rel="icon" href="data:,">
<link rel="stylesheet" href="/site.css">{hostile}
<script src="/host.js"></script>
<script type="module" src="{relay_url}/embed.js"></script>
</head><body>
<h1>Acme Bikes</h1>
<p>Questions about your order? Ask our assistant.</p>
{widgets}
</body></html>"""


def host_csp(relay_url: str) -> str:
    """The host's CSP: only the relay's origin added (to connect-src in its http and WebSocket forms: a CSP source
    `http://relay` does not match `ws://relay`, as Chromium shows)."""
    socket_origin = "ws" + relay_url.removeprefix("http")
    return "; ".join([
        "default-src 'none'", f"script-src 'self' {relay_url}", f"connect-src 'self' {relay_url} {socket_origin}",
        f"media-src 'self' {relay_url}", f"worker-src 'self' {relay_url}", "style-src 'self'", "img-src 'self' data:",
        "base-uri 'none'", "object-src 'none'", "report-uri /csp-report"])


@pytest.fixture(scope="session")
def relay_livekit_copy() -> None:
    """The relay's own livekit-client (relay/client), installed from the npm registry as the README says."""
    if (DEFAULT_LIVEKIT_CLIENT_DIR / LIVEKIT_CLIENT_MODULE).is_file():
        return
    npm = shutil.which("npm")
    if npm is None:
        pytest.fail("npm is not installed: cannot install relay/client (scripts/test installs it)")
    subprocess.run([npm, "ci", "--no-audit", "--no-fund", "--prefix", str(CLIENT_DIR)], check=True,
                   capture_output=True, timeout=300)


@pytest.fixture(scope="session")
def host_port() -> int:
    return free_port()


@pytest.fixture
def host(relays: Callable[..., Relay], host_port: int, relay_livekit_copy: None) -> Iterator[HostSite]:
    origin = f"http://localhost:{host_port}"
    # The host's widgets set the dynamic variable `visitor`: the operator allows it (#30: none by default).
    relay = relays("liveavatar", RELAY_LIVEKIT_CLIENT_URL="", RELAY_ALLOWED_ORIGINS=origin, RELAY_AUTH="token",
                   RELAY_AUTH_SECRET=SECRET, RELAY_CLIENT_DYNAMIC_VARIABLES="visitor")
    site = HostSite(origin=origin, relay=relay)
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def answer(self, status: int, content_type: str, body: bytes, **headers: str) -> None:
            self.send_response(status)
            self.send_header("content-type", content_type)
            self.send_header("content-length", str(len(body)))
            for name, value in headers.items():
                self.send_header(name.replace("_", "-"), value)
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            url = urlsplit(self.path)
            if url.path == "/":
                self.answer(200, "text/html; charset=utf-8", host_page(relay.url, parse_qs(url.query)).encode(),
                            content_security_policy=host_csp(relay.url), set_cookie=f"{SESSION}; SameSite=Lax")
            elif url.path == "/host.js":
                self.answer(200, "text/javascript", HOST_SCRIPT.encode())
            elif url.path == "/site.css":
                self.answer(200, "text/css", b"body { font-family: Georgia, serif; margin: 24px; color: #222; }")
            elif url.path == "/hostile.css":
                self.answer(200, "text/css", HOSTILE_CSS.encode())
            elif url.path == "/avatar-token":
                cookie = self.headers.get("cookie", "")
                with lock:
                    site.token_requests.append(cookie)
                if SESSION not in cookie or site.token_status != 200:
                    self.answer(site.token_status if site.token_status != 200 else 401, "application/json",
                                b'{"error": "not signed in"}')
                    return
                token = mint_jwt(SECRET, ttl=120, subject="acme-visitor")
                self.answer(200, "application/json", json.dumps({"token": token}).encode(), cache_control="no-store")
            else:
                self.answer(404, "text/plain", b"not found")

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length", "0") or 0))
            if self.path == "/csp-report":
                with lock:
                    site.reports.append(json.loads(body or b"null"))
            self.answer(204, "text/plain", b"")

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", host_port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield site
    finally:
        server.shutdown()
        server.server_close()


@dataclass
class Visit:
    page: Any
    problems: list[str]
    requests: list[str]


@pytest.fixture
def visit(playwright: Any, wav_files: dict[str, Any], host: HostSite) -> Iterator[Callable[..., Visit]]:
    """`visit(viewport=..., expect_status=None, **query)`: the host page in a fresh Chromium context. At the end, the
    test fails on any console error (but Chromium's line for a response with the `expect_status` the test provokes),
    page error, CSP violation (event or report) or request to a third origin."""
    browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=[
        *CHROMIUM_ARGS, "--use-fake-ui-for-media-stream",
        f"--use-file-for-fake-audio-capture={wav_files['silence']}%noloop"])
    visits: list[Visit] = []

    def open_(viewport: dict[str, int] | None = None, expect_status: int | None = None, **query: str) -> Visit:
        expected = f"the server responded with a status of {expect_status} "
        context = browser.new_context(viewport=viewport or {"width": 1280, "height": 900},
                                      **({"is_mobile": True, "has_touch": True, "device_scale_factor": 2}
                                         if viewport and viewport["width"] < 500 else {}))
        context.set_default_timeout(20_000)
        page = context.new_page()
        seen = Visit(page, [], [])
        page.on("console", lambda msg: seen.problems.append(f"console.{msg.type}: {msg.text}")
                if (msg.type == "error" and expected not in msg.text) or "Content Security Policy" in msg.text
                else None)
        page.on("pageerror", lambda exc: seen.problems.append(f"page error: {exc}"))
        page.on("request", lambda request: seen.requests.append(request.url))
        page.goto(host.page_url(**query))
        visits.append(seen)
        return seen

    yield open_
    try:
        for seen in visits:
            violations = seen.page.evaluate("() => window.__host.violations")
            assert violations == [], f"CSP violations on the host page: {violations}"
            assert not seen.problems, "the host page logged errors:\n" + "\n".join(seen.problems)
            allowed = (host.origin, host.relay.url)
            elsewhere = [url for url in seen.requests if not url.startswith(allowed)
                         and not url.startswith(("data:", "blob:"))]
            assert elsewhere == [], f"requests left for another origin (a CDN?): {elsewhere}"
        assert host.reports == [], f"CSP violation reports: {host.reports}"
    finally:
        browser.close()


def widget(page: Any, element_id: str = "w1") -> Any:
    return page.locator(f"#{element_id}")


def state(page: Any, element_id: str = "w1") -> str:
    return str(page.evaluate("(id) => document.getElementById(id).state", element_id))


def wait_state(page: Any, wanted: str, element_id: str = "w1") -> None:
    page.wait_for_function("([id, s]) => document.getElementById(id).state === s", arg=[element_id, wanted])


def bubbles(page: Any, kind: str, element_id: str = "w1") -> list[str]:
    return list(page.evaluate(
        "([id, kind]) => [...document.getElementById(id).shadowRoot.querySelectorAll(`.entry.${kind} .text`)]"
        ".map((e) => e.textContent)", [element_id, kind]))


def test_a_foreign_page_with_a_strict_csp_holds_a_conversation_through_the_element(visit, host: HostSite) -> None:
    relay = host.relay
    with agent_faults(relay, ms_per_char=120, max_reply_s=30):
        seen = visit()
        page = seen.page
        w = widget(page)
        assert state(page) == "idle"
        # The widget's own styles apply though the host's CSP has no style-src for the relay.
        start_button = w.get_by_role("button", name="Start")
        assert start_button.evaluate("(b) => getComputedStyle(b).minHeight") == "44px"
        start_button.click()
        wait_state(page, "live")
        assert host.token_requests and SESSION in host.token_requests[-1], "the token-url got the page's cookies"
        info = page.evaluate("() => document.getElementById('w1').debug")
        assert info["avatarMode"] == "simulated" and info["conversationId"]
        # The greeting is spoken (slowly): Interrupt cuts it.
        page.wait_for_function("() => document.getElementById('w1').debug.status === 'speaking'")
        w.get_by_role("button", name="Interrupt").click()
        page.wait_for_function("() => document.getElementById('w1').shadowRoot.querySelector('.entry.agent')"
                               "?.dataset.caption === 'cut'")
        wait_until(lambda: page.evaluate("() => document.getElementById('w1').debug.sent.includes('interrupt')"), 10,
                   "the interrupt never reached the relay")
        # A typed message gets a reply with captions.
        w.get_by_label("Message to the agent").fill("Where is my bike?")
        w.get_by_role("button", name="Send").click()
        w.locator(".entry.agent", has_text="You said").wait_for()
        page.wait_for_function("() => [...document.getElementById('w1').shadowRoot.querySelectorAll('.entry.agent')]"
                               ".some((b) => b.textContent.includes('You said') && Number(b.dataset.revealed) > 0)")
        w.get_by_role("button", name="Stop").click()
        wait_state(page, "ended")
    assert page.evaluate("() => document.getElementById('w1').debug.endedReason") == "client_stop"
    assert bubbles(page, "typed") == ["Where is my bike?"]
    # The host page followed it all through DOM events on the element.
    events = page.evaluate("() => window.__host.events")
    types = [e["type"] for e in events]
    assert types[0] == "relay:ready" and "relay:agent_response" in types and types[-1] == "relay:ended"
    assert all(e["from"] == "w1" for e in events)
    assert page.evaluate("() => window.__host.states") == ["w1:connecting", "w1:live", "w1:ended"]
    # The relay checked the token and took the element's dynamic variables.
    agent_side = {c["id"]: c for c in relay.ledger("elevenlabs")["conversations"]}[info["conversationId"]]
    assert agent_side["initiation"]["dynamic_variables"] == {"visitor": "w1"}
    # livekit-client loads from the relay under the host's CSP (the real-avatar path), pinned and CORS-served.
    loaded = page.evaluate("async (url) => { const m = await import(url + '/vendor/livekit-client.esm.mjs');"
                           " return typeof m.Room; }", relay.url)
    assert loaded == "function"


def test_without_the_hosts_cookie_the_token_url_refuses_and_the_widget_says_so(visit, host: HostSite) -> None:
    host.token_status = 403
    seen = visit(expect_status=403)
    page = seen.page
    widget(page).get_by_role("button", name="Start").click()
    wait_state(page, "ended")
    notice = widget(page).get_by_role("alert")
    assert "Could not get a pass for this conversation from the site (HTTP 403)" in notice.inner_text()
    assert widget(page).get_by_role("button", name="Start").is_enabled()
    assert page.evaluate("() => document.getElementById('w1').debug.sent") == [], "nothing was sent to the relay"


def test_two_widgets_on_one_page_do_not_interfere(visit) -> None:
    page = visit(widgets="2").page
    first, second = widget(page, "w1"), widget(page, "w2")
    first.get_by_role("button", name="Start").click()
    wait_state(page, "live", "w1")
    first.get_by_label("Message to the agent").fill("Only to the first")
    first.get_by_role("button", name="Send").click()
    first.locator(".entry.agent", has_text="You said: Only to the first").wait_for()
    assert state(page, "w2") == "idle"
    assert bubbles(page, "typed", "w2") == []
    assert second.get_by_role("button", name="Start").is_enabled()
    second.get_by_role("button", name="Start").click()
    wait_state(page, "live", "w2")
    ids = page.evaluate("() => ['w1', 'w2'].map((id) => document.getElementById(id).debug.conversationId)")
    assert ids[0] and ids[1] and ids[0] != ids[1]
    first.get_by_role("button", name="Stop").click()
    wait_state(page, "ended", "w1")
    assert state(page, "w2") == "live"
    second.get_by_label("Message to the agent").fill("Still here?")
    second.get_by_role("button", name="Send").click()
    second.locator(".entry.agent", has_text="You said: Still here?").wait_for()
    assert bubbles(page, "typed", "w1") == ["Only to the first"]
    second.get_by_role("button", name="Stop").click()
    wait_state(page, "ended", "w2")


def test_lang_es_gives_a_spanish_widget(visit, host: HostSite) -> None:
    page = visit(lang="es", expect_status=503).page
    w = widget(page)
    w.get_by_role("button", name="Empezar").wait_for()
    assert w.get_by_role("status").inner_text() == "Pulsa Empezar para hablar con el agente."
    w.get_by_role("button", name="Empezar").click()
    wait_state(page, "live")
    w.get_by_label("Mensaje para el agente").fill("Hola")
    w.get_by_role("button", name="Enviar").click()
    w.locator(".entry.agent", has_text="You said: Hola").wait_for()  # the agent's words are the agent's
    assert w.locator(".entry.typed .who").inner_text().lower() == "tú (escrito)"
    w.get_by_role("button", name="Terminar").click()
    wait_state(page, "ended")
    assert w.get_by_role("status").inner_text() == "Conversación terminada: la has terminado tú."
    # Errors in plain Spanish too.
    host.token_status = 503
    w.get_by_role("button", name="Empezar").click()
    wait_state(page, "ended")
    assert "El sitio no ha podido dar un pase para esta conversación (HTTP 503)" in w.get_by_role("alert").inner_text()


def test_a_hosts_aggressive_css_does_not_break_the_widget(visit) -> None:
    page = visit(hostile="1").page
    w = widget(page)
    start_button = w.get_by_role("button", name="Start")
    style = start_button.evaluate("async (b) => { await Promise.all(b.getAnimations().map((a) => a.finished));"
                                  " const s = getComputedStyle(b); return [s.minHeight, s.backgroundColor,"
                                  " s.fontFamily, getComputedStyle(b.getRootNode().host).display]; }")
    red, _green, blue = (int(part) for part in style[1].removeprefix("rgb(").rstrip(")").split(","))
    assert style[0] == "44px" and blue > 200 and red < 120, style  # the widget's blue, not the host's red
    assert "Comic Sans" not in style[2] and style[3] == "block", style
    stage = w.locator("#stage").bounding_box()
    assert stage is not None and stage["width"] > 200 and stage["height"] > 150
    start_button.click()
    wait_state(page, "live")
    w.get_by_label("Message to the agent").fill("Styled by someone else")
    w.get_by_role("button", name="Send").click()
    w.locator(".entry.agent", has_text="You said: Styled by someone else").wait_for()
    # And the widget's CSS does not leak out: the host's heading keeps the host's (hostile) font.
    assert "Comic Sans" in page.evaluate("() => getComputedStyle(document.querySelector('h1')).fontFamily")
    w.get_by_role("button", name="Stop").click()
    wait_state(page, "ended")


@pytest.mark.parametrize("viewport", ["desktop", "phone"])
def test_the_widget_on_a_foreign_page_screenshots(visit, host: HostSite, viewport: str) -> None:
    size = {"width": 1280, "height": 900} if viewport == "desktop" else {"width": 375, "height": 740}
    with agent_faults(host.relay, ms_per_char=120, max_reply_s=30):
        page = visit(viewport=size).page
        w = widget(page)
        if viewport == "phone":
            assert page.evaluate("() => document.documentElement.scrollWidth") <= 375
            for name in ("Start", "Mute", "Interrupt", "Stop", "Send"):
                box = w.get_by_role("button", name=name).bounding_box()
                assert box is not None and box["height"] >= 44 and box["x"] + box["width"] <= 375, (name, box)
        w.get_by_role("button", name="Start").click()
        wait_state(page, "live")
        w.get_by_label("Message to the agent").fill("Which bike fits a 1.80 m rider?")
        w.get_by_role("button", name="Send").click()
        w.locator(".entry.agent", has_text="You said").wait_for()
        if viewport == "phone":
            assert page.evaluate("() => document.documentElement.scrollWidth") <= 375
            box = w.bounding_box()
            assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= 375, box
            page.evaluate("() => window.scrollTo(0, 0)")
        take_screenshot(page, REPO / "docs" / f"embed-{viewport}.png", mouth_open=viewport == "desktop")
        w.get_by_role("button", name="Stop").click()
        wait_state(page, "ended")


HIDE_PAGE = """(hidden) => {
  const state = hidden ? 'hidden' : 'visible';
  Object.defineProperty(document, 'visibilityState', { configurable: true, get: () => state });
  Object.defineProperty(document, 'hidden', { configurable: true, get: () => hidden });
  document.dispatchEvent(new Event('visibilitychange'));
}"""


def test_on_a_phone_the_screen_stays_on_and_a_hidden_page_pauses_the_microphone(visit) -> None:
    page = visit(viewport={"width": 390, "height": 844}).page
    w = widget(page)
    w.get_by_role("button", name="Start").click()
    wait_state(page, "live")
    page.wait_for_function("() => document.getElementById('w1').debug.micState === 'on'")
    page.wait_for_function("() => document.getElementById('w1').debug.wakeLock === true")
    mic_enabled = "() => document.getElementById('w1').current.capture.stream.getAudioTracks().every((t) => t.enabled)"
    assert page.evaluate(mic_enabled) is True
    # The user switches to another app: the page is hidden.
    page.evaluate(HIDE_PAGE, True)
    assert page.evaluate("() => document.getElementById('w1').debug.paused") is True
    assert page.evaluate(mic_enabled) is False
    assert "microphone is paused" in w.get_by_role("alert").inner_text()
    page.wait_for_function("() => document.getElementById('w1').debug.statusText.startsWith('Paused')")
    assert state(page) == "live", "a hidden page pauses the microphone, not the conversation"
    # And comes back.
    page.evaluate(HIDE_PAGE, False)
    assert page.evaluate(mic_enabled) is True
    assert not w.get_by_role("alert").is_visible()
    page.wait_for_function("() => document.getElementById('w1').debug.statusText.startsWith('Listening')")
    w.get_by_role("button", name="Stop").click()
    wait_state(page, "ended")
    assert page.evaluate("() => document.getElementById('w1').debug.wakeLock") is False


def test_the_microphone_picker_moves_the_conversation_to_another_device(visit) -> None:
    page = visit().page
    w = widget(page)
    w.get_by_role("button", name="Start").click()
    wait_state(page, "live")
    page.wait_for_function("() => document.getElementById('w1').debug.micState === 'on'")
    picker = w.get_by_label("Microphone", exact=True)
    picker.wait_for()  # Chromium's fake devices are two microphones
    options = picker.evaluate("(s) => [...s.options].map((o) => o.value)")
    assert len(options) >= 2
    device = "() => document.getElementById('w1').current.capture.stream.getAudioTracks()[0].getSettings().deviceId"
    before = page.evaluate(device)
    other = next(value for value in options if value != before)
    picker.select_option(other)
    page.wait_for_function(f"() => ({device})() === {other!r}")
    sent = page.evaluate("() => document.getElementById('w1').debug.framesSent")
    page.wait_for_function("(n) => document.getElementById('w1').debug.framesSent > n + 5", arg=sent)
    w.get_by_role("button", name="Stop").click()
    wait_state(page, "ended")


@pytest.mark.parametrize("lang", ["en", "es"])
def test_every_control_has_a_name_a_screen_reader_can_say(visit, lang: str) -> None:
    page = visit(lang=lang).page
    unnamed = page.evaluate("""() => {
      const root = document.getElementById('w1').shadowRoot;
      const name = (el) => (el.getAttribute('aria-label') || [...(el.labels ?? [])].map((l) => l.textContent).join('')
        || (el.getAttribute('aria-labelledby') || '').split(' ').map((id) => root.getElementById(id)?.textContent ?? '')
          .join('') || el.textContent).trim();
      return [...root.querySelectorAll('button, input, select, a[href], [role=meter], [role=status], dialog, section')]
        .filter((el) => !name(el)).map((el) => el.outerHTML.slice(0, 80));
    }""")
    assert unnamed == []
    live = page.evaluate("() => document.getElementById('w1').shadowRoot.getElementById('transcript')"
                         ".getAttribute('aria-live')")
    assert live == "polite"
