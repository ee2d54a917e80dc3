"""Does the browser's echo cancellation see the agent's voice as the widget plays it? (`python -m bench.echo_path`;
docs/decisions.md "Echo: the playback path".)

Headless Chromium's fake microphone plays a spoken clip while the page plays the very same clip, and the microphone's
level is measured (mean RMS after 3 s, when an echo canceller has converged) with echoCancellation off and on, for
each way a page can play the agent's voice: the Web Audio graph straight to the speakers (the widget's PcmPlayer), a
MediaStreamDestination played by an <audio> element, and a local WebRTC peer-connection loopback (the path an
echo canceller is known to reference in Chromium). A canceller that sees the playback takes the microphone's level
far down when it is on; the same level in every row means it saw none of them. Needs chromium, espeak-ng, sox.
"""

from __future__ import annotations

import functools
import http.server
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from playwright.sync_api import sync_playwright

PAGE = '<!doctype html><meta charset=utf-8><script type=module src="echo.js"></script>'
SCRIPT = r"""
// Plays the clip the fake microphone plays and measures the microphone's level, echo cancellation off or on.
window.measure = async ({ aec, play, seconds = 8, viaElement = false }) => {
  const stream = await navigator.mediaDevices.getUserMedia({
    audio: { echoCancellation: aec, noiseSuppression: false, autoGainControl: false },
  });
  const ctx = new AudioContext();
  await ctx.resume();
  const mic = ctx.createMediaStreamSource(stream);
  const an = ctx.createAnalyser(); an.fftSize = 2048; mic.connect(an);
  let src = null; let el = null;
  if (play) {
    const buf = await ctx.decodeAudioData(await (await fetch('loop.wav')).arrayBuffer());
    if (viaElement === 'rtc') {
      // The agent's audio through a local WebRTC loopback (pc1 -> pc2), played by an <audio> element.
      const dest = ctx.createMediaStreamDestination();
      src = ctx.createBufferSource(); src.buffer = buf; src.connect(dest); src.start();
      const pc1 = new RTCPeerConnection(); const pc2 = new RTCPeerConnection();
      pc1.onicecandidate = (e) => e.candidate && pc2.addIceCandidate(e.candidate);
      pc2.onicecandidate = (e) => e.candidate && pc1.addIceCandidate(e.candidate);
      const got = new Promise((r) => { pc2.ontrack = (e) => r(e.streams[0] ?? new MediaStream([e.track])); });
      pc1.addTrack(dest.stream.getAudioTracks()[0], dest.stream);
      await pc1.setLocalDescription(); await pc2.setRemoteDescription(pc1.localDescription);
      await pc2.setLocalDescription(); await pc1.setRemoteDescription(pc2.localDescription);
      el = new Audio(); el.srcObject = await got; await el.play();
    } else if (viaElement) {
      // The agent's audio through a MediaStreamDestination played by an <audio> element.
      const dest = ctx.createMediaStreamDestination();
      src = ctx.createBufferSource(); src.buffer = buf; src.connect(dest); src.start();
      el = new Audio(); el.srcObject = dest.stream; await el.play();
    } else {
      src = ctx.createBufferSource(); src.buffer = buf; src.connect(ctx.destination); src.start();
    }
  }
  const data = new Float32Array(an.fftSize);
  const levels = [];
  const t0 = performance.now();
  await new Promise((resolve) => {
    const tick = () => {
      an.getFloatTimeDomainData(data);
      let s = 0; for (const v of data) s += v * v;
      levels.push([performance.now() - t0, Math.sqrt(s / data.length)]);
      if (performance.now() - t0 < seconds * 1000) setTimeout(tick, 50); else resolve();
    };
    tick();
  });
  src?.stop(); el?.pause();
  const settings = stream.getAudioTracks()[0].getSettings();
  for (const t of stream.getTracks()) t.stop();
  await ctx.close();
  const late = levels.filter(([t]) => t > 3000).map(([, l]) => l);
  return { aec: settings.echoCancellation, mean: late.reduce((a, b) => a + b, 0) / late.length };
};
"""
CONDITIONS = [
    {"aec": False, "play": False}, {"aec": True, "play": False},
    {"aec": False, "play": True}, {"aec": True, "play": True},
    {"aec": False, "play": True, "viaElement": True}, {"aec": True, "play": True, "viaElement": True},
    {"aec": False, "play": True, "viaElement": "rtc"}, {"aec": True, "play": True, "viaElement": "rtc"},
]


def make_clip(folder: Path) -> Path:
    raw, one, clip = folder / "s.wav", folder / "one.wav", folder / "loop.wav"
    subprocess.run(["espeak-ng", "-s", "150", "-w", str(raw), "The quick brown fox jumps over the lazy dog. "
                    "I would like to know about my order, please tell me where it is."], check=True)
    subprocess.run(["sox", str(raw), "-r", "48000", "-c", "1", "-b", "16", str(one)], check=True)
    subprocess.run(["sox", str(one), str(one), str(one), str(one), str(clip)], check=True)
    return clip


def main(extra_args: list[str]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        clip = make_clip(folder)
        (folder / "echo.html").write_text(PAGE)
        (folder / "echo.js").write_text(SCRIPT)
        quiet = type("Quiet", (http.server.SimpleHTTPRequestHandler,), {"log_message": lambda *a: None})
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(quiet, directory=tmp))
        threading.Thread(target=server.serve_forever, daemon=True).start()
        try:
            with sync_playwright() as pw:
                browser = pw.chromium.launch(executable_path="/usr/bin/chromium", args=[
                    "--no-sandbox", "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
                    f"--use-file-for-fake-audio-capture={clip}", "--autoplay-policy=no-user-gesture-required",
                    *extra_args])
                page = browser.new_page()
                page.goto(f"http://127.0.0.1:{server.server_address[1]}/echo.html")
                page.wait_for_function("() => typeof window.measure === 'function'")
                for condition in CONDITIONS:
                    result = page.evaluate("(c) => measure(c)", condition)
                    print(f"{condition!s:60} echoCancellation={result['aec']!s:5} mic RMS {result['mean']:.4f}")
                browser.close()
        finally:
            server.shutdown()


if __name__ == "__main__":
    main(sys.argv[1:])
