"""/metrics in Prometheus text format, fed by every protocol."""

from __future__ import annotations

import grpc
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from shoal.protocol.grpc_gen import grpc_service_pb2 as pb
from shoal.protocol.grpc_gen import grpc_service_pb2_grpc as pb_grpc

from .models import iris_rows, sklearn_iris
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


def series(server: ShoalProcess) -> list[tuple[str, dict]]:
    return [(name, sample.labels) for name, found in samples(server).items() for sample in found]


def test_names_that_are_not_served_share_one_series(server: ShoalProcess) -> None:
    """Made-up names (404s) used to become label values each: 5,000 of them grew /metrics
    from 3 MB to 34 MB. They count under model="_unknown" now, and unknown versions of a
    served model under version="_unknown"."""
    before = httpx.get(f"{server.url}/metrics").text
    names = [f"made-up-{i}" for i in range(60)] + ["x" * 20_000, "..%2F..%2Fetc%2Fpasswd"]
    with httpx.Client() as client:
        for name in names:
            assert client.post(f"{server.url}/v2/models/{name}/infer", content=b"{}").status_code == 404
            assert client.post(f"{server.url}/v1/models/{name}:predict", content=b"{}").status_code == 404
        for version in range(50, 80):
            response = client.post(f"{server.url}/v2/models/iris/versions/{version}/infer", content=b"{}")
            assert response.status_code == 404
    with grpc.insecure_channel(server.grpc_target) as channel:
        with pytest.raises(grpc.RpcError):
            pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(pb.ModelInferRequest(model_name="nope"))
    after = httpx.get(f"{server.url}/metrics").text
    assert not any(name in after for name in ("made-up", "xxxxxxxx", "passwd"))
    assert len(after) - len(before) < 20_000  # a few series, not one per name
    requests = {(s.labels["model"], s.labels["version"], s.labels["protocol"]): s.value
                for s in samples(server)["shoal_requests_total"] if s.labels["outcome"] == "404"}
    assert requests[("_unknown", "", "v2-rest")] >= 60
    assert requests[("_unknown", "", "v1-rest")] >= 60  # a decoded "/" is no model route
    assert requests[("_unknown", "", "v2-grpc")] >= 1
    assert requests[("iris", "_unknown", "v2-rest")] >= 30
    in_flight = {s.labels["model"] for s in samples(server)["shoal_requests_in_flight"]}
    assert "_unknown" not in in_flight  # refused requests were never in flight


def test_an_unloaded_model_leaves_no_series(tmp_path) -> None:
    sklearn_iris(tmp_path / "gone")
    sklearn_iris(tmp_path / "stays")
    process = ShoalProcess(tmp_path)
    try:
        process.wait_ready()
        rows = iris_rows(1).reshape(-1).tolist()
        body = {"inputs": [{"name": "x", "datatype": "FP64", "shape": [1, 4], "data": rows}]}
        for name in ("gone", "stays"):
            assert httpx.post(f"{process.url}/v2/models/{name}/infer", json=body).status_code == 200
        models = lambda: {labels.get("model") for _, labels in series(process)}  # noqa: E731
        assert {"gone", "stays"} <= models()
        assert httpx.post(f"{process.url}/v2/repository/models/gone/unload").status_code == 200
        assert "gone" not in models() and "stays" in models()
        assert httpx.post(f"{process.url}/v2/repository/models/gone/load").status_code == 200
        assert httpx.post(f"{process.url}/v2/models/gone/infer", json=body).status_code == 200
        assert "gone" in models()
    finally:
        process.stop()
