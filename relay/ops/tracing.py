"""OpenTelemetry traces (issue #25 §1): the SDK set up from the standard OTEL_* variables, the traced HTTP client
transport, and the tracing wrapper around each avatar provider.

Off unless `OTEL_TRACES_EXPORTER` names an exporter (`otlp`: OTLP over HTTP/protobuf, the only OTLP transport
installed; `console`: spans on stdout) and `OTEL_SDK_DISABLED` is not `true`. The specification makes `otlp` the
default when the variable is unset; the relay does not, so that a relay nobody configured sends nothing anywhere.
Everything else is the SDK's own reading of the environment: `OTEL_EXPORTER_OTLP_ENDPOINT` /
`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, `_HEADERS`, `_TIMEOUT`, `_COMPRESSION`; `OTEL_SERVICE_NAME` and
`OTEL_RESOURCE_ATTRIBUTES` (service.name defaults to `avatar-relay`); `OTEL_TRACES_SAMPLER` /
`OTEL_TRACES_SAMPLER_ARG`; `OTEL_BSP_*` (the batch span processor); `OTEL_PROPAGATORS` for outgoing headers.

With tracing off nothing is set up: no exporter thread, no span processor, the HTTP client and the providers are not
wrapped, and no conversation starts a trace (`relay.conversation.spans.conversation_trace` yields None). With it on
the batch span processor exports from its own thread; nothing here blocks the Trio loop.

What is traced, and where: `relay.conversation.spans` (the conversation, its turns), `relay.net.spans` (the agent
connection, the signed URL, WebSocket handshakes), and here: every outgoing HTTP call (`TracingTransport`, a client
span carrying `traceparent`) and each avatar provider's set-up and stop (`TracedProvider`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager

import httpx2
import trio
from dotenv import dotenv_values
from opentelemetry import trace
from opentelemetry.sdk.resources import SERVICE_NAME, SERVICE_VERSION, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.trace import SpanKind, StatusCode, use_span

from relay import __version__
from relay._util import leaves
from relay.avatars import AvatarProvider, AvatarSession, OnAvatarEvent, OnSessionCreated, OnStopFailed
from relay.conversation import spans as conversation_spans
from relay.net import spans

log = logging.getLogger("relay.tracing")

_provider: TracerProvider | None = None


def exporter_names(environ: Mapping[str, str]) -> list[str]:
    """The exporters OTEL_TRACES_EXPORTER names that the relay runs (`otlp`, `console`); [] when tracing is off
    (unset, `none`, or OTEL_SDK_DISABLED=true)."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return []
    names = [name.strip().lower() for name in environ.get("OTEL_TRACES_EXPORTER", "").split(",") if name.strip()]
    return [name for name in names if name != "none"]


def _exporter(name: str, environ: Mapping[str, str]) -> SpanExporter | None:
    if name == "console":
        return ConsoleSpanExporter()
    if name != "otlp":
        log.error("OTEL_TRACES_EXPORTER=%s: the relay exports traces with otlp (HTTP/protobuf) or console only", name)
        return None
    protocol = environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
    if protocol and protocol != "http/protobuf":
        log.error("OTEL_EXPORTER_OTLP_PROTOCOL=%s: the relay's OTLP exporter speaks http/protobuf only", protocol)
        return None
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter()


def configure_tracing(environ: Mapping[str, str] | None = None, env_file: str = ".env") -> bool:
    """Set up tracing in this process from the OTEL_* variables (see the module docstring), once: later calls return
    what the first decided. True when tracing is on. Without `environ`: the process's environment, where the OTEL_*
    lines of `env_file` (the relay's .env, as for its own settings) are added first, the real environment winning
    (the SDK reads `os.environ` itself). Starts the batch span processor's export thread (which the SDK flushes and
    ends at the process's exit); blocks on nothing."""
    global _provider
    if _provider is not None:
        return True
    if environ is None:
        for name, value in dotenv_values(env_file).items():
            if name.startswith("OTEL_") and value is not None:
                os.environ.setdefault(name, value)
        environ = os.environ
    exporters = [exporter for name in exporter_names(environ) if (exporter := _exporter(name, environ)) is not None]
    if not exporters:
        return False
    resource = Resource.create({SERVICE_VERSION: __version__})
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: "avatar-relay"}))
    provider = TracerProvider(resource=resource)  # the sampler: OTEL_TRACES_SAMPLER (parentbased_always_on)
    for exporter in exporters:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    _provider = provider
    spans.enable()
    _log_like_the_relay(logging.getLogger("opentelemetry"))
    log.info("tracing on: exporting with %s as service %s", ",".join(exporter_names(environ)),
             resource.attributes.get(SERVICE_NAME))
    return True


def _log_like_the_relay(logger: logging.Logger) -> None:
    """The SDK's own lines (an export that failed, a full queue) through the relay's handler: the same format (JSON
    lines stay JSON) and level."""
    relay = logging.getLogger("relay")
    handlers = [handler for handler in relay.handlers if getattr(handler, "_relay", False)]
    if handlers:
        logger.handlers = handlers
        logger.setLevel(relay.level)
        logger.propagate = False


class TracingTransport(httpx2.AsyncBaseTransport):
    """An HTTP transport that records each request made under a recording span as a client span (`GET /path`:
    method, host, port, path and status; never the query, a header or a body) and sends the span's `traceparent`.
    Same blocking and errors as the transport it wraps."""

    def __init__(self, inner: httpx2.AsyncBaseTransport) -> None:
        self.inner = inner

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        if not spans.recording():
            return await self.inner.handle_async_request(request)
        url = request.url
        with spans.child(f"{request.method} {url.path}", {
                "http.request.method": request.method, "server.address": url.host,
                "server.port": url.port or (443 if url.scheme == "https" else 80), "url.path": url.path},
                kind=SpanKind.CLIENT) as span:
            spans.inject_traceparent(request.headers)
            response = await self.inner.handle_async_request(request)
            if span is not None:
                span.set_attribute("http.response.status_code", response.status_code)
                if response.status_code >= 400:
                    span.set_status(StatusCode.ERROR, f"HTTP {response.status_code}")
            return response

    async def aclose(self) -> None:
        await self.inner.aclose()


def http_transport(limits: httpx2.Limits) -> httpx2.AsyncBaseTransport | None:
    """The transport for the relay's shared HTTP client: traced when tracing is on, else None (the client's own)."""
    if _provider is None:
        return None
    return TracingTransport(httpx2.AsyncHTTPTransport(limits=limits))


class TracedProvider:
    """An `AvatarProvider` whose session set-up (`avatar set-up`, with the provider's calls under it) and stop
    (`avatar stop`, under the conversation's `ending` when the conversation ends, else beside the session that died)
    are spans of the conversation's trace. Same blocking, cancellation, errors and guarantees as the wrapped
    provider; outside a traced conversation it only delegates."""

    def __init__(self, inner: AvatarProvider) -> None:
        self.name = inner.name
        self.inner = inner

    @asynccontextmanager
    async def open_session(self, on_event: OnAvatarEvent, *, on_created: OnSessionCreated | None = None,
                           on_stop_failed: OnStopFailed | None = None) -> AsyncIterator[AvatarSession]:
        held = conversation_spans.current_trace.get()
        if held is None:
            async with self.inner.open_session(on_event, on_created=on_created,
                                               on_stop_failed=on_stop_failed) as session:
                yield session
            return
        stop_failed = False

        async def unstoppable(session_id: str) -> None:
            nonlocal stop_failed
            stop_failed = True
            if on_stop_failed is not None:
                await on_stop_failed(session_id)

        cm = self.inner.open_session(on_event, on_created=on_created, on_stop_failed=unstoppable)
        setup = held.child("avatar set-up", {"avatar.provider": self.name})
        with use_span(setup, end_on_exit=True, record_exception=False, set_status_on_exception=False):
            try:
                session = await cm.__aenter__()
            except BaseException as exc:
                spans.failed(setup, exc)
                raise
            session_id = session.info.session_id or ""
            setup.set_attribute("avatar.session_id", session_id)
        conversation_spans.avatar_opened(self.name, session_id)
        try:
            yield session
        except BaseException as exc:
            ending = _cancelled(exc)
            stop = held.child("avatar stop", {"avatar.provider": self.name, "avatar.session_id": session_id,
                                              "avatar.stop_cause": "conversation_ended" if ending else _cause(exc)},
                              parent=held.begin_ending() if ending else None)
            with use_span(stop, end_on_exit=True, record_exception=False, set_status_on_exception=False):
                try:
                    if not await cm.__aexit__(type(exc), exc, exc.__traceback__):
                        raise
                finally:
                    if stop_failed:
                        stop.set_status(StatusCode.ERROR, "the provider's stop call failed")
        else:
            stop = held.child("avatar stop", {"avatar.provider": self.name,
                                              "avatar.session_id": session_id},
                              parent=held.begin_ending())
            with use_span(stop, end_on_exit=True, record_exception=False, set_status_on_exception=False):
                await cm.__aexit__(None, None, None)
                if stop_failed:
                    stop.set_status(StatusCode.ERROR, "the provider's stop call failed")


def _cause(exc: BaseException) -> str:
    """Why a session's context was left by `exc`: the first error's `reason` code (`session_ended`, ...), else its
    class."""
    first = leaves(exc)[0]
    reason = getattr(first, "reason", None)
    return reason if isinstance(reason, str) else type(first).__name__


def _cancelled(exc: BaseException) -> bool:
    if isinstance(exc, BaseExceptionGroup):
        return exc.subgroup(trio.Cancelled) is not None
    return isinstance(exc, trio.Cancelled)


def traced(provider: AvatarProvider) -> AvatarProvider:
    """`provider`, traced when tracing is on."""
    return provider if _provider is None else TracedProvider(provider)
