"""A shadow on another server: mirrored over V2 REST, compared, and harmless when it is down."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import httpx
import pytest

from .models import iris_rows, sklearn_iris
from .process import ShoalProcess

BODY = {"inputs": [{"name": "x", "shape": [2, 4], "datatype": "FP64",
                    "data": iris_rows(2).ravel().tolist()}]}


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory):
    primary_root = tmp_path_factory.mktemp("primary")
    sklearn_iris(primary_root / "iris")
    shadow_root = tmp_path_factory.mktemp("shadow")
    sklearn_iris(shadow_root / "iris-next", c=0.01)  # disagrees with the primary on some rows
    primary, shadow = ShoalProcess(primary_root), ShoalProcess(shadow_root)
    try:
        primary.wait_ready()
        shadow.wait_ready()
        yield primary, shadow
    finally:
        primary.stop()
        shadow.stop()


def _requests_of(server: ShoalProcess, model: str) -> float:
    text = httpx.get(f"{server.url}/metrics").text
    return sum(
        float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
        if line.startswith("shoal_requests_total{") and f'model="{model}"' in line
        and 'outcome="success"' in line
    )


def _shadow_figures(server: ShoalProcess, sent: int) -> dict:
    deadline = time.monotonic() + 10
    while True:
        shadow = httpx.get(f"{server.url}/v2/models/iris/rollout").json()["variants"]["shadow"]
        done = shadow["requests"] + shadow["skipped"]
        if done >= sent or time.monotonic() > deadline:
            return shadow
        time.sleep(0.05)


def test_a_remote_shadow_gets_every_request_over_v2_rest(servers) -> None:
    primary, shadow = servers
    url = f"{shadow.url}/v2/models/iris-next"
    answer = httpx.put(f"{primary.url}/v2/models/iris/rollout", json={"shadow": {"variant": url}})
    assert answer.status_code == 200, answer.text
    before = _requests_of(shadow, "iris-next")
    with httpx.Client() as client:
        for _ in range(20):
            response = client.post(f"{primary.url}/v2/models/iris/infer", json=BODY)
            assert response.status_code == 200
            assert response.headers["shoal-variant"] == "stable"
    figures = _shadow_figures(primary, 20)
    assert figures["requests"] == 20 and figures["errors"] == 0 and figures["skipped"] == 0
    assert _requests_of(shadow, "iris-next") - before == 20
    compared = figures["outputs"]["predict"]
    assert compared["compared"] == 40  # two rows a request
    assert compared["agreement"] is not None


def test_an_unreachable_remote_shadow_costs_the_client_nothing(servers) -> None:
    primary, _ = servers
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        dead = sock.getsockname()[1]
    answer = httpx.put(f"{primary.url}/v2/models/iris/rollout",
                       json={"shadow": {"variant": f"http://127.0.0.1:{dead}"}})
    assert answer.status_code == 200, answer.text
    with httpx.Client() as client:
        for _ in range(10):
            assert client.post(f"{primary.url}/v2/models/iris/infer", json=BODY).status_code == 200
    figures = _shadow_figures(primary, 10)
    assert figures["requests"] == 10
    assert figures["errors"] == 10  # 503: the remote is unreachable
    assert figures["outputs"] == {}


def test_a_remote_url_is_only_a_shadow(servers) -> None:
    primary, shadow = servers
    answer = httpx.put(f"{primary.url}/v2/models/iris/rollout",
                       json={"canary": {"variant": shadow.url, "percent": 5}})
    assert answer.status_code == 400
    assert "canary.variant" in answer.json()["error"]
