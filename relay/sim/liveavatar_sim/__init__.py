"""A simulator of LiveAvatar (LITE mode): the REST API and the `ws_url` audio websocket.

Faithful to the public LiveAvatar sources (docs.liveavatar.com API reference and `/docs/lite-mode/events`;
heygen-com/liveavatar-web-sdk; heygen-com/liveavatar-agent-skills `lite-mode-guide.md`): the
`{code: 1000, data, message}` envelope, 201 on start,
422 `detail` lists, 401 `{"error": "bad api key"}`, no credits as HTTP 403 / code 4033, the LITE websocket's
events, the 5-minute idle timeout, the one-minute sandbox. It imports nothing from `relay` (so a protocol bug
cannot hide in both sides) and must never do heavy per-frame work or log per frame: benchmarks run hundreds of
sessions through it. The LITE websocket's behaviour is `relay.sim.lite_socket` (HeyGen's simulated
`realtime_endpoint` speaks the same protocol). Modules: `sessions` (the catalogue, faults, sessions and their
state), `checks` (what every request goes through), `rest` (the REST API), `app` (the app, the LITE socket route
and the control endpoints).

Undocumented upstream behaviour, chosen here: the concurrency limit answers HTTP 429 with code 4029 and
"Concurrent session limit reached"; a sandbox session with another avatar answers 400 / 4000; stopping a
session that already ended answers 200 (stop is idempotent); any UUID is accepted as an avatar id by
`sessions/token` (only `GET /v1/avatars/{id}` knows the catalogue), anything else answers 422 as the real schema
(`format: uuid`) does; a `max_session_duration` above the tier's limit answers 422 naming the limit (the real
answer is not documented).

Control endpoints:
- `GET /_sim/ledger`: `{"sessions": {id: {...}}, "requests": {endpoint: n}, "refusals": [...]}`. Per session:
  `created`, `started`, `stopped`, `expired` (time.monotonic() or null), `stop_reason`, `end_reason`,
  `is_sandbox`, `avatar_id`, `max_session_duration`, `rest_keep_alives`, `ws_connects`, `stop_calls` (stop requests
  answered for it), and `lite` (see
  `LiteLedger.to_json`: `audio_seconds`, `chunks`, per event_id `{chunks, audio_seconds, first_chunk_at, ended_at}`,
  `interrupts` (event ids), `chunks_after_interrupt`, `keep_alives`, `speak_ends`, `dropped_before_connected`,
  `listening`: "start"/"stop" for each `agent.start_listening`/`agent.stop_listening`, in order).
- `GET /_sim/audio/<session_id>/<event_id>`: the raw PCM16 24 kHz received for that event id (only when the
  `record_audio` fault is on).
- `POST /_sim/connect`: send the withheld `session.state_updated: connected` on every open socket (the
  `withhold_connected` fault); answers `{"released": n}`.
- `POST /_sim/reset`: end every socket, clear ledger and faults.
- `POST /_sim/faults` (JSON, merged into the current faults; nested dicts `latency_ms` and `fail` merge by key; an
  unknown key -> 400 naming the known ones, nothing merged):
  - `latency_ms`: `{endpoint: ms}` added before answering. Endpoints: `token`, `start`, `stop`, `keep_alive`,
    `list_sessions`, `avatars`, `ws_connect`. A slow stop is `{"latency_ms": {"stop": 3000}}`.
  - `fail`: `{endpoint: {"status": int, "code": int, "message": str, "retry_after": float, "times": int,
    "body": {...}}}`: answer that instead (envelope `{"code", "data": null, "message"}` unless `body` is given;
    `Retry-After` header if `retry_after`; only the next `times` requests if given). For `ws_connect` the
    handshake is refused with `status`.
  - `invalid_keys`: list of API keys answered with 401 `{"error": "bad api key"}` (a missing key always is).
  - `no_credits`: true -> `sessions/token` answers 403 `{"code": 4033, "message": "Insufficient credits"}`
    (sandbox sessions are free and still succeed).
  - `concurrency_limit`: int or null: `sessions/token` refuses when this many sessions are active.
  - `idle_timeout_s` (default 300): a started session with no activity (websocket command, REST or ws
    keep-alive) for this long expires (`end_reason` IDLE_TIMEOUT) and its socket is closed.
  - `sandbox_duration_s` (default 60): a sandbox session then ends as MAX_DURATION_REACHED; the start answer's
    `max_session_duration` is the length that applies (the sandbox's, when shorter than the one asked: unverified
    upstream, whose schema has the field). `avatar-relay sim --session-limit liveavatar=SECONDS` sets it.
  - `close_ws_after_ms`: close every new websocket this long after it connects (the session stays active).
  - `suppress_connected`: true -> never send `session.state_updated: connected`.
  - `connected_delay_ms`: send `connected` this late; commands before it are dropped silently (counted).
  - `withhold_connected`: true -> new sockets stay `connecting` (commands dropped and counted, as above) until
    `POST /_sim/connect`; never asking is an avatar that never connects.
  - `livekit_url` (default null: `wss://livekit.simulated.invalid`, which the relay knows for a simulator and so
    also sends the agent's voice to the page): another URL makes the relay treat the session as a real avatar
    (tests of what a real deployment's browser hears; nothing is served there).
  - `render_delay_ms` (default 300): the avatar's rendering and WebRTC delay: `agent.speak_ended` comes this long
    after the utterance's audio duration (a relay that stops on the byte count alone cuts the last words; 0: the
    byte count exactly).
  - `after_commit` (default "drop"): audio under an event id after its `agent.speak_end` is dropped and counted
    (`chunks_after_commit`); "play": it extends the utterance. (Unverified upstream; the relay never sends any.)
  - Ledger `lite` also counts `underruns` (a chunk that came after the avatar had played everything before it: a
    stutter, in real time from the utterance's first chunk) and `repeated_speak_ends`.
  - `tier_max_session_duration_s` (default 7200): the subscription tier's longest session; `sessions/token`
    refuses a longer `max_session_duration` with 422.
  - `drop_ws_after_audio_bytes` (null): once a LITE socket has received this many bytes of audio (PCM16 24 kHz),
    close it with 1011, mid-reply; the session stays active (and billed) until stopped. Read at each chunk.
  - `unreported_max_duration_s` (null): every session started from now ends this long after its start
    (MAX_DURATION_REACHED) while the start answer says the length asked: a plan's limit the relay cannot know.
  - `record_audio`: true -> keep the received audio for `/_sim/audio/...` (tests only; costs memory).
"""

from relay.sim.liveavatar_sim.app import create_app
from relay.sim.liveavatar_sim.sessions import AVATARS, DEFAULT_FAULTS, SANDBOX_AVATAR_ID, SIMULATED_LIVEKIT_URL

__all__ = ["AVATARS", "DEFAULT_FAULTS", "SANDBOX_AVATAR_ID", "SIMULATED_LIVEKIT_URL", "create_app"]
