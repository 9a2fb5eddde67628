"""Overload protection and time limits: 503 + Retry-After / RESOURCE_EXHAUSTED, 504 / DEADLINE_EXCEEDED."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import httpx
import pytest

from shoal.protocol.grpc_gen import grpc_service_pb2 as pb
from shoal.protocol.grpc_gen import grpc_service_pb2_grpc as pb_grpc

from .models import SLOW, custom

# Counts every row that reaches predict, so a test can tell whether a request ever ran.
COUNTING = """
    import time
    import numpy as np
    from shoal import Model

    class Counting(Model):
        seen = 0

        def predict(self, request):
            x = request.as_numpy()
            time.sleep(float(request.parameters.get("sleep", 0)))
            Counting.seen += x.shape[0]
            return {"seen": np.full(x.shape[0], Counting.seen, dtype=np.int64)}
"""
from .process import ShoalProcess


def body(sleep: float) -> dict:
    return {"parameters": {"sleep": sleep},
            "inputs": [{"name": "x", "datatype": "FP64", "shape": [1], "data": [1]}]}


def grpc_request(model: str, sleep: float) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=model, parameters={"sleep": pb.InferParameter(double_param=sleep)})
    request.inputs.add(name="x", datatype="FP64", shape=[1]).contents.fp64_contents.append(1)
    return request


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ShoalProcess]:
    root: Path = tmp_path_factory.mktemp("limits")
    custom(root / "capped", SLOW, "runtime: custom\nmax_inflight: 2\n")
    custom(root / "bounded", SLOW, "runtime: custom\ntimeout: 0.3\n")
    custom(root / "server_default", SLOW)
    custom(root / "counting", COUNTING, "runtime: custom\nmax_batch_size: 4\n")
    server = ShoalProcess(root, "--request-timeout", "5", "--max-inflight", "50")
    server.wait_ready()
    yield server
    server.stop()


def test_requests_over_the_inflight_limit_get_503_with_retry_after(limited: ShoalProcess) -> None:
    url = f"{limited.url}/v2/models/capped/infer"
    with ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(lambda _: httpx.post(url, json=body(0.5), timeout=10), range(6)))
    ok = [a for a in answers if a.status_code == 200]
    rejected = [a for a in answers if a.status_code == 503]
    assert len(ok) == 2 and len(rejected) == 4, [a.status_code for a in answers]
    assert all(a.headers["retry-after"] == "1" and "limit" in a.json()["error"] for a in rejected)
    # The limit counts requests in flight, not requests ever made: capacity comes back.
    assert httpx.post(url, json=body(0), timeout=10).status_code == 200


def test_grpc_over_the_limit_is_resource_exhausted(limited: ShoalProcess) -> None:
    with grpc.insecure_channel(limited.grpc_target) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        calls = [stub.ModelInfer.future(grpc_request("capped", 0.5)) for _ in range(4)]
        codes = []
        for call in calls:
            try:
                call.result(timeout=10)
                codes.append(grpc.StatusCode.OK)
            except grpc.RpcError as error:
                codes.append(error.code())
    assert codes.count(grpc.StatusCode.OK) == 2
    assert codes.count(grpc.StatusCode.RESOURCE_EXHAUSTED) == 2


def test_model_timeout_gives_504_and_the_server_goes_on(limited: ShoalProcess) -> None:
    url = f"{limited.url}/v2/models/bounded/infer"
    started = time.monotonic()
    slow = httpx.post(url, json=body(2.0), timeout=10)
    assert slow.status_code == 504 and "0.3 s" in slow.json()["error"]
    assert time.monotonic() - started < 1.5
    assert httpx.post(url, json=body(0), timeout=10).status_code == 200
    # V1 has no request parameters, so the model sleeps its default 1 s: over the limit too.
    v1 = httpx.post(f"{limited.url}/v1/models/bounded:predict", json={"instances": [1.0]}, timeout=10)
    assert v1.status_code == 504


def test_timeout_header_overrides_the_model_and_server_default(limited: ShoalProcess) -> None:
    url = f"{limited.url}/v2/models/server_default/infer"
    short = httpx.post(url, json=body(1.0), headers={"Shoal-Timeout": "0.2"}, timeout=10)
    assert short.status_code == 504
    longer = httpx.post(f"{limited.url}/v2/models/bounded/infer", json=body(0.5),
                        headers={"Shoal-Timeout": "3"}, timeout=10)
    assert longer.status_code == 200
    bad = httpx.post(url, json=body(0), headers={"Shoal-Timeout": "soon"}, timeout=10)
    assert bad.status_code == 400 and "Shoal-Timeout" in bad.json()["error"]


def test_grpc_deadline_is_the_timeout(limited: ShoalProcess) -> None:
    with grpc.insecure_channel(limited.grpc_target) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            stub.ModelInfer(grpc_request("bounded", 2.0), timeout=10)
        assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert "did not answer" in info.value.details()  # the server's answer, not the client's
        assert stub.ModelInfer(grpc_request("server_default", 0), timeout=5).outputs


def test_a_rest_client_that_disconnects_leaves_the_batching_queue(limited: ShoalProcess) -> None:
    url = f"{limited.url}/v2/models/counting/infer"
    with ThreadPoolExecutor(2) as pool:
        busy = pool.submit(httpx.post, url, json=body(0.6), timeout=10)  # holds the model
        time.sleep(0.2)
        with pytest.raises(httpx.TimeoutException):  # queued behind it, then gives up
            httpx.post(url, json=body(0), timeout=0.1)
        assert busy.result().status_code == 200
    after = httpx.post(url, json=body(0), timeout=10).json()
    # Two rows reached predict (the busy request and this one), not three.
    assert after["outputs"][0]["data"] == [2]
    metrics = httpx.get(f"{limited.url}/metrics").text
    assert 'model="counting",outcome="cancelled"' in metrics.replace('protocol="v2-rest",', "")
