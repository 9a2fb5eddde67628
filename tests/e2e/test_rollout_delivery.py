"""Rollouts end to end: shadows, agreement, promote/rollback under load, progressive delivery,
pause/resume, persistence, --http-workers and the ``shoal rollout`` CLI (issue 10).

Real ``shoal serve`` processes, real HTTP clients. Timing bounds are deliberately generous (the
machine running these may be small and busy): a shadow that sleeps 2 s must not make the
primary anywhere near that slow; an automatic rollback must come within about one interval.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import httpx
import numpy as np
import pytest

from .models import BOOM, custom
from .process import ShoalProcess

# Versions of one model: model.py sits in the model folder, each version is a sub-folder. A
# version fails (500) while a file named ``fail`` exists in its folder: a switch the tests flip.
VERSIONED = """
    import os
    import numpy as np
    from shoal import Model

    class Versioned(Model):
        def predict(self, request):
            if (self.path / "fail").exists():
                raise RuntimeError("this version is broken")
            x = request.as_numpy()
            n = x.shape[0]
            return {"y": x, "pid": np.full(n, os.getpid(), dtype=np.int64)}
"""

FAST = """
    from shoal import Model

    class Fast(Model):
        def predict(self, request):
            return {"y": request.as_numpy()}
"""

SLEEPY = """
    import time
    from shoal import Model

    class Sleepy(Model):
        def predict(self, request):
            time.sleep(2.0)
            return {"y": request.as_numpy()}
"""

# Labels: the primary answers x % 2; the shadow flips that label where x is divisible by 3.
LABELS = """
    import numpy as np
    from shoal import Model

    class Labels(Model):
        def predict(self, request):
            x = np.asarray(request.as_numpy()).astype(np.int64).reshape(-1)
            return {"label": x % 2}
"""

FLIPPED_LABELS = """
    import numpy as np
    from shoal import Model

    class Flipped(Model):
        def predict(self, request):
            x = np.asarray(request.as_numpy()).astype(np.int64).reshape(-1)
            label = x % 2
            label[x % 3 == 0] = 1 - label[x % 3 == 0]
            return {"label": label}
"""

# Floats: the primary answers x / 2; the shadow adds (x % 5) / 100.
HALF = """
    import numpy as np
    from shoal import Model

    class Half(Model):
        def predict(self, request):
            x = np.asarray(request.as_numpy()).astype(np.float64).reshape(-1)
            return {"score": x / 2}
"""

HALF_PLUS = """
    import numpy as np
    from shoal import Model

    class HalfPlus(Model):
        def predict(self, request):
            x = np.asarray(request.as_numpy()).astype(np.float64).reshape(-1)
            return {"score": x / 2 + (x % 5) / 100}
"""


def versioned(root: Path, name: str, versions: tuple[str, ...] = ("1", "2", "3"),
              extra_config: str = "") -> None:
    for version in versions:
        (root / name / version).mkdir(parents=True, exist_ok=True)
    custom(root / name, VERSIONED, "runtime: custom\nversion_policy: all\n" + extra_config)


def body(values: list[Any], datatype: str = "FP64") -> dict[str, Any]:
    return {"inputs": [{"name": "x", "datatype": datatype, "shape": [len(values)], "data": values}]}


ONE = body([1.0])


def infer(client: httpx.Client, url: str, model: str,
          payload: dict[str, Any] = ONE) -> httpx.Response:
    return client.post(f"{url}/v2/models/{model}/infer", json=payload, timeout=30)


def status(url: str, model: str) -> dict[str, Any]:
    response = httpx.get(f"{url}/v2/models/{model}/rollout", timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


def put(url: str, model: str, spec: dict[str, Any]) -> dict[str, Any]:
    response = httpx.put(f"{url}/v2/models/{model}/rollout", json=spec, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


def post(url: str, model: str, action: str) -> dict[str, Any]:
    response = httpx.post(f"{url}/v2/models/{model}/rollout/{action}", timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


def wait_for(condition: Callable[[], Any], timeout: float, what: str, every: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(every)


def metric(url: str, pattern: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=30).text
    found = re.search(pattern + r" (\S+)", text)
    return float(found.group(1)) if found else 0.0


@dataclass
class Answer:
    started: float
    finished: float
    status: int
    model: str | None
    version: str | None
    variant: str | None

    @property
    def seconds(self) -> float:
        return self.finished - self.started


def answer(response: httpx.Response, started: float) -> Answer:
    finished = time.monotonic()
    payload = response.json() if response.status_code == 200 else {}
    return Answer(started, finished, response.status_code, payload.get("model_name"),
                  payload.get("model_version"), response.headers.get("shoal-variant"))


class Load:
    """``threads`` clients sending requests to ``model`` back to back until stopped (or
    ``count`` each), recording every answer."""

    def __init__(self, url: str, model: str | list[str], threads: int = 8,
                 count: int | None = None, payload: dict[str, Any] = ONE) -> None:
        self.url, self.payload, self.count = url, payload, count
        self.models = model if isinstance(model, list) else [model]
        self.answers: list[Answer] = []
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True)
                         for i in range(threads)]

    def _run(self, index: int) -> None:
        sent = 0
        with httpx.Client() as client:
            while not self._stop.is_set() and (self.count is None or sent < self.count):
                model = self.models[(index + sent) % len(self.models)]
                started = time.monotonic()
                try:
                    response = infer(client, self.url, model, self.payload)
                except httpx.HTTPError as exc:
                    with self._lock:
                        self.failures.append(f"{type(exc).__name__}: {exc}")
                else:
                    with self._lock:
                        self.answers.append(answer(response, started))
                sent += 1

    def __enter__(self) -> Self:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(60)

    def wait(self) -> None:
        for thread in self._threads:
            thread.join(120)


def p99(answers: list[Answer]) -> float:
    return float(np.percentile([a.seconds for a in answers], 99))


# -- one shared server for the tests that need nothing special ---------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ShoalProcess]:
    root = tmp_path_factory.mktemp("rollouts")
    for name in ("swap", "paused", "cli", "cli2", "cli3"):
        versioned(root, name)
    custom(root / "fast", FAST)
    custom(root / "fast2", FAST)
    custom(root / "fast3", FAST)
    custom(root / "sleepy", SLEEPY)
    custom(root / "boom", BOOM)
    custom(root / "labels", LABELS)
    custom(root / "flipped", FLIPPED_LABELS)
    custom(root / "half", HALF)
    custom(root / "halfplus", HALF_PLUS)
    process = ShoalProcess(root)
    try:
        process.wait_ready()
        yield process
    finally:
        process.stop()


# -- 1. shadows never touch the primary ----------------------------------------------------------


def test_a_slow_or_failing_shadow_leaves_the_primary_alone(server: ShoalProcess) -> None:
    url = server.url
    with Load(url, ["fast", "fast2"], threads=8, count=25) as baseline:
        baseline.wait()
    assert not baseline.failures and {a.status for a in baseline.answers} == {200}
    without_shadow = p99(baseline.answers)

    put(url, "fast", {"shadow": {"variant": "sleepy", "percent": 100, "max_pending": 2}})
    put(url, "fast2", {"shadow": {"variant": "boom", "percent": 100, "max_pending": 4}})
    with Load(url, ["fast", "fast2"], threads=8, count=25) as load:
        load.wait()
    assert not load.failures, load.failures[:3]
    assert len(load.answers) == 200
    assert {a.status for a in load.answers} == {200}
    assert {a.variant for a in load.answers} == {"stable"}
    with_shadow = p99(load.answers)
    # Never the shadow's 2 s: far below it, and within a few times the run without a shadow.
    assert with_shadow < max(0.5, 3 * without_shadow), (with_shadow, without_shadow)

    sent_fast = sum(1 for a in load.answers if a.model == "fast")
    assert sent_fast == sum(1 for a in load.answers if a.model == "fast2") == 100

    def settled(model: str) -> dict[str, Any] | None:
        shadow = status(url, model)["variants"]["shadow"]
        done = shadow["requests"] + shadow["skipped"] == sent_fast and shadow["pending"] == 0
        return shadow if done else None

    sleepy = wait_for(lambda: settled("fast"), 30, "the sleeping shadow to finish", every=0.25)
    assert sleepy["skipped"] > 0  # at most max_pending ran; the rest were never queued
    assert sleepy["requests"] >= 1 and sleepy["errors"] == 0
    assert sleepy["skipped"] == metric(url, r'shoal_rollout_shadow_skipped_total\{model="fast"\}')

    boom = wait_for(lambda: settled("fast2"), 30, "the failing shadow to finish", every=0.25)
    assert boom["requests"] > 0 and boom["errors"] == boom["requests"]
    assert boom["skipped"] == metric(url, r'shoal_rollout_shadow_skipped_total\{model="fast2"\}')
    primary = status(url, "fast2")["variants"]["stable"]
    assert primary["requests"] == sent_fast and primary["errors"] == 0


def test_a_slow_shadow_with_a_deep_queue_never_fills_the_model_threads(server: ShoalProcess) -> None:
    """A 2 s shadow with the default max_pending (64, far more than the server's model
    threads): it runs one call at a time, so the primary keeps its threads and its latency."""
    url = server.url
    put(url, "fast3", {"shadow": {"variant": "sleepy"}})
    try:
        with Load(url, ["fast3"], threads=8, count=20) as load:
            load.wait()
        assert not load.failures and {a.status for a in load.answers} == {200}
        assert p99(load.answers) < 0.5, p99(load.answers)
        shadow = status(url, "fast3")["variants"]["shadow"]
        assert shadow["pending"] > 4  # more shadow requests waiting than there are threads
    finally:
        httpx.delete(f"{url}/v2/models/fast3/rollout", timeout=30)  # drops the waiting copies


# -- 2. agreement figures ------------------------------------------------------------------------


def test_shadow_agreement_and_mean_difference_match_a_hand_count(server: ShoalProcess) -> None:
    url = server.url
    put(url, "labels", {"shadow": {"variant": "flipped", "max_pending": 64}})
    put(url, "half", {"shadow": {"variant": "halfplus", "max_pending": 64}})
    requests = [list(range(5 * i, 5 * i + 5)) for i in range(40)]
    with httpx.Client() as client:
        for values in requests:
            for model in ("labels", "half"):
                response = infer(client, url, model, body(values, "INT64"))
                assert response.status_code == 200, response.text

    def shadow_done(model: str) -> dict[str, Any] | None:
        shadow = status(url, model)["variants"]["shadow"]
        return shadow if shadow["requests"] == len(requests) else None

    values = [x for row in requests for x in row]
    labels = wait_for(lambda: shadow_done("labels"), 30, "the label shadow", every=0.1)
    assert labels["skipped"] == 0 and labels["errors"] == 0
    (figures,) = labels["outputs"].values()
    assert figures["compared"] == len(values) and figures["mismatches"] == 0
    agreed = sum(1 for x in values if x % 3 != 0)
    assert figures["agreement"] == pytest.approx(agreed / len(values), abs=1e-12)

    floats = wait_for(lambda: shadow_done("half"), 30, "the float shadow", every=0.1)
    assert floats["skipped"] == 0 and floats["errors"] == 0
    (figures,) = floats["outputs"].values()
    assert figures["compared"] == len(values) and figures["mismatches"] == 0
    hand = sum(abs(x / 2 - (x / 2 + (x % 5) / 100)) for x in values) / len(values)
    assert figures["mean_abs_difference"] == pytest.approx(hand, rel=1e-9)


# -- 3. promote and rollback under load ----------------------------------------------------------


def test_promote_and_rollback_under_load_fail_no_request(server: ShoalProcess) -> None:
    url = server.url
    put(url, "swap", {"stable": "1", "canary": {"variant": "2", "percent": 50}})
    with Load(url, "swap", threads=8) as load:
        time.sleep(1.0)
        post(url, "swap", "rollback")
        rolled_back = time.monotonic()
        time.sleep(1.0)
        reset = time.monotonic()
        put(url, "swap", {"stable": "1", "canary": {"variant": "2", "percent": 50}})
        time.sleep(1.0)
        post(url, "swap", "promote")
        promoted = time.monotonic()
        time.sleep(1.0)
    assert not load.failures, load.failures[:3]
    assert len(load.answers) > 100
    assert {a.status for a in load.answers} == {200}
    assert {a.version for a in load.answers if a.started < rolled_back - 0.5} == {"1", "2"}
    after_rollback = [a for a in load.answers if rolled_back < a.started and a.finished < reset]
    assert after_rollback and {a.version for a in after_rollback} == {"1"}
    after_promote = [a for a in load.answers if a.started > promoted]
    assert after_promote and {a.version for a in after_promote} == {"2"}
    final = status(url, "swap")
    assert final["state"] == "promoted" and final["spec"]["stable"] == "2"
    assert "canary" not in final["spec"]


# -- 4. progressive delivery ----------------------------------------------------------------------


def test_a_canary_that_starts_failing_is_rolled_back_by_itself(tmp_path: Path) -> None:
    versioned(tmp_path, "failing")
    process = ShoalProcess(tmp_path)
    interval = 2.0
    try:
        process.wait_ready()
        url = process.url
        put(url, "failing", {"stable": "1", "canary": {"variant": "2", "analysis": {
            "steps": [20, 60, 100], "interval": f"{interval}s", "max_error_rate": 0.1,
            "min_requests": 5}}})
        answers: list[Answer] = []
        with httpx.Client() as client:
            # Healthy first: a few canary answers.
            while sum(1 for a in answers if a.variant == "canary") < 2:
                answers.append(answer(infer(client, url, "failing"), time.monotonic()))
            assert {a.status for a in answers} == {200}
            (tmp_path / "failing" / "2" / "fail").touch()
            first_failure = None
            deadline = time.monotonic() + 30
            while True:
                started = time.monotonic()
                response = infer(client, url, "failing")
                answers.append(answer(response, started))
                if response.status_code != 200:
                    assert response.status_code == 500, response.text
                    assert response.headers.get("shoal-variant") == "canary"
                    first_failure = first_failure or time.monotonic()
                if first_failure is not None and status(url, "failing")["state"] == "rolled_back":
                    noticed = time.monotonic()
                    break
                assert time.monotonic() < deadline, "never rolled back"
            assert noticed - first_failure < interval + 2.0, noticed - first_failure
            # The stable variant never failed.
            assert all(a.status == 200 for a in answers if a.variant == "stable")
            after = [infer(client, url, "failing") for _ in range(30)]
        assert {r.status_code for r in after} == {200}
        assert {r.json()["model_version"] for r in after} == {"1"}
        final = status(url, "failing")
        assert final["state"] == "rolled_back" and final["canary_percent"] == 0
        assert "max_error_rate" in final["reason"]
        rollbacks = r'shoal_rollout_rollbacks_total\{guard="max_error_rate",model="failing"\}'
        assert metric(url, rollbacks) == 1
    finally:
        process.stop()
    failed = [e for e in process.log_events() if e["event"] == "rollout_guard_failed"]
    assert len(failed) == 1 and failed[0]["model"] == "failing"
    assert failed[0]["guard"] == "max_error_rate"


def test_a_healthy_canary_is_promoted_by_itself(tmp_path: Path) -> None:
    versioned(tmp_path, "healthy")
    process = ShoalProcess(tmp_path)
    try:
        process.wait_ready()
        url = process.url
        put(url, "healthy", {"stable": "1", "canary": {"variant": "2", "analysis": {
            "steps": [20, 60], "interval": "1s", "max_error_rate": 0.1, "min_requests": 3}}})
        seen_percents = set()
        with httpx.Client() as client:
            deadline = time.monotonic() + 30
            while True:
                for _ in range(10):
                    assert infer(client, url, "healthy").status_code == 200
                now = status(url, "healthy")
                if now["state"] == "promoted":
                    break
                assert now["state"] == "progressing", now
                seen_percents.add(now["canary_percent"])
                assert time.monotonic() < deadline, "never promoted"
            after = [infer(client, url, "healthy") for _ in range(30)]
        assert seen_percents <= {20, 60}
        assert {r.status_code for r in after} == {200}
        assert {r.json()["model_version"] for r in after} == {"2"}
        assert now["spec"]["stable"] == "2" and "canary" not in now["spec"]
        events = [e["event"] for e in now["history"]]
        assert events == ["set", "step", "promoted"], events
    finally:
        process.stop()
    changes = [e for e in process.log_events() if e["event"] == "rollout_changed"]
    assert [e["change"] for e in changes] == ["set", "step", "promoted"], changes
    assert not [e for e in process.log_events() if e["event"] == "rollout_guard_failed"]


# -- 5. pause and resume ---------------------------------------------------------------------------


def test_pause_freezes_the_percent_and_resume_goes_on(server: ShoalProcess) -> None:
    url = server.url
    put(url, "paused", {"stable": "1", "canary": {"variant": "2", "analysis": {
        "steps": [20, 50, 80], "interval": "1s", "min_requests": 2}}})
    paused = post(url, "paused", "pause")
    assert paused["state"] == "paused" and paused["canary_percent"] == 20
    with httpx.Client() as client:
        until = time.monotonic() + 2.5  # well over two intervals, with traffic
        while time.monotonic() < until:
            assert infer(client, url, "paused").status_code == 200
        still = status(url, "paused")
        assert still["state"] == "paused" and still["canary_percent"] == 20
        assert still["step"]["index"] == 0
        assert still["variants"]["canary"]["requests"] >= 2  # traffic still split while paused
        assert "step" not in [e["event"] for e in still["history"]]

        resumed = post(url, "paused", "resume")
        assert resumed["state"] == "progressing" and resumed["canary_percent"] == 20

        def advanced() -> dict[str, Any] | None:
            for _ in range(10):
                assert infer(client, url, "paused").status_code == 200
            now = status(url, "paused")
            return now if now["canary_percent"] != 20 else None

        moved = wait_for(advanced, 20, "the step after resume", every=0)
    assert moved["state"] == "progressing" and moved["canary_percent"] == 50
    assert moved["step"]["index"] == 1
    assert [e["event"] for e in moved["history"]] == ["set", "paused", "resumed", "step"]


# -- 6. persistence across restarts ---------------------------------------------------------------


def comparable(answer: dict[str, Any]) -> tuple:
    return (answer["state"], json.dumps(answer["spec"], sort_keys=True), answer["canary_percent"],
            answer.get("step", {}).get("index"))


def test_rollouts_survive_a_restart_and_model_yaml_is_applied_once(tmp_path: Path) -> None:
    versioned(tmp_path, "ver")
    versioned(tmp_path, "conf", extra_config=(
        'rollout: {stable: "1", canary: {variant: "2", percent: 30}}\n'))

    first = ShoalProcess(tmp_path)
    try:
        first.wait_ready()
        url = first.url
        configured = status(url, "conf")
        assert configured["state"] == "progressing" and configured["canary_percent"] == 30
        assert configured["spec"] == {"stable": "1", "canary": {"variant": "2", "percent": 30}}
        put(url, "conf", {"stable": "1", "canary": {"variant": "3", "percent": 70}})

        put(url, "ver", {"stable": "1", "canary": {"variant": "2", "analysis": {
            "steps": [10, 40, 70], "interval": "1s", "min_requests": 2}}})
        with httpx.Client() as client:
            def stepped() -> dict[str, Any] | None:
                for _ in range(5):
                    assert infer(client, url, "ver").status_code == 200
                now = status(url, "ver")
                return now if now["step"]["index"] >= 1 else None

            wait_for(stepped, 20, "the first step", every=0)
        before = status(url, "ver")  # no traffic from here: the step cannot move
        assert before["step"]["index"] == 1 and before["canary_percent"] == 40
    finally:
        assert first.stop() == 0
    assert (tmp_path / ".shoal-state" / "rollouts" / "ver.json").is_file()

    second = ShoalProcess(tmp_path)
    try:
        second.wait_ready()
        url = second.url
        after = status(url, "ver")
        assert comparable(after) == comparable(before)
        conf = status(url, "conf")
        assert conf["spec"]["canary"] == {"variant": "3", "percent": 70}  # the live change won
        with httpx.Client() as client:
            versions = {infer(client, url, "ver").json()["model_version"] for _ in range(40)}
        assert versions <= {"1", "2"} and "1" in versions  # never the newest (3): the split holds
        deleted = httpx.delete(f"{url}/v2/models/ver/rollout", timeout=30)
        assert deleted.status_code == 200, deleted.text
        assert status(url, "ver")["state"] == "none"
    finally:
        assert second.stop() == 0

    third = ShoalProcess(tmp_path)
    try:
        third.wait_ready()
        url = third.url
        assert status(url, "ver") == {"model": "ver", "state": "none"}
        with httpx.Client() as client:
            versions = {infer(client, url, "ver").json()["model_version"] for _ in range(10)}
        assert versions == {"3"}  # unversioned requests go to the newest version again
        conf = status(url, "conf")
        assert conf["state"] == "progressing"
        assert conf["spec"]["canary"] == {"variant": "3", "percent": 70}
    finally:
        assert third.stop() == 0


# -- 7. --http-workers ---------------------------------------------------------------------------


def fresh_status(url: str, model: str) -> dict[str, Any]:
    with httpx.Client() as client:  # a new connection: the kernel picks a process
        response = client.get(f"{url}/v2/models/{model}/rollout", timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


def fresh_infer(url: str, model: str) -> tuple[str, int]:
    with httpx.Client() as client:
        response = infer(client, url, model)
    assert response.status_code == 200, response.text
    payload = response.json()
    pid = next(o for o in payload["outputs"] if o["name"] == "pid")["data"][0]
    return payload["model_version"], pid


def test_every_http_worker_process_sees_the_same_rollout(tmp_path: Path) -> None:
    versioned(tmp_path, "ver", versions=("1", "2"))
    process = ShoalProcess(tmp_path, "--http-workers", "2")
    try:
        process.wait_ready()
        url = process.url
        with httpx.Client() as client:
            response = client.put(f"{url}/v2/models/ver/rollout", timeout=30, json={
                "stable": "1", "canary": {"variant": "2", "percent": 0}})
            assert response.status_code == 200, response.text

        def view(answer: dict[str, Any]) -> tuple:
            return (*comparable(answer), json.dumps(answer["history"], sort_keys=True))

        views = {view(fresh_status(url, "ver")) for _ in range(20)}
        assert len(views) == 1, views
        assert next(iter(views))[:3] == (
            "progressing", json.dumps({"stable": "1", "canary": {"variant": "2", "percent": 0.0}},
                                      sort_keys=True), 0)
        dark = [fresh_infer(url, "ver") for _ in range(20)]
        assert {v for v, _ in dark} == {"1"}

        put(url, "ver", {"stable": "1", "canary": {"variant": "2", "percent": 100}})
        answers = [fresh_infer(url, "ver") for _ in range(30)]
        assert {v for v, _ in answers} == {"2"}
        assert len({pid for _, pid in answers}) == 2  # both processes answered, both followed
        views = {view(fresh_status(url, "ver")) for _ in range(20)}
        assert len(views) == 1 and next(iter(views))[2] == 100, views
        counts = {fresh_status(url, "ver")["variants"]["canary"]["requests"] for _ in range(10)}
        assert counts == {30}  # the figures are the sum of both processes, whichever answers

        post(url, "ver", "rollback")
        answers = [fresh_infer(url, "ver") for _ in range(30)]
        assert {v for v, _ in answers} == {"1"}
        states = {fresh_status(url, "ver")["state"] for _ in range(20)}
        assert states == {"rolled_back"}
    finally:
        assert process.stop() == 0


# -- 8. the CLI ----------------------------------------------------------------------------------


def shoal(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "shoal", *args], capture_output=True, text=True,
                          check=False, timeout=60)


def test_the_rollout_cli_drives_the_server(server: ShoalProcess) -> None:
    url = server.url
    done = shoal("rollout", "set", "cli", "--stable", "1", "--canary", "2=10", "--shadow", "3=100",
                 "--server", url)
    assert done.returncode == 0, done.stderr
    assert "cli: progressing, canary at 10%" in done.stdout

    shown = shoal("rollout", "status", "cli", "--server", url)
    assert shown.returncode == 0, shown.stderr
    rows = {line.split()[0]: line.split()[1] for line in shown.stdout.splitlines()[2:]
            if line.split() and line.split()[0] in ("stable", "canary", "shadow")}
    assert rows == {"stable": "1", "canary": "2", "shadow": "3"}, shown.stdout

    as_json = shoal("rollout", "status", "cli", "--json", "--server", url)
    assert as_json.returncode == 0, as_json.stderr
    answer = json.loads(as_json.stdout)
    assert answer["state"] == "progressing" and answer["canary_percent"] == 10
    assert answer["spec"] == {"stable": "1", "canary": {"variant": "2", "percent": 10},
                              "shadow": {"variant": "3", "percent": 100, "max_pending": 64}}

    progressive = shoal("rollout", "set", "cli", "--stable", "1", "--canary", "2",
                        "--steps", "5,25", "--interval", "30s", "--max-error-rate", "0.1",
                        "--min-requests", "5",
                        "--server", url, "--json")
    assert progressive.returncode == 0, progressive.stderr
    spec = json.loads(progressive.stdout)["spec"]
    assert spec["canary"]["analysis"] == {"steps": [5, 25], "interval": 30, "max_error_rate": 0.1,
                                          "min_requests": 5}
    assert json.loads(progressive.stdout)["canary_percent"] == 5

    promoted = shoal("rollout", "promote", "cli", "--server", url, "--json")
    assert promoted.returncode == 0, promoted.stderr
    assert json.loads(promoted.stdout)["state"] == "promoted"
    assert status(url, "cli")["spec"]["stable"] == "2"
    twice = shoal("rollout", "promote", "cli", "--server", url)
    assert twice.returncode == 1 and "no canary to promote (HTTP 400)" in twice.stderr, twice.stderr


def test_the_cli_default_stable_after_a_promotion_is_the_promoted_version(
    server: ShoalProcess,
) -> None:
    """``--stable`` defaults to where unversioned requests go now: after promoting 2 (with a
    newer version 3 on disk), that is 2, so a new canary 3 is a canary, not the stable."""
    url = server.url
    put(url, "cli2", {"stable": "1", "canary": {"variant": "2", "percent": 10}})
    post(url, "cli2", "promote")
    with httpx.Client() as client:
        assert {infer(client, url, "cli2").json()["model_version"] for _ in range(10)} == {"2"}
    again = shoal("rollout", "set", "cli2", "--canary", "3=50", "--server", url, "--json")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["spec"]["stable"] == "2"


def test_the_cli_rolls_back_reports_errors_and_deletes(server: ShoalProcess) -> None:
    url = server.url
    done = shoal("rollout", "set", "cli3", "--canary", "3=50", "--stable", "1", "--server", url)
    assert done.returncode == 0, done.stderr
    rolled = shoal("rollout", "rollback", "cli3", "--server", url)
    assert rolled.returncode == 0, rolled.stderr
    assert "cli3: rolled_back" in rolled.stdout
    assert status(url, "cli3")["state"] == "rolled_back"
    with httpx.Client() as client:
        assert {infer(client, url, "cli3").json()["model_version"] for _ in range(10)} == {"1"}

    unknown = shoal("rollout", "set", "cli3", "--canary", "9=10", "--server", url)
    assert unknown.returncode == 1
    assert "canary.variant" in unknown.stderr and "'9'" in unknown.stderr, unknown.stderr
    assert "HTTP 400" in unknown.stderr
    assert unknown.stdout == ""
    assert status(url, "cli3")["state"] == "rolled_back"  # unchanged

    deleted = shoal("rollout", "delete", "cli3", "--server", url)
    assert deleted.returncode == 0, deleted.stderr
    assert "no rollout" in deleted.stdout
    none = shoal("rollout", "status", "cli3", "--server", url)
    assert none.returncode == 0 and none.stdout.strip() == "cli3: no rollout"
