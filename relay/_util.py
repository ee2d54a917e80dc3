"""Small helpers every layer may use: exception-group flattening and compact JSON.

A leaf: it imports nothing from the relay and no I/O library, so the sans-I/O `relay.protocol` modules can use it.
"""

from __future__ import annotations

from typing import Any

import orjson


def leaves(exc: BaseException) -> list[BaseException]:
    """The exceptions inside `exc`, groups flattened (depth first); `[exc]` for a plain exception."""
    if isinstance(exc, BaseExceptionGroup):
        out: list[BaseException] = []
        for inner in exc.exceptions:
            out.extend(leaves(inner))
        return out
    return [exc]


def single(exc: BaseException) -> BaseException | None:
    """The one exception a (possibly nested) group holds, or None when it holds several. Strict exception groups
    wrap even one failure; a caller should see the failure itself."""
    found = leaves(exc)
    return found[0] if len(found) == 1 else None


def dumps(obj: dict[str, Any]) -> str:
    """`obj` as compact JSON text (orjson), for a WebSocket text frame."""
    return orjson.dumps(obj).decode()
