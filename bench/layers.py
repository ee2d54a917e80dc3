"""What each layer of the stack costs per audio frame, measured in-process (CPU time, no sockets): the floor under
the relay's hot path, and what a different WebSocket layer would save.

`python -m bench.layers [--chunk-ms 100]` prints microseconds per frame for: parsing and unmasking one browser
frame (wsproto, as hypercorn does), base64 + JSON (`build_user_audio_chunk`), framing and masking it for the agent
(wsproto, as trio-websocket does; and the `websockets` sans-I/O protocol with its C masking), a trio memory channel
hop between two tasks; and over a real loopback socket, the whole send of one agent message by trio-websocket
against `relay.net.wsclient` (the event loop thread's CPU only: a plain thread drains the socket).
"""

from __future__ import annotations

import argparse
import socket
import threading
import time
from collections.abc import Callable

import trio
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, BytesMessage, Request, TextMessage

from bench.wire import speech_cycle
from relay.protocol.elevenlabs import build_user_audio_chunk


def per_call(fn: Callable[[], object], repeat: int) -> float:
    """CPU microseconds per call of `fn` (best of 3 runs of `repeat` calls)."""
    best = float("inf")
    for _ in range(3):
        start = time.process_time()
        for _ in range(repeat):
            fn()
        best = min(best, time.process_time() - start)
    return best / repeat * 1e6


def _connected_pair() -> tuple[WSConnection, WSConnection]:
    client, server = WSConnection(ConnectionType.CLIENT), WSConnection(ConnectionType.SERVER)
    server.receive_data(client.send(Request(host="127.0.0.1", target="/ws")))
    next(server.events())
    client.receive_data(server.send(AcceptConnection()))
    next(client.events())
    return client, server


def measure(chunk_ms: int, repeat: int = 3000) -> dict[str, float]:
    pcm = speech_cycle(chunk_ms, 0.5, 0.0)[0]
    client, server = _connected_pair()
    masked = client.send(BytesMessage(data=pcm))

    def parse_browser_frame() -> None:
        server.receive_data(masked)
        for _ in server.events():
            pass

    chunk = build_user_audio_chunk(pcm)

    def frame_for_agent() -> None:
        client.send(TextMessage(data=chunk))

    results = {
        "wsproto: parse + unmask a browser frame": per_call(parse_browser_frame, repeat),
        "base64 + JSON (build_user_audio_chunk)": per_call(lambda: build_user_audio_chunk(pcm), repeat),
        "wsproto: frame + mask for the agent": per_call(frame_for_agent, repeat),
    }
    try:
        from websockets.client import ClientProtocol
        from websockets.protocol import State
        from websockets.uri import parse_uri

        protocol = ClientProtocol(parse_uri("ws://127.0.0.1/"))
        protocol.state = State.OPEN

        def websockets_frame() -> None:
            protocol.send_text(chunk.encode())
            protocol.data_to_send()

        results["websockets (C masking): frame + mask for the agent"] = per_call(websockets_frame, repeat)

        from websockets.server import ServerProtocol

        # A real handshake (the parser starts with it), with a wsproto client producing the masked frames.
        receiver, browser = ServerProtocol(), WSConnection(ConnectionType.CLIENT)
        receiver.receive_data(browser.send(Request(host="127.0.0.1", target="/ws")))
        receiver.send_response(receiver.accept(receiver.events_received()[0]))
        browser.receive_data(b"".join(receiver.data_to_send()))
        next(browser.events())
        masked = browser.send(BytesMessage(data=pcm))
        receiver.receive_data(masked)
        assert receiver.events_received()[0].data == pcm

        def websockets_parse() -> None:
            receiver.receive_data(masked)
            receiver.events_received()

        results["websockets (C unmasking): parse + unmask a browser frame"] = per_call(websockets_parse, repeat)
    except ImportError:
        pass
    results["trio memory channel hop (send + receive in another task)"] = _channel_hop(repeat)
    results["loopback send to the agent: trio-websocket send_message"] = min(
        _socket_send("trio-websocket", chunk, repeat) for _ in range(3))
    results["loopback send to the agent: relay.wsclient send_text"] = min(
        _socket_send("wsclient", chunk, repeat) for _ in range(3))
    return results


def _channel_hop(repeat: int) -> float:
    async def main() -> float:
        tx, rx = trio.open_memory_channel[bytes](1)

        async def consume() -> None:
            async for _ in rx:
                pass

        async with trio.open_nursery() as nursery:
            nursery.start_soon(consume)
            start = time.process_time()
            for _ in range(repeat):
                await tx.send(b"x")
            elapsed = time.process_time() - start
            await tx.aclose()
        return elapsed / repeat * 1e6

    return trio.run(main)


def _sink() -> tuple[int, threading.Thread]:
    """A WebSocket server in a plain thread: answers one upgrade, then reads and discards every message."""
    from websockets.http11 import Request as WsRequest
    from websockets.server import ServerProtocol

    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve() -> None:
        conn, _ = listener.accept()
        protocol = ServerProtocol()
        while not (events := protocol.events_received()):
            protocol.receive_data(conn.recv(65536))
        assert isinstance(events[0], WsRequest)
        protocol.send_response(protocol.accept(events[0]))
        conn.sendall(b"".join(protocol.data_to_send()))
        while data := conn.recv(1 << 20):
            protocol.receive_data(data)  # parsed, so the closing handshake is answered
            protocol.events_received()
            if answer := b"".join(protocol.data_to_send()):
                conn.sendall(answer)
        conn.close()
        listener.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return port, thread


def _socket_send(kind: str, text: str, repeat: int) -> float:
    """Event-loop-thread CPU µs per message sent to the agent over loopback, handshake excluded."""

    async def main() -> float:
        port, thread = _sink()
        url = f"ws://127.0.0.1:{port}/"
        if kind == "trio-websocket":
            from trio_websocket import open_websocket_url

            async with open_websocket_url(url) as tws:
                start = time.thread_time()
                for _ in range(repeat):
                    await tws.send_message(text)
                elapsed = time.thread_time() - start
        else:
            from relay.net.wsclient import open_websocket

            async with open_websocket(url) as ws:
                start = time.thread_time()
                for _ in range(repeat):
                    await ws.send_text(text)
                elapsed = time.thread_time() - start
        thread.join(5)
        return elapsed / repeat * 1e6

    return trio.run(main)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--chunk-ms", type=int, default=100)
    args = parser.parse_args()
    results = measure(args.chunk_ms)
    frames_per_second = 1000 / args.chunk_ms
    for name, us in results.items():
        print(f"{us:8.1f} µs/frame  {us * frames_per_second / 1000:6.3f} ms/conversation-s  {name}")


if __name__ == "__main__":
    main()
