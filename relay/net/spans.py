"""OpenTelemetry spans around the relay's outgoing calls, for the layers below the conversation (the WebSocket client,
the agent client, the avatar providers): the OpenTelemetry API only, which records nothing until `relay.ops.tracing`
has configured the SDK (the standard OTEL_* variables).

Nothing here starts a span unless the calling task runs under a recording one — the conversation's trace, which
exists only when tracing is on (`relay.conversation.spans`): with tracing off each helper costs one context-variable
read and starts no span. Trio copies the context into every task at its spawn, so a task started by a conversation
records under the span that was current when it was started.

Attributes never hold a secret, a URL (a signed URL carries a signature), a header or what a user said; a failed step's
status says the exception's class and its `reason` code, never its message.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Mapping, MutableMapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager, contextmanager
from typing import TypeVar

from opentelemetry import propagate, trace
from opentelemetry.trace import Span, SpanKind, StatusCode
from opentelemetry.util.types import AttributeValue

T = TypeVar("T")

tracer = trace.get_tracer("relay")

_enabled = False


def enable() -> None:
    """Tracing is on in this process (`relay.ops.tracing.configure_tracing`, once the SDK is set up)."""
    global _enabled
    _enabled = True


def enabled() -> bool:
    """Whether this process traces conversations (False: no conversation trace is ever started)."""
    return _enabled


def recording() -> bool:
    """Whether the calling task runs under a span that records (a traced conversation's)."""
    return trace.get_current_span().is_recording()


def failed(span: Span, exc: BaseException) -> None:
    """Mark `span` failed by `exc`: its class and `reason` (or `code`) (never its message, never a traceback)."""
    reason = getattr(exc, "reason", None) or getattr(exc, "code", None)
    span.set_status(StatusCode.ERROR, type(exc).__name__ if not isinstance(reason, str)
                    else f"{type(exc).__name__}: {reason}")


@contextmanager
def child(name: str, attributes: Mapping[str, AttributeValue] | None = None,
          kind: SpanKind = SpanKind.INTERNAL) -> Iterator[Span | None]:
    """A span `name`, current inside the block, child of the current span; None (and no span) when the current span
    does not record. An exception leaving the block marks it failed (`failed`) and goes on."""
    if not trace.get_current_span().is_recording():
        yield None
        return
    with tracer.start_as_current_span(name, kind=kind, attributes=attributes, record_exception=False,
                                      set_status_on_exception=False) as span:
        try:
            yield span
        except BaseException as exc:
            failed(span, exc)
            raise


def inject_traceparent(headers: MutableMapping[str, str]) -> None:
    """Add the current span's `traceparent` (and whatever else OTEL_PROPAGATORS names) to an outgoing request's
    headers, when the current span records."""
    if trace.get_current_span().is_recording():
        propagate.inject(headers)


@asynccontextmanager
async def entering(cm: AbstractAsyncContextManager[T], name: str,
                   attributes: Mapping[str, AttributeValue] | None = None) -> AsyncIterator[T]:
    """`cm`, with a span `name` (`child`) around its entry only: what it calls while opening records under that span;
    the body and the exit run under the caller's span. Same blocking, cancellation and errors as `cm`."""
    with child(name, attributes):
        value = await cm.__aenter__()
    try:
        yield value
    except BaseException as exc:
        if not await cm.__aexit__(type(exc), exc, exc.__traceback__):
            raise
    else:
        await cm.__aexit__(None, None, None)
