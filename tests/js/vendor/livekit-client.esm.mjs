// Stands in for the relay's own copy of livekit-client at its path (`vendor/livekit-client.esm.mjs`, relative to
// the relay): the fake room of ../fake-livekit.mjs.
export * from '../fake-livekit.mjs';
