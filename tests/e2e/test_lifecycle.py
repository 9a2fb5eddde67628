"""Startup readiness, a busy model not blocking the loop, draining shutdown, live reloads."""

from __future__ import annotations

import shutil
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import httpx
import pytest

from shoal.protocol.grpc_gen import grpc_service_pb2 as pb
from shoal.protocol.grpc_gen import grpc_service_pb2_grpc as pb_grpc

from .models import SLOW, SLOW_LOAD, custom, iris_rows, sklearn_iris, write
from .process import ShoalProcess


def slow_body(seconds: float) -> dict:
    return {"parameters": {"sleep": seconds},
            "inputs": [{"name": "x", "datatype": "FP64", "shape": [1], "data": [1]}]}


def test_ready_only_after_startup_loading(tmp_path: Path) -> None:
    custom(tmp_path / "slowload", SLOW_LOAD, "runtime: custom\nparameters: {load_seconds: 2}\n")
    sklearn_iris(tmp_path / "iris")
    server = ShoalProcess(tmp_path)
    try:
        assert httpx.get(f"{server.url}/v2/health/live").status_code == 200
        early = httpx.get(f"{server.url}/v2/health/ready")
        assert early.status_code == 503 and "loading" in early.json()["error"]
        server.wait_ready()
    finally:
        server.stop()


def test_not_ready_when_no_model_loads(tmp_path: Path) -> None:
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "model.pkl").write_bytes(b"\x80\x04garbage")
    server = ShoalProcess(tmp_path)
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            response = httpx.get(f"{server.url}/v2/health/ready")
            if "loading" not in response.text:
                break
            time.sleep(0.05)
        assert response.status_code == 503
        assert "no model is ready" in response.json()["error"]
    finally:
        server.stop()


def test_empty_repository_is_ready(tmp_path: Path) -> None:
    server = ShoalProcess(tmp_path)
    try:
        server.wait_ready()
    finally:
        server.stop()


def test_slow_model_does_not_block_health_metadata_or_other_models(server: ShoalProcess) -> None:
    with ThreadPoolExecutor(4) as pool:
        started = time.monotonic()
        slow = [pool.submit(httpx.post, f"{server.url}/v2/models/slow/infer", json=slow_body(1.5),
                            timeout=10) for _ in range(3)]
        time.sleep(0.2)
        with grpc.insecure_channel(server.grpc_target) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            for _ in range(5):
                t0 = time.monotonic()
                assert httpx.get(f"{server.url}/v2/health/ready").status_code == 200
                assert httpx.get(f"{server.url}/v2/models/iris").status_code == 200
                assert stub.ServerReady(pb.ServerReadyRequest(), timeout=1).ready
                body = {"inputs": [{"name": "x", "datatype": "FP64", "shape": [1, 4],
                                    "data": iris_rows(1).reshape(-1).tolist()}]}
                assert httpx.post(f"{server.url}/v2/models/iris/infer", json=body).status_code == 200
                assert time.monotonic() - t0 < 0.5, "the event loop was blocked by the slow model"
        assert all(f.result().status_code == 200 for f in slow)
        # Three 1.5 s requests ran side by side on worker threads, not one after another.
        assert time.monotonic() - started < 4.0


def test_sigterm_drains_in_flight_requests_and_exits_zero(tmp_path: Path) -> None:
    custom(tmp_path / "slow", SLOW)
    server = ShoalProcess(tmp_path, "--drain-timeout", "10")
    server.wait_ready()
    results: dict[str, object] = {}

    def call_rest() -> None:
        results["rest"] = httpx.post(f"{server.url}/v2/models/slow/infer", json=slow_body(1.5), timeout=10)

    def call_grpc() -> None:
        request = pb.ModelInferRequest(model_name="slow", parameters={"sleep": pb.InferParameter(double_param=1.5)})
        request.inputs.add(name="x", datatype="FP64", shape=[1]).contents.fp64_contents.append(1)
        with grpc.insecure_channel(server.grpc_target) as channel:
            results["grpc"] = pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=10)

    threads = [threading.Thread(target=call_rest), threading.Thread(target=call_grpc)]
    for thread in threads:
        thread.start()
    time.sleep(0.4)
    server.proc.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{server.url}/v2/health/live", timeout=1)  # no longer accepting
    for thread in threads:
        thread.join(10)
    assert server.proc.wait(15) == 0
    assert results["rest"].status_code == 200  # type: ignore[union-attr]
    assert results["grpc"].outputs[0].name == "output-0"  # type: ignore[union-attr]
    events = [e["event"] for e in server.log_events()]
    assert "shutting_down" in events and events[-1] == "stopped"


@pytest.mark.parametrize("workers", [[], ["--workers", "1"]], ids=["threads", "worker-process"])
def test_shutdown_is_bounded_by_the_drain_timeout(tmp_path: Path, workers: list[str]) -> None:
    """A model call that outlives --drain-timeout is answered 503 "server is shutting down"
    (REST and gRPC), and the process exits at once instead of waiting 20 s for the model."""
    custom(tmp_path / "slow", SLOW)
    server = ShoalProcess(tmp_path, "--drain-timeout", "1", *workers)
    server.wait_ready()
    results: dict[str, object] = {}

    def call_rest() -> None:
        results["rest"] = httpx.post(f"{server.url}/v2/models/slow/infer", json=slow_body(20), timeout=30)

    def call_grpc() -> None:
        request = pb.ModelInferRequest(model_name="slow", parameters={"sleep": pb.InferParameter(double_param=20)})
        request.inputs.add(name="x", datatype="FP64", shape=[1]).contents.fp64_contents.append(1)
        with grpc.insecure_channel(server.grpc_target) as channel:
            try:
                pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=30)
            except grpc.RpcError as exc:
                results["grpc"] = exc

    threads = [threading.Thread(target=call_rest), threading.Thread(target=call_grpc)]
    for thread in threads:
        thread.start()
    time.sleep(0.5)
    signalled = time.monotonic()
    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(10) == 0
    exited = time.monotonic() - signalled
    for thread in threads:
        thread.join(10)
    assert exited < 4, f"exited {exited:.1f} s after SIGTERM with --drain-timeout 1"
    rest = results["rest"]
    assert rest.status_code == 503  # type: ignore[union-attr]
    assert rest.json() == {"error": "server is shutting down"}  # type: ignore[union-attr]
    grpc_error = results["grpc"]
    assert grpc_error.code() == grpc.StatusCode.UNAVAILABLE  # type: ignore[union-attr]
    assert grpc_error.details() == "server is shutting down"  # type: ignore[union-attr]
    events = server.log_events()
    assert [e for e in events if e["event"] == "drain_timeout"][0]["requests_cut"] == 2
    assert events[-1]["event"] == "stopped"


def test_during_startup_every_model_and_graph_is_loading_not_missing(tmp_path: Path) -> None:
    """Graphs load after models: a graph used to be 404 "not served here" until then. And a
    request without a version names the newest version, not the first one loading."""
    for version in ("1", "2"):
        write(tmp_path / "slowload" / version / "model.py", SLOW_LOAD)
    (tmp_path / "slowload" / "model.yaml").write_text(
        "runtime: custom\nversion_policy: all\nparameters: {load_seconds: 2}\n")
    (tmp_path / "chain").mkdir()
    (tmp_path / "chain" / "graph.yaml").write_text(
        "nodes:\n  root: {kind: model, model: slowload}\n")
    server = ShoalProcess(tmp_path)
    try:
        body = slow_body(0)
        graph = httpx.post(f"{server.url}/v2/models/chain/infer", json=body)
        assert graph.status_code == 503 and "loading" in graph.json()["error"]
        feedback = httpx.post(f"{server.url}/v2/models/chain/feedback", json={"id": "x", "reward": 1})
        assert feedback.status_code == 503  # not 404: a client may take that as permanent
        model = httpx.post(f"{server.url}/v2/models/slowload/infer", json=body)
        assert model.status_code == 503
        assert model.json()["error"] == "model 'slowload' has no ready version; version 2 is loading"
        index = httpx.post(f"{server.url}/v2/repository/index").json()
        assert {(row["name"], row.get("version"), row["state"]) for row in index} == {
            ("slowload", "1", "LOADING"), ("slowload", "2", "LOADING"), ("chain", "1", "LOADING")}
        server.wait_ready()
        assert httpx.post(f"{server.url}/v2/models/chain/infer", json=body).status_code == 200
    finally:
        server.stop()


def test_reload_and_new_version_without_failed_requests(tmp_path: Path) -> None:
    sklearn_iris(tmp_path / "iris" / "1", c=0.1)
    server = ShoalProcess(tmp_path)
    server.wait_ready()
    failures: list[str] = []
    versions: set[str] = set()
    stop = threading.Event()
    body = {"inputs": [{"name": "x", "datatype": "FP64", "shape": [1, 4],
                        "data": iris_rows(1).reshape(-1).tolist()}]}

    def hammer() -> None:
        with httpx.Client() as client:
            while not stop.is_set():
                response = client.post(f"{server.url}/v2/models/iris/infer", json=body)
                if response.status_code != 200:
                    failures.append(response.text)
                else:
                    versions.add(response.json()["model_version"])

    workers = [threading.Thread(target=hammer) for _ in range(3)]
    for worker in workers:
        worker.start()
    try:
        time.sleep(0.3)
        for _ in range(3):  # reload the same version repeatedly
            assert httpx.post(f"{server.url}/v2/repository/models/iris/load", timeout=30).status_code == 200
        sklearn_iris(tmp_path / "iris" / "2")  # a new version appears: latest policy moves to 2
        assert httpx.post(f"{server.url}/v2/repository/models/iris/load", timeout=30).status_code == 200
        time.sleep(0.3)
    finally:
        stop.set()
        for worker in workers:
            worker.join()
    assert not failures, failures[:3]
    assert versions == {"1", "2"}
    meta = httpx.get(f"{server.url}/v2/models/iris").json()
    assert meta["versions"] == ["2"]
    assert httpx.get(f"{server.url}/v2/models/iris/versions/1").status_code == 404

    assert httpx.post(f"{server.url}/v2/repository/models/iris/unload").json() == {"name": "iris", "unload": True}
    assert httpx.post(f"{server.url}/v2/models/iris/infer", json=body).status_code == 404
    index = httpx.post(f"{server.url}/v2/repository/index").json()
    assert index == [{"name": "iris", "state": "UNAVAILABLE", "reason": "unloaded"}]
    assert httpx.post(f"{server.url}/v2/repository/models/iris/unload").status_code == 404
    assert httpx.post(f"{server.url}/v2/repository/models/iris/load").status_code == 200
    assert httpx.post(f"{server.url}/v2/models/iris/infer", json=body).status_code == 200

    shutil.rmtree(tmp_path / "iris" / "2")
    (tmp_path / "iris" / "1" / "model.joblib").write_bytes(b"corrupt")
    failed = httpx.post(f"{server.url}/v2/repository/models/iris/load", timeout=30)
    assert failed.status_code == 400 and "model.joblib" in failed.json()["error"]
    assert server.stop() == 0
    events = server.log_events()
    assert sum(e["event"] == "model_loaded" for e in events) >= 6
    assert any(e["event"] == "model_unloaded" for e in events)
    assert any(e["event"] == "model_load_failed" and e["model"] == "iris" for e in events)


def test_failed_request_log_lines(tmp_path: Path) -> None:
    sklearn_iris(tmp_path / "iris")
    server = ShoalProcess(tmp_path)
    server.wait_ready()
    httpx.post(f"{server.url}/v2/models/iris/infer", content=b"{broken")
    server.stop()
    [failed] = [e for e in server.log_events() if e["event"] == "request_failed"]
    assert failed["model"] == "iris" and failed["status"] == 400 and failed["protocol"] == "v2-rest"
    assert "JSON" in failed["error"]
