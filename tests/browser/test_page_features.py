"""The page's issue-11 features in real headless Chromium, with Playwright standing in for the relay.

The page comes from a real relay (its files, its headers), but its WebSocket is routed to a scripted fake
(`page.route_web_socket`) that speaks docs/protocol.md: each test sends exactly the frames it is about —
streamed reply parts, caption alignment before each audio chunk, tool status, MCP approvals, queue and hand-off —
and checks what the user sees and what the page answers. The fake's audio is a synthetic voice with one tone
burst per word, silent at the spaces, timed exactly as its alignment says, so the captions can be checked against
when the page's player really plays each word. Any console error fails the test.
"""

from __future__ import annotations

import itertools
import json
import math
import struct
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from tests.browser.conftest import PageProblems

pytestmark = pytest.mark.timeout(120)

RATE = 16000
MS_PER_CHAR = 60  # the fake voice: each character lasts this long; a space is silence
CHUNK_MS = 250

READY = {
    "type": "ready", "conversation_id": "conv-fake", "avatar": None,
    "input_audio": {"encoding": "pcm_s16le", "sample_rate": RATE},
    "output_audio": {"encoding": "pcm_s16le", "sample_rate": RATE},
}


def debug(page: Any) -> dict[str, Any]:
    return page.evaluate("() => JSON.parse(JSON.stringify(window.__relayDebug))")  # type: ignore[no-any-return]


@dataclass
class FakeRelay:
    """The relay's side of the page's WebSocket, scripted by the test."""

    ready: dict[str, Any] | None = field(default_factory=lambda: dict(READY))
    received: list[dict[str, Any]] = field(default_factory=list)
    route: Any = None

    def handle(self, ws: Any) -> None:
        self.route = ws

        def on_message(message: str | bytes) -> None:
            if isinstance(message, bytes):
                return  # microphone frames
            frame = json.loads(message)
            self.received.append(frame)
            if frame["type"] == "start" and self.ready is not None:
                ws.send(json.dumps(self.ready))
            elif frame["type"] == "stop":
                ws.send(json.dumps({"type": "ended", "reason": "client_stop"}))
                ws.close()

        ws.on_message(on_message)

    def send(self, **frame: Any) -> None:
        self.route.send(json.dumps(frame))

    def sent_by_page(self, kind: str) -> list[dict[str, Any]]:
        return [f for f in self.received if f["type"] == kind]

    def wait_for(self, page: Any, kind: str, count: int = 1, timeout: float = 5.0) -> list[dict[str, Any]]:
        """Until the page has sent `count` frames of `kind`. Polls through Playwright (page.wait_for_timeout), which
        is what lets the sync API deliver the socket's messages to `handle`."""
        deadline = time.monotonic() + timeout
        while len(self.sent_by_page(kind)) < count:
            if time.monotonic() > deadline:
                pytest.fail(f"timed out after {timeout} s: the page sent {len(self.sent_by_page(kind))} {kind} frames")
            page.wait_for_timeout(20)
        return self.sent_by_page(kind)


@dataclass
class Word:
    text: str
    start_ms: int
    end_ms: int


def timed_words(text: str) -> list[Word]:
    """The fake voice's timing: MS_PER_CHAR per character, spaces silent."""
    words, t = [], 0
    for token in text.split(" "):
        words.append(Word(token, t, t + MS_PER_CHAR * len(token)))
        t += MS_PER_CHAR * (len(token) + 1)
    return words


def voice(words: list[Word], total_ms: int) -> bytes:
    """PCM16 at RATE: a 220 Hz tone during each word, silence elsewhere."""
    samples = [0] * (total_ms * RATE // 1000)
    for word in words:
        for i in range(word.start_ms * RATE // 1000, min(len(samples), word.end_ms * RATE // 1000)):
            samples[i] = int(9000 * math.sin(2 * math.pi * 220 * i / RATE))
    return struct.pack(f"<{len(samples)}h", *samples)


def chunks(text: str) -> Iterator[tuple[dict[str, Any], bytes]]:
    """(agent_alignment fields, audio) for each CHUNK_MS chunk of `text` spoken by the fake voice; a word cut by a
    chunk boundary continues in the next chunk's first word (`continues`)."""
    words = timed_words(text)
    total = words[-1].end_ms + MS_PER_CHAR
    audio = voice(words, total)
    for start in range(0, total, CHUNK_MS):
        end = min(total, start + CHUNK_MS)
        aligned = []
        for word in words:
            if word.end_ms <= start or word.start_ms >= end:
                continue
            # A character belongs to the chunk in which it starts.
            first_char = max(0, -(-(start - word.start_ms) // MS_PER_CHAR))
            last_char = min(len(word.text), -(-(end - word.start_ms) // MS_PER_CHAR))
            piece = word.text[first_char:last_char]
            if not piece:
                continue
            aligned.append({"text": piece, "start_ms": word.start_ms + first_char * MS_PER_CHAR,
                            "end_ms": word.start_ms + last_char * MS_PER_CHAR, "continues": first_char > 0})
        yield {"offset_ms": start, "words": aligned}, audio[start * RATE // 1000 * 2:end * RATE // 1000 * 2]


def speak(fake: FakeRelay, event_id: int, text: str, pause_after_chunk: int | None = None, pause_s: float = 0.0,
          stop_after_chunk: int | None = None) -> None:
    """Send the turn's audio the way the relay does: each chunk's `agent_alignment`, then the chunk."""
    for index, (alignment, audio) in enumerate(chunks(text)):
        if stop_after_chunk is not None and index > stop_after_chunk:
            return
        fake.send(type="agent_alignment", event_id=event_id, **alignment)
        fake.route.send(audio)
        if pause_after_chunk == index:
            time.sleep(pause_s)  # the network stalls: the player runs dry, the captions must wait with it


@pytest.fixture
def fake_page(relays: Callable[..., Any], browsers: Callable[[str], Any]) -> Iterator[Callable[..., Any]]:
    """`fake_page(fake, viewport=None)`: the relay's page whose WebSocket goes to `fake`; Start pressed and `ready`
    received (unless fake.ready is None)."""
    problems = PageProblems()
    contexts: list[Any] = []

    def open_(fake: FakeRelay, viewport: dict[str, int] | None = None, start: bool = True,
              before_start: Callable[[Any], None] | None = None) -> Any:
        relay = relays("none")
        context = browsers("silence").new_context(viewport=viewport or {"width": 1280, "height": 760})
        context.set_default_timeout(15_000)
        contexts.append(context)
        page = context.new_page()
        problems.watch(page)
        page.route_web_socket("**/ws", fake.handle)
        page.goto(relay.url + "/")
        if before_start is not None:
            before_start(page)
        if start:
            page.get_by_role("button", name="Start").click()
            if fake.ready is not None:
                page.wait_for_function("() => window.__relayDebug.conversationId === 'conv-fake'")
        return page

    yield open_
    for context in contexts:
        context.close()
    assert not problems.errors, "the page logged errors:\n" + "\n".join(problems.errors)


def caption(page: Any, event_id: int) -> Any:
    return page.locator(f'.entry.agent[data-event-id="{event_id}"]')


def wait_caption(page: Any, event_id: int, condition: str, timeout: float = 15_000) -> None:
    """Until the bubble of agent turn `event_id` (`b` in the JavaScript `condition`) exists and meets `condition`."""
    page.wait_for_function("() => { const b = __relayRoot.querySelector("
                           f"'.entry.agent[data-event-id=\"{event_id}\"]');"
                           f" return Boolean(b) && ({condition}); }}", timeout=timeout)


def words_revealed(page: Any, event_id: int) -> list[dict[str, Any]]:
    return [w for w in debug(page)["captionLog"] if w["eventId"] == event_id]


TEXT = "Hello there, this reply is spoken word by word."


def test_streamed_reply_grows_in_one_bubble_and_the_final_text_replaces_it(fake_page) -> None:
    fake = FakeRelay()
    page = fake_page(fake)
    page.get_by_label("Message to the agent").fill("Tell me something")
    page.get_by_role("button", name="Send").click()
    fake.wait_for(page, "text")

    fake.send(type="agent_response_part", event_id=3, part="start", text="")
    grown = []
    for delta in ["Sure", ", here", " is a streamed", " reply."]:
        fake.send(type="agent_response_part", event_id=3, part="delta", text=delta)
        grown.append((grown[-1] if grown else "") + delta)
        page.wait_for_function("([n, t]) => __relayRoot.querySelector(`.entry.agent[data-event-id=\"${n}\"] .text`)"
                               "?.textContent === t", arg=[3, grown[-1]])
    bubble = caption(page, 3)
    assert bubble.get_attribute("data-final") == "false" and "streaming" in (bubble.get_attribute("class") or "")
    fake.send(type="agent_response_part", event_id=3, part="stop", text="")
    fake.send(type="agent_response", event_id=3, text="Sure, here is a streamed reply!")
    wait_caption(page, 3, "b.dataset.final === 'true'")
    assert page.locator(".entry.agent").count() == 1, "the final text must replace the streamed one, not add a bubble"
    assert bubble.locator(".text").inner_text() == "Sure, here is a streamed reply!"
    # A text-only reply (no alignment, no audio) is never left dimmed: it shows in full.
    wait_caption(page, 3, "b.dataset.caption === 'spoken'")
    assert bubble.locator(".unspoken").inner_text() == ""


def test_captions_are_revealed_word_by_word_as_the_pages_player_plays_them(fake_page) -> None:
    fake = FakeRelay()
    page = fake_page(fake)
    fake.send(type="agent_response", event_id=1, text=TEXT)
    # The network stalls after the second chunk for longer than the audio sent so far: the player runs dry and
    # the words of the later chunks must wait for their audio, not for a clock started with the turn.
    speak(fake, 1, TEXT, pause_after_chunk=1, pause_s=1.2)
    n_words = len(TEXT.split())
    wait_caption(page, 1, f"Number(b.dataset.revealed) === {n_words}", timeout=20_000)
    state = debug(page)
    log = [w for w in state["captionLog"] if w["eventId"] == 1]
    assert [w["why"] for w in log] == ["speech"] * n_words, "every word is revealed by the speech clock"
    # A word cut by a chunk boundary is revealed when its first part plays (its rest may not have arrived yet).
    assert all(spoken.startswith(w["text"]) for spoken, w in zip(TEXT.split(), log, strict=True))
    assert caption(page, 1).locator(".spoken").inner_text() == TEXT
    chunk_list = [c for c in state["audioChunks"] if c["eventId"] == 1]
    assert len(chunk_list) == len(list(chunks(TEXT)))
    words = timed_words(TEXT)
    for word, entry in zip(words, log, strict=True):
        chunk = next(c for c in reversed(chunk_list) if c["offsetMs"] <= word.start_ms)
        heard = chunk["heardAt"] + word.start_ms - chunk["offsetMs"]
        assert entry["due"] == pytest.approx(heard, abs=0.5), "each word is due when its chunk plays it"
        # Never ahead of the voice, and never as late as the next word.
        assert entry["revealedAt"] >= heard - 1
        assert entry["revealedAt"] < heard + MS_PER_CHAR * (len(word.text) + 1)
    # The stall shows: the third chunk played well after the second one ended (the player ran dry).
    assert chunk_list[2]["heardAt"] > chunk_list[1]["heardAt"] + CHUNK_MS + 500
    assert page.locator("#subtitle").inner_text().endswith("word by word.")


def test_interruption_stops_the_reveal_where_speech_was_cut_and_the_correction_replaces_the_text(fake_page) -> None:
    fake = FakeRelay()
    page = fake_page(fake)
    text = "One two three four five six seven eight nine ten eleven twelve"
    fake.send(type="agent_response", event_id=2, text=text)
    speak(fake, 2, text)
    wait_caption(page, 2, "Number(b.dataset.revealed) >= 2")
    fake.send(type="interruption", event_id=3)
    wait_caption(page, 2, "b.dataset.caption === 'cut'")
    cut_at = int(caption(page, 2).get_attribute("data-revealed"))
    assert 2 <= cut_at < 12
    # Wait until the whole reply would have been said: nothing more is revealed, the voice is silent.
    chunk_list = debug(page)["audioChunks"]
    end = chunk_list[-1]["heardAt"] + CHUNK_MS
    page.wait_for_function("(end) => performance.now() > end + 100", arg=end)
    assert int(caption(page, 2).get_attribute("data-revealed")) == cut_at
    assert debug(page)["outputRms"] < 0.001
    assert caption(page, 2).locator(".badge").inner_text() == "interrupted"
    said = " ".join(text.split()[:cut_at])
    assert caption(page, 2).locator(".spoken").inner_text() == said

    fake.send(type="agent_response_correction", event_id=2, original=text, text="One two three")
    wait_caption(page, 2, "b.querySelector('.text').textContent === 'One two three'")
    assert caption(page, 2).locator(".unspoken").inner_text() == ""
    assert caption(page, 2).locator(".badge").inner_text() == "interrupted"
    # A correction alone (no interruption seen for it) marks its reply interrupted too.
    fake.send(type="agent_response", event_id=3, text="Another reply that was cut")
    fake.send(type="agent_response_correction", event_id=3, original="Another reply that was cut", text="Another")
    wait_caption(page, 3, "b.querySelector('.text').textContent === 'Another'")
    assert caption(page, 3).locator(".badge").inner_text() == "interrupted"


def test_without_alignment_the_text_shows_at_once_when_its_audio_plays(fake_page) -> None:
    fake = FakeRelay()
    page = fake_page(fake)
    fake.send(type="agent_response", event_id=4, text="No timing for these words.")
    for _, audio in chunks("No timing for these words."):
        fake.route.send(audio)
    wait_caption(page, 4, "b.dataset.caption === 'spoken'")
    assert {w["why"] for w in words_revealed(page, 4)} == {"no_alignment"}
    assert caption(page, 4).locator(".spoken").inner_text() == "No timing for these words."


LIVEKIT_STUB = """
export class Room {
  constructor() { this.remoteParticipants = new Map(); this.canPlaybackAudio = true; }
  on() { return this; }
  async connect() {}
  async disconnect() {}
  async startAudio() {}
}
export const RoomEvent = {};
export const Track = { Kind: { Video: 'video', Audio: 'audio' } };
"""


def stub_livekit(page: Any) -> None:
    """A LiveKit room that connects and shows nothing: the avatar 'plays' the audio, the page does not."""
    config = page.evaluate("async () => (await fetch('client-config.json')).json()")
    page.route(config["livekit_client_url"], lambda route: route.fulfill(
        status=200, body=LIVEKIT_STUB, headers={"content-type": "text/javascript", "access-control-allow-origin": "*"}))


REAL_AVATAR = {**READY, "avatar": {"provider": "liveavatar", "session_id": "s-1", "livekit_url": "wss://127.0.0.1:9/",
                                   "access_token": "t", "simulated": False}}


def test_with_a_real_avatar_the_captions_start_when_it_starts_speaking(fake_page) -> None:
    fake = FakeRelay(ready=dict(REAL_AVATAR))
    page = fake_page(fake, before_start=stub_livekit)
    text = "Spoken by the avatar itself"
    fake.send(type="agent_response", event_id=5, text=text)
    for alignment, _audio in chunks(text):
        fake.send(type="agent_alignment", event_id=5, **alignment)  # no binary audio: the avatar has it
    # The avatar has the audio but has not started: nothing is revealed, however long we wait for it.
    caption(page, 5).wait_for()
    time_before = page.evaluate("() => performance.now()")
    page.wait_for_function("(t) => performance.now() > t + 2000", arg=time_before)
    assert caption(page, 5).get_attribute("data-revealed") == "0"
    fake.send(type="avatar_state", speaking=True, event_id=5)
    wait_caption(page, 5, "b.dataset.caption === 'spoken'")
    log = words_revealed(page, 5)
    start = log[0]["revealedAt"]
    for word, entry in zip(timed_words(text), log, strict=True):
        assert entry["revealedAt"] - start == pytest.approx(word.start_ms, abs=MS_PER_CHAR)


def test_with_a_real_avatar_that_never_says_it_started_the_text_still_shows(fake_page) -> None:
    fake = FakeRelay(ready=dict(REAL_AVATAR))
    page = fake_page(fake, before_start=stub_livekit)
    text = "Nobody said when this started"
    fake.send(type="agent_response", event_id=8, text=text)
    for alignment, _audio in chunks(text):
        fake.send(type="agent_alignment", event_id=8, **alignment)
    wait_caption(page, 8, "b.dataset.caption === 'spoken'", timeout=20_000)
    assert {w["why"] for w in words_revealed(page, 8)} == {"no_anchor"}
    assert caption(page, 8).locator(".spoken").inner_text() == text


def test_heygen_text_mode_spreads_the_words_over_the_announced_duration(fake_page) -> None:
    fake = FakeRelay(ready={**REAL_AVATAR, "avatar": {**REAL_AVATAR["avatar"], "provider": "heygen"}})
    page = fake_page(fake, before_start=stub_livekit)
    text = "Five words spread over time"
    fake.send(type="agent_response", event_id=6, text=text)
    fake.send(type="avatar_speaking", event_id=6, text=text, duration_ms=1500)
    wait_caption(page, 6, "b.dataset.caption === 'spoken'")
    log = words_revealed(page, 6)
    assert len(log) == 5 and {w["why"] for w in log} == {"speech"}
    steps = [b["due"] - a["due"] for a, b in itertools.pairwise(log)]
    assert steps == [pytest.approx(300, abs=1)] * 4


def test_tool_status_chips_follow_the_server_tool(fake_page) -> None:
    fake = FakeRelay()
    page = fake_page(fake)
    fake.send(type="tool_status", tool_call_id="t1", tool_name="lookup_order", tool_type="webhook", state="running")
    chip = page.locator('#activity .chip[data-key="tool:t1"]')
    chip.wait_for()
    assert chip.inner_text() == "Looking up your order…" and chip.get_attribute("data-state") == "running"
    fake.send(type="tool_status", tool_call_id="t1", tool_name="lookup_order", tool_type="webhook", state="done")
    page.locator('#activity .chip[data-key="tool:t1"][data-state="done"]').wait_for()
    assert chip.inner_text() == "Order looked up"
    fake.send(type="tool_status", tool_call_id="t2", tool_name="end_call", tool_type="system", state="failed")
    page.locator('#activity .chip[data-key="tool:t2"][data-state="failed"]').wait_for()
    assert page.locator(".entry.system.tool", has_text="end_call: failed").count() == 1


def mcp_call(state: str, **extra: Any) -> dict[str, Any]:
    return {"type": "mcp_tool_call", "tool_call_id": "m1", "service_id": "weather-mcp", "tool_name": "get_weather",
            "tool_description": "The weather in a city", "parameters": {"city": "Paris"}, "state": state,
            "approval_timeout_secs": None, "error_message": None, **extra}


def test_mcp_approval_dialog_answers_from_the_keyboard(fake_page) -> None:
    fake = FakeRelay()
    page = fake_page(fake)
    fake.send(**mcp_call("loading"))
    fake.send(**mcp_call("awaiting_approval", approval_timeout_secs=30))
    dialog = page.get_by_role("dialog", name="Allow the agent to use a tool?")
    dialog.wait_for()
    assert "get_weather" in dialog.inner_text() and "Paris" in dialog.inner_text()
    countdown = page.locator("#approval-countdown")
    page.wait_for_function("(el) => /^(29|30) s left to answer$/.test(el.textContent)", arg=countdown.element_handle())
    # Focus starts on the safer answer; Tab reaches Approve; Enter answers.
    assert page.evaluate("() => __relayRoot.activeElement?.id") == "approval-deny"
    page.keyboard.press("Tab")
    assert page.evaluate("() => __relayRoot.activeElement?.id") == "approval-approve"
    page.keyboard.press("Enter")
    fake.wait_for(page, "mcp_approval")
    assert fake.sent_by_page("mcp_approval") == [{"type": "mcp_approval", "tool_call_id": "m1", "approved": True}]
    dialog.wait_for(state="hidden")
    fake.send(**mcp_call("success"))
    page.locator('#activity .chip[data-key="tool:m1"][data-state="done"]').wait_for()

    # Escape is a "no".
    fake.send(**{**mcp_call("awaiting_approval", approval_timeout_secs=30), "tool_call_id": "m2"})
    dialog.wait_for()
    page.keyboard.press("Escape")
    fake.wait_for(page, "mcp_approval", 2)
    assert fake.sent_by_page("mcp_approval")[1] == {"type": "mcp_approval", "tool_call_id": "m2", "approved": False}
    dialog.wait_for(state="hidden")


def test_mcp_approval_dialog_closes_when_the_service_times_out(fake_page) -> None:
    fake = FakeRelay()
    page = fake_page(fake)
    fake.send(**mcp_call("awaiting_approval", approval_timeout_secs=1))
    dialog = page.get_by_role("dialog", name="Allow the agent to use a tool?")
    dialog.wait_for()
    dialog.wait_for(state="hidden", timeout=5000)  # the countdown ran out
    assert fake.sent_by_page("mcp_approval") == []
    assert debug(page)["approvals"] == [{"tool_call_id": "m1", "approved": None, "how": "expired", "sent": False}]
    fake.send(**mcp_call("failure", error_message="approval timed out"))
    page.locator('#activity .chip[data-key="tool:m1"][data-state="failed"]', has_text="approval timed out").wait_for()


def test_queue_state_shows_before_ready(fake_page) -> None:
    fake = FakeRelay(ready=None)
    page = fake_page(fake)
    fake.wait_for(page, "start")
    fake.send(type="queue_status", status="waiting")
    page.wait_for_function("() => __relayRoot.getElementById('status').dataset.state === 'queued'")
    assert "Waiting in line" in page.locator("#status").inner_text()
    assert page.locator('#activity .chip[data-kind="queue"]').inner_text() == "Waiting in line for the agent…"
    fake.send(type="queue_status", status="admitted")
    page.wait_for_function("() => window.__relayDebug.queueStatus === 'admitted'")
    fake.send(**READY)
    page.wait_for_function("() => window.__relayDebug.status === 'listening'")


def test_queue_time_out_is_said_in_plain_words(fake_page) -> None:
    fake = FakeRelay(ready=None)
    page = fake_page(fake)
    fake.wait_for(page, "start")
    fake.send(type="queue_status", status="timed_out")
    fake.send(type="error", code="agent_busy", message="The agent's queue timed out")
    fake.send(type="ended", reason="agent_busy")
    page.wait_for_function("() => window.__relayDebug.endedReason === 'agent_busy'")
    assert "busy" in page.get_by_role("alert").inner_text()
    assert page.locator("#status").inner_text().startswith("Conversation ended: the agent is busy")


def test_a_human_agent_taking_over_is_shown(fake_page) -> None:
    fake = FakeRelay()
    page = fake_page(fake)
    fake.send(type="human_agent", connected=True)
    page.locator('#activity .chip[data-kind="human"]').wait_for()
    assert page.locator(".entry.system.human").inner_text().endswith("A person has taken over the conversation.")
    fake.send(type="agent_typing", typing=True)
    page.locator('#activity .chip[data-kind="typing"]', has_text="Typing…").wait_for()
    fake.send(type="agent_response", event_id=7, text="Hi, I'm Sam from support.")
    caption(page, 7).wait_for()
    assert caption(page, 7).locator(".who").inner_text().lower().startswith("human agent")
    fake.send(type="agent_typing", typing=False)
    page.locator('#activity .chip[data-kind="typing"]').wait_for(state="detached")
    fake.send(type="human_agent", connected=False)
    page.locator('#activity .chip[data-kind="human"]').wait_for(state="detached")


def test_vad_score_and_context_usage_reach_the_embedding_page(fake_page) -> None:
    fake = FakeRelay()

    def listen(page: Any) -> None:
        page.evaluate("""() => {
            window.__heard = [];
            for (const type of ['vad_score', 'context_usage', 'rich_content']) {
                window.addEventListener(`relay:${type}`, (e) => window.__heard.push(e.detail));
            }
        }""")

    page = fake_page(fake, before_start=listen)
    fake.send(type="vad_score", score=0.75)
    fake.send(type="context_usage", used_tokens=1200, max_tokens=8000)
    fake.send(type="rich_content", rich_content_id="r1", content={"kind": "card"})
    page.wait_for_function("() => window.__heard.length === 3")
    heard = page.evaluate("() => window.__heard")
    assert heard[0] == {"type": "vad_score", "score": 0.75}
    assert heard[1]["used_tokens"] == 1200 and heard[2]["rich_content_id"] == "r1"
    state = debug(page)
    assert state["vadScore"] == 0.75 and state["contextUsage"]["max_tokens"] == 8000


def test_errors_are_shown_in_plain_words(fake_page) -> None:
    fake = FakeRelay()
    page = fake_page(fake)
    fake.send(type="error", code="unauthorized", message="overrides.agent.prompt is not allowed by this relay")
    alert = page.get_by_role("alert")
    alert.wait_for()
    assert alert.inner_text() == "Problem: not authorized — overrides.agent.prompt is not allowed by this relay."


def test_every_feature_fits_a_phone_screen_and_the_keyboard(fake_page) -> None:
    fake = FakeRelay()
    page = fake_page(fake, viewport={"width": 390, "height": 844})
    fake.send(type="human_agent", connected=True)
    fake.send(type="tool_status", tool_call_id="t1", tool_name="a_tool_with_a_rather_long_name_indeed", state="running")
    fake.send(type="agent_response", event_id=1, text="A long reply " * 30)
    page.locator(".entry.agent").wait_for()
    fake.send(**mcp_call("awaiting_approval", approval_timeout_secs=30,
                         parameters={"city": "Llanfairpwllgwyngyllgogerychwyrndrobwllllantysiliogogogoch" * 2}))
    dialog = page.get_by_role("dialog")
    dialog.wait_for()
    assert page.evaluate("() => document.documentElement.scrollWidth") <= 390
    for name in ("Approve", "Deny"):
        box = page.get_by_role("button", name=name).bounding_box()
        assert box is not None and box["height"] >= 44 and box["x"] >= 0 and box["x"] + box["width"] <= 390
        assert box["y"] + box["height"] <= 844
    page.keyboard.press("Escape")
    dialog.wait_for(state="hidden")
    assert page.evaluate("() => document.documentElement.scrollWidth") <= 390
    # Screen readers: captions and activity are polite live regions; the stage's subtitle repeats the captions.
    assert page.locator("#transcript").get_attribute("aria-live") == "polite"
    assert page.locator("#activity").get_attribute("aria-live") == "polite"
    assert page.locator("#subtitle").get_attribute("aria-hidden") == "true"
    for name in ("Stop", "Send"):
        box = page.get_by_role("button", name=name).bounding_box()
        assert box is not None and box["x"] + box["width"] <= 390


def test_tool_names_are_data_even_when_they_are_object_keys(fake_page) -> None:
    """I1 of the security review: tools named like Object.prototype's members (`toString`, `constructor`) are shown
    as names, and their MCP approval dialog opens."""
    fake = FakeRelay()
    page = fake_page(fake)
    fake.send(type="tool_status", tool_call_id="t1", tool_name="constructor", tool_type="webhook", state="running")
    chip = page.locator('#activity .chip[data-key="tool:t1"]')
    chip.wait_for()
    assert chip.inner_text() == "Using constructor…"
    fake.send(**{**mcp_call("awaiting_approval", approval_timeout_secs=30), "tool_name": "toString"})
    dialog = page.get_by_role("dialog", name="Allow the agent to use a tool?")
    dialog.wait_for()
    assert "toString" in dialog.inner_text()


def test_a_fragment_token_leaves_the_address_bar_and_still_starts_the_conversation(fake_page) -> None:
    """L3 of the security review: `#token=…` is taken out of the URL (and its history entry) once read; the page
    still sends it in `start`, and keeps the fragment's other parameters."""
    fake = FakeRelay()
    page = fake_page(fake, before_start=lambda page: page.evaluate("() => { location.hash = '#token=tok-1&lang=fr'; }"))
    assert fake.sent_by_page("start")[0]["token"] == "tok-1"
    assert page.evaluate("() => location.hash") == "#lang=fr"
