"""Rollouts that could hurt the server: variants that call the public name again (loops),
variants that are no longer served, readiness through a rollout, and state gauges after a
delete under --http-workers."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from .models import iris_rows, sklearn_iris, write
from .process import ShoalProcess

BODY = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP64",
                    "data": iris_rows(1).ravel().tolist()}]}


def repository(root: Path) -> Path:
    sklearn_iris(root / "iris" / "1", c=0.1)
    sklearn_iris(root / "iris" / "2")
    write(root / "iris" / "model.yaml", "version_policy: all\n")
    # A graph that calls iris without a version: through iris's rollout.
    write(root / "via-iris" / "graph.yaml", yaml.safe_dump({"nodes": {"root": {"kind": "model", "model": "iris"}}}))
    write(root / "via-iris" / "model.yaml", "runtime: graph\n")
    return root


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ShoalProcess]:
    process = ShoalProcess(repository(tmp_path_factory.mktemp("safety")))
    try:
        process.wait_ready()
        yield process
    finally:
        process.stop()


def put(server: ShoalProcess, spec: dict) -> httpx.Response:
    return httpx.put(f"{server.url}/v2/models/iris/rollout", json=spec)


def shadow_requests(server: ShoalProcess, wait_for: int) -> int:
    deadline = time.monotonic() + 5
    while True:
        shadow = httpx.get(f"{server.url}/v2/models/iris/rollout").json()["variants"]["shadow"]
        if shadow["requests"] >= wait_for or time.monotonic() > deadline:
            time.sleep(0.3)  # anything more (a loop) would show by now
            return httpx.get(f"{server.url}/v2/models/iris/rollout").json()["variants"]["shadow"]["requests"]
        time.sleep(0.05)


def test_a_shadow_that_calls_the_name_again_is_mirrored_once(server: ShoalProcess) -> None:
    assert put(server, {"stable": "2", "shadow": {"variant": "via-iris"}}).status_code == 200
    with httpx.Client() as client:
        for _ in range(5):
            assert client.post(f"{server.url}/v2/models/iris/infer", json=BODY).status_code == 200
    assert shadow_requests(server, 5) == 5
    status = httpx.get(f"{server.url}/v2/models/iris/rollout").json()
    assert status["variants"]["stable"]["requests"] == 5  # the graph's inner calls are not counted


def test_a_shadow_url_pointing_at_this_server_does_not_loop(server: ShoalProcess) -> None:
    assert put(server, {"stable": "2", "shadow": {"variant": server.url}}).status_code == 200
    with httpx.Client() as client:
        for _ in range(5):
            assert client.post(f"{server.url}/v2/models/iris/infer", json=BODY).status_code == 200
    # Each mirrored copy arrives as a request of its own (counted as stable), but mirrors nothing.
    assert shadow_requests(server, 5) == 5


def test_a_canary_that_calls_the_name_again_reaches_the_stable_variant(server: ShoalProcess) -> None:
    spec = {"stable": "2", "canary": {"variant": "via-iris", "percent": 100,
                                      "sticky": 'headers."x-user"'}}
    assert put(server, spec).status_code == 200
    for user in range(10):
        answer = httpx.post(f"{server.url}/v2/models/iris/infer", json=BODY, headers={"x-user": str(user)})
        assert answer.status_code == 200, answer.text
        assert answer.headers["shoal-variant"] == "canary"
        assert answer.json()["model_name"] == "via-iris"


def test_a_variant_that_is_no_longer_served_is_a_503_and_is_never_promoted(server: ShoalProcess) -> None:
    assert put(server, {"stable": "2", "canary": {"variant": "via-iris", "percent": 100}}).status_code == 200
    unloaded = httpx.post(f"{server.url}/v2/repository/models/via-iris/unload")
    assert unloaded.status_code == 200
    try:
        answer = httpx.post(f"{server.url}/v2/models/iris/infer", json=BODY)
        assert answer.status_code == 503, answer.text  # the rollout's failure, not the client's
        assert "not served" in answer.json()["error"]
        assert answer.headers["shoal-variant"] == "canary"
        refused = httpx.post(f"{server.url}/v2/models/iris/rollout/promote")
        assert refused.status_code == 400
        assert "cannot promote" in refused.json()["error"]
        status = httpx.get(f"{server.url}/v2/models/iris/rollout").json()
        assert status["state"] == "progressing" and status["variants"]["canary"]["errors"] >= 1
    finally:
        assert httpx.post(f"{server.url}/v2/repository/models/via-iris/load").status_code == 200


def test_readiness_follows_the_rollouts_stable_variant(server: ShoalProcess) -> None:
    assert put(server, {"stable": "via-iris"}).status_code == 200
    assert httpx.get(f"{server.url}/v2/models/iris/ready").status_code == 200
    assert httpx.post(f"{server.url}/v2/repository/models/via-iris/unload").status_code == 200
    try:
        # iris's own versions are loaded, but unversioned requests would go to a graph that is not.
        assert httpx.get(f"{server.url}/v2/models/iris/ready").status_code == 503
        assert httpx.get(f"{server.url}/v2/models/iris/versions/2/ready").status_code == 200
    finally:
        assert httpx.post(f"{server.url}/v2/repository/models/via-iris/load").status_code == 200
        assert httpx.delete(f"{server.url}/v2/models/iris/rollout").status_code == 200


def test_a_deleted_rollouts_gauges_go_to_zero_under_http_workers(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    sklearn_iris(root / "iris" / "1", c=0.1)
    sklearn_iris(root / "iris" / "2")
    write(root / "iris" / "model.yaml", "version_policy: all\n")
    process = ShoalProcess(root, "--http-workers", "2")
    try:
        process.wait_ready()
        spec = {"stable": "1", "canary": {"variant": "2", "percent": 40}}
        assert httpx.put(f"{process.url}/v2/models/iris/rollout", json=spec).status_code == 200
        assert httpx.delete(f"{process.url}/v2/models/iris/rollout").status_code == 200
        deadline = time.monotonic() + 5
        while True:  # every process notices within its controller's tick
            lines = [line for line in httpx.get(f"{process.url}/metrics").text.splitlines()
                     if line.startswith(("shoal_rollout_state{", "shoal_rollout_canary_percent{"))]
            if all(line.endswith(" 0.0") for line in lines) or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert lines and all(line.endswith(" 0.0") for line in lines), lines
    finally:
        process.stop()


def test_a_rollback_after_a_promotion_goes_back_to_the_previous_stable(server: ShoalProcess) -> None:
    assert put(server, {"stable": "1", "canary": {"variant": "2", "percent": 50}}).status_code == 200
    promoted = httpx.post(f"{server.url}/v2/models/iris/rollout/promote").json()
    assert promoted["state"] == "promoted" and promoted["spec"]["stable"] == "2"
    back = httpx.post(f"{server.url}/v2/models/iris/rollout/rollback")
    assert back.status_code == 200, back.text
    status = back.json()
    assert status["state"] == "rolled_back"
    assert status["spec"]["stable"] == "1"
    assert status["spec"]["canary"] == {"variant": "2", "percent": 0.0}  # dark, for another try
    assert "undoing the promotion of 2" in status["reason"]
    with httpx.Client() as client:
        for _ in range(10):
            answer = client.post(f"{server.url}/v2/models/iris/infer", json=BODY).json()
            assert answer["model_version"] == "1"
    # Nothing left to undo: a second rollback changes nothing.
    again = httpx.post(f"{server.url}/v2/models/iris/rollout/rollback").json()
    assert again["revision"] == status["revision"]
    assert httpx.delete(f"{server.url}/v2/models/iris/rollout").status_code == 200


def test_a_model_yaml_rollout_naming_a_missing_variant_is_logged_and_the_model_serves(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    sklearn_iris(root / "iris" / "1")
    write(root / "iris" / "model.yaml", 'rollout: {canary: {variant: "9", percent: 10}}\n')
    process = ShoalProcess(root)
    try:
        process.wait_ready()
        assert httpx.post(f"{process.url}/v2/models/iris/infer", json=BODY).status_code == 200
        assert httpx.get(f"{process.url}/v2/models/iris/rollout").json() == {"model": "iris", "state": "none"}
    finally:
        process.stop()
    invalid = [e for e in process.log_events() if e.get("event") == "rollout_invalid"]
    assert len(invalid) == 1 and invalid[0]["model"] == "iris"
    assert "canary.variant" in invalid[0]["reason"] and "'9'" in invalid[0]["reason"]
