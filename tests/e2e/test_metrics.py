"""/metrics in Prometheus text format, fed by every protocol."""

from __future__ import annotations

import grpc
import httpx
from prometheus_client.parser import text_string_to_metric_families

from shoal.protocol.grpc_gen import grpc_service_pb2 as pb
from shoal.protocol.grpc_gen import grpc_service_pb2_grpc as pb_grpc

from .models import iris_rows
from .process import ShoalProcess


def samples(server: ShoalProcess) -> dict[str, list]:
    text = httpx.get(f"{server.url}/metrics").text
    found: dict[str, list] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found.setdefault(sample.name, []).append(sample)
    return found


def test_request_and_model_metrics(server: ShoalProcess) -> None:
    rows = iris_rows(1).reshape(-1).tolist()
    body = {"inputs": [{"name": "x", "datatype": "FP64", "shape": [1, 4], "data": rows}]}
    httpx.post(f"{server.url}/v2/models/iris/infer", json=body)
    httpx.post(f"{server.url}/v2/models/iris/infer", content=b"{")
    httpx.post(f"{server.url}/v1/models/iris:predict", json={"instances": [rows]})
    with grpc.insecure_channel(server.grpc_target) as channel:
        request = pb.ModelInferRequest(model_name="iris")
        request.inputs.add(name="x", datatype="FP64", shape=[1, 4]).contents.fp64_contents.extend(rows)
        pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request)

    found = samples(server)
    requests = {
        (s.labels["model"], s.labels["version"], s.labels["protocol"], s.labels["outcome"]): s.value
        for s in found["shoal_requests_total"]
    }
    assert requests[("iris", "2", "v2-rest", "success")] >= 1
    assert requests[("iris", "2", "v2-rest", "400")] >= 1
    assert requests[("iris", "2", "v1-rest", "success")] >= 1
    assert requests[("iris", "2", "v2-grpc", "success")] >= 1
    assert any(s.labels["model"] == "iris" for s in found["shoal_request_duration_seconds_bucket"])
    assert all(s.value == 0 for s in found["shoal_requests_in_flight"] if s.labels["model"] == "iris")
    loads = {(s.labels["model"], s.labels["version"]) for s in found["shoal_model_load_duration_seconds"]}
    assert ("iris", "1") in loads and ("iris", "2") in loads
    states = {(s.labels["model"], s.labels["state"]): s.value for s in found["shoal_model_state"]}
    assert states[("iris", "READY")] == 1
    assert states[("broken", "UNAVAILABLE")] == 1 and states[("broken", "READY")] == 0
