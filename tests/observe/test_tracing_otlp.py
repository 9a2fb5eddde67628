"""Tracing across two real ``shoal serve`` processes, exported over OTLP/HTTP to a small
receiver: a graph's remote nodes (V2 REST and V2 gRPC) and remote models (the triton runtime)
send their ``traceparent`` on, so one request is one trace across both servers, the remote
server's request span a child of the caller's CLIENT span."""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import grpc
import httpx
import pytest
import yaml
from tracing_helpers import (
    OtlpReceiver,
    ReceivedSpan,
    ShoalProcess,
    iris_rows,
    sklearn_iris,
    traceparent,
    v2_body,
    write,
)

from shoal.protocol.grpc_gen import grpc_service_pb2 as pb
from shoal.protocol.grpc_gen import grpc_service_pb2_grpc as pb_grpc


@pytest.fixture(scope="module")
def traced(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[list[ReceivedSpan], dict]]:
    """Both servers run, answer the requests, and stop: stopping exports their last spans, so
    everything they traced has reached the receiver when this fixture hands it over."""
    back_root = tmp_path_factory.mktemp("back")
    sklearn_iris(back_root / "iris" / "1")
    traces = {name: secrets.token_hex(16) for name in ("graph", "model-http", "model-grpc")}
    with OtlpReceiver() as receiver:
        flag = ["--otel-endpoint", receiver.url]
        back = ShoalProcess(back_root, *flag, env={"OTEL_SERVICE_NAME": "back"})
        front: ShoalProcess | None = None
        try:
            back.wait_ready()
            front_root = tmp_path_factory.mktemp("front")
            write(front_root / "relay" / "graph.yaml", yaml.safe_dump({"nodes": {
                "root": {"kind": "ensemble", "children": ["rest", "grpc"], "combiner": "collect"},
                "rest": {"kind": "remote", "url": back.url, "model": "iris"},
                "grpc": {"kind": "remote", "url": back.grpc_target, "protocol": "v2-grpc",
                         "model": "iris"},
            }}))
            write(front_root / "far-http" / "model.yaml",
                  f"url: {back.url}\nparameters: {{model_name: iris}}\n")
            write(front_root / "far-grpc" / "model.yaml",
                  f"url: grpc://{back.grpc_target}\nparameters: {{model_name: iris}}\n")
            front = ShoalProcess(front_root, *flag, env={"OTEL_SERVICE_NAME": "front"})
            front.wait_ready()
            with httpx.Client(base_url=front.url, timeout=30) as client:
                for name, model in (("graph", "relay"), ("model-http", "far-http")):
                    reply = client.post(f"/v2/models/{model}/infer", json=v2_body(),
                                        headers={"traceparent": traceparent(traces[name])})
                    assert reply.status_code == 200, reply.text
            rows = iris_rows(1)
            message = pb.ModelInferRequest(
                model_name="far-grpc", raw_input_contents=[rows.astype("<f8").tobytes()],
                inputs=[pb.ModelInferRequest.InferInputTensor(name="x", datatype="FP64",
                                                              shape=[1, 4])],
            )
            with grpc.insecure_channel(front.grpc_target) as channel:
                pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(
                    message, timeout=30,
                    metadata=(("traceparent", traceparent(traces["model-grpc"])),),
                )
        finally:
            if front is not None:
                assert front.stop() == 0
            assert back.stop() == 0
        assert set(receiver.paths) == {"/v1/traces"}
        yield receiver.received(), traces


def trace(spans: list[ReceivedSpan], trace_id: str) -> list[ReceivedSpan]:
    return [s for s in spans if s.trace_id == trace_id]


def only(spans: list[ReceivedSpan], **fields: object) -> ReceivedSpan:
    found = [s for s in spans if all(getattr(s, k) == v for k, v in fields.items())]
    assert len(found) == 1, (fields, [(s.service, s.name) for s in spans])
    return found[0]


def children(spans: list[ReceivedSpan], parent: ReceivedSpan) -> list[str]:
    return sorted(s.name for s in spans if s.parent_id == parent.span_id)


def assert_served_remotely(spans: list[ReceivedSpan], call: ReceivedSpan, protocol: str) -> None:
    """The remote server's request: a child of the caller's CLIENT span, decode, predict and
    encode inside it."""
    served = only(spans, service="back", parent_id=call.span_id)
    assert (served.name, served.kind) == ("shoal.infer", "SPAN_KIND_SERVER")
    assert served.attributes["shoal.model"] == "iris"
    assert served.attributes["shoal.protocol"] == protocol
    assert served.attributes["shoal.status"] == 200
    assert children(spans, served) == ["shoal.decode", "shoal.encode", "shoal.predict"]


def test_a_graph_with_remote_nodes_is_one_trace_across_both_servers(traced) -> None:
    spans, traces = traced
    mine = trace(spans, traces["graph"])
    assert {s.service for s in mine} == {"front", "back"}
    request = only(mine, service="front", name="shoal.infer")
    assert request.kind == "SPAN_KIND_SERVER" and request.parent_id == "00f067aa0ba902b7"
    assert request.attributes["shoal.model"] == "relay"
    root = only(mine, name="shoal.node root")
    assert root.parent_id == request.span_id and root.attributes["shoal.node.kind"] == "ensemble"
    for node, protocol in (("rest", "v2-rest"), ("grpc", "v2-grpc")):
        step = only(mine, name=f"shoal.node {node}")
        assert step.parent_id == root.span_id and step.attributes["shoal.node.kind"] == "remote"
        call = only(mine, service="front", name="shoal.remote iris", parent_id=step.span_id)
        assert call.kind == "SPAN_KIND_CLIENT"
        assert call.attributes["shoal.remote.protocol"] == protocol
        assert call.attributes["shoal.remote.model"] == "iris"
        assert_served_remotely(mine, call, protocol)
    # front: the request, decode, encode, three nodes and two calls; back: two requests
    assert len(mine) == 8 + 2 * 4


@pytest.mark.parametrize(("name", "protocol"), [("model-http", "v2-rest"),
                                                ("model-grpc", "v2-grpc")])
def test_a_remote_model_forwards_its_predict_span(traced, name: str, protocol: str) -> None:
    spans, traces = traced
    mine = trace(spans, traces[name])
    request = only(mine, service="front", name="shoal.infer")
    predict = only(mine, service="front", name="shoal.predict")
    assert predict.parent_id == request.span_id
    call = only(mine, service="front", name="shoal.remote iris")
    assert call.parent_id == predict.span_id and call.kind == "SPAN_KIND_CLIENT"
    assert_served_remotely(mine, call, protocol)
    assert len(mine) == 5 + 4
