"""Unmask the browser's frames with `websockets`' C code instead of wsproto's pure Python (docs/performance.md,
"Round 4"): hypercorn parses every browser frame with wsproto, whose `XorMaskerSimple.process` unmasks a payload
with four `bytearray.translate` passes and slices (~10 µs for a 100 ms PCM frame; `websockets.speedups.apply_mask`,
already installed with `websockets`, takes ~0.4 µs).

`use_c_unmasking()` replaces the name `XorMaskerSimple` in `wsproto.frame_protocol` (where its frame decoder looks
it up for each masked frame) with `CMasker`: the same class, the same rolling key across partial payloads, the same
`bytearray` out, only `process` computed in C. Idempotent; without `websockets.speedups` (a build without its C
extension) wsproto's own masker stays.
"""

from __future__ import annotations

from wsproto import frame_protocol

try:
    from websockets.speedups import apply_mask
except ImportError:  # pragma: no cover - websockets built without its C extension
    apply_mask = None  # type: ignore[assignment]

_WSPROTO_MASKER = frame_protocol.XorMaskerSimple


class CMasker(_WSPROTO_MASKER):
    """wsproto's masker with its XOR in C. The key rotates by the payload's length, so a payload that arrives in
    several reads unmasks as if it came at once (as wsproto's does)."""

    def process(self, data: bytearray) -> bytearray:
        if not data:
            return bytearray(data)
        key = self._masking_key
        unmasked = bytearray(apply_mask(data, key))
        rotation = len(data) % 4
        self._masking_key = key[rotation:] + key[:rotation]
        return unmasked


def use_c_unmasking() -> None:
    """Make wsproto (hence hypercorn) unmask frames with `CMasker` (once per process)."""
    if apply_mask is not None and frame_protocol.XorMaskerSimple is _WSPROTO_MASKER:
        frame_protocol.XorMaskerSimple = CMasker  # type: ignore[misc]
