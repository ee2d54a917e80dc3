"""The agent's side of LiveAvatar alone, in one process: what one agent audio chunk costs between the agent's socket
and the browser's and the avatar's (issue 26, round 8; docs/performance.md).

`relay`: the relay's own path — `AgentConnection` -> `pump_agent_to_browser` -> `SpeechRouter` ->
`StreamedAudioSession` / `LiteAudioStream` (resampled to 24 kHz, the packet cadence, `agent.speak_end`, the listening
pose), the browser's frames (the caption timing, then the audio) written by `relay.server.direct_ws`. `floor`: the
Trio floor's own pumps (bench/naive.py `_pump` as its LiveAvatar mode wires them: orjson, base64,
`BrowserSocket.send`, `bench.wire.LiteSpeech`, `ClientWebSocket`). Both are fed the same frames over socket pairs:
turns of 8 chunks of 250 ms at 16 kHz with their alignment, sent in a burst (the benchmark's ElevenLabs simulator:
burst pacing, alignment on); a fake LITE server answers as the simulator does (`agent.audio_buffer_appended` per
packet, `speak_started` / `speak_ended` per utterance). Trio's `MockClock` jumps the turn gap instead of waiting it; a
Trio instrument sums the time of the tasks under test, not the fake ends', so the figure is CPU µs per agent chunk of
the path itself.

`--turn full` (round 10) puts before each reply what the benchmark's turn has besides its audio: three tentative
user transcripts, the final one and the agent's response, each read alone; the relay then forwards the avatar's
speaking state to the browser as its conversation does (the floor, as in the benchmark, forwards only the response).
`--cold MB` sends every agent message alone, each after the harness wrote MB megabytes (more than a core's L2), so
that every step of the path starts with cold caches, as in a loaded server.

`python -m bench.agent_path [--turns 300] [--runs 3] [--impl relay,floor] [--relay-src DIR] [--turn audio|full]
[--cold MB]`:
each run, each implementation in turn (interleaved); `--relay-src` measures the relay as the source tree DIR has it (its
`relay.net.wsclient` serves both implementations, as in the benchmark). No network: socket pairs only.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import orjson
import trio
import trio.testing

CHUNKS_PER_TURN = 8
CHUNK_SAMPLES = 4000  # 250 ms at 16 kHz
WARM_UP_TURNS = 20
HARNESS_TASKS = ("agent_path.measure", "agent_path.browser_side", "agent_path.lite_side")


class TaskTime(trio.abc.Instrument):
    """The time each task's steps take, by task name, while `on`; `under_test()` sums all but the `harness` tasks'
    (names ending so)."""

    def __init__(self, harness: tuple[str, ...] = HARNESS_TASKS) -> None:
        self.harness = harness
        self.seconds: dict[str, float] = {}
        self.on = False
        self._started = 0.0

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        self._started = time.perf_counter()

    def after_task_step(self, task: trio.lowlevel.Task) -> None:
        if self.on:
            self.seconds[task.name] = self.seconds.get(task.name, 0.0) + time.perf_counter() - self._started

    def under_test(self) -> float:
        return sum(t for name, t in self.seconds.items() if not name.endswith(self.harness))


@functools.cache
def tone_pcm(samples: int) -> bytes:
    """`samples` of a 220 Hz tone at 16 kHz, PCM16 LE: the audio of every agent chunk here (CHUNK_SAMPLES) and of
    every browser frame in bench.browser_path."""
    t = np.arange(samples) / 16000
    return (np.sin(2 * np.pi * 220 * t) * 8000).astype("<i2").tobytes()


def turn_frames(turn: int) -> list[str]:
    """One turn's agent audio frames as the simulator writes them (relay.sim.elevenlabs_sim.wire)."""
    from relay.sim.elevenlabs_sim.wire import alignment_field, audio_frame

    return [audio_frame(tone_pcm(CHUNK_SAMPLES), turn, alignment_field("abcd", 60.0, 10.0))
            for _ in range(CHUNKS_PER_TURN)]


def user_turn_frames(turn: int) -> list[str]:
    """What comes before a turn's reply in the benchmark (`--turn full`), as the simulator writes it: three tentative
    transcripts of the user's speech, the final one, the agent's response text."""
    from relay.sim.elevenlabs_sim.wire import frame

    tentative = [frame("tentative_user_transcript", "tentative_user_transcription_event",
                       {"user_transcript": f"({seconds:.1f} s of speech…)", "event_id": turn})
                 for seconds in (0.5, 1.0, 1.5)]
    return [*tentative,
            frame("user_transcript", "user_transcription_event", {"user_transcript": "hello there", "event_id": turn}),
            frame("agent_response", "agent_response_event", {"agent_response": "Hi! How can I help?",
                                                              "event_id": turn})]


def _server_bytes(frames: list[str]) -> bytes:
    from websockets.protocol import State
    from websockets.server import ServerProtocol

    protocol = ServerProtocol(state=State.OPEN, max_size=None)
    for frame in frames:
        protocol.send_text(frame.encode())
    return b"".join(protocol.data_to_send())


def _pair() -> tuple[trio.SocketStream, trio.SocketStream]:
    a, b = trio.socket.socketpair()
    return trio.SocketStream(a), trio.SocketStream(b)


def browser_upgrade() -> tuple[bytes, Any]:
    """A browser's upgrade request for /ws, and the (open) client protocol that frames its messages afterwards."""
    from websockets.client import ClientProtocol
    from websockets.protocol import State
    from websockets.uri import parse_uri

    opening = ClientProtocol(parse_uri("ws://127.0.0.1/ws"), max_size=None)
    opening.send_request(opening.connect())
    return (b"".join(opening.data_to_send()),
            ClientProtocol(parse_uri("ws://127.0.0.1/ws"), state=State.OPEN, max_size=None))


def open_client_socket(stream: trio.SocketStream, uri: str) -> Any:
    """`relay.net.wsclient.ClientWebSocket` over `stream`, already open (the handshake is not measured)."""
    from websockets.client import ClientProtocol
    from websockets.protocol import State
    from websockets.uri import parse_uri

    from relay.net.wsclient import ClientWebSocket

    return ClientWebSocket(stream, ClientProtocol(parse_uri(uri), state=State.OPEN, max_size=None), None)


def _evict_caches(scratch: bytearray) -> None:
    """Write every byte of `scratch` (larger than a core's L2): what the next step touches comes from memory, as in
    a loaded server whose core ran other work since (`--cold`)."""
    scratch[:] = bytes(len(scratch))


async def measure(kind: str, turns: int, census: TaskTime, full: bool = False,
                  received: dict[str, int] | None = None, cold_mb: int = 0) -> float:
    """CPU µs per agent chunk of `kind`'s path over `turns` turns (after WARM_UP_TURNS). Runs under a MockClock.
    `full`: each turn's user transcripts and response come first, one at a time (`user_turn_frames`), and the
    relay forwards the avatar's speaking state to the browser as its conversation does. `received`, if given,
    counts the browser's JSON messages by type. `cold_mb` > 0: every agent message is sent alone, after the caches
    were flushed by writing that many MB (in the harness's task, not counted)."""
    scratch = bytearray(cold_mb << 20)
    from websockets.frames import Opcode
    from websockets.protocol import State
    from websockets.server import ServerProtocol

    browser_server, browser_client = _pair()
    agent_near, agent_far = _pair()
    lite_near, lite_far = _pair()
    upgrade, browser = browser_upgrade()
    agent_ws = open_client_socket(agent_near, "ws://agent/")
    lite_ws = open_client_socket(lite_near, "ws://lite/")
    seen = {"audio": 0, "speak": 0, "speak_end": 0}
    changed = [trio.Event()]

    def note(key: str) -> None:
        seen[key] += 1
        changed[0].set()
        changed[0] = trio.Event()

    async def until(condition: Callable[[], bool]) -> None:
        while not condition():
            await changed[0].wait()

    async def browser_side() -> None:
        data = b""
        while b"\r\n\r\n" not in data:
            data += await browser_client.receive_some(65536)
        browser.receive_data(data[data.index(b"\r\n\r\n") + 4:])
        while True:
            for event in browser.events_received():
                if event.opcode is Opcode.BINARY:
                    note("audio")
                elif received is not None:
                    kind_of = orjson.loads(event.data).get("type", "?")
                    received[kind_of] = received.get(kind_of, 0) + 1
            browser.receive_data(await browser_client.receive_some(65536))

    async def lite_side() -> None:
        server = ServerProtocol(state=State.OPEN, max_size=None)
        started: set[str] = set()
        while True:
            server.receive_data(await lite_far.receive_some(65536))
            for event in server.events_received():
                if event.opcode is not Opcode.TEXT:
                    continue
                message = orjson.loads(event.data)
                event_id = message.get("event_id")
                if message["type"] == "agent.speak":
                    server.send_text(orjson.dumps({"type": "agent.audio_buffer_appended", "event_id": event_id}))
                    if event_id not in started:
                        started.add(event_id)
                        server.send_text(orjson.dumps({"type": "agent.speak_started", "event_id": event_id,
                                                       "task": {"id": event_id}}))
                    note("speak")
                elif message["type"] == "agent.speak_end":
                    server.send_text(orjson.dumps({"type": "agent.speak_ended", "event_id": event_id,
                                                   "task": {"id": event_id}}))
                    note("speak_end")
            answer = b"".join(server.data_to_send())
            if answer:
                await lite_far.send_all(answer)

    result: list[float] = []

    async def send_alone(messages: list[str], gap: float) -> None:
        """Each message in a read of its own, `gap` seconds (of the mock clock) apart; with `--cold`, each after the
        caches were flushed."""
        for message in messages:
            if scratch:
                _evict_caches(scratch)
            await agent_far.send_all(_server_bytes([message]))
            await trio.sleep(gap)

    async def feed() -> None:
        for turn in range(1, WARM_UP_TURNS + turns + 1):
            if turn == WARM_UP_TURNS + 1:
                census.seconds.clear()
                census.on = True
            audio, speak, ends = seen["audio"], seen["speak"], seen["speak_end"]
            if full:
                await send_alone(user_turn_frames(turn), 0.1)  # as they come apart in time
            if scratch:  # the reply's chunks one by one, each after a flush
                await send_alone(turn_frames(turn), 0.01)
            else:
                await agent_far.send_all(_server_bytes(turn_frames(turn)))
            await until(lambda audio=audio: seen["audio"] >= audio + CHUNKS_PER_TURN)
            if kind == "relay":  # its turn ends after the gap (jumped): the tail and `agent.speak_end`
                await until(lambda ends=ends: seen["speak_end"] > ends)
            else:
                await until(lambda speak=speak: seen["speak"] >= speak + CHUNKS_PER_TURN)
        census.on = False
        result.append(census.under_test() / (turns * CHUNKS_PER_TURN) * 1e6)
        nursery.cancel_scope.cancel()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(browser_side, name="agent_path.browser_side")
        nursery.start_soon(lite_side, name="agent_path.lite_side")
        if kind == "relay":
            nursery.start_soon(_relay_path, browser_server, upgrade, agent_ws, lite_ws, full)
        else:
            await browser_client.send_all(upgrade)
            nursery.start_soon(_floor_path, browser_server, agent_ws, lite_ws)
        nursery.start_soon(feed, name="agent_path.measure")
    for stream in (browser_server, browser_client, agent_near, agent_far, lite_near, lite_far):
        stream.socket.close()
    return result[0]


async def _relay_path(stream: trio.SocketStream, upgrade: bytes, agent_ws: Any, lite_ws: Any,
                      full: bool = False) -> None:
    from relay import elevenlabs as el
    from relay.avatars import AvatarInfo
    from relay.avatars.lite import LiteAudioStream
    from relay.avatars.streamed import StreamedAudioSession
    from relay.conversation.outbox import Outbox
    from relay.conversation.pumps import pump_agent_to_browser
    from relay.conversation.speech import SpeechRouter
    from relay.protocol import browser as bp
    from relay.protocol.elevenlabs.events import ConversationMetadata
    from relay.server.direct_ws import DirectRoute, serve_direct
    from relay.server.request_guard import GuardPolicy

    agent = el.AgentConnection(agent_ws, ConversationMetadata("c", "pcm_16000", "pcm_16000"))

    async def conversation(socket: Any) -> None:
        await socket.accept()
        outbox = Outbox()
        speech = SpeechRouter(outbox)
        lite = LiteAudioStream(lite_ws)
        lite.connected.set()
        session = StreamedAudioSession(AvatarInfo("liveavatar", "s", "ws://sim", "token", True), lite, 3600.0)
        speech.attach(session)
        speech.avatar_connected()

        def on_avatar_event(event: Any) -> None:  # relay.nursery's, for the LITE socket's events
            speech.avatar_state(event.speaking, event.turn)
            if full:
                outbox.send(bp.avatar_state(event.speaking, event.turn))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(outbox.run_sender, socket)
            nursery.start_soon(speech.run, session)
            nursery.start_soon(lite.read_events, on_avatar_event)
            await pump_agent_to_browser(agent, outbox, speech)

    route = DirectRoute("/ws", conversation, 2**20, 2**20, GuardPolicy(frozenset({"*"})))
    await serve_direct(stream, upgrade, route, "")


async def _floor_path(stream: trio.SocketStream, agent_ws: Any, lite_ws: Any) -> None:
    """The floor's own pumps (bench/naive.py `_pump`), wired as its `_liveavatar` wires them."""
    from bench.naive import Pipe, _pump
    from bench.trio_floor import BrowserSocket
    from bench.wire import LiteSpeech

    browser = await BrowserSocket.accept(stream)
    speech = LiteSpeech()

    async def speak_audio(pcm: bytes, event_id: int) -> None:
        if (message := speech.message(pcm, event_id)) is not None:
            await lite_ws.send_text(message)

    async def drain() -> None:
        while True:
            await lite_ws.receive()

    await _pump(Pipe(browser.receive, browser.send), Pipe(agent_ws.receive, agent_ws.send_text),
                on_audio=speak_audio, background=drain)


def path_arguments(parser: argparse.ArgumentParser) -> None:
    """The options every one-process path benchmark (this one, bench.browser_path) takes: --runs, --impl,
    --relay-src."""
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--impl", default="relay,floor", help="comma-separated: relay, floor")
    parser.add_argument("--relay-src", default=None, help="measure the relay as the source tree DIR has it")


def use_relay_source(directory: str | None) -> None:
    """`--relay-src`: import `relay` from `directory` from now on (the modules already imported are forgotten)."""
    if directory:
        sys.path.insert(0, directory)
        for name in [m for m in sys.modules if m == "relay" or m.startswith("relay.")]:
            del sys.modules[name]


def interleaved(kinds: list[str], runs: int, one_run: Callable[[str], float]) -> dict[str, list[float]]:
    """`one_run(kind)` for each implementation in turn, `runs` times (interleaved, so the machine's load is shared):
    every figure by implementation."""
    results: dict[str, list[float]] = {kind: [] for kind in kinds}
    for _ in range(runs):
        for kind in kinds:
            results[kind].append(one_run(kind))
    return results


def on_mock_clock(census: trio.abc.Instrument, measure: Callable[..., Any], *args: Any) -> float:
    """`trio.run(measure, *args)` with `census` and a MockClock that jumps whenever every task waits."""
    result: float = trio.run(measure, *args, clock=trio.testing.MockClock(autojump_threshold=0),
                             instruments=[census])
    return result


def print_medians(results: dict[str, list[float]], per: str) -> None:
    """One line per implementation: the median, the minimum and every run's figure (CPU µs per `per`)."""
    for kind, values in results.items():
        print(f"{kind:6} CPU µs per {per}: median {statistics.median(values):.1f}, "
              f"min {min(values):.1f} ({', '.join(f'{v:.1f}' for v in values)})", flush=True)


def main(argv: list[str] | None = None) -> dict[str, list[float]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--turns", type=int, default=300, help="measured turns of 8 chunks per run (default 300)")
    path_arguments(parser)
    parser.add_argument("--turn", choices=("audio", "full"), default="audio",
                        help="audio: a turn is its 8 chunks (rounds 8-9); full: the user's transcripts and the "
                             "agent's response come first, and the relay forwards the avatar's state (round 10)")
    parser.add_argument("--cold", type=int, default=0, metavar="MB",
                        help="send every agent message alone, after writing MB megabytes to flush the caches "
                             "(more than a core's L2): each step starts cold, as in a loaded server (round 10)")
    args = parser.parse_args(argv)
    use_relay_source(args.relay_src)

    def one_run(kind: str) -> float:
        census = TaskTime()
        return on_mock_clock(census, measure, kind, args.turns, census, args.turn == "full", None, args.cold)

    results = interleaved(args.impl.split(","), args.runs, one_run)
    print_medians(results, "agent chunk")
    return results


if __name__ == "__main__":
    main()
