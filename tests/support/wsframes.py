"""Raw client WebSocket frames for tests that drive a socket byte by byte (stalled or misbehaving browsers)."""

from __future__ import annotations

import os
import struct


def client_frame(payload: bytes, opcode: int = 0x1) -> bytes:
    """One masked client WebSocket frame (RFC 6455 section 5.2)."""
    mask = os.urandom(4)
    length = len(payload)
    header = bytes([0x80 | opcode])
    if length < 126:
        header += bytes([0x80 | length])
    else:
        header += bytes([0x80 | 126]) + struct.pack("!H", length)
    masked = (int.from_bytes(payload, "big") ^ int.from_bytes((mask * (length // 4 + 1))[:length], "big"))
    return header + mask + (masked.to_bytes(length, "big") if length else b"")
