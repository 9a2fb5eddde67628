"""OpenTelemetry tracing of inference requests: off unless asked for, a handful of spans when on.

What turns it on (for ``shoal serve``; see :func:`configure_server`): ``--otel-endpoint URL``
(``SHOAL_OTEL_ENDPOINT``: an OTLP/HTTP collector's base URL, ``/v1/traces`` is appended), or
the standard variables: ``OTEL_EXPORTER_OTLP_ENDPOINT`` / ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``
set, or ``OTEL_TRACES_EXPORTER`` naming ``otlp`` (HTTP/protobuf) or ``console`` (one JSON line
per span on stderr). ``OTEL_SDK_DISABLED=true`` keeps it off whatever else says.
``OTEL_SERVICE_NAME`` names the service (``shoal`` when unset); the SDK itself reads
``OTEL_RESOURCE_ATTRIBUTES``, ``OTEL_TRACES_SAMPLER`` / ``OTEL_TRACES_SAMPLER_ARG``,
``OTEL_BSP_*`` and the OTLP exporter's own variables (headers, timeout, compression).
Programs that serve in-process (tests, embedding) call :func:`configure` with an exporter or a
span processor, and :func:`shutdown`.

The spans of one request (the server's side of it):

- ``shoal.infer`` (SERVER): the whole request, continuing the trace of the W3C ``traceparent``
  / ``tracestate`` the client sent (REST headers, gRPC metadata); ``shoal.model``,
  ``shoal.model.version``, ``shoal.protocol``, ``shoal.status`` (HTTP-style: 200, 400, 404,
  499 for a client that went away, 503...). Inside it ``shoal.decode`` and ``shoal.encode``.
- ``shoal.predict``: the model's stages, with ``shoal.model`` and ``shoal.model.version``.
  With adaptive batching each request also has a ``shoal.queue`` span (its wait for a batch);
  a merged batch runs as one ``shoal.predict`` span of its own (a trace of its own, with
  ``shoal.batch.size`` rows and ``shoal.batch.requests``) linked to every request it answers.
- ``shoal.node <name>`` for each graph node executed (``shoal.node``, ``shoal.node.kind``), and
  ``shoal.remote <model>`` (CLIENT) for each call to another server, which gets the
  ``traceparent`` of that span, so its own spans join the trace.

A failed span has ``shoal.status``; a server-side failure (5xx) also sets the span's status to
ERROR with the message. The sampler decides once per trace entry (a request, a merged batch);
the spans under it follow. Spans are made by :class:`Tracer` and reach the span processors, and
so the exporters, as the SDK's ``ReadableSpan``.

Off costs nothing: this module imports OpenTelemetry only when tracing is configured, and each
hook on the request path first reads :data:`TRACER` (``if tracing.TRACER is None``). The
helpers below are only called when it is set.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Awaitable, Coroutine, Iterator, Mapping, Sequence
from contextlib import contextmanager
from time import time_ns
from typing import Any, TypeVar
from urllib.parse import urlsplit

from ..errors import ShoalError
from . import logging as log

T = TypeVar("T")

#: The tracer while tracing is on, else None: the one thing a hook reads when it is off.
TRACER: Tracer | None = None

REQUEST = "shoal.infer"
DECODE = "shoal.decode"
ENCODE = "shoal.encode"
QUEUE = "shoal.queue"
PREDICT = "shoal.predict"

MODEL = "shoal.model"
VERSION = "shoal.model.version"
PROTOCOL = "shoal.protocol"
STATUS = "shoal.status"
BATCH_SIZE = "shoal.batch.size"
BATCH_REQUESTS = "shoal.batch.requests"
NODE = "shoal.node"
NODE_KIND = "shoal.node.kind"
REMOTE_MODEL = "shoal.remote.model"
REMOTE_ADDRESS = "shoal.remote.address"
REMOTE_PROTOCOL = "shoal.remote.protocol"

DEFAULT_SERVICE = "shoal"
EXTRA = "pip install 'shoal[otel]'"
EXPORTERS = ("otlp", "console")
TRACES_PATH = "/v1/traces"
_OTLP_PROTOCOL = "http/protobuf"

# What the hooks use of OpenTelemetry, bound by _bind() when tracing is configured (this
# module must not import it before: ``import shoal`` stays free of it).
_provider: Any = None
_attach: Any = None
_detach: Any = None
_in_context: Any = None
_span_of: Any = None
_link: Any = None
_propagator: Any = None
_error: Any = None
_unset: Any = None
_NonRecordingSpan: Any = None
_SpanContext: Any = None
_ReadableSpan: Any = None
_SAMPLED: Any = None
_NOT_SAMPLED: Any = None
_SERVER: Any = None
_CLIENT: Any = None
_INTERNAL: Any = None
#: An empty context: the parent of a request span whose client sent no ``traceparent``.
_ROOT: Any = None


# -- configuration ---------------------------------------------------------------------------


def check_endpoint(url: str) -> str:
    """``--otel-endpoint`` as an OTLP/HTTP traces URL (the base URL plus ``/v1/traces``, as
    the OTLP specification says for a base endpoint); ValueError naming what is wrong."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{url!r} is not an http(s):// URL of an OTLP/HTTP collector "
                         "(e.g. http://collector:4318)")
    base = url.rstrip("/")
    return base if base.endswith(TRACES_PATH) else base + TRACES_PATH


def requested(endpoint: str | None, environ: Mapping[str, str] = os.environ) -> list[str]:
    """The exporters a server is asked to use (none: tracing stays off), from ``endpoint``
    (``--otel-endpoint``) and the standard ``OTEL_*`` variables. SystemExit for what Shoal
    cannot do, so that a misconfigured server stops at startup, not silently untraced."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return []
    named = [n.strip().lower() for n in environ.get("OTEL_TRACES_EXPORTER", "").split(",")]
    named = [n for n in named if n]
    unknown = [n for n in named if n not in (*EXPORTERS, "none")]
    if unknown:
        raise SystemExit(f"OTEL_TRACES_EXPORTER={environ['OTEL_TRACES_EXPORTER']}: Shoal "
                         f"exports traces with {' or '.join(EXPORTERS)} (or none), not "
                         f"{', '.join(unknown)}")
    exporters = [n for n in named if n != "none"]
    if not named and (environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
                      or environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")):
        exporters = ["otlp"]
    if endpoint and "otlp" not in exporters:  # the flag asks for OTLP whatever the variables say
        exporters.append("otlp")
    if endpoint:
        try:
            check_endpoint(endpoint)
        except ValueError as exc:
            raise SystemExit(f"--otel-endpoint: {exc}") from None
    if "otlp" in exporters:
        for variable in ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"):
            protocol = environ.get(variable, "").strip().lower()
            if protocol and protocol != _OTLP_PROTOCOL:
                raise SystemExit(f"{variable}={protocol}: Shoal exports OTLP over "
                                 f"{_OTLP_PROTOCOL} only; set it to {_OTLP_PROTOCOL} or unset it")
            if protocol:
                break  # the traces-specific variable wins over the general one
    if exporters:
        _import_sdk("otlp" in exporters)
    return exporters


def configure_server(endpoint: str | None) -> bool:
    """Turn tracing on for a server process when ``endpoint`` or the ``OTEL_*`` variables ask
    for it; True if this call configured it (the server then shuts it down when it stops).

    A process whose tracing was already configured (:func:`configure`, by a program serving
    in-process) keeps it: the program owns it.
    """
    if TRACER is not None:
        return False
    exporters = requested(endpoint)
    if not exporters:
        return False
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    processors = [BatchSpanProcessor(_exporter(name, endpoint)) for name in exporters]
    _install(processors, None)
    log.event("tracing", exporters=exporters, service=_provider.resource.attributes.get(
        "service.name"), **({"endpoint": check_endpoint(endpoint)} if endpoint else {}))
    return True


def configure(target: Any, service_name: str | None = None) -> None:
    """Turn tracing on in this process, for programs that serve in-process (tests, embedding):
    ``target`` is a span processor, used as it is (``SimpleSpanProcessor(InMemorySpanExporter())``
    hands each span over as it ends), or a span exporter, put behind a ``BatchSpanProcessor``
    (exports never run on the request path). Replaces, and shuts down, an earlier setup."""
    _import_sdk(False)
    from opentelemetry.sdk.trace import SpanProcessor
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    processor = target if isinstance(target, SpanProcessor) else BatchSpanProcessor(target)
    shutdown()
    _install([processor], service_name)


def shutdown() -> None:
    """Turn tracing off, after exporting the spans still queued (a server calls this once
    its requests have drained). Nothing to do when it is off."""
    global TRACER, _provider
    provider = _provider
    TRACER = _provider = None
    if provider is not None:
        provider.shutdown()


def enabled() -> bool:
    return TRACER is not None


def _import_sdk(otlp: bool) -> None:
    try:
        import opentelemetry.sdk.trace

        if otlp:
            import opentelemetry.exporter.otlp.proto.http.trace_exporter  # noqa: F401
    except ImportError as exc:
        raise SystemExit(f"tracing needs OpenTelemetry, which is not installed ({exc.name}): "
                         f"{EXTRA}") from None


def _exporter(name: str, endpoint: str | None) -> Any:
    if name == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        # stderr, one line per span, beside the log lines: stdout carries the startup line.
        return ConsoleSpanExporter(out=sys.stderr,
                                   formatter=lambda span: span.to_json(indent=None) + "\n")
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    # Without --otel-endpoint the exporter reads the OTEL_EXPORTER_OTLP_* variables itself.
    return OTLPSpanExporter(endpoint=check_endpoint(endpoint) if endpoint else None)


def _install(processors: Sequence[Any], service_name: str | None) -> None:
    """A tracer provider of our own (the global one is left to the program): it holds the
    resource, the sampler the ``OTEL_TRACES_SAMPLER`` variables choose, the id generator and
    the processors (shut down, so flushed, with it). Spans are made by :class:`Tracer`."""
    global TRACER, _provider
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.util.instrumentation import InstrumentationScope

    from .. import __version__

    resource = Resource.create({"service.version": __version__})
    if service_name is not None:
        resource = resource.merge(Resource({SERVICE_NAME: service_name}))
    elif str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: DEFAULT_SERVICE}))
    provider = TracerProvider(resource=resource, shutdown_on_exit=False)
    for processor in processors:
        provider.add_span_processor(processor)
    _bind()
    _provider = provider
    TRACER = Tracer(provider, processors, InstrumentationScope("shoal", __version__))


def _bind() -> None:
    global _attach, _detach, _in_context, _span_of, _link, _propagator, _error, _unset
    global _NonRecordingSpan, _SpanContext, _ReadableSpan, _SAMPLED, _NOT_SAMPLED
    global _SERVER, _CLIENT, _INTERNAL, _ROOT
    from opentelemetry import context, trace
    from opentelemetry.sdk.trace import ReadableSpan
    from opentelemetry.trace.propagation import tracecontext

    _attach, _detach = context.attach, context.detach
    _in_context, _span_of, _link = trace.set_span_in_context, trace.get_current_span, trace.Link
    _propagator = tracecontext.TraceContextTextMapPropagator()
    _error = lambda message: trace.Status(trace.StatusCode.ERROR, message)
    _unset = trace.Status(trace.StatusCode.UNSET)
    _NonRecordingSpan, _SpanContext, _ReadableSpan = trace.NonRecordingSpan, trace.SpanContext, ReadableSpan
    _SAMPLED = trace.TraceFlags(trace.TraceFlags.SAMPLED)
    _NOT_SAMPLED = trace.TraceFlags(trace.TraceFlags.DEFAULT)
    _SERVER, _CLIENT, _INTERNAL = trace.SpanKind.SERVER, trace.SpanKind.CLIENT, trace.SpanKind.INTERNAL
    _ROOT = context.Context()


# -- spans (made only while TRACER is set) -----------------------------------------------------


class Tracer:
    """Makes Shoal's spans and hands each, once it has ended, to the span processors as the
    SDK's ``ReadableSpan`` (so processors and exporters see ordinary spans).

    Why not the SDK's own ``Tracer``: its spans cost about 15 us each here (sampler call,
    bounded attributes and lists with their locks, a copy made at the end), some four times
    what these cost, and a request has four or five; measured, that kept a one-row model's
    throughput under 60 % of the untraced one. The sampler decides once per trace entry (a
    request, a merged batch): the spans under a sampled span are sampled, as the SDK's default
    parent-based sampler decides. What is given up: processors' ``on_start`` (called for no
    span), span limits (these spans carry a few attributes), and code run inside a span can
    read its context (``trace.get_current_span()``, to start child spans or propagate it) but
    not add to it.
    """

    def __init__(self, provider: Any, processors: Sequence[Any], scope: Any) -> None:
        self._sampler = provider.sampler
        self._ids = provider.id_generator
        self._resource = provider.resource
        self._scope = scope
        self._processors = tuple(processors)

    def root(self, name: str, parent: Any, kind: Any, attributes: Mapping[str, Any] | None,
             links: Sequence[Any] = ()) -> Span:
        """A span that enters a trace: under ``parent`` (a context holding the remote caller's
        span, or none), as the sampler decides."""
        caller = _span_of(parent).get_span_context()
        trace_id = caller.trace_id if caller.is_valid else self._ids.generate_trace_id()
        decision = self._sampler.should_sample(parent, trace_id, name, kind, attributes, links)
        sampled = decision.decision.is_sampled()
        context = _SpanContext(trace_id, self._ids.generate_span_id(), False,
                               _SAMPLED if sampled else _NOT_SAMPLED, decision.trace_state)
        return Span(self if sampled else None, name, context,
                    caller if caller.is_valid else None, kind, attributes, links)

    def child(self, name: str, parent: Any, kind: Any = None,
              attributes: Mapping[str, Any] | None = None) -> Span:
        """A span under ``parent`` (a span context), sampled as it is."""
        flags = parent.trace_flags
        context = _SpanContext(parent.trace_id, self._ids.generate_span_id(), False, flags,
                               parent.trace_state)
        return Span(self if flags.sampled else None, name, context, parent, kind or _INTERNAL,
                    attributes, ())

    def under_current(self, name: str, kind: Any = None,
                      attributes: Mapping[str, Any] | None = None) -> Span:
        """A span under the current one, or (outside any) one that starts a trace."""
        parent = _span_of().get_span_context()
        if parent.is_valid:
            return self.child(name, parent, kind, attributes)
        return self.root(name, _ROOT, kind or _INTERNAL, attributes)

    def export(self, span: Span, end: int, attributes: Mapping[str, Any] | None,
               status: Any) -> None:
        readable = _ReadableSpan(
            span.name, span.context, span.parent, self._resource, attributes, (), span.links,
            span.kind, status=status, start_time=span.start, end_time=end,
            instrumentation_scope=self._scope,
        )
        for processor in self._processors:
            processor.on_end(readable)


class Span:
    """One span being recorded: its context (for children and for propagation), and what
    :meth:`Tracer.export` needs when it ends. Not sampled: ``tracer`` is None, and ending it
    exports nothing."""

    __slots__ = ("tracer", "name", "context", "parent", "kind", "attributes", "links", "start",
                 "ended")

    def __init__(self, tracer: Tracer | None, name: str, context: Any, parent: Any, kind: Any,
                 attributes: Mapping[str, Any] | None, links: Sequence[Any]) -> None:
        self.tracer = tracer
        self.name = name
        self.context = context
        self.parent = parent
        self.kind = kind
        self.attributes = attributes
        self.links = links
        self.start = time_ns()
        self.ended = False

    def end(self, error: BaseException | None = None,
            attributes: Mapping[str, Any] | None = None) -> None:
        """End it (once): ``attributes`` are added; a failure sets its ``shoal.status``, and
        a 5xx its ERROR status."""
        if self.ended:
            return
        self.ended = True
        if self.tracer is None:
            return
        end, status = time_ns(), _unset
        if error is not None:
            code = status_of(error)
            attributes = {**(attributes or {}), STATUS: code}
            if code >= 500:
                status = _error(str(error) or type(error).__name__)
        if attributes:
            attributes = {**self.attributes, **attributes} if self.attributes else attributes
        else:
            attributes = self.attributes
        self.tracer.export(self, end, attributes, status)

    def current(self, base: Any = None) -> object:
        """Make this span the current one (the parent of spans started under it, the
        ``traceparent`` of calls made under it); returns the token to detach."""
        return _attach(_in_context(_NonRecordingSpan(self.context), base))


def status_of(error: BaseException | None) -> int:
    """A span's ``shoal.status``: what the client is answered, in HTTP terms."""
    if error is None:
        return 200
    if isinstance(error, ShoalError):
        return error.http_status
    if isinstance(error, asyncio.CancelledError):
        return 499  # the client went away (or the work was cut off)
    return 500


def end_open(span: Span | None) -> None:
    """End ``span`` unless it has ended."""
    if span is not None:
        span.end()


def start_request(headers: Any, attributes: Mapping[str, Any]) -> tuple[Span, object]:
    """A request's SERVER span, made current: it continues the trace of the ``traceparent``
    (and ``tracestate``) in ``headers`` (the transports' raw source, see
    ``shoal.graph.context.HEADERS``), or starts one. Returns it with the token that
    :func:`end_request` takes."""
    span = TRACER.root(REQUEST, _incoming(headers), _SERVER, attributes)
    return span, span.current(_ROOT)


def end_request(span: Span, token: object, version: str, error: BaseException | None) -> None:
    """End the span :func:`start_request` began, with the version that answered (a rollout's
    variant: ``model:version``) and the request's status."""
    _detach(token)
    status = status_of(error)
    span.end(error if status >= 500 else None, {VERSION: version, STATUS: status})


def call_in_span(parent: Span, name: str, fn: Any, *args: Any) -> Any:
    """``fn(*args)`` (quick, synchronous, calling nothing traced: decoding, encoding) as a
    child span of ``parent``."""
    span = TRACER.child(name, parent.context)
    try:
        result = fn(*args)
    except BaseException as exc:
        span.end(exc)
        raise
    span.end()
    return result


def start(name: str) -> Span:
    """A span under the current one, not made current (the caller ends it)."""
    return TRACER.under_current(name)


def capture() -> Any:
    """The current span's context, for work another task does on this one's behalf (a batch)."""
    return _span_of().get_span_context()


async def run_in_span(work: Awaitable[T], span: Span, base: Any = None) -> T:
    """Await ``work`` with ``span`` current (spans ``work`` starts, a remote call's, become its
    children), and end it."""
    token = span.current(base)
    try:
        result = await work
    except BaseException as exc:
        _detach(token)
        span.end(exc)
        raise
    _detach(token)
    span.end()
    return result


def predict(
    work: Awaitable[T], attributes: Mapping[str, Any], members: Sequence[Any] | None,
    rows: int = 0,
) -> Coroutine[Any, Any, T]:
    """``work`` (a model's stages) in its ``shoal.predict`` span. ``members``: for a batch,
    the span contexts its requests were submitted in (:func:`capture`); one request's predict
    is a child of that request's span, a merged batch's a trace of its own linked to each."""
    if members is None:
        return run_in_span(work, TRACER.under_current(PREDICT, None, attributes))
    known = [member for member in members if member is not None and member.is_valid]
    if len(members) == 1 and known:
        return run_in_span(work, TRACER.child(PREDICT, known[0], None, attributes), _ROOT)
    links = [_link(member) for member in known]
    batch = {**attributes, BATCH_SIZE: rows, BATCH_REQUESTS: len(members)}
    return run_in_span(work, TRACER.root(PREDICT, _ROOT, _INTERNAL, batch, links), _ROOT)


@contextmanager
def active(name: str, attributes: Mapping[str, Any] | None, kind: Any = None) -> Iterator[Span]:
    """A span under the current one, current for the ``with`` block; an exception leaving
    it is recorded."""
    span = TRACER.under_current(name, kind, attributes)
    token = span.current()
    error: BaseException | None = None
    try:
        yield span
    except BaseException as exc:
        error = exc
        raise
    finally:
        _detach(token)
        span.end(error)


@contextmanager
def client_span(name: str, attributes: Mapping[str, Any] | None) -> Iterator[dict[str, str]]:
    """A CLIENT span around a call to another server; yields the headers (``traceparent``,
    ``tracestate``) that carry it there, for the request's HTTP headers or gRPC metadata."""
    with active(name, attributes, _CLIENT):
        carrier: dict[str, str] = {}
        _propagator.inject(carrier)
        yield carrier


def _incoming(headers: Any) -> Any:
    """The caller's trace context out of the request's raw headers: ASGI's list of (bytes,
    bytes) pairs, or a callable returning gRPC metadata (str pairs). One pass, no dict of
    every header."""
    if headers is None:
        return _ROOT
    if callable(headers):
        pairs, parent_key, state_key = headers() or (), "traceparent", "tracestate"
    else:
        pairs, parent_key, state_key = headers, b"traceparent", b"tracestate"
    parent: Any = None
    states: list[Any] = []
    for key, value in pairs:
        if key == parent_key:
            parent = value
        elif key == state_key:
            states.append(value)
    if parent is None:
        return _ROOT
    carrier = {"traceparent": _text(parent)}
    if states:
        carrier["tracestate"] = ",".join(_text(s) for s in states)
    return _propagator.extract(carrier, _ROOT)


def _text(value: Any) -> str:
    return value.decode("latin-1") if isinstance(value, bytes) else str(value)
