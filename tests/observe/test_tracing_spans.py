"""Shoal's spans at the level of ``shoal.observe.tracing``: sampling (once per trace entry,
the caller's decision respected), propagation, statuses, and ending once."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from shoal.errors import InvalidInput, ModelFailure
from shoal.observe import tracing

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER = "00f067aa0ba902b7"


@pytest.fixture
def exporter(monkeypatch: pytest.MonkeyPatch) -> Iterator[InMemorySpanExporter]:
    for name in ("OTEL_TRACES_SAMPLER", "OTEL_TRACES_SAMPLER_ARG"):
        monkeypatch.delenv(name, raising=False)
    exporter = InMemorySpanExporter()
    tracing.configure(SimpleSpanProcessor(exporter))
    try:
        yield exporter
    finally:
        tracing.shutdown()


def headers(flags: str = "01") -> list[tuple[bytes, bytes]]:
    return [(b"host", b"x"), (b"traceparent", f"00-{TRACE}-{CALLER}-{flags}".encode())]


def test_spans_nest_and_propagate(exporter: InMemorySpanExporter) -> None:
    span, token = tracing.start_request(headers(), {tracing.MODEL: "m"})
    with tracing.client_span("shoal.remote m", {tracing.REMOTE_MODEL: "m"}) as sent:
        pass
    tracing.end_request(span, token, "1", None)
    call, request = exporter.get_finished_spans()
    assert call.kind is SpanKind.CLIENT and call.parent.span_id == request.context.span_id
    assert sent == {"traceparent": f"00-{TRACE}-{call.context.span_id:016x}-01"}
    assert request.parent.span_id == int(CALLER, 16)
    assert dict(request.attributes) == {"shoal.model": "m", "shoal.model.version": "1",
                                        "shoal.status": 200}
    assert tracing.capture().is_valid is False  # nothing is current any more


def test_an_unsampled_caller_is_not_recorded_but_its_decision_travels_on(
    exporter: InMemorySpanExporter,
) -> None:
    span, token = tracing.start_request(headers("00"), {})
    with tracing.client_span("shoal.remote m", None) as sent:
        pass
    assert asyncio.run(tracing.predict(asyncio.sleep(0, "done"), {}, None)) == "done"
    tracing.end_request(span, token, "1", None)
    assert exporter.get_finished_spans() == ()
    assert sent["traceparent"].startswith(f"00-{TRACE}-") and sent["traceparent"].endswith("-00")


def test_the_sampler_the_variables_choose_decides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "always_off")
    exporter = InMemorySpanExporter()
    tracing.configure(SimpleSpanProcessor(exporter))
    try:
        span, token = tracing.start_request(None, {})
        tracing.end_request(span, token, "1", None)
    finally:
        tracing.shutdown()
    assert exporter.get_finished_spans() == ()


def test_failures_set_the_status(exporter: InMemorySpanExporter) -> None:
    span, token = tracing.start_request(None, {})
    with pytest.raises(InvalidInput):
        tracing.call_in_span(span, tracing.DECODE, _raise, InvalidInput("bad"))
    with pytest.raises(ModelFailure), tracing.active("shoal.node n", None):
        raise ModelFailure("broke")
    tracing.end_request(span, token, "", ModelFailure("broke"))
    decode, node, request = exporter.get_finished_spans()
    assert decode.attributes["shoal.status"] == 400
    assert decode.status.status_code is StatusCode.UNSET  # the client's error
    assert node.attributes["shoal.status"] == 500
    assert (node.status.status_code, node.status.description) == (StatusCode.ERROR, "broke")
    assert request.parent is None and request.attributes["shoal.status"] == 500
    assert request.status.status_code is StatusCode.ERROR


def test_a_span_ends_once(exporter: InMemorySpanExporter) -> None:
    queued = tracing.start(tracing.QUEUE)
    tracing.end_open(queued)
    tracing.end_open(queued)
    tracing.end_open(None)
    assert [s.name for s in exporter.get_finished_spans()] == [tracing.QUEUE]


def test_off_is_one_attribute() -> None:
    assert tracing.TRACER is None and not tracing.enabled()
    tracing.shutdown()  # nothing to do


def _raise(error: Exception) -> None:
    raise error
