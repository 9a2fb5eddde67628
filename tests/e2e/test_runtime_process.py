"""``runtime: process`` end to end: a real Shoal server starts, serves, restarts and stops
small Python V2 servers (tests/e2e/v2_child.py) as its models' programs.

The child computes ``y = 2x + OFFSET`` and reports its pid (and its parent's) in the
response's parameters, so each test can tell which process answered and check that one is
gone. Nothing here sleeps to wait: a test waits for what it expects (a pid gone, a model
serving again) with a deadline.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest

from shoal.protocol.grpc_gen import grpc_service_pb2 as pb
from shoal.protocol.grpc_gen import grpc_service_pb2_grpc as pb_grpc

from .models import custom, write
from .process import ShoalProcess

CHILD = str(Path(__file__).with_name("v2_child.py"))
IDENTITY = """
    from shoal import Model

    class Identity(Model):
        def predict(self, request):
            return request.as_numpy()
"""


def program(root: Path, name: str, *args: str, **settings: object) -> Path:
    """A process-runtime model running the test child; returns its version folder."""
    config = {"command": [sys.executable, CHILD, *args], **settings}
    write(root / name / "model.yaml", json.dumps(config))
    (root / name / "1").mkdir(parents=True)
    return root / name / "1"


def serve(root: Path, *args: str) -> ShoalProcess:
    process = ShoalProcess(root, *args)
    try:
        process.wait_ready()
    except BaseException:
        process.stop()
        raise
    return process


def body(rows: list[list[float]]) -> dict:
    return {"inputs": [{"name": "x", "datatype": "FP64", "shape": [len(rows), 2],
                        "data": [v for row in rows for v in row]}]}


def infer(server: ShoalProcess, model: str, rows: list[list[float]]) -> httpx.Response:
    return httpx.post(f"{server.url}/v2/models/{model}/infer", json=body(rows), timeout=30)


def pid_of(server: ShoalProcess, model: str) -> int:
    response = infer(server, model, [[1, 1]])
    assert response.status_code == 200, response.text
    return int(response.json()["parameters"]["pid"])


def gone(pid: int) -> bool:
    """No such process, or only its zombie (a reaper that is not Shoal may be slow)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def wait_until(condition, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what} within {timeout} s"
        time.sleep(0.02)


def parent_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def index(server: ShoalProcess) -> dict[str, dict]:
    rows = httpx.post(f"{server.url}/v2/repository/index", json={}).json()
    return {row["name"]: row for row in rows}


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("process")
    program(root, "rest", env={"OFFSET": "1"})
    program(root, "grpc-child", "--grpc", protocol="v2-grpc", env={"OFFSET": "1"})
    program(root, "crashy")
    program(root, "unload-me")
    program(root, "never-ready", env={"CHILD_MODE": "never-ready"}, ready_timeout=1)
    program(root, "exits", env={"CHILD_MODE": "exit"})
    program(root, "wrong-name", env={"CHILD_MODE": "wrong-name"})
    program(root, "busy", env={"CHILD_MODE": "busy"})
    program(root, "busy-grpc", "--grpc", protocol="v2-grpc", env={"CHILD_MODE": "busy"})
    write(root / "not-found" / "model.yaml", 'command: ["no-such-program-anywhere", "--serve"]\n')
    write(root / "not-v2" / "model.yaml", json.dumps({"command": [
        "sh", "-c", f'exec {sys.executable} -m http.server "$PORT" --bind 127.0.0.1']}))
    program(root, "batched", env={"OFFSET": "1"}, max_batch_size=4, max_batch_delay_ms=50)
    write(root / "twice" / "graph.yaml", """
        root: root
        nodes:
          first: {kind: model, model: rest}
          second: {kind: model, model: rest}
          root: {kind: sequence, steps: [first, second]}
    """)
    custom(root / "local", IDENTITY)
    return root


@pytest.fixture(scope="module")
def server(root: Path) -> Iterator[ShoalProcess]:
    process = serve(root)
    yield process
    process.stop()


# -- serving ---------------------------------------------------------------------------------


def test_every_protocol_reaches_the_program(server: ShoalProcess) -> None:
    rows = [[1.0, 2.0], [3.0, 4.0]]
    want = [3.0, 5.0, 7.0, 9.0]  # 2x + 1

    v2 = infer(server, "rest", rows)
    assert v2.status_code == 200, v2.text
    assert v2.json()["outputs"][0]["data"] == want and v2.json()["model_name"] == "rest"

    v1 = httpx.post(f"{server.url}/v1/models/rest:predict", json={"instances": rows})
    assert v1.status_code == 200 and v1.json() == {"predictions": [[3.0, 5.0], [7.0, 9.0]]}, v1.text

    seldon = httpx.post(f"{server.url}/seldon/default/rest/api/v1.0/predictions",
                        json={"data": {"ndarray": rows}})
    assert seldon.status_code == 200 and seldon.json()["data"]["ndarray"] == [[3, 5], [7, 9]], seldon.text

    for model in ("rest", "grpc-child"):
        with grpc.insecure_channel(server.grpc_target) as channel:
            request = pb.ModelInferRequest(model_name=model)
            request.inputs.add(name="x", datatype="FP64", shape=[2, 2])
            request.raw_input_contents.append(np.array(rows).tobytes())
            answer = pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=30)
        assert np.frombuffer(answer.raw_output_contents[0]).tolist() == want, model

    via_rest = infer(server, "grpc-child", rows)
    assert via_rest.status_code == 200 and via_rest.json()["outputs"][0]["data"] == want


def test_batches_and_graphs_work_as_for_any_model(server: ShoalProcess) -> None:
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda v: infer(server, "batched", [[v, v + 1]]), range(4)))
    assert [a.json()["outputs"][0]["data"] for a in answers] == [
        [2 * v + 1, 2 * v + 3] for v in range(4)]
    twice = infer(server, "twice", [[1, 2]])  # 2 (2x + 1) + 1
    assert twice.status_code == 200 and twice.json()["outputs"][0]["data"] == [7, 11], twice.text


def test_metadata_comes_from_the_program(server: ShoalProcess) -> None:
    for model, platform in (("rest", "python-child"), ("grpc-child", "python-child-grpc")):
        metadata = httpx.get(f"{server.url}/v2/models/{model}").json()
        assert metadata["platform"] == platform
        assert metadata["inputs"] == [{"name": "x", "datatype": "FP64", "shape": [-1, 2]}]
        assert metadata["outputs"] == [{"name": "y", "datatype": "FP64", "shape": [-1, 2]}]


def test_the_program_runs_in_its_version_folder_under_shoals_watcher(
    server: ShoalProcess, root: Path
) -> None:
    response = infer(server, "rest", [[0, 0]])
    pid, watcher = response.json()["parameters"]["pid"], response.json()["parameters"]["ppid"]
    assert watcher != server.proc.pid and parent_of(watcher) == server.proc.pid
    assert os.getpgid(pid) == watcher  # the watcher leads the program's group
    assert Path(f"/proc/{pid}/cwd").resolve() == (root / "rest" / "1").resolve()
    environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    assert b"SHOAL_MODEL_NAME=rest" in environ and b"SHOAL_MODEL_VERSION=1" in environ
    assert b"OFFSET=1" in environ and any(v.startswith(b"PORT=") for v in environ)
    assert b"HOST=127.0.0.1" in environ


def test_a_503_the_program_answers_goes_back_at_once_and_is_not_sent_again(
    server: ShoalProcess,
) -> None:
    for model in ("busy", "busy-grpc"):
        for n in (1, 2):
            started = time.monotonic()
            response = infer(server, model, [[1, 1]])
            assert response.status_code == 503, response.text
            assert time.monotonic() - started < 1, model
            error = response.json()["error"]
            assert error.endswith(f"child: busy, request {n}"), error  # one request each
            assert ("answered UNAVAILABLE" if model == "busy-grpc" else "answered 503") in error
    assert index(server)["busy"]["state"] == "READY"


def test_a_400_from_the_program_stays_a_400_with_its_message(server: ShoalProcess) -> None:
    for model in ("rest", "grpc-child"):
        response = infer(server, model, [[-1, 2]])
        assert response.status_code == 400, response.text
        assert "child: x must be non-negative, got -1.0" in response.json()["error"]
    with grpc.insecure_channel(server.grpc_target) as channel:
        request = pb.ModelInferRequest(model_name="rest")
        request.inputs.add(name="x", datatype="FP64", shape=[1, 2])
        request.raw_input_contents.append(np.array([[-1.0, 2.0]]).tobytes())
        with pytest.raises(grpc.RpcError) as info:
            pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=30)
    assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "child: x must be non-negative" in info.value.details()


# -- crashes and restarts --------------------------------------------------------------------


def test_a_crash_fails_its_request_with_503_and_the_program_comes_back(
    server: ShoalProcess, root: Path
) -> None:
    before = pid_of(server, "crashy")
    hold = root / "crashy" / "1" / "hold"
    hold.touch()  # the restarted program waits for this file to go before it listens
    try:
        crashed = infer(server, "crashy", [[666, 0]])
        assert crashed.status_code == 503, crashed.text
        assert crashed.json()["error"] == (
            f"model 'crashy': its process (pid {before}) exited with code 3 while running "
            "this request; it is being restarted")
        wait_until(lambda: gone(before), "the crashed program is reaped")

        started = time.monotonic()
        meanwhile = infer(server, "crashy", [[1, 1]])
        assert meanwhile.status_code == 503 and time.monotonic() - started < 1, meanwhile.text
        assert "exited with code 3 and is restarting" in meanwhile.json()["error"]
        assert infer(server, "rest", [[1, 1]]).status_code == 200  # the others serve on
    finally:
        hold.unlink()
    wait_until(lambda: infer(server, "crashy", [[1, 1]]).status_code == 200, "crashy serves again")
    assert pid_of(server, "crashy") != before


def test_unload_stops_the_program_and_load_starts_a_new_one(server: ShoalProcess) -> None:
    pid = pid_of(server, "unload-me")
    unloaded = httpx.post(f"{server.url}/v2/repository/models/unload-me/unload", timeout=60)
    assert unloaded.status_code == 200, unloaded.text
    assert gone(pid)  # the unload returns once the program has exited
    loaded = httpx.post(f"{server.url}/v2/repository/models/unload-me/load", timeout=60)
    assert loaded.status_code == 200, loaded.text
    assert pid_of(server, "unload-me") != pid


# -- failed starts -----------------------------------------------------------------------------


def test_failed_starts_say_why_and_the_rest_keeps_serving(server: ShoalProcess) -> None:
    rows = index(server)
    never = rows["never-ready"]
    assert never["state"] == "UNAVAILABLE"
    assert "was not ready within 1 s (ready_timeout)" in never["reason"]
    assert "GET /v2/health/ready answered HTTP/1.1 503" in never["reason"]
    assert "child: REST on" in never["reason"]  # its last output lines

    exits = rows["exits"]["reason"]
    assert "exited with code 2" in exits and "before it was ready" in exits
    assert "child: bad configuration, giving up" in exits

    assert "command not found: 'no-such-program-anywhere' is not on PATH" in rows["not-found"]["reason"]
    assert "does not serve V2 REST on $PORT" in rows["not-v2"]["reason"]
    assert "answered HTTP/1.0 404" in rows["not-v2"]["reason"]
    assert "$SHOAL_MODEL_NAME ('wrong-name')" in rows["wrong-name"]["reason"]

    for name in ("never-ready", "exits", "not-found", "not-v2", "wrong-name"):
        assert infer(server, name, [[1, 1]]).status_code == 503
    assert httpx.get(f"{server.url}/v2/health/ready").status_code == 200
    local = httpx.post(f"{server.url}/v2/models/local/infer",
                       json={"inputs": [{"name": "a", "datatype": "FP64", "shape": [1], "data": [1]}]})
    assert local.status_code == 200 and infer(server, "rest", [[1, 1]]).status_code == 200


# -- no process left behind ------------------------------------------------------------------


def test_kill_9_of_shoal_leaves_no_program_behind_and_output_is_logged(
    tmp_path: Path,
) -> None:
    program(tmp_path, "inside", env={"OFFSET": "1"})
    program(tmp_path, "in-worker", workers=1)
    # A program that forks and does not exec: its own child (the V2 server) must go too.
    write(tmp_path / "forks" / "model.yaml", json.dumps({"command": [
        "sh", "-c", f"{sys.executable} {CHILD}; echo done"]}))
    (tmp_path / "forks" / "1").mkdir(parents=True)
    shoal = serve(tmp_path)
    try:
        inside = infer(shoal, "inside", [[0, 0]]).json()["parameters"]
        in_worker = infer(shoal, "in-worker", [[0, 0]]).json()["parameters"]
        forked = infer(shoal, "forks", [[0, 0]]).json()["parameters"]
        assert parent_of(inside["ppid"]) == shoal.proc.pid  # Shoal's watcher's child
        worker = parent_of(in_worker["ppid"])
        assert worker != shoal.proc.pid  # it runs under the worker process
        assert parent_of(parent_of(forked["ppid"])) == shoal.proc.pid  # under sh

        # In a worker too, a program that exits fails its request and is started again.
        crashed = infer(shoal, "in-worker", [[666, 0]])
        assert crashed.status_code == 503 and "exited with code 3 while running" in crashed.text
        wait_until(lambda: infer(shoal, "in-worker", [[0, 0]]).status_code == 200,
                   "the program in the worker serves again")
        in_worker = infer(shoal, "in-worker", [[0, 0]]).json()["parameters"]
        assert parent_of(in_worker["ppid"]) == worker

        # A worker that dies takes its program along; the pool starts a new worker, which
        # starts the program again.
        os.kill(worker, signal.SIGKILL)
        wait_until(lambda: gone(in_worker["pid"]), "the killed worker's program is gone")
        wait_until(lambda: infer(shoal, "in-worker", [[0, 0]]).status_code == 200,
                   "the restarted worker serves", timeout=30)
        in_worker = infer(shoal, "in-worker", [[0, 0]]).json()["parameters"]
        worker = parent_of(in_worker["ppid"])

        shoal.proc.send_signal(signal.SIGKILL)
        shoal.proc.wait()
        for pid in (inside["pid"], in_worker["pid"], worker, forked["pid"], forked["ppid"]):
            wait_until(lambda pid=pid: gone(pid), f"pid {pid} is gone", timeout=5)
    finally:
        shoal.stop()
    lines = [e for e in shoal.log_events() if e["event"] == "model_process_output"]
    assert {"model": "inside", "version": "1", "stream": "stdout"}.items() <= next(
        e for e in lines if e["model"] == "inside" and e["line"].startswith("child: REST on")).items()
    assert any(e["model"] == "inside" and e["stream"] == "stderr"
               and e["line"] == "child: a line on stderr" for e in lines)


def test_a_program_in_a_worker_stops_on_sigterm(tmp_path: Path) -> None:
    """A --workers worker ignores SIGTERM; its programs must not (else unload waits for the
    whole drain timeout, then SIGKILLs)."""
    program(tmp_path, "in-worker", workers=1)
    shoal = serve(tmp_path, "--drain-timeout", "20")
    try:
        pid = pid_of(shoal, "in-worker")
        started = time.monotonic()
        unloaded = httpx.post(f"{shoal.url}/v2/repository/models/in-worker/unload", timeout=60)
        assert unloaded.status_code == 200, unloaded.text
        assert time.monotonic() - started < 5
        assert gone(pid)
    finally:
        shoal.stop()
    stopped = [e for e in shoal.log_events() if e["event"] == "model_process_stopped"]
    assert [(e["pid"], e["exitcode"]) for e in stopped] == [(pid, -signal.SIGTERM)]


def test_sigterm_stops_shoal_and_its_programs(tmp_path: Path) -> None:
    program(tmp_path, "one")
    shoal = serve(tmp_path)
    pid = pid_of(shoal, "one")
    assert shoal.stop() == 0
    wait_until(lambda: gone(pid), "the program is gone after shutdown", timeout=5)
