"""The most one WebSocket message may make the relay hold, enforced inside hypercorn, before the relay sees it
(H2 of the security review): hypercorn buffers a whole message before handing it to the app, and wsproto inflates a
permessage-deflate payload with an unbounded `decompress()` before hypercorn compares the length with its limit; both
happen before `start`, so before any token.

`limit_websocket_messages(app, n, first)` makes every WebSocket hypercorn opens for `app` (the relay app, under
`avatar-relay serve`, its workers and hypercorn's own command line alike; the simulators and any other app in the
process keep hypercorn's behaviour) refuse, with close 1009, a message longer than `n` bytes (RELAY_MAX_FRAME_BYTES;
a connection's first message, the `start`, `first`: RELAY_MAX_START_BYTES) — whatever hypercorn's own
`websocket_max_message_size` — and inflate a compressed one only up to one byte past that: the inflation of each
chunk is bounded by what is left of the message's budget (`decompress(data, max_length)`), and the rest is dropped
with the inflater. The extension stays on (browsers always offer it), at no extra CPU: refusing a bomb costs the
inflation of `n` bytes.

hypercorn 0.18 has no setting for either, so this installs, once, bounded subclasses of the classes hypercorn's
WebSocket stream instantiates (`PerMessageDeflate`, `WebsocketBuffer`, `Handshake` in
`hypercorn.protocol.ws_stream`), which apply an app's limits only when the app carries them (`websocket_limits`),
and checks that hypercorn still has those names (a hypercorn that renamed them stops the relay with a clear error
rather than serving unbounded).
"""

from __future__ import annotations

import zlib
from typing import Any

from hypercorn.protocol import ws_stream
from wsproto.extensions import PerMessageDeflate
from wsproto.frame_protocol import CloseReason, FrameDecoder, FrameProtocol


class BoundedDeflate(PerMessageDeflate):
    """permessage-deflate whose inbound inflation, once `limit` has been called, stops at one byte over the
    message's budget: `first` bytes for a connection's first message (the `start`), `most` for the others. Without
    `limit`, wsproto's own behaviour."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._inflated = 0
        self.max_message_bytes: int | None = None
        self._budget = 0

    def limit(self, most: int, first: int) -> None:
        self.max_message_bytes = most
        self._budget = min(most, first)

    def frame_inbound_payload_data(self, proto: FrameDecoder | FrameProtocol, data: bytes) -> bytes | CloseReason:
        if self.max_message_bytes is None:
            return super().frame_inbound_payload_data(proto, data)
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
        if self.max_message_bytes is None:
            return super().frame_inbound_complete(proto, fin)
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
    """hypercorn's message buffer with its limit lowered to `first` bytes for a connection's first message (the
    `start`: before it, a socket holds nothing but its pre-start slot) and to `most` for the others; a refused
    message's buffer is dropped at once (hypercorn keeps the stream until the close handshake ends)."""

    def __init__(self, max_length: int, most: int, first: int) -> None:
        self._later_limit = min(max_length, most)
        super().__init__(min(self._later_limit, first))

    def extend(self, event: Any) -> None:
        try:
            super().extend(event)
        except ws_stream.FrameTooLargeError:
            self.value = None
            raise

    def clear(self) -> None:
        super().clear()
        self.max_length = self._later_limit


class LimitedHandshake(ws_stream.Handshake):
    """hypercorn's handshake; when its stream's app carries limits (`limits`, stamped by the stream), the
    connection it makes has its permessage-deflate bounded before any frame is read."""

    limits: tuple[int, int] | None = None

    def accept(self, *args: Any, **kwargs: Any) -> Any:
        status, headers, connection = super().accept(*args, **kwargs)
        if self.limits is not None:
            for extension in connection._proto.extensions:
                if isinstance(extension, BoundedDeflate):
                    extension.limit(*self.limits)
        return status, headers, connection


def _limits_of(app: Any) -> tuple[int, int] | None:
    """The limits of the app hypercorn serves (its wrapper holds it as `.app`), if it carries any."""
    limits = getattr(getattr(app, "app", app), "websocket_limits", None)
    return limits if isinstance(limits, tuple) else None


_installed = False


def _install() -> None:
    """Put the bounded classes where hypercorn's WebSocket stream looks them up (once per process)."""
    global _installed
    if _installed:
        return
    for name in ("PerMessageDeflate", "WebsocketBuffer", "Handshake", "WSStream"):
        if not hasattr(ws_stream, name):
            raise RuntimeError(f"hypercorn.protocol.ws_stream has no {name}: this hypercorn version cannot be "
                               "bounded against compressed-message bombs; install the version pyproject.toml pins")
    stream = ws_stream.WSStream
    original_init = stream.__init__

    def init(self: Any, app: Any, config: Any, *args: Any, **kwargs: Any) -> None:
        original_init(self, app, config, *args, **kwargs)
        self._relay_limits = _limits_of(app)
        if self._relay_limits is not None:
            self.buffer = BoundedBuffer(config.websocket_max_message_size, *self._relay_limits)

    def get_handshake(self: Any) -> Any:
        return self.__dict__["_relay_handshake"]

    def set_handshake(self: Any, handshake: Any) -> None:
        if isinstance(handshake, LimitedHandshake):
            handshake.limits = getattr(self, "_relay_limits", None)
        self.__dict__["_relay_handshake"] = handshake

    stream.__init__ = init  # type: ignore[method-assign]
    stream.handshake = property(get_handshake, set_handshake)  # type: ignore[assignment]
    setattr(ws_stream, "PerMessageDeflate", BoundedDeflate)  # noqa: B010 - names mypy cannot see assigned
    setattr(ws_stream, "Handshake", LimitedHandshake)  # noqa: B010
    _installed = True


def limit_websocket_messages(app: Any, max_bytes: int, first_bytes: int) -> None:
    """Bound every WebSocket message hypercorn receives for `app` to `max_bytes`, and each connection's first one
    to `first_bytes` (close 1009 beyond), compressed or not. Raises RuntimeError when hypercorn no longer has the
    names it replaces."""
    _install()
    app.websocket_limits = (max_bytes, first_bytes)
