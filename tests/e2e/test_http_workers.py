"""--http-workers: several server processes on one port pair, with metrics added up."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import grpc
import httpx
import pytest

from shoal.protocol.grpc_gen import grpc_service_pb2 as pb
from shoal.protocol.grpc_gen import grpc_service_pb2_grpc as pb_grpc

from .models import custom
from .process import ShoalProcess
from .test_workers import PID, children, pid_of

REQUESTS = 40


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("http-workers")
    custom(root / "pid", PID)
    process = ShoalProcess(root, "--http-workers", "2")
    process.wait_ready()
    yield process
    assert process.stop() == 0


def server_processes(supervisor: int) -> set[int]:
    """The supervisor's server processes (not multiprocessing's resource tracker)."""
    return {pid for pid in children(supervisor)
            if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()}


def fresh_connection_pid(url: str) -> int:
    with httpx.Client() as client:  # a new connection each time: the kernel picks a process
        return pid_of(client.post(f"{url}/v2/models/pid/infer", json={
            "inputs": [{"name": "x", "datatype": "FP64", "shape": [1], "data": [1]}]}))


def test_both_processes_serve_the_same_port(server: ShoalProcess) -> None:
    assert server.listening["http_workers"] == 2
    supervisor = server.listening["pid"]
    pids = {fresh_connection_pid(server.url) for _ in range(REQUESTS)}
    assert pids == server_processes(supervisor) and len(pids) == 2


def test_metrics_add_up_across_processes(server: ShoalProcess) -> None:
    def served() -> float:
        text = httpx.get(f"{server.url}/metrics").text
        found = re.search(r'shoal_requests_total\{model="pid",outcome="success",'
                          r'protocol="v2-rest",version="1"\} (\S+)', text)
        return float(found.group(1)) if found else 0.0

    before = served()
    for _ in range(REQUESTS):
        fresh_connection_pid(server.url)
    assert [served() for _ in range(5)] == [before + REQUESTS] * 5  # whichever process answers


def test_grpc_is_served_by_the_processes_too(server: ShoalProcess) -> None:
    pids = set()
    for _ in range(20):
        with grpc.insecure_channel(server.grpc_target) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            response = stub.ModelInfer(pb.ModelInferRequest(
                model_name="pid", inputs=[pb.ModelInferRequest.InferInputTensor(
                    name="x", datatype="FP64", shape=[1],
                    contents=pb.InferTensorContents(fp64_contents=[1]))]), timeout=10)
        pids.add(response.outputs[1].contents.int64_contents[0])
    assert len(pids) == 2


def test_a_dead_server_process_is_replaced(tmp_path: Path) -> None:
    custom(tmp_path / "pid", PID)
    process = ShoalProcess(tmp_path, "--http-workers", "2")
    try:
        process.wait_ready()
        before = server_processes(process.listening["pid"])
        os.kill(next(iter(before)), 9)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            now = server_processes(process.listening["pid"])
            if len(now) == 2 and now != before:
                break
            time.sleep(0.1)
        assert len(now) == 2 and now != before
        process.wait_ready()
        pids = {fresh_connection_pid(process.url) for _ in range(REQUESTS)}
        assert pids <= now
    finally:
        assert process.stop() == 0


SLOW_LOADING_PID = PID.replace(
    "    class Pid(Model):\n",
    "    class Pid(Model):\n        def load(self):\n            time.sleep(2)\n\n",
)


def test_a_replacement_process_takes_no_request_before_it_is_ready(tmp_path: Path) -> None:
    """A replacement process used to listen before loading its models: for the ~2 s of its
    load, the kernel handed it new connections, answered 503 "loading" (and 404 "not served
    here" for graphs, which load last). Now it binds only once it is ready."""
    custom(tmp_path / "pid", SLOW_LOADING_PID)
    (tmp_path / "graph").mkdir()
    (tmp_path / "graph" / "graph.yaml").write_text("nodes:\n  root: {kind: model, model: pid}\n")
    process = ShoalProcess(tmp_path, "--http-workers", "2")
    body = {"inputs": [{"name": "x", "datatype": "FP64", "shape": [1], "data": [1]}]}
    try:
        process.wait_ready()
        before = server_processes(process.listening["pid"])
        os.kill(next(iter(before)), 9)
        deadline = time.monotonic() + 30
        while len(now := server_processes(process.listening["pid"])) < 2 or now == before:
            assert time.monotonic() < deadline, "no replacement process"
            time.sleep(0.05)
        (new,) = now - before
        statuses: dict[int, int] = {}
        served_by: set[int] = set()
        while new not in served_by:  # until the new process answers, all through its load
            assert time.monotonic() < deadline, "the replacement never served"
            for model in ("pid", "graph"):
                with httpx.Client() as client:  # a fresh connection: the kernel picks a process
                    response = client.post(f"{process.url}/v2/models/{model}/infer", json=body)
                statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
                if response.status_code == 200:
                    served_by.add(pid_of(response))
        assert set(statuses) == {200}, statuses
        assert statuses[200] > 20  # requests kept coming while the new process loaded
    finally:
        assert process.stop() == 0


def test_processes_replaced_together_all_come_up(tmp_path: Path) -> None:
    """Each replacement reports once it has loaded (it binds late): the supervisor keeps every
    one's pipe open until then, so killing both processes at once costs two restarts, not
    a third for a replacement whose report found its pipe closed."""
    custom(tmp_path / "pid", SLOW_LOADING_PID)
    process = ShoalProcess(tmp_path, "--http-workers", "2")
    try:
        process.wait_ready()
        before = server_processes(process.listening["pid"])
        for pid in before:
            os.kill(pid, 9)
        deadline = time.monotonic() + 30
        served_by: set[int] = set()
        while len(served_by - before) < 2:
            assert time.monotonic() < deadline, "the replacements did not both serve"
            try:
                served_by.add(fresh_connection_pid(process.url))
            except httpx.TransportError:
                time.sleep(0.1)  # nobody listens until a replacement has loaded
    finally:
        assert process.stop() == 0
    died = [e for e in process.log_events() if e["event"] == "server_process_died"]
    assert len(died) == 2, died
