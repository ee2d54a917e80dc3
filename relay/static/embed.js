// /embed.js: the one script a website adds to put the avatar on its pages (docs/embedding.md).
//
//   <script type="module" src="https://relay.example/embed.js"></script>
//   <avatar-relay token-url="/avatar-token"></avatar-relay>
//
// The relay serves this file at /embed.js (not under /static/): its import below, and everything that module loads
// (the other modules, the stylesheet, the audio worklet, livekit-client, client-config.json, the WebSocket), resolve
// against the relay's origin, so a host page's strict CSP needs only that origin in script-src, connect-src,
// media-src and worker-src. Types: /static/embed.d.ts.

export { AvatarRelayElement, STATES } from './static/app.js';
