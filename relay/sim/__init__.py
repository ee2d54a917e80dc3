"""Simulators of the upstream services (ElevenLabs ConvAI, HeyGen Streaming v1, LiveAvatar).

Each is an ASGI app that hypercorn can serve alone; `relay.sim.runner` serves them together. `elevenlabs_sim` and
`liveavatar_sim` are packages split by concern, `heygen_sim` one module; `lite_socket` is the LITE audio socket's
server side (LiveAvatar's and HeyGen's), `faults` the forced failures the avatar simulators share. They import
nothing from the relay itself (but the HTTP keep-alive guard every served app installs, `relay.net.http_keepalive`),
so a bug in the relay's protocol code cannot hide in both sides at once.
"""
