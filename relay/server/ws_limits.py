"""The most one WebSocket message may make the relay hold, enforced inside hypercorn, before the relay sees it
(H2 of the security review): hypercorn buffers a whole message before handing it to the app, and wsproto inflates a
permessage-deflate payload with an unbounded `decompress()` before hypercorn compares the length with its limit; both
happen before `start`, so before any token.

`limit_websocket_messages(n)` makes every WebSocket hypercorn opens in this process (under `avatar-relay serve`,
its workers and hypercorn's own command line alike) refuse, with close 1009, a message longer than `n` bytes
(RELAY_MAX_FRAME_BYTES; a connection's first message, the `start`, RELAY_MAX_START_BYTES) — whatever hypercorn's
own `websocket_max_message_size` — and inflate a compressed one only up to `n` + 1 bytes: the inflation of each
chunk is bounded by what is left of the message's budget (`decompress(data, max_length)`), and a chunk that would
inflate further ends the connection. The extension stays
on (browsers always offer it; it saves the microphone's bandwidth nothing but the page's text), at no extra CPU:
refusing a bomb costs the inflation of `n` bytes.

hypercorn 0.18 has no setting for either, so this replaces two names hypercorn's WebSocket stream looks up when a
socket opens (`PerMessageDeflate`, `WebsocketBuffer` in `hypercorn.protocol.ws_stream`) with bounded subclasses, and
checks at start-up that they are still there (a hypercorn that renamed them stops the relay with a clear error rather
than serving unbounded).
"""

from __future__ import annotations

import zlib
from typing import Any

from hypercorn.protocol import ws_stream
from wsproto.extensions import PerMessageDeflate
from wsproto.frame_protocol import CloseReason, FrameDecoder, FrameProtocol


class BoundedDeflate(PerMessageDeflate):
    """permessage-deflate whose inbound inflation stops at one byte over the message's budget: `first_message_bytes`
    for a connection's first message (the `start`), `max_message_bytes` for the others."""

    max_message_bytes = 16 * 2**20
    first_message_bytes = 16 * 2**20

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._inflated = 0
        self._budget = min(self.first_message_bytes, self.max_message_bytes)

    def frame_inbound_payload_data(self, proto: FrameDecoder | FrameProtocol, data: bytes) -> bytes | CloseReason:
        if not self._inbound_compressed or not self._inbound_is_compressible:
            return data
        assert self._decompressor is not None
        room = self._budget - self._inflated
        if room < 0:
            return b""  # over the limit already: hypercorn's buffer has refused the message and is closing (1009)
        try:
            # At most one byte more than the message may still hold: enough for hypercorn's buffer (which counts
            # what it is given) to refuse it with 1009; the rest of the input is left uninflated.
            inflated = self._decompressor.decompress(bytes(data), room + 1)
        except zlib.error:
            return CloseReason.INVALID_FRAME_PAYLOAD_DATA
        self._inflated += len(inflated)
        if self._decompressor.unconsumed_tail:
            self._inflated = self._budget + 1
        if self._inflated > self._budget:
            self._decompressor = None  # its window and input go now, not when the close handshake ends
        return inflated

    def frame_inbound_complete(self, proto: FrameDecoder | FrameProtocol, fin: bool) -> bytes | CloseReason | None:
        # All input was inflated within the budget (or the connection is ending): what the final empty block
        # flushes is at most one match (258 bytes), and hypercorn's buffer counts it.
        if self._inflated > self._budget and self._inbound_compressed:
            # Refused (hypercorn's buffer got one byte too many): the uninflated rest is dropped, not flushed.
            if fin:
                self._inbound_compressed = None
                self._decompressor = None
            return b"" if fin else None
        if fin and self._inbound_is_compressible:
            self._inflated = 0
            self._budget = self.max_message_bytes
        return super().frame_inbound_complete(proto, fin)


class BoundedBuffer(ws_stream.WebsocketBuffer):
    """hypercorn's message buffer with its limit lowered to `first_message_bytes` for a connection's first message
    (the `start`: before it, a socket holds nothing but its pre-start slot) and to `max_message_bytes` for the
    others; a refused message's buffer is dropped at once (hypercorn keeps the stream until the close handshake
    ends)."""

    max_message_bytes = 16 * 2**20
    first_message_bytes = 16 * 2**20

    def __init__(self, max_length: int) -> None:
        self._later_limit = min(max_length, self.max_message_bytes)
        super().__init__(min(self._later_limit, self.first_message_bytes))

    def extend(self, event: Any) -> None:
        try:
            super().extend(event)
        except ws_stream.FrameTooLargeError:
            self.value = None
            raise

    def clear(self) -> None:
        super().clear()
        self.max_length = self._later_limit


def limit_websocket_messages(max_bytes: int, first_bytes: int) -> None:
    """Bound every WebSocket message hypercorn receives in this process to `max_bytes`, and each connection's
    first one to `first_bytes` (close 1009 beyond), compressed or not. Raises RuntimeError when hypercorn no longer
    has the names it replaces."""
    for name in ("PerMessageDeflate", "WebsocketBuffer"):
        if not hasattr(ws_stream, name):
            raise RuntimeError(f"hypercorn.protocol.ws_stream has no {name}: this hypercorn version cannot be "
                               "bounded against compressed-message bombs; install the version pyproject.toml pins")
    BoundedDeflate.max_message_bytes = BoundedBuffer.max_message_bytes = max_bytes
    BoundedDeflate.first_message_bytes = BoundedBuffer.first_message_bytes = first_bytes
    setattr(ws_stream, "PerMessageDeflate", BoundedDeflate)  # noqa: B010 - names mypy cannot see assigned
    setattr(ws_stream, "WebsocketBuffer", BoundedBuffer)  # noqa: B010
