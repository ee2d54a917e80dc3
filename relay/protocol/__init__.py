"""Wire formats, sans-I/O: each module turns bytes or JSON from one peer into typed events and typed intents into
the exact bytes that peer expects, with plain functions and frozen dataclasses.

`browser` (our protocol), `elevenlabs` (the agent), `heygen` and `liveavatar` (the avatar REST APIs), `lite` (the
LITE audio socket), `audio` (formats and resampling: numpy/soxr), `http` (shared HTTP details), `vocab` (the
`Literal` vocabularies). No module here imports trio, httpx2, websockets, quart or hypercorn, nor any relay module
outside this package except `relay._util` and `relay.config` (tests/test_layering.py). Import the module you
need: this package loads none of them (so `relay.protocol.browser` loads no provider's wire module).
"""
