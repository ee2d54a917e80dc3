// A stand-in for livekit-client's ES module (loaded by relay/static/livekit.js from client-config.json's URL): a Room
// that connects at once and records whether it is connected. The test reads the rooms from
// globalThis.fakeLivekitRooms.

export const RoomEvent = {
  TrackSubscribed: 'trackSubscribed', TrackUnsubscribed: 'trackUnsubscribed',
  AudioPlaybackStatusChanged: 'audioPlaybackStatusChanged', Disconnected: 'disconnected',
  Reconnecting: 'reconnecting', Reconnected: 'reconnected',
};
export const Track = { Kind: { Video: 'video', Audio: 'audio' } };

export class Room {
  constructor() {
    this.handlers = new Map();
    this.connected = false;
    this.canPlaybackAudio = true;
    this.remoteParticipants = new Map();
    (globalThis.fakeLivekitRooms ??= []).push(this);
  }

  on(event, handler) {
    this.handlers.set(event, handler);
    return this;
  }

  async connect(url, token) {
    this.url = url;
    this.token = token;
    this.connected = true;
  }

  async disconnect() {
    this.connected = false;
  }

  async startAudio() {}

  /** The test plays LiveKit: fire `event` at the page's handler. */
  emit(event, ...args) {
    this.handlers.get(event)?.(...args);
  }
}
