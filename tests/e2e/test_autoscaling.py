"""Autoscaling on one machine: replicas follow the load, scale to zero and wake without a
failed request, a memory budget evicts the least recently used idle model, GPU placement."""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from .models import custom, write
from .process import ShoalProcess
from .test_workers import BROKEN_LOAD, PID, infer, pid_of

# Answers with the pid that ran it and the CUDA_VISIBLE_DEVICES that process sees.
DEVICES = """
    import os
    import time
    import numpy as np
    from shoal import Model

    class Devices(Model):
        def predict(self, request):
            time.sleep(float(request.parameters.get("sleep", 0)))
            n = request.as_numpy().shape[0]
            return {"pid": np.full(n, os.getpid(), dtype=np.int64),
                    "devices": np.array([os.environ.get("CUDA_VISIBLE_DEVICES", "")] * n,
                                        dtype=object)}
"""


def pid_model(root: Path, name: str, autoscaling: str, extra: str = "") -> None:
    custom(root / name / "1", PID, "")
    write(root / name / "model.yaml", f"runtime: custom\nautoscaling: {autoscaling}\n{extra}")


def replicas(server: ShoalProcess, model: str) -> dict[str, Any]:
    response = httpx.get(f"{server.url}/v2/models/{model}/replicas", timeout=10)
    assert response.status_code == 200, response.text
    return response.json()["versions"][0]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is gone for our purposes (its memory is back)
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ", 1)[1][0] != "Z"
    except FileNotFoundError:
        return False


def wait_for(check: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"not within {timeout} s: {what}")


class Load:
    """Closed-loop clients, each sending one request after another; counts every answer."""

    def __init__(self, url: str, model: str, sleep: float) -> None:
        self.url, self.model, self.sleep = url, model, sleep
        self.statuses: list[int] = []
        self.errors: list[str] = []
        self._stops: list[threading.Event] = []
        self._threads: list[threading.Thread] = []

    def clients(self, count: int) -> None:
        while len(self._stops) < count:
            stop = threading.Event()
            thread = threading.Thread(target=self._client, args=(stop,), daemon=True)
            self._stops.append(stop)
            self._threads.append(thread)
            thread.start()
        while len(self._stops) > count:
            self._stops.pop().set()

    def _client(self, stop: threading.Event) -> None:
        with httpx.Client(timeout=60) as client:
            while not stop.is_set():
                response = client.post(f"{self.url}/v2/models/{self.model}/infer", json={
                    "parameters": {"sleep": self.sleep},
                    "inputs": [{"name": "x", "datatype": "FP64", "shape": [1], "data": [1.0]}]})
                self.statuses.append(response.status_code)
                if response.status_code != 200:
                    self.errors.append(response.text)

    def stop(self) -> None:
        self.clients(0)
        for thread in self._threads:
            thread.join(30)


def test_replicas_follow_a_ramp_up_and_down_with_no_failed_request(tmp_path: Path) -> None:
    pid_model(tmp_path, "ramp", "{min_replicas: 1, max_replicas: 4, target_concurrency: 1, "
              "stable_window: 6s, panic_window: 2s, scale_to_zero_after: 300s}")
    server = ShoalProcess(tmp_path)
    load = Load(server.url, "ramp", sleep=0.05)
    try:
        server.wait_ready()
        assert replicas(server, "ramp")["ready"] == 1
        load.clients(1)
        time.sleep(2)
        assert replicas(server, "ramp")["ready"] == 1  # one client: one replica is enough
        burst = time.monotonic()
        load.clients(16)
        status = wait_for(lambda: (s := replicas(server, "ramp"))["panicking"] and s,
                          5, "panic mode after a burst")
        assert status["desired"] > 1
        panicked_after = time.monotonic() - burst
        wait_for(lambda: replicas(server, "ramp")["ready"] == 4, 15, "4 ready replicas")
        pids = {r["pid"] for r in replicas(server, "ramp")["replicas"]}
        assert len(pids) == 4 and all(alive(p) for p in pids)
        load.clients(1)  # the load falls back
        wait_for(lambda: replicas(server, "ramp")["ready"] == 1, 40, "back to one replica")
        # The drained replicas' processes exit once their requests are done.
        wait_for(lambda: sum(not alive(p) for p in pids) == 3, 10, "drained replicas gone")
    finally:
        load.stop()
        server.stop()
    assert load.errors == []
    assert len(load.statuses) > 100 and set(load.statuses) == {200}
    assert panicked_after < 4
    events = server.log_events()
    scaled = [e for e in events if e["event"] == "model_scaled"]
    assert {"panic"} <= {e["reason"] for e in scaled}
    assert any(e["replicas_to"] < e["replicas_from"] for e in scaled)


def test_scale_to_zero_then_wake_with_eight_concurrent_requests(tmp_path: Path) -> None:
    pid_model(tmp_path, "sleepy", "{min_replicas: 0, max_replicas: 2, stable_window: 2s, "
              "panic_window: 1s, scale_to_zero_after: 2s}")
    server = ShoalProcess(tmp_path)
    try:
        server.wait_ready()
        first = pid_of(infer(server.url, "sleepy", [1.0]))
        wait_for(lambda: replicas(server, "sleepy")["scaled_to_zero"], 15, "scaled to zero")
        assert not alive(first)
        # Still listed, ready, with the state saying so; metadata answers from memory.
        index = httpx.post(f"{server.url}/v2/repository/index").json()
        assert index == [{"name": "sleepy", "version": "1", "state": "READY",
                          "reason": "scaled to zero"}]
        assert httpx.get(f"{server.url}/v2/models/sleepy/ready").status_code == 200
        assert httpx.get(f"{server.url}/v2/models/sleepy").json()["platform"]
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda _: infer(server.url, "sleepy", [2.0]), range(8)))
        assert [a.status_code for a in answers] == [200] * 8, [a.text for a in answers]
        assert all(a.json()["outputs"][0]["data"] == [4.0] for a in answers)
        woken = {pid_of(a) for a in answers}
        assert first not in woken
        metrics = httpx.get(f"{server.url}/metrics").text
        assert 'shoal_cold_start_seconds_count{model="sleepy"} 1.0' in metrics
        assert 'shoal_model_replicas{model="sleepy",state="ready"}' in metrics
    finally:
        server.stop()
    events = server.log_events()
    assert any(e["event"] == "model_scaled" and e["reason"] == "idle" and e["replicas_to"] == 0
               for e in events)
    cold = [e for e in events if e["event"] == "model_cold_start"]
    assert len(cold) == 1 and cold[0]["seconds"] > 0


def measure_replica(tmp_path: Path) -> int:
    """The memory one replica of the PID model takes on this machine."""
    root = tmp_path / "measure"
    pid_model(root, "one", "{min_replicas: 1, max_replicas: 1}")
    server = ShoalProcess(root)
    try:
        server.wait_ready()
        return replicas(server, "one")["replicas"][0]["rss_bytes"]
    finally:
        server.stop()


def test_a_memory_budget_serves_three_models_in_turn(tmp_path: Path) -> None:
    size = measure_replica(tmp_path)
    root = tmp_path / "repo"
    for name in ("a", "b", "c"):
        pid_model(root, name, "{min_replicas: 0, max_replicas: 1, scale_to_zero_after: 300s}")
    # Room for two replicas, not three.
    server = ShoalProcess(root, "--memory-budget", str(int(size * 2.6)))
    try:
        server.wait_ready()

        def holding() -> list[str]:
            return [m for m in "abc" if not replicas(server, m)["scaled_to_zero"]]

        wait_for(lambda: len(holding()) == 2, 10, "two of three models loaded")
        for name in "abcabc":
            response = infer(server.url, name, [1.0])
            assert response.status_code == 200, response.text
            held = holding()
            assert name in held and len(held) == 2
        # The last three requests went to a, b, c in that order: b and c hold the memory, a
        # (the least recently used) was evicted.
        final = holding()
    finally:
        server.stop()
    assert final == ["b", "c"]
    evicted = [e for e in server.log_events() if e["event"] == "model_evicted"]
    assert evicted and all(e["reason"] == "memory budget" for e in evicted)


def test_an_evicted_model_stays_at_zero_until_asked_for(tmp_path: Path) -> None:
    size = measure_replica(tmp_path)
    root = tmp_path / "repo"
    for name in ("a", "b"):
        pid_model(root, name, "{min_replicas: 0, max_replicas: 1, scale_to_zero_after: 300s}")
    server = ShoalProcess(root, "--memory-budget", str(int(size * 1.5)))  # room for one
    try:
        server.wait_ready()
        for name in ("a", "b"):  # b's wake evicts a right after a's request
            assert infer(server.url, name, [1.0]).status_code == 200
        time.sleep(2)  # several decisions: a must not come back (and evict b) by itself
        assert replicas(server, "a")["scaled_to_zero"]
        assert not replicas(server, "b")["scaled_to_zero"]
    finally:
        server.stop()
    events = server.log_events()
    evictions = [i for i, e in enumerate(events) if e["event"] == "model_evicted"]
    last = events[evictions[-1]]
    assert (last["model"], last["for_model"]) == ("a", "b")
    # No replica of a started after it was evicted for b.
    assert not [e for e in events[evictions[-1]:]
                if e["event"] == "replica_started" and e["model"] == "a"]


# Loads slowly (2 s), then answers at once.
SLOW_LOAD = """
    import time
    from shoal import Model

    class Slow(Model):
        def load(self):
            time.sleep(2)

        def predict(self, request):
            return request.as_numpy() * 2
"""


def test_a_held_request_gets_its_time_limit_and_an_unload_does_not_wait(tmp_path: Path) -> None:
    custom(tmp_path / "slow" / "1", SLOW_LOAD, "")
    write(tmp_path / "slow" / "model.yaml", "runtime: custom\ntimeout: 0.5\nautoscaling: "
          "{min_replicas: 0, stable_window: 1s, panic_window: 1s, scale_to_zero_after: 4s}\n")
    server = ShoalProcess(tmp_path)
    try:
        server.wait_ready()
        wait_for(lambda: replicas(server, "slow")["scaled_to_zero"], 15, "scaled to zero")
        began = time.monotonic()
        response = infer(server.url, "slow", [1.0])
        assert response.status_code == 504, response.text  # its limit, not a 503
        assert time.monotonic() - began < 1.5
        wait_for(lambda: replicas(server, "slow")["ready"] == 1, 10, "the woken replica")
        assert infer(server.url, "slow", [1.0]).status_code == 200
        # At zero again, a request without a time limit is held; an unload fails it at once.
        wait_for(lambda: replicas(server, "slow")["scaled_to_zero"], 15, "scaled to zero")
        def send() -> tuple[httpx.Response, float]:
            answer = httpx.post(
                f"{server.url}/v2/models/slow/infer", timeout=30,
                headers={"Shoal-Timeout": "20"},
                json={"inputs": [{"name": "x", "datatype": "FP64", "shape": [1], "data": [1]}]})
            return answer, time.monotonic()

        with ThreadPoolExecutor(1) as pool:
            held = pool.submit(send)
            time.sleep(0.5)
            unloading = time.monotonic()
            assert httpx.post(f"{server.url}/v2/repository/models/slow/unload",
                              timeout=30).status_code == 200
            answer, answered = held.result()
        assert answer.status_code == 503 and "unloaded" in answer.text, answer.text
        assert answered - unloading < 1.0  # not after the 2 s cold start
    finally:
        server.stop()


def test_a_model_that_cannot_fit_gets_a_503_saying_why(tmp_path: Path) -> None:
    size = measure_replica(tmp_path)
    root = tmp_path / "repo"
    pid_model(root, "huge", "{min_replicas: 0, max_replicas: 1, stable_window: 1s, "
              "panic_window: 1s, scale_to_zero_after: 1s}")
    server = ShoalProcess(root, "--memory-budget", str(size // 2))
    try:
        server.wait_ready()
        wait_for(lambda: replicas(server, "huge")["scaled_to_zero"], 15, "scaled to zero")
        response = infer(server.url, "huge", [1.0])
        assert response.status_code == 503
        assert "memory budget" in response.json()["error"]
        assert "would not make room" in response.json()["error"]
    finally:
        server.stop()


def test_gpu_replicas_get_a_device_each_and_no_more_than_there_are(tmp_path: Path) -> None:
    custom(tmp_path / "solo" / "1", DEVICES, "")
    write(tmp_path / "solo" / "model.yaml", "runtime: custom\nresources: {gpus: 1}\n"
          "autoscaling: {min_replicas: 4, max_replicas: 4}\n")
    custom(tmp_path / "big" / "1", DEVICES, "")
    write(tmp_path / "big" / "model.yaml", "runtime: custom\nresources: {gpus: 3}\n")
    server = ShoalProcess(tmp_path, "--gpus", "0,1")
    try:
        server.wait_ready()
        status = wait_for(lambda: (s := replicas(server, "solo"))["desired"] == 4 and s, 10,
                          "the scaler asking for 4")
        status = wait_for(lambda: (s := replicas(server, "solo"))["ready"] == 2 and s, 10,
                          "two replicas, one per device")
        time.sleep(1.0)  # a few ticks: no third replica appears
        status = replicas(server, "solo")
        assert status["ready"] == 2
        assert sorted(r["gpus"] for r in status["replicas"]) == [["0"], ["1"]]
        assert "no free GPU" in status["reason"]
        placed = {r["pid"]: r["gpus"][0] for r in status["replicas"]}
        with ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(lambda _: httpx.post(
                f"{server.url}/v2/models/solo/infer", timeout=30, json={
                    "parameters": {"sleep": 0.3},
                    "inputs": [{"name": "x", "datatype": "FP64", "shape": [1], "data": [1]}]}),
                range(4)))
        seen = {}
        for answer in answers:
            outputs = {o["name"]: o["data"][0] for o in answer.json()["outputs"]}
            seen[outputs["pid"]] = outputs["devices"]
        assert seen == placed  # each process sees exactly its own device
        index = {r["name"]: r for r in httpx.post(f"{server.url}/v2/repository/index").json()}
        assert index["big"]["state"] == "UNAVAILABLE"
        assert "asks for 3 GPU(s) per replica, but this server has 2" in index["big"]["reason"]
    finally:
        server.stop()


def test_gpu_share_lets_replicas_share_a_device(tmp_path: Path) -> None:
    custom(tmp_path / "shared" / "1", DEVICES, "")
    write(tmp_path / "shared" / "model.yaml", "runtime: custom\n"
          "resources: {gpus: 1, gpu_share: 2}\nautoscaling: {min_replicas: 4, max_replicas: 4}\n")
    server = ShoalProcess(tmp_path, "--gpus", "0,1")
    try:
        server.wait_ready()
        status = wait_for(lambda: (s := replicas(server, "shared"))["ready"] == 4 and s, 15,
                          "4 replicas on 2 shared devices")
        assert sorted(r["gpus"][0] for r in status["replicas"]) == ["0", "0", "1", "1"]
    finally:
        server.stop()


def test_explicit_unload_and_load_take_precedence(tmp_path: Path) -> None:
    pid_model(tmp_path, "m", "{min_replicas: 2, max_replicas: 2}")
    pid_model(tmp_path, "both", "{max_replicas: 2}", "workers: 2\n")
    custom(tmp_path / "broken" / "1", BROKEN_LOAD, "")
    write(tmp_path / "broken" / "model.yaml", "runtime: custom\nautoscaling: {min_replicas: 0}\n")
    server = ShoalProcess(tmp_path)
    try:
        server.wait_ready()
        status = wait_for(lambda: (s := replicas(server, "m"))["ready"] == 2 and s, 10,
                          "two replicas")
        pids = [r["pid"] for r in status["replicas"]]
        assert httpx.post(f"{server.url}/v2/repository/models/m/unload").status_code == 200
        wait_for(lambda: not any(alive(p) for p in pids), 10, "replicas stopped by the unload")
        assert infer(server.url, "m", [1.0]).status_code == 404
        assert httpx.post(f"{server.url}/v2/repository/models/m/load").status_code == 200
        assert infer(server.url, "m", [1.0]).status_code == 200
        index = {r["name"]: r for r in httpx.post(f"{server.url}/v2/repository/index").json()}
        assert "sets both workers (2) and autoscaling" in index["both"]["reason"]
        # A model whose load fails is reported (and leaves no process behind), not fatal.
        assert index["broken"]["state"] == "UNAVAILABLE"
        assert "no weights here" in index["broken"]["reason"]
        assert replicas(server, "m")["autoscaling"]["min_replicas"] == 2
    finally:
        server.stop()


@pytest.mark.parametrize("flag", ["--autoscale"])
def test_autoscale_flag_with_server_defaults(tmp_path: Path, flag: str) -> None:
    custom(tmp_path / "plain" / "1", PID, "")
    write(tmp_path / "plain" / "model.yaml", "runtime: custom\n")
    custom(tmp_path / "fixed" / "1", PID, "")
    write(tmp_path / "fixed" / "model.yaml", "runtime: custom\nautoscaling: false\n")
    server = ShoalProcess(tmp_path, flag, "--max-replicas", "3", "--target-concurrency", "2")
    try:
        server.wait_ready()
        settings = replicas(server, "plain")["autoscaling"]
        assert (settings["max_replicas"], settings["target_concurrency"]) == (3, 2.0)
        assert replicas(server, "fixed")["autoscaling"] is None
        assert infer(server.url, "plain", [1.0]).status_code == 200
    finally:
        server.stop()
