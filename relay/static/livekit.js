// Joining the real avatar's LiveKit room and showing its video and audio.
//
// livekit-client is loaded on demand from the URL the server configures (`client-config.json`), so the page
// carries no copy of it and a deployment can self-host it. Which participant is the avatar comes from the same
// configuration (`avatars[provider].participant`, from the relay's provider table): a name (LiveAvatar's avatar
// joins as `heygen`), or null when the avatar is the room's only other participant. This module never sends
// anything to the relay and names no provider.

/**
 * Join the avatar's room.
 * @param {object} options
 * @param {string} options.moduleUrl where livekit-client's ES module is (absolute, or relative to the page)
 * @param {string|null} options.integrity its Subresource Integrity (`sha384-…`), checked before it runs (an operator's
 *   RELAY_LIVEKIT_CLIENT_URL; null for the relay's own copy, which the relay checks at start-up)
 * @param {{provider: string, livekit_url: string, access_token: string}} options.avatar `ready.avatar`
 * @param {string | null} options.participant the avatar's identity in the room (null: any remote participant)
 * @param {HTMLVideoElement} options.video
 * @param {HTMLAudioElement} options.audio
 * @param {(blocked: boolean) => void} options.onAudioBlocked the browser refused to play sound without a gesture
 * @param {() => void} options.onVideo the avatar's video is attached
 * @param {(reason: string) => void} options.onDisconnected the room went away
 * @param {() => void} [options.onReconnecting] the room lost its connection and LiveKit is getting it back
 * @param {() => void} [options.onReconnected] it got it back
 * @returns {Promise<{leave: () => Promise<void>, startAudio: () => Promise<void>}>}
 */
export async function joinAvatarRoom({
  moduleUrl, integrity = null, avatar, participant = null, video, audio, onAudioBlocked, onVideo, onDisconnected,
  onReconnecting = () => {}, onReconnected = () => {},
}) {
  const { Room, RoomEvent, Track } = await loadModule(new URL(moduleUrl, document.baseURI).href, integrity);
  const room = new Room({ adaptiveStream: true, dynacast: true });
  const isAvatar = (remote) => participant === null || remote.identity === participant;
  let leaving = false;

  room.on(RoomEvent.TrackSubscribed, (track, _publication, participant) => {
    if (!isAvatar(participant)) return;
    if (track.kind === Track.Kind.Video) {
      track.attach(video);
      onVideo();
    } else if (track.kind === Track.Kind.Audio) {
      track.attach(audio);
    }
  });
  room.on(RoomEvent.TrackUnsubscribed, (track) => track.detach());
  room.on(RoomEvent.AudioPlaybackStatusChanged, () => onAudioBlocked(!room.canPlaybackAudio));
  room.on(RoomEvent.Reconnecting, () => onReconnecting());
  room.on(RoomEvent.Reconnected, () => onReconnected());
  room.on(RoomEvent.Disconnected, (reason) => {
    if (!leaving) onDisconnected(String(reason ?? 'disconnected'));
  });

  await room.connect(avatar.livekit_url, avatar.access_token, { autoSubscribe: true });
  if (!room.canPlaybackAudio) onAudioBlocked(true);

  return {
    async leave() {
      leaving = true;
      for (const participant of room.remoteParticipants.values()) {
        for (const publication of participant.trackPublications.values()) publication.track?.detach();
      }
      await room.disconnect();
    },
    async startAudio() {
      await room.startAudio();
      onAudioBlocked(!room.canPlaybackAudio);
    },
  };
}

/**
 * Import livekit-client's ES module. With an integrity, the file is fetched with it (the browser refuses any other
 * content) and run from a blob: URL, since import() itself takes no integrity; the module must be self-contained
 * (the npm build is). Without one, it is imported directly.
 */
export async function loadModule(url, integrity) {
  if (!integrity) return import(url);
  const response = await fetch(url, { integrity, mode: 'cors', credentials: 'omit' });
  if (!response.ok) throw new Error(`livekit-client: HTTP ${response.status}`);
  const blob = new Blob([await response.text()], { type: 'text/javascript' });
  const blobUrl = URL.createObjectURL(blob);
  try {
    return await import(blobUrl);
  } finally {
    URL.revokeObjectURL(blobUrl);
  }
}
