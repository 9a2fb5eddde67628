"""shoal serve --watch: model folders added, changed and removed while the server runs."""

from __future__ import annotations

import json
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from .models import IDENTITY, custom, iris_rows, sklearn_iris
from .process import ShoalProcess

IRIS_BODY = {"inputs": [{"name": "x", "datatype": "FP64", "shape": [1, 4],
                         "data": iris_rows(1).reshape(-1).tolist()}]}
IDENTITY_BODY = {"inputs": [{"name": "x", "datatype": "FP64", "shape": [1], "data": [1]}]}


def events_so_far(server: ShoalProcess) -> list[dict]:
    """The log events written so far, while the server runs."""
    return [json.loads(line) for line in list(server._stderr) if line.startswith("{")]


def wait_for(condition: Callable[[], bool], timeout: float = 30.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what or condition}")
        time.sleep(0.05)


class Load:
    """Threads sending unversioned requests until stopped; every answer that is not 200 is a
    failure."""

    def __init__(self, url: str, model: str, body: dict, threads: int = 3) -> None:
        self.url, self.model, self.body = url, model, body
        self.failures: list[str] = []
        self.versions: list[str] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run) for _ in range(threads)]
        for thread in self._threads:
            thread.start()

    def _run(self) -> None:
        with httpx.Client(timeout=30) as client:
            while not self._stop.is_set():
                try:
                    response = client.post(f"{self.url}/v2/models/{self.model}/infer", json=self.body)
                except httpx.TransportError as exc:
                    self.failures.append(repr(exc))
                    continue
                if response.status_code != 200:
                    self.failures.append(f"{response.status_code} {response.text}")
                else:
                    self.versions.append(response.json()["model_version"])
                time.sleep(0.005)

    def latest(self) -> str | None:
        return self.versions[-1] if self.versions else None

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()


def copy_slowly(source: Path, target: Path, chunks: int = 12, pause: float = 0.25) -> None:
    """Write ``source`` to ``target`` a chunk at a time, as a slow copy over a network would."""
    data = source.read_bytes()
    size = -(-len(data) // chunks)
    target.parent.mkdir(parents=True, exist_ok=True)
    with target.open("wb") as out:
        for start in range(0, len(data), size):
            out.write(data[start:start + size])
            out.flush()
            time.sleep(pause)


def test_a_version_copied_in_slowly_while_requests_run(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    sklearn_iris(repo / "iris" / "1", c=0.1)
    sklearn_iris(tmp_path / "staging", c=1.0)  # version 2, built outside the repository
    server = ShoalProcess(repo, "--watch", "--watch-interval", "1")
    server.wait_ready()
    load = Load(server.url, "iris", IRIS_BODY)
    try:
        wait_for(lambda: len(load.versions) > 20, what="requests to flow")
        # The folder appears, then its artifact grows for about 3 s (3 intervals): a watcher
        # that did not wait for it to settle would load half a pickle and fail.
        copy_slowly(tmp_path / "staging" / "model.joblib", repo / "iris" / "2" / "model.joblib")
        wait_for(lambda: load.latest() == "2", what="version 2 to answer")
        time.sleep(0.3)  # requests that were in flight at version 1 have finished
        mark = len(load.versions)
        wait_for(lambda: len(load.versions) > mark + 20, what="more requests")
        assert set(load.versions[mark:]) == {"2"}  # unversioned requests: the new version

        # The version folder goes: the latest policy falls back to version 1.
        shutil.rmtree(repo / "iris" / "2")
        wait_for(lambda: load.latest() == "1", what="version 1 to answer again")
        time.sleep(0.3)
    finally:
        load.stop()
        assert server.stop() == 0
    assert not load.failures, load.failures[:3]
    events = server.log_events()
    assert not [e for e in events if e["event"] in ("model_load_failed", "model_reload_failed")]
    changes = [(e["model"], e["change"]) for e in events if e["event"] == "repository_changed"]
    assert changes == [("iris", "changed"), ("iris", "changed")]
    loaded = [e["version"] for e in events if e["event"] == "model_loaded"]
    assert loaded == ["1", "2", "1"]


@pytest.mark.parametrize("workers", [[], ["--http-workers", "2"]], ids=["one-process", "http-workers"])
def test_model_folders_added_and_removed(tmp_path: Path, workers: list[str]) -> None:
    sklearn_iris(tmp_path / "iris")
    server = ShoalProcess(tmp_path, "--watch", "--watch-interval", "0.5", *workers)
    server.wait_ready()

    def statuses() -> set[int]:
        # New connections: with --http-workers, the kernel picks a process for each.
        return {httpx.post(f"{server.url}/v2/models/identity/infer", json=IDENTITY_BODY).status_code
                for _ in range(8)}

    try:
        assert statuses() == {404}
        custom(tmp_path / "identity", IDENTITY)
        wait_for(lambda: statuses() == {200}, what="the new model to be served")
        index = httpx.post(f"{server.url}/v2/repository/index").json()
        assert {"name": "identity", "version": "1", "state": "READY"} in index

        shutil.rmtree(tmp_path / "identity")
        wait_for(lambda: statuses() == {404}, what="the removed model to go")
        index = httpx.post(f"{server.url}/v2/repository/index").json()
        assert [row["name"] for row in index] == ["iris"]
        assert httpx.post(f"{server.url}/v2/models/iris/infer", json=IRIS_BODY).status_code == 200
        time.sleep(1.2)  # two intervals: the load's __pycache__ must not count as a change
    finally:
        assert server.stop() == 0
    changes = [(e["model"], e["change"]) for e in server.log_events()
               if e["event"] == "repository_changed"]
    processes = 2 if workers else 1
    assert sorted(changes) == sorted([("identity", "added"), ("identity", "removed")] * processes)


def test_a_broken_change_keeps_the_old_version_serving(tmp_path: Path) -> None:
    sklearn_iris(tmp_path / "iris" / "1")
    artifact = tmp_path / "iris" / "1" / "model.joblib"
    config = tmp_path / "iris" / "model.yaml"
    server = ShoalProcess(tmp_path, "--watch", "--watch-interval", "0.5")
    server.wait_ready()
    load = Load(server.url, "iris", IRIS_BODY, threads=2)

    def count(event: str) -> int:
        return sum(e["event"] == event for e in events_so_far(server))

    def requests_go_on() -> None:
        served = len(load.versions)
        wait_for(lambda: len(load.versions) > served + 20, what="requests after the change")

    try:
        # A broken artifact written over the good one.
        artifact.write_bytes(b"this is not a pickle")
        wait_for(lambda: count("model_reload_failed") == 1, what="the failed reload")
        requests_go_on()
        time.sleep(1.2)  # not retried until the folder changes again
        assert count("repository_changed") == 1
        # A good artifact again: reloaded.
        sklearn_iris(tmp_path / "iris" / "1", c=0.5)
        wait_for(lambda: count("model_loaded") == 2, what="the reload of a good artifact")

        # A model.yaml that does not parse.
        config.write_text("runtime: [unclosed\n")
        wait_for(lambda: count("model_reload_failed") == 2, what="the failed model.yaml reload")
        requests_go_on()
        config.unlink()
        wait_for(lambda: count("model_loaded") == 3, what="the reload without model.yaml")

        # A new version folder, complete but broken: version 1 keeps answering.
        broken = tmp_path / "iris" / "2" / "model.joblib"
        broken.parent.mkdir()
        broken.write_bytes(b"not a pickle either")
        wait_for(lambda: count("model_versions_kept") == 1, what="the failed new version")
        requests_go_on()
        shutil.rmtree(broken.parent)
        wait_for(lambda: count("model_loaded") == 4, what="the reload once version 2 went")
        index = httpx.post(f"{server.url}/v2/repository/index").json()
        assert index == [{"name": "iris", "version": "1", "state": "READY"}]
    finally:
        load.stop()
        assert server.stop() == 0
    assert not load.failures, load.failures[:3]
    assert set(load.versions) == {"1"}
    events = server.log_events()
    failed = [e for e in events if e["event"] == "model_reload_failed"]
    assert [(e["model"], e["version"], e["serving"]) for e in failed] == [
        ("iris", "1", "previous instance")] * 2
    assert "model.joblib" in failed[0]["reason"] and "model.yaml" in failed[1]["reason"]
    [new_version] = [e for e in events if e["event"] == "model_load_failed"]
    assert new_version["version"] == "2"
    [kept] = [e for e in events if e["event"] == "model_versions_kept"]
    assert kept["versions"] == ["1"]
    changes = [(e["model"], e["change"]) for e in events if e["event"] == "repository_changed"]
    assert changes == [("iris", "changed")] * 6


def test_a_graph_copied_in_before_its_model_loads_once_the_model_arrives(tmp_path: Path) -> None:
    import yaml

    root = tmp_path / "repo"
    sklearn_iris(root / "iris")
    process = ShoalProcess(root, "--watch", "--watch-interval", "0.3")
    try:
        process.wait_ready()
        graph = root / "via-other"
        graph.mkdir()
        (graph / "graph.yaml").write_text(yaml.safe_dump({"nodes": {"root": {"kind": "model", "model": "other"}}}))
        (graph / "model.yaml").write_text("runtime: graph\n")
        wait_for(lambda: httpx.get(f"{process.url}/v2/models/via-other").status_code == 503, what="the graph to fail")
        sklearn_iris(root / "other")  # the model the graph calls arrives later
        wait_for(lambda: httpx.get(f"{process.url}/v2/models/via-other/ready").status_code == 200,
                 what="the graph to load once its model is there")
    finally:
        process.stop()
