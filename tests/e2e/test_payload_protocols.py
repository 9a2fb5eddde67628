"""Payload logging through a real server to a CloudEvents receiver built on the SDK: every
protocol and graphs produce records the SDK parses, a request and its response share an id,
and what ``logger:`` asks (mode, sample rate, headers) is what is logged."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
import yaml

from shoal.protocol.grpc_gen import grpc_service_pb2 as pb
from shoal.protocol.grpc_gen import grpc_service_pb2_grpc as pb_grpc

from .models import iris_rows, sklearn_iris, write
from .payload_helpers import EventReceiver, data_of
from .process import ShoalProcess

REQUEST = "org.kubeflow.serving.inference.request"
RESPONSE = "org.kubeflow.serving.inference.response"
ROW = [5.1, 3.5, 1.4, 0.2]


@pytest.fixture(scope="module")
def receiver() -> Iterator[EventReceiver]:
    receiver = EventReceiver().start()
    yield receiver
    receiver.stop()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, receiver: EventReceiver) -> Iterator[ShoalProcess]:
    root: Path = tmp_path_factory.mktemp("payload")
    sklearn_iris(root / "iris" / "1")
    sklearn_iris(root / "quiet" / "1")
    write(root / "quiet" / "model.yaml", "logger: false\n")
    sklearn_iris(root / "sampled" / "1")
    write(root / "sampled" / "model.yaml", "logger: {sample_rate: 0.0}\n")
    sklearn_iris(root / "answers" / "1")
    write(root / "answers" / "model.yaml",
          "logger: {mode: response, headers: [X-User-Id, x-tenant]}\n")
    sklearn_iris(root / "ab" / "1")
    sklearn_iris(root / "ab" / "2")
    write(root / "ab" / "model.yaml", "version_policy: all\n"
          "rollout: {stable: '1', canary: {variant: '2', percent: 100}}\n")
    write(root / "chain" / "graph.yaml", yaml.safe_dump({
        "nodes": {"root": {"kind": "sequence", "steps": ["iris"]},
                  "iris": {"kind": "model", "model": "iris"}},
    }))
    process = ShoalProcess(root, "--payload-log", receiver.url,
                           "--state-dir", str(tmp_path_factory.mktemp("state")))
    try:
        process.wait_ready()
        yield process
    finally:
        process.stop()


def pair(receiver: EventReceiver, event_id: str, timeout: float = 10.0) -> tuple[dict, dict]:
    """The request and response events with this id: (attributes + data) for each."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = {e.get_type(): e for e in list(receiver.events) if e.get_id() == event_id}
        if REQUEST in found and RESPONSE in found:
            return tuple(  # type: ignore[return-value]
                {**found[kind].get_attributes(), "data": data_of(found[kind])}
                for kind in (REQUEST, RESPONSE)
            )
        time.sleep(0.02)
    raise AssertionError(f"no request/response pair with id {event_id!r}")


def test_v2_rest_json_records_the_bodies_as_sent(server: ShoalProcess, receiver: EventReceiver) -> None:
    body = {"id": "rest-json-1", "inputs": [
        {"name": "input-0", "shape": [1, 4], "datatype": "FP64", "data": ROW}]}
    answer = httpx.post(f"{server.url}/v2/models/iris/infer", json=body).json()
    request, response = pair(receiver, "rest-json-1")
    assert request["data"] == body
    assert response["data"] == answer
    for event in (request, response):
        assert event["specversion"] == "1.0"
        assert event["inferenceservicename"] == "iris"
        assert event["modelversion"] == "1"
        assert event["protocol"] == "v2-rest"
        assert event["status"] == "200"
        assert event["component"] == "predictor"
        assert event["source"].endswith("/models/iris")
        assert event["time"] is not None
    assert request["time"] <= response["time"]


def test_v2_binary_request_is_logged_as_v2_json(server: ShoalProcess, receiver: EventReceiver) -> None:
    import tritonclient.http as triton

    client = triton.InferenceServerClient(f"127.0.0.1:{server.http_port}")
    tensor = triton.InferInput("input-0", [1, 4], "FP64")
    tensor.set_data_from_numpy(np.array([ROW]), binary_data=True)
    result = client.infer("iris", [tensor], request_id="rest-binary-1",
                          outputs=[triton.InferRequestedOutput("predict", binary_data=True)])
    request, response = pair(receiver, "rest-binary-1")
    assert request["data"]["inputs"] == [
        {"name": "input-0", "datatype": "FP64", "shape": [1, 4], "data": ROW}]
    assert response["data"]["outputs"][0]["data"] == result.as_numpy("predict").tolist()


def test_grpc_is_logged_as_v2_json(server: ShoalProcess, receiver: EventReceiver) -> None:
    with grpc.insecure_channel(server.grpc_target) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        request = pb.ModelInferRequest(model_name="iris", id="grpc-1")
        tensor = request.inputs.add(name="input-0", datatype="FP64", shape=[2, 4])
        request.raw_input_contents.append(iris_rows(2).tobytes())
        del tensor
        answer = stub.ModelInfer(request)
    logged_request, logged_response = pair(receiver, "grpc-1")
    assert logged_request["protocol"] == "v2-grpc"
    assert logged_request["data"]["inputs"][0]["data"] == iris_rows(2).reshape(-1).tolist()
    assert logged_response["data"]["outputs"][0]["name"] == answer.outputs[0].name
    predicted = np.frombuffer(answer.raw_output_contents[0], dtype=np.int64).tolist()
    assert logged_response["data"]["outputs"][0]["data"] == predicted


def test_v1_and_seldon_bodies_as_received(server: ShoalProcess, receiver: EventReceiver) -> None:
    count = len(receiver.events)
    before = {e.get_id() for e in receiver.events}
    v1 = httpx.post(f"{server.url}/v1/models/iris:predict", json={"instances": [ROW]}).json()
    seldon = httpx.post(f"{server.url}/seldon/iris/api/v1.0/predictions",
                        json={"data": {"ndarray": [ROW]}}).json()
    new = receiver.wait_for(count + 4)
    by_protocol: dict[str, dict[str, object]] = {}
    for event in new:
        if event.get_id() not in before:
            by_protocol.setdefault(event.get_attributes()["protocol"], {})[event.get_type()] = data_of(event)
    assert by_protocol["v1-rest"] == {REQUEST: {"instances": [ROW]}, RESPONSE: v1}
    assert by_protocol["seldon-rest"] == {REQUEST: {"data": {"ndarray": [ROW]}}, RESPONSE: seldon}


def test_tf_serving_grpc(server: ShoalProcess, receiver: EventReceiver) -> None:
    from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    count = len(receiver.events)
    before = {e.get_id() for e in receiver.events}
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "iris"
    request.inputs["input-0"].CopyFrom(tensor_pb2.TensorProto(
        dtype=types_pb2.DT_DOUBLE, double_val=ROW,
        tensor_shape=tensor_shape_pb2.TensorShapeProto(
            dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=1),
                 tensor_shape_pb2.TensorShapeProto.Dim(size=4)]),
    ))
    with grpc.insecure_channel(server.grpc_target) as channel:
        prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request)
    new = [e for e in receiver.wait_for(count + 2) if e.get_id() not in before]
    kinds = {e.get_type(): e for e in new}
    assert kinds[REQUEST].get_attributes()["protocol"] == "tfs-grpc"
    assert data_of(kinds[REQUEST])["inputs"][0]["data"] == ROW
    assert kinds[REQUEST].get_id() == kinds[RESPONSE].get_id()


def test_graph_records_carry_the_routing(server: ShoalProcess, receiver: EventReceiver) -> None:
    body = {"id": "graph-1", "inputs": [
        {"name": "input-0", "shape": [1, 4], "datatype": "FP64", "data": ROW}]}
    assert httpx.post(f"{server.url}/v2/models/chain/infer", json=body).status_code == 200
    request, response = pair(receiver, "graph-1")
    assert request["component"] == response["component"] == "graph"
    assert request["inferenceservicename"] == "chain"


def test_failed_requests_are_logged_with_status_and_error(
    server: ShoalProcess, receiver: EventReceiver
) -> None:
    body = {"id": "bad-1", "inputs": [
        {"name": "input-0", "shape": [1, 3], "datatype": "FP64", "data": ROW[:3]}]}
    reply = httpx.post(f"{server.url}/v2/models/iris/infer", json=body)
    assert reply.status_code == 400
    request, response = pair(receiver, "bad-1")
    assert request["status"] == response["status"] == "400"
    assert request["data"] == body
    assert response["data"] == reply.json()


def test_a_body_that_is_not_json_is_kept_as_bytes(server: ShoalProcess, receiver: EventReceiver) -> None:
    count = len(receiver.events)
    before = {e.get_id() for e in receiver.events}
    reply = httpx.post(f"{server.url}/v2/models/iris/infer", content=b"\xffnot json")
    assert reply.status_code == 400
    new = [e for e in receiver.wait_for(count + 2) if e.get_id() not in before]
    request = next(e for e in new if e.get_type() == REQUEST)
    assert request.get_datacontenttype() == "application/octet-stream"
    data = request.get_data()
    assert (data if isinstance(data, bytes) else base64.b64decode(data)) == b"\xffnot json"


def test_logger_settings_per_model(server: ShoalProcess, receiver: EventReceiver) -> None:
    body = {"inputs": [{"name": "input-0", "shape": [1, 4], "datatype": "FP64", "data": ROW}]}
    for model in ("quiet", "sampled"):
        assert httpx.post(f"{server.url}/v2/models/{model}/infer",
                          json={**body, "id": f"{model}-1"}).status_code == 200
    headers = {"X-User-Id": "u-42", "X-Tenant": "acme", "Authorization": "Bearer secret"}
    assert httpx.post(f"{server.url}/v2/models/answers/infer", json={**body, "id": "answers-1"},
                      headers=headers).status_code == 200
    events = receiver.wait_for(1)
    import time

    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not any(e.get_id() == "answers-1" for e in events):
        time.sleep(0.02)
        events = list(receiver.events)
    time.sleep(0.3)  # anything quiet or sampled would have come by now
    ids = [e.get_id() for e in receiver.events]
    assert "quiet-1" not in ids and "sampled-1" not in ids
    answers = [e for e in receiver.events if e.get_id() == "answers-1"]
    assert [e.get_type() for e in answers] == [RESPONSE]  # mode: response
    metadata = yaml.safe_load(answers[0].get_attributes()["metadata"])
    assert metadata == {"x-user-id": ["u-42"], "x-tenant": ["acme"]}  # never authorization


def test_metrics_count_what_was_sent(server: ShoalProcess, receiver: EventReceiver) -> None:
    text = httpx.get(f"{server.url}/metrics").text
    assert f'shoal_payload_log_records_total{{model="iris",outcome="sent",sink="{receiver.url}"}}' in text
    assert f'shoal_payload_log_sink_up{{sink="{receiver.url}"}} 1.0' in text


def test_a_rollout_names_the_variant(server: ShoalProcess, receiver: EventReceiver) -> None:
    body = {"id": "ab-1", "inputs": [
        {"name": "input-0", "shape": [1, 4], "datatype": "FP64", "data": ROW}]}
    assert httpx.post(f"{server.url}/v2/models/ab/infer", json=body).status_code == 200
    request, response = pair(receiver, "ab-1")
    for event in (request, response):
        assert event["inferenceservicename"] == "ab"
        assert event["variant"] == "canary" and event["endpoint"] == "canary"
        assert event["modelversion"] == "2"
