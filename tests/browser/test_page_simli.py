"""The page with Simli: demo mode on the Simli simulator (the Interrupt button reaches Simli as `SKIP`), and which
participant of an avatar's LiveKit room the page shows, per provider (with a stand-in livekit-client module)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.browser.conftest import wait_until
from tests.browser.test_page import (
    debug,
    interrupt_and_wait_for_silence,
    slow_speech,
    start,
    wait_for_agent_speaking,
)

pytestmark = pytest.mark.timeout(120)

# A stand-in for livekit-client: its room "subscribes" one video track from each of three participants when joined,
# and records which of them the page attached.
FAKE_LIVEKIT = """
export const RoomEvent = { TrackSubscribed: 'subscribed', TrackUnsubscribed: 'unsubscribed',
                           AudioPlaybackStatusChanged: 'playback', Disconnected: 'disconnected' };
export const Track = { Kind: { Video: 'video', Audio: 'audio' } };
export class Room {
  constructor() { this.handlers = {}; this.remoteParticipants = new Map(); this.canPlaybackAudio = true; }
  on(event, handler) { this.handlers[event] = handler; return this; }
  async connect() {
    for (const identity of ['heygen', 'simli-avatar', 'someone-else']) {
      const track = { kind: 'video', attach: () => window.__attached.push(identity), detach: () => {} };
      this.handlers.subscribed(track, {}, { identity });
    }
  }
  async disconnect() {}
}
"""

# As the page does: the avatar's participant comes from client-config.json (the relay's provider table).
JOIN = """async (provider) => {
  window.__attached = [];
  const config = await (await fetch('client-config.json')).json();
  const { joinAvatarRoom } = await import('./static/livekit.js');
  await joinAvatarRoom({
    moduleUrl: './fake-livekit.mjs', avatar: { provider, livekit_url: 'wss://room.example', access_token: 't' },
    participant: config.avatars[provider].participant,
    video: document.createElement('video'), audio: document.createElement('audio'),
    onAudioBlocked: () => {}, onVideo: () => {}, onDisconnected: () => {},
  });
  return window.__attached;
}"""


@pytest.mark.parametrize(("provider", "shown"), [
    ("simli", ["heygen", "simli-avatar", "someone-else"]),  # Simli's room: the avatar and this viewer only
    ("heygen", ["heygen", "simli-avatar", "someone-else"]),
    ("liveavatar", ["heygen"]),  # LiveAvatar's room also holds its agent: only `heygen` is the avatar
])
def test_the_page_shows_the_avatars_participant_of_each_providers_room(relays, open_page, provider: str,
                                                                        shown: list[str]) -> None:
    relay = relays("simli")
    page = open_page(relay, mic="silence")
    page.route(relay.url + "/fake-livekit.mjs",
               lambda route: route.fulfill(status=200, content_type="text/javascript", body=FAKE_LIVEKIT))
    assert page.evaluate(JOIN, provider) == shown


def test_demo_mode_on_simli_shows_the_simulated_face_and_the_interrupt_reaches_simli(relays, open_page) -> None:
    relay = relays("simli")
    with slow_speech(relay):
        page = open_page(relay, mic="silence")
        info = start(page)
        assert info["avatarMode"] == "simulated"
        assert page.locator("#sim-face").is_visible()
        wait_for_agent_speaking(page)
        interrupt_and_wait_for_silence(page)
    assert "interrupt" in debug(page)["sent"]

    def skipped() -> Any:
        session = relay.ledger("simli")["sessions"].get(info["avatarSessionId"])
        return session is not None and session["skips"] >= 1

    wait_until(skipped, 5, "Simli's ledger shows no SKIP for the session")
