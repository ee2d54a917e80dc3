"""The browser's side alone, in one process: what one browser audio frame costs between the browser's socket and the
agent's (issue 26, round 14; docs/performance.md). The counterpart of `bench.agent_path`.

`relay`: the relay's own path — `relay.server.direct_ws` reading the masked frame, `BrowserLink.each_frame` (the
conversation's browser across connections, as every conversation has it), `pump_browser_to_agent` (its checks, its
idle time-out, the traffic count) and `AgentConnection.send` of the `user_audio_chunk`. `floor`: the Trio floor's
(bench/trio_floor.py `BrowserSocket`, `websockets`' sans-I/O protocol, and bench/naive.py `_pump`'s `up`: base64 into
the message, the same `relay.net.wsclient` to the agent). Both read the same frames over socket pairs: 100 ms of
PCM16 at 16 kHz, masked as a browser masks them, each in a read of its own (the benchmark's shape: one frame every
100 ms per conversation); a fake agent reads the messages. A Trio instrument sums the steps of the tasks under test,
not the fake ends', so the figure is CPU µs per browser frame of the path itself; `--steps` counts their steps too.

`python -m bench.browser_path [--frames 3000] [--runs 3] [--impl relay,floor] [--relay-src DIR] [--steps]`: each run,
each implementation in turn (interleaved); `--relay-src` measures the relay as the source tree DIR has it. No
network: socket pairs only. Deterministic enough for callgrind (`PYTHONHASHSEED=0`, two frame counts, the
difference divided by the frames between them).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

import trio

from bench.agent_path import (
    TaskTime,
    _pair,
    browser_upgrade,
    interleaved,
    on_mock_clock,
    open_client_socket,
    path_arguments,
    print_medians,
    tone_pcm,
    use_relay_source,
)

FRAME_SAMPLES = 1600  # 100 ms at 16 kHz
WARM_UP_FRAMES = 200
HARNESS_TASKS = ("browser_path.measure", "browser_path.agent_side", "browser_path.drain")


class StepCount(TaskTime):
    """`TaskTime` of this harness's tasks under test, which also counts their steps while on."""

    def __init__(self) -> None:
        super().__init__(HARNESS_TASKS)
        self.steps: dict[str, int] = {}

    def after_task_step(self, task: trio.lowlevel.Task) -> None:
        super().after_task_step(task)
        if self.on and not task.name.endswith(HARNESS_TASKS):
            self.steps[task.name] = self.steps.get(task.name, 0) + 1


async def measure(kind: str, frames: int, census: StepCount) -> float:
    """CPU µs per browser frame of `kind`'s path over `frames` frames (after WARM_UP_FRAMES), each sent alone and
    read by the fake agent before the next is sent. Runs under a MockClock."""
    from websockets.frames import Opcode
    from websockets.protocol import State
    from websockets.server import ServerProtocol

    browser_server, browser_client = _pair()
    agent_near, agent_far = _pair()
    upgrade, browser = browser_upgrade()
    agent_ws = open_client_socket(agent_near, "ws://agent/")
    pcm = tone_pcm(FRAME_SAMPLES)
    received = [0]
    changed = [trio.Event()]

    async def until(condition: Callable[[], bool]) -> None:
        while not condition():
            await changed[0].wait()

    async def agent_side() -> None:
        server = ServerProtocol(state=State.OPEN, max_size=None)
        while True:
            server.receive_data(await agent_far.receive_some(65536))
            for event in server.events_received():
                if event.opcode is Opcode.TEXT and event.data.startswith(b'{"user_audio_chunk":"'):
                    received[0] += 1
                    changed[0].set()
                    changed[0] = trio.Event()

    upgraded = trio.Event()

    async def drain_browser() -> None:
        """The upgrade's answer (then `upgraded`), and whatever else the server sends the browser, dropped."""
        head = b""
        while b"\r\n\r\n" not in head:
            head += await browser_client.receive_some(65536)
        upgraded.set()
        while await browser_client.receive_some(65536):
            pass

    result: list[float] = []

    async def feed() -> None:
        if kind == "floor":  # the relay's route is handed the request head, as hypercorn hands it over
            await browser_client.send_all(upgrade)
        # The first frame only once the server answered the upgrade, as a browser sends it (the floor's `accept`
        # drops whatever came in the read that held the request).
        await upgraded.wait()
        for n in range(1, WARM_UP_FRAMES + frames + 1):
            if n == WARM_UP_FRAMES + 1:
                census.seconds.clear()
                census.steps.clear()
                census.on = True
            browser.send_binary(pcm)
            await browser_client.send_all(b"".join(browser.data_to_send()))
            await until(lambda n=n: received[0] >= n)
            await trio.sleep(0.1)  # the next frame 100 ms later (the mock clock jumps it)
        census.on = False
        result.append(census.under_test() / frames * 1e6)
        nursery.cancel_scope.cancel()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(agent_side, name="browser_path.agent_side")
        nursery.start_soon(drain_browser, name="browser_path.drain")
        if kind == "relay":
            nursery.start_soon(_relay_path, browser_server, upgrade, agent_ws)
        else:
            nursery.start_soon(_floor_path, browser_server, agent_ws)
        nursery.start_soon(feed, name="browser_path.measure")
    for stream in (browser_server, browser_client, agent_near, agent_far):
        stream.socket.close()
    return result[0]


async def _relay_path(stream: trio.SocketStream, upgrade: bytes, agent_ws: Any) -> None:
    from relay import elevenlabs as el
    from relay.config import Settings
    from relay.conversation.link import BrowserLink
    from relay.conversation.outbox import Outbox
    from relay.conversation.pumps import pump_browser_to_agent
    from relay.conversation.record import Traffic
    from relay.conversation.speech import SpeechRouter
    from relay.protocol.elevenlabs.events import ConversationMetadata
    from relay.server.direct_ws import DirectRoute, serve_direct
    from relay.server.request_guard import GuardPolicy

    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    agent = el.AgentConnection(agent_ws, ConversationMetadata("c", "pcm_16000", "pcm_16000"))

    async def conversation(socket: Any) -> None:
        await socket.accept()
        link = BrowserLink(settings.relay_resume_window, settings.relay_send_timeout, lambda: "token")
        link.attach_first(socket)
        with link.scope:
            await pump_browser_to_agent(link, agent, SpeechRouter(Outbox()), settings, Traffic())

    route = DirectRoute("/ws", conversation, 2**20, 2**20, GuardPolicy(frozenset({"*"})))
    await serve_direct(stream, upgrade, route, "")


async def _floor_path(stream: trio.SocketStream, agent_ws: Any) -> None:
    """The floor's `up` direction (bench/naive.py `_pump`); its `down` waits on an agent that sends nothing."""
    from bench.naive import Pipe, _pump
    from bench.trio_floor import BrowserSocket

    browser = await BrowserSocket.accept(stream)
    await _pump(Pipe(browser.receive, browser.send), Pipe(trio.sleep_forever, agent_ws.send_text))


def main(argv: list[str] | None = None) -> dict[str, list[float]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--frames", type=int, default=3000, help="measured browser frames per run (default 3000)")
    path_arguments(parser)
    parser.add_argument("--steps", action="store_true", help="print the steps per frame of each task under test")
    args = parser.parse_args(argv)
    use_relay_source(args.relay_src)

    def one_run(kind: str) -> float:
        census = StepCount()
        figure = on_mock_clock(census, measure, kind, args.frames, census)
        if args.steps:
            print(f"{kind:6} steps per frame: " + ", ".join(
                f"{name.rsplit('.', 1)[-1]} {count / args.frames:.2f}" for name, count in
                sorted(census.steps.items())), flush=True)
        return figure

    results = interleaved(args.impl.split(","), args.runs, one_run)
    print_medians(results, "browser frame")
    return results


if __name__ == "__main__":
    main()
