"""The private wire between two workers of `serve --workers N` when a resume lands on a worker that does not hold the
conversation (relay.server.handover), sans-I/O: the accepting worker relays the browser's connection to the holding
worker frame by frame over a Unix socket in the supervisor's 0700 directory.

Every frame is one kind byte, a 4-byte big-endian length and the payload:

- `H` (first, accepting -> holding): the hand-over, JSON `{"resume": {the browser's resume frame}, "subject": …}`
  (`subject`: the identity of the client token the connection carries, null without one);
- `T` / `B`: a text / binary WebSocket message, either way;
- `E` (accepting -> holding): the browser's connection ended, JSON `{"left": true|false|null}` as
  `relay.server.departures.left_cleanly` says it (true: close 1000 or the relay's own close; false: dropped; null:
  the accepting worker cut it, draining);
- `C` (holding -> accepting): close the browser's connection, JSON `{"code": n, "reason": "…"}`.

`FrameReader` checks every length against its bound before buffering it: a frame over it is a broken peer.
"""

from __future__ import annotations

import struct
from typing import Final, Literal

import orjson

HELLO: Final = b"H"
TEXT: Final = b"T"
BINARY: Final = b"B"
ENDED: Final = b"E"
CLOSE: Final = b"C"
_KINDS: Final = frozenset({HELLO, TEXT, BINARY, ENDED, CLOSE})
_HEADER: Final = struct.Struct(">cI")

Left = Literal[True, False] | None


class HandoverError(Exception):
    """The peer sent something that is not this wire (a broken or foreign peer): drop the connection."""


def frame(kind: bytes, payload: bytes) -> bytes:
    return _HEADER.pack(kind, len(payload)) + payload


def message(data: str | bytes) -> bytes:
    """A WebSocket message as a frame."""
    return frame(TEXT, data.encode()) if isinstance(data, str) else frame(BINARY, data)


def hello(resume: dict[str, object], subject: str | None) -> bytes:
    return frame(HELLO, orjson.dumps({"resume": resume, "subject": subject}))


def ended(left: Left) -> bytes:
    return frame(ENDED, orjson.dumps({"left": left}))


def close(code: int, reason: str) -> bytes:
    return frame(CLOSE, orjson.dumps({"code": code, "reason": reason}))


def read_hello(payload: bytes) -> tuple[dict[str, object], str | None]:
    """The browser's resume frame (as JSON) and the subject. Raises HandoverError."""
    try:
        body = orjson.loads(payload)
        resume, subject = body["resume"], body["subject"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        raise HandoverError("a hand-over's first frame is not a hand-over") from None
    if not isinstance(resume, dict) or not (subject is None or isinstance(subject, str)):
        raise HandoverError("a hand-over's first frame is not a hand-over")
    return resume, subject


def read_ended(payload: bytes) -> Left:
    try:
        left = orjson.loads(payload)["left"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        raise HandoverError("an end frame without `left`") from None
    if left is not None and not isinstance(left, bool):
        raise HandoverError("an end frame with a bad `left`")
    return bool(left) if left is not None else None


def read_close(payload: bytes) -> tuple[int, str]:
    try:
        body = orjson.loads(payload)
        code, reason = int(body["code"]), str(body["reason"])
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        raise HandoverError("a close frame without code and reason") from None
    if not 1000 <= code <= 4999:
        raise HandoverError("a close frame with a code out of range")
    return code, reason


class FrameReader:
    """Bytes in, whole frames out. `max_payload` bounds one frame (the relay's frame bound plus room for JSON)."""

    def __init__(self, max_payload: int) -> None:
        self.max_payload = max_payload
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[tuple[bytes, bytes]]:
        """The frames completed by `data`, in order. Raises HandoverError for an unknown kind or a frame over the
        bound (checked from its header, before its payload is kept)."""
        self._buffer += data
        frames: list[tuple[bytes, bytes]] = []
        start = 0
        while len(self._buffer) - start >= _HEADER.size:
            kind, size = _HEADER.unpack_from(self._buffer, start)
            if kind not in _KINDS:
                raise HandoverError(f"unknown frame kind {kind!r}")
            if size > self.max_payload:
                raise HandoverError(f"a frame of {size} bytes is over the bound of {self.max_payload}")
            end = start + _HEADER.size + size
            if end > len(self._buffer):
                break
            frames.append((kind, bytes(self._buffer[start + _HEADER.size:end])))
            start = end
        del self._buffer[:start]
        return frames
