"""OpenTelemetry tracing in a server run in-process, with the SDK's in-memory exporter: one
trace per request continuing the caller's ``traceparent`` (REST headers, gRPC metadata), the
decode / predict / encode spans inside it, graph nodes, adaptive batching (a queue span per
request, one predict span per merged batch linked from each request); and, off, no span and
no OpenTelemetry import at all."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import httpx
import pytest
import yaml
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from tracing_helpers import (
    InProcess,
    iris_rows,
    serve_in_process,
    sklearn_iris,
    traceparent,
    v2_body,
    write,
)

from shoal.observe import tracing
from shoal.protocol.grpc_gen import grpc_service_pb2 as pb
from shoal.protocol.grpc_gen import grpc_service_pb2_grpc as pb_grpc

HERE = Path(__file__).resolve().parent

#: Held closed by the test while requests queue behind the one it is running (see
#: test_a_merged_batch_is_one_predict_span_linked_from_each_request).
GATE = threading.Event()
ENTERED = threading.Event()

GATED = """
    from shoal import Model

    class Gated(Model):
        def predict(self, request):
            from test_tracing import ENTERED, GATE  # this test module, already imported

            ENTERED.set()
            GATE.wait(30)
            return {"y": request.as_numpy() * 2}
"""


def repository(root: Path) -> Path:
    sklearn_iris(root / "iris" / "1")
    write(root / "gated" / "model.py", GATED)
    write(root / "gated" / "model.yaml",
          "runtime: custom\nmax_batch_size: 8\nmax_batch_delay_ms: 50\n")
    write(root / "pipeline" / "graph.yaml", yaml.safe_dump({"nodes": {
        "root": {"kind": "sequence", "steps": ["first"]},
        "first": {"kind": "model", "model": "iris"},
    }}))
    return root


@pytest.fixture(scope="module")
def exporter() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    tracing.configure(SimpleSpanProcessor(exporter), service_name="shoal-test")
    try:
        yield exporter
    finally:
        tracing.shutdown()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory,
           exporter: InMemorySpanExporter) -> Iterator[InProcess]:
    with serve_in_process(repository(tmp_path_factory.mktemp("traced"))) as running:
        yield running


def new_trace() -> str:
    return secrets.token_hex(16)


def spans_of(exporter: InMemorySpanExporter, trace_id: str) -> list[ReadableSpan]:
    """The spans of one trace: every span has ended once its response has been sent."""
    wanted = int(trace_id, 16)
    return [s for s in exporter.get_finished_spans() if s.context.trace_id == wanted]


def by_name(spans: list[ReadableSpan]) -> dict[str, ReadableSpan]:
    named = {s.name: s for s in spans}
    assert len(named) == len(spans), sorted(s.name for s in spans)
    return named


def parent_of(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


def assert_request_trace(spans: list[ReadableSpan], trace_id: str, model: str, protocol: str,
                         caller: str) -> ReadableSpan:
    """One request's trace: the SERVER span under the caller's span, decode, predict and
    encode inside it."""
    named = by_name(spans)
    assert set(named) == {"shoal.infer", "shoal.decode", "shoal.predict", "shoal.encode"}
    request = named["shoal.infer"]
    assert request.kind is SpanKind.SERVER
    assert request.context.trace_id == int(trace_id, 16)
    assert parent_of(request) == int(caller, 16) and request.parent.is_remote
    assert dict(request.attributes) == {
        "shoal.model": model, "shoal.model.version": "1", "shoal.protocol": protocol,
        "shoal.status": 200,
    }
    for step in ("shoal.decode", "shoal.predict", "shoal.encode"):
        assert parent_of(named[step]) == request.context.span_id, step
    assert named["shoal.predict"].attributes["shoal.model"] == model
    assert named["shoal.decode"].end_time <= named["shoal.predict"].start_time
    assert named["shoal.predict"].end_time <= named["shoal.encode"].start_time
    return request


def test_a_rest_request_continues_the_callers_trace(server: InProcess, exporter) -> None:
    trace_id, caller = new_trace(), secrets.token_hex(8)
    reply = httpx.post(f"{server.url}/v2/models/iris/infer", json=v2_body(),
                       headers={"traceparent": traceparent(trace_id, caller),
                                "tracestate": "vendor=opaque"})
    assert reply.status_code == 200, reply.text
    request = assert_request_trace(spans_of(exporter, trace_id), trace_id, "iris", "v2-rest", caller)
    assert request.context.trace_state.get("vendor") == "opaque"
    assert request.resource.attributes["service.name"] == "shoal-test"


def test_a_grpc_request_continues_the_trace_in_its_metadata(server: InProcess, exporter) -> None:
    trace_id, caller = new_trace(), secrets.token_hex(8)
    rows = iris_rows(1)
    message = pb.ModelInferRequest(
        model_name="iris",
        inputs=[pb.ModelInferRequest.InferInputTensor(name="x", datatype="FP64", shape=[1, 4])],
        raw_input_contents=[rows.astype("<f8").tobytes()],
    )
    with grpc.insecure_channel(server.grpc_target) as channel:
        pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(
            message, metadata=(("traceparent", traceparent(trace_id, caller)),), timeout=10
        )
    assert_request_trace(spans_of(exporter, trace_id), trace_id, "iris", "v2-grpc", caller)


def test_a_request_without_traceparent_starts_a_trace(server: InProcess, exporter) -> None:
    exporter.clear()
    reply = httpx.post(f"{server.url}/v2/models/iris/infer", json=v2_body())
    assert reply.status_code == 200
    requests = [s for s in exporter.get_finished_spans() if s.name == "shoal.infer"]
    assert len(requests) == 1 and requests[0].parent is None
    trace = spans_of(exporter, format(requests[0].context.trace_id, "032x"))
    assert sorted(s.name for s in trace) == [
        "shoal.decode", "shoal.encode", "shoal.infer", "shoal.predict"
    ]


def test_failed_requests_say_how_they_failed(server: InProcess, exporter) -> None:
    unknown, invalid = new_trace(), new_trace()
    missing = httpx.post(f"{server.url}/v2/models/nope/infer", json=v2_body(),
                         headers={"traceparent": traceparent(unknown)})
    assert missing.status_code == 404
    [request] = spans_of(exporter, unknown)  # never decoded
    assert request.attributes["shoal.status"] == 404
    assert request.status.status_code is StatusCode.UNSET  # the client's error, not the server's

    bad = httpx.post(f"{server.url}/v2/models/iris/infer", content=b'{"inputs": [',
                     headers={"traceparent": traceparent(invalid)})
    assert bad.status_code == 400
    named = by_name(spans_of(exporter, invalid))
    assert set(named) == {"shoal.infer", "shoal.decode"}
    assert named["shoal.infer"].attributes["shoal.status"] == 400
    assert named["shoal.decode"].attributes["shoal.status"] == 400


def test_each_graph_node_is_a_span_around_what_it_calls(server: InProcess, exporter) -> None:
    trace_id = new_trace()
    reply = httpx.post(f"{server.url}/v2/models/pipeline/infer", json=v2_body(),
                       headers={"traceparent": traceparent(trace_id)})
    assert reply.status_code == 200, reply.text
    named = by_name(spans_of(exporter, trace_id))
    assert set(named) == {"shoal.infer", "shoal.decode", "shoal.node root", "shoal.node first",
                          "shoal.predict", "shoal.encode"}
    request, root, first = named["shoal.infer"], named["shoal.node root"], named["shoal.node first"]
    assert request.attributes["shoal.model"] == "pipeline"
    assert parent_of(root) == request.context.span_id
    assert dict(root.attributes) == {"shoal.node": "root", "shoal.node.kind": "sequence"}
    assert parent_of(first) == root.context.span_id
    assert dict(first.attributes) == {"shoal.node": "first", "shoal.node.kind": "model"}
    predict = named["shoal.predict"]
    assert parent_of(predict) == first.context.span_id
    assert predict.attributes["shoal.model"] == "iris"


def test_a_merged_batch_is_one_predict_span_linked_from_each_request(
    server: InProcess, exporter
) -> None:
    """The first request holds the model (GATE closed) while three more queue behind it: they
    then run as one merged batch, deterministically."""
    traces = [new_trace() for _ in range(4)]
    in_flight = server.server.metrics.registry
    GATE.clear()
    ENTERED.clear()

    def send(trace_id: str, value: float) -> httpx.Response:
        body = {"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP64",
                            "data": [value, value]}]}
        return httpx.post(f"{server.url}/v2/models/gated/infer", json=body, timeout=30,
                          headers={"traceparent": traceparent(trace_id)})

    with ThreadPoolExecutor(4) as pool:
        first = pool.submit(send, traces[0], 0.0)
        assert ENTERED.wait(10)
        queued = [pool.submit(send, t, float(i)) for i, t in enumerate(traces[1:], 1)]
        # All four inside the data plane: the three new ones reach the batching queue before
        # their task next yields (decoding and submitting never await), so they are queued.
        deadline = time.monotonic() + 10
        while in_flight.get_sample_value("shoal_requests_in_flight", {"model": "gated"}) != 4:
            assert time.monotonic() < deadline, "requests never reached the server"
            time.sleep(0.005)
        GATE.set()
        replies = [first.result(), *(f.result() for f in queued)]
    for i, reply in enumerate(replies):
        assert reply.status_code == 200, reply.text
        assert reply.json()["outputs"][0]["data"] == [2.0 * i] * 2

    requests = {}
    for trace_id in traces:
        named = by_name(spans_of(exporter, trace_id))
        request = named["shoal.infer"]
        assert parent_of(named["shoal.queue"]) == request.context.span_id
        requests[trace_id] = (named, request)

    alone, alone_request = requests[traces[0]]
    assert set(alone) == {"shoal.infer", "shoal.decode", "shoal.queue", "shoal.predict",
                          "shoal.encode"}
    assert parent_of(alone["shoal.predict"]) == alone_request.context.span_id
    assert alone["shoal.queue"].end_time <= alone["shoal.predict"].start_time

    merged_spans = [s for s in exporter.get_finished_spans() if s.name == "shoal.predict"
                    and {link.context.trace_id for link in s.links} >= {int(t, 16) for t in traces[1:]}]
    assert len(merged_spans) == 1
    merged = merged_spans[0]
    assert merged.parent is None  # a trace of its own, not any one request's
    assert dict(merged.attributes) == {"shoal.model": "gated", "shoal.model.version": "1",
                                       "shoal.batch.size": 3, "shoal.batch.requests": 3}
    linked = {(link.context.trace_id, link.context.span_id) for link in merged.links}
    assert linked == {(request.context.trace_id, request.context.span_id)
                      for named, request in (requests[t] for t in traces[1:])}
    for trace_id in traces[1:]:
        named, _ = requests[trace_id]
        assert set(named) == {"shoal.infer", "shoal.decode", "shoal.queue", "shoal.encode"}
        assert named["shoal.queue"].end_time <= merged.start_time


# -- off -----------------------------------------------------------------------------------------

OFF = textwrap.dedent("""
    import json, sys
    from pathlib import Path

    import grpc, httpx

    from shoal.observe import tracing
    from shoal.protocol.grpc_gen import grpc_service_pb2 as pb
    from shoal.protocol.grpc_gen import grpc_service_pb2_grpc as pb_grpc
    from tracing_helpers import serve_in_process, traceparent, v2_body

    with serve_in_process(Path(sys.argv[1])) as running:
        header = {"traceparent": traceparent("4bf92f3577b34da6a3ce929d0e0e4736")}
        rest = httpx.post(f"{running.url}/v2/models/pipeline/infer", json=v2_body(),
                          headers=header).status_code
        message = pb.ModelInferRequest(
            model_name="iris", raw_input_contents=[bytes(32)],
            inputs=[pb.ModelInferRequest.InferInputTensor(name="x", datatype="FP64",
                                                          shape=[1, 4])])
        with grpc.insecure_channel(running.grpc_target) as channel:
            pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(
                message, metadata=tuple(header.items()), timeout=10)
        print(json.dumps({"rest": rest, "tracing": tracing.enabled(),
                          "imported": sorted(m for m in sys.modules if m.startswith("opentelemetry"))}))
""")


def test_off_no_opentelemetry_is_imported_by_served_requests(tmp_path: Path) -> None:
    root = tmp_path / "models"
    sklearn_iris(root / "iris" / "1")
    write(root / "pipeline" / "graph.yaml", yaml.safe_dump({"nodes": {
        "root": {"kind": "model", "model": "iris"}}}))
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), env.get("PYTHONPATH", "")])
    done = subprocess.run([sys.executable, "-c", OFF, str(root)], capture_output=True,
                          text=True, env=env, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report == {"rest": 200, "tracing": False, "imported": []}


# -- configuration -------------------------------------------------------------------------------


@pytest.mark.parametrize(("environ", "endpoint", "expected"), [
    ({}, None, []),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}, None, ["otlp"]),
    ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4318/v1/traces"}, None, ["otlp"]),
    ({"OTEL_TRACES_EXPORTER": "console"}, None, ["console"]),
    ({"OTEL_TRACES_EXPORTER": "otlp,console"}, None, ["otlp", "console"]),
    ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}, None, []),
    ({}, "http://collector:4318", ["otlp"]),
    ({"OTEL_TRACES_EXPORTER": "console"}, "http://collector:4318", ["console", "otlp"]),
    ({"OTEL_SDK_DISABLED": "true"}, "http://collector:4318", []),
    ({"OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"}, "http://collector:4318", ["otlp"]),
])
def test_what_asks_for_tracing(environ: dict[str, str], endpoint: str | None,
                               expected: list[str]) -> None:
    assert tracing.requested(endpoint, environ) == expected


@pytest.mark.parametrize(("environ", "endpoint", "message"), [
    ({"OTEL_TRACES_EXPORTER": "zipkin"}, None, "not zipkin"),
    ({"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, "http://c:4318", "http/protobuf only"),
    ({"OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/json",
      "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}, None, "http/protobuf only"),
    ({}, "collector:4318", "--otel-endpoint"),
])
def test_what_shoal_cannot_do_stops_it(environ: dict[str, str], endpoint: str | None,
                                       message: str) -> None:
    with pytest.raises(SystemExit, match=message):
        tracing.requested(endpoint, environ)


def test_without_the_extra_startup_names_the_pip_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "opentelemetry.exporter.otlp.proto.http.trace_exporter", None)
    with pytest.raises(SystemExit, match=r"pip install 'shoal\[otel\]'"):
        tracing.requested("http://collector:4318", {})


def test_the_endpoint_is_a_base_url() -> None:
    assert tracing.check_endpoint("http://c:4318") == "http://c:4318/v1/traces"
    assert tracing.check_endpoint("https://c/otlp/") == "https://c/otlp/v1/traces"
    assert tracing.check_endpoint("http://c:4318/v1/traces") == "http://c:4318/v1/traces"
    with pytest.raises(ValueError):
        tracing.check_endpoint("grpc://c:4317")


def test_a_misconfigured_server_does_not_start(tmp_path: Path) -> None:
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("OTEL_")},
           "OTEL_TRACES_EXPORTER": "jaeger"}
    done = subprocess.run(
        [sys.executable, "-m", "shoal", "serve", str(tmp_path), "--http-port", "0",
         "--grpc-port", "0"], capture_output=True, text=True, env=env, timeout=60, check=False,
    )
    assert done.returncode != 0
    assert "OTEL_TRACES_EXPORTER=jaeger" in done.stderr
    assert "listening" not in done.stdout
    bad_flag = subprocess.run(
        [sys.executable, "-m", "shoal", "serve", str(tmp_path), "--otel-endpoint", "c:4318"],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert bad_flag.returncode == 2 and "--otel-endpoint" in bad_flag.stderr
