"""--workers / `workers:`: model code in worker processes, shared memory, crash and restart."""

from __future__ import annotations

import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest

from shoal.protocol.grpc_gen import grpc_service_pb2 as pb
from shoal.protocol.grpc_gen import grpc_service_pb2_grpc as pb_grpc

from .models import custom
from .process import ShoalProcess

# Answers with the pid of the process that ran predict; -1 in the input kills that process.
PID = """
    import os
    import time
    import numpy as np
    from shoal import Model

    class Pid(Model):
        def predict(self, request):
            x = request.as_numpy()
            if x.size and x.flat[0] == -1:
                os._exit(7)
            time.sleep(float(request.parameters.get("sleep", 0)))
            return {"y": x * 2, "pid": np.full(x.shape[0], os.getpid(), dtype=np.int64)}
"""

BROKEN_LOAD = """
    from shoal import Model

    class Broken(Model):
        def load(self):
            raise RuntimeError("no weights here")

        def predict(self, request):
            return request.as_numpy()
"""


def infer(url: str, model: str, data: list, sleep: float = 0.0) -> httpx.Response:
    return httpx.post(f"{url}/v2/models/{model}/infer", timeout=30, json={
        "parameters": {"sleep": sleep},
        "inputs": [{"name": "x", "datatype": "FP64", "shape": [len(data)], "data": data}]})


def pid_of(response: httpx.Response) -> int:
    assert response.status_code == 200, response.text
    return next(o for o in response.json()["outputs"] if o["name"] == "pid")["data"][0]


def children(pid: int) -> set[int]:
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    found.add(int(entry.name))
            except (OSError, IndexError):
                pass
    return found


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("workers")
    custom(root / "pid2", PID, "runtime: custom\nworkers: 2\n")
    custom(root / "pid_inproc", PID, "runtime: custom\nworkers: 0\n")
    custom(root / "pid_default", PID)
    custom(root / "batched", PID, "runtime: custom\nworkers: 1\nmax_batch_size: 8\n"
                                  "max_batch_delay_ms: 50\n")
    custom(root / "broken", BROKEN_LOAD, "runtime: custom\nworkers: 1\n")
    return root


@pytest.fixture(scope="module")
def server(repository: Path):
    process = ShoalProcess(repository, "--workers", "1")
    process.wait_ready()
    yield process
    process.stop()


def test_models_run_in_worker_processes_not_the_server(server: ShoalProcess) -> None:
    server_pid = server.listening["pid"]
    assert pid_of(infer(server.url, "pid_inproc", [1.0])) == server_pid
    worker_pid = pid_of(infer(server.url, "pid_default", [1.0]))  # --workers 1
    assert worker_pid != server_pid and worker_pid in children(server_pid)
    response = infer(server.url, "pid2", [1.0, 2.0])
    assert response.json()["outputs"][0]["data"] == [2.0, 4.0]


def test_two_workers_share_concurrent_requests(server: ShoalProcess) -> None:
    with ThreadPoolExecutor(4) as pool:
        pids = {pid_of(r) for r in pool.map(lambda _: infer(server.url, "pid2", [1.0], 0.3), range(4))}
    assert len(pids) == 2


def test_worker_models_answer_over_grpc_too(server: ShoalProcess) -> None:
    with grpc.insecure_channel(server.grpc_target) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        request = pb.ModelInferRequest(model_name="pid2", inputs=[pb.ModelInferRequest.InferInputTensor(
            name="x", datatype="FP64", shape=[2], contents=pb.InferTensorContents(fp64_contents=[1, 2]))])
        response = stub.ModelInfer(request, timeout=10)
    assert list(response.outputs[0].contents.fp64_contents) == [2.0, 4.0]


def test_large_tensors_round_trip_through_shared_memory(server: ShoalProcess) -> None:
    data = np.random.default_rng(1).random(50_000)  # 400 KB each way
    body = data.astype("<f8").tobytes()
    header = ('{"inputs":[{"name":"x","datatype":"FP64","shape":[50000],'
              '"parameters":{"binary_data_size":%d}}],'
              '"outputs":[{"name":"y","parameters":{"binary_data":true}}]}' % len(body)).encode()
    response = httpx.post(
        f"{server.url}/v2/models/pid2/infer", content=header + body, timeout=30,
        headers={"Content-Type": "application/octet-stream",
                 "Inference-Header-Content-Length": str(len(header))})
    assert response.status_code == 200, response.text
    json_length = int(response.headers["Inference-Header-Content-Length"])
    out = np.frombuffer(response.content[json_length:], "<f8")
    np.testing.assert_array_equal(out, data * 2)
    leftovers = [p for p in Path("/dev/shm").glob("shoal-*")
                 if p.name.split("-")[1] in {str(server.listening["pid"]), *map(str, children(server.listening["pid"]))}]
    assert leftovers == []


def test_batching_merges_before_the_worker(server: ShoalProcess) -> None:
    with ThreadPoolExecutor(4) as pool:
        responses = list(pool.map(lambda i: infer(server.url, "batched", [float(i)]), range(4)))
    assert [r.json()["outputs"][0]["data"] for r in responses] == [[0.0], [2.0], [4.0], [6.0]]


def test_a_model_failing_to_load_in_its_worker_is_reported(server: ShoalProcess) -> None:
    rows = httpx.post(f"{server.url}/v2/repository/index", json={}).json()
    broken = next(r for r in rows if r["name"] == "broken")
    assert broken["state"] == "UNAVAILABLE" and "no weights here" in broken["reason"]
    assert infer(server.url, "broken", [1.0]).status_code == 503


def test_a_crashed_worker_fails_only_its_requests_and_is_restarted(repository: Path) -> None:
    process = ShoalProcess(repository)
    try:
        process.wait_ready()
        with ThreadPoolExecutor(2) as pool:
            slow = pool.submit(infer, process.url, "pid2", [1.0], 1.0)  # busy on one worker
            time.sleep(0.2)
            crash = infer(process.url, "pid2", [-1.0])  # goes to the idle one
            assert slow.result().status_code == 200  # the other worker went on
        assert crash.status_code == 503
        assert "exited with code 7" in crash.json()["error"]
        deadline = time.monotonic() + 20
        pids = set()
        while time.monotonic() < deadline and len(pids) < 2:
            with ThreadPoolExecutor(2) as pool:
                results = list(pool.map(lambda _: infer(process.url, "pid2", [1.0], 0.3), range(2)))
            pids |= {pid_of(r) for r in results if r.status_code == 200}
        assert len(pids) == 2  # both workers serve again, one of them new
        metrics = httpx.get(f"{process.url}/metrics").text
        assert "shoal_worker_restarts_total 1.0" in metrics
    finally:
        assert process.stop() == 0
    assert "worker_crashed" in process.logs()


def test_sigterm_drains_worker_requests_and_leaves_no_process(repository: Path) -> None:
    process = ShoalProcess(repository)
    process.wait_ready()
    server_pid = process.listening["pid"]
    workers = children(server_pid)
    assert len(workers) >= 2
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(infer, process.url, "pid2", [3.0], 1.0)
        time.sleep(0.3)
        process.proc.send_signal(signal.SIGTERM)
        assert pending.result().json()["outputs"][0]["data"] == [6.0]
    assert process.stop() == 0
    for pid in workers:
        assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]


def test_one_worker_models_spread_over_the_pool(tmp_path: Path) -> None:
    for name in ("a", "b"):
        custom(tmp_path / name, PID, "runtime: custom\nworkers: 1\n")
    process = ShoalProcess(tmp_path, "--workers", "2")
    try:
        process.wait_ready()
        assert pid_of(infer(process.url, "a", [1.0])) != pid_of(infer(process.url, "b", [1.0]))
        assert len(children(process.listening["pid"]) - {process.listening["pid"]}) >= 2
    finally:
        assert process.stop() == 0
