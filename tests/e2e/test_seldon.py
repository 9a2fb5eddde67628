"""The Seldon protocol through a real server, for models and graphs, as Seldon Core's
clients send it (``/api/v1.0/...`` and the ingress paths ``/seldon/<ns>/<model>/...``)."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from .models import custom, sklearn_iris, write
from .process import ShoalProcess

TEXT = """
    import json
    import numpy as np
    from shoal import Model

    class Text(Model):
        def predict(self, request):
            tensor = request.inputs[0]
            raw = tensor.data.reshape(-1)[0]
            if tensor.parameters.get("content_type") == "json":
                return np.array([json.dumps(sorted(json.loads(raw))).encode()], dtype=object)
            return np.array([raw.upper()], dtype=object)
"""

ROWS = [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ShoalProcess]:
    root: Path = tmp_path_factory.mktemp("seldon")
    sklearn_iris(root / "iris" / "1", c=0.1)
    sklearn_iris(root / "iris" / "2")
    write(root / "iris" / "model.yaml", "version_policy: all\n")
    custom(root / "text", TEXT)
    write(root / "ab" / "graph.yaml", yaml.safe_dump({"nodes": {
        "root": {"kind": "bandit", "strategy": "thompson", "arms": ["old", "new"]},
        "old": {"kind": "model", "model": "iris", "version": "1"},
        "new": {"kind": "model", "model": "iris", "version": "2"},
    }}))
    process = ShoalProcess(root, "--state-dir", str(tmp_path_factory.mktemp("state")))
    try:
        process.wait_ready()
        yield process
    finally:
        process.stop()


@pytest.fixture(scope="module")
def client(server: ShoalProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=30) as http:
        yield http


def test_ndarray_and_tensor_to_a_model(client: httpx.Client) -> None:
    reply = client.post("/seldon/default/iris/api/v1.0/predictions",
                        json={"data": {"names": ["a", "b", "c", "d"], "ndarray": ROWS},
                              "meta": {"puid": "p-1", "tags": {"team": "x"}}})
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["data"] == {"names": [], "ndarray": [0, 2]}
    assert body["meta"]["puid"] == "p-1" and body["meta"]["tags"] == {"team": "x"}
    tensor = client.post("/api/v1.0/predictions", headers={"Seldon-Model": "iris"},
                         json={"data": {"tensor": {"shape": [2, 4], "values": [v for row in ROWS for v in row]}}})
    assert tensor.json()["data"]["tensor"] == {"shape": [2], "values": [0.0, 2.0]}
    assert len(tensor.json()["meta"]["puid"]) == 32  # generated when the client sends none


def test_str_json_and_bin_data(client: httpx.Client) -> None:
    path = "/seldon/default/text/api/v1.0/predictions"
    assert client.post(path, json={"strData": "hello"}).json()["strData"] == "HELLO"
    assert client.post(path, json={"jsonData": {"b": 1, "a": 2}}).json()["jsonData"] == ["a", "b"]
    raw = base64.b64encode(b"abc").decode()
    assert client.post(path, json={"binData": raw}).json()["binData"] == base64.b64encode(b"ABC").decode()


def test_graph_routing_and_feedback(client: httpx.Client) -> None:
    def pulls() -> dict[str, float]:
        arms = client.get("/v2/models/ab/routers").json()["routers"]["root"]["arms"]
        return {arm: stats["pulls"] for arm, stats in arms.items()}

    reply = client.post("/seldon/default/ab/api/v1.0/predictions", json={"data": {"ndarray": ROWS}})
    assert reply.status_code == 200, reply.text
    prediction = reply.json()
    index = prediction["meta"]["routing"]["root"]
    arm = ["old", "new"][index]
    assert reply.headers["shoal-routing"] == f"root={arm}"
    before = pulls()
    # The Seldon client echoes the response (and its meta.routing) with the reward.
    feedback = client.post("/seldon/default/ab/api/v1.0/feedback",
                           json={"request": {"data": {"ndarray": ROWS}}, "response": prediction,
                                 "reward": 1.0, "truth": {"data": {"ndarray": [0, 2]}}})
    assert feedback.status_code == 200, feedback.text
    assert feedback.json()["meta"]["routing"] == {"root": index}
    # Without routing, the puid finds the request this process served.
    by_puid = client.post("/api/v1.0/feedback", headers={"Seldon-Model": "ab"},
                          json={"response": {"meta": {"puid": prediction["meta"]["puid"]}}, "reward": 0})
    assert by_puid.status_code == 200, by_puid.text
    assert pulls()[arm] == before[arm] + 2
    # meta.routing in a request pins the route.
    for choice in (0, 1):
        pinned = client.post("/seldon/default/ab/api/v1.0/predictions",
                             json={"data": {"ndarray": ROWS}, "meta": {"routing": {"root": choice}}})
        assert pinned.json()["meta"]["routing"] == {"root": choice}


def test_feedback_for_a_plain_model_is_accepted(client: httpx.Client) -> None:
    reply = client.post("/seldon/default/iris/api/v1.0/feedback", json={"reward": 1})
    assert reply.status_code == 200 and reply.json()["meta"]["routing"] == {}


@pytest.mark.parametrize(
    ("path", "body", "status", "error"),
    [
        ("/seldon/default/iris/api/v1.0/predictions", {"nothing": 1}, 400, "needs 'data'"),
        ("/seldon/default/ghost/api/v1.0/predictions", {"data": {"ndarray": [[1]]}}, 404, "not served"),
        ("/api/v1.0/predictions", {"data": {"ndarray": [[1]]}}, 400, "Seldon-Model header"),
        ("/seldon/default/ab/api/v1.0/feedback", {"reward": 1}, 400, "needs the request's 'id'"),
        ("/seldon/default/ab/api/v1.0/feedback",
         {"response": {"meta": {"routing": {"root": 5}}}, "reward": 1}, 400, "no branch 5"),
        ("/seldon/default/ab/api/v1.0/predictions",
         {"data": {"ndarray": ROWS}, "meta": {"routing": {"nope": 0}}}, 400, "no routing node 'nope'"),
    ],
)
def test_errors_carry_seldon_status(client: httpx.Client, path: str, body: dict, status: int, error: str) -> None:
    reply = client.post(path, json=body)
    assert reply.status_code == status
    payload = reply.json()
    assert payload["status"]["status"] == "FAILURE" and payload["status"]["code"] == status
    assert error in payload["error"] and payload["status"]["info"] == payload["error"]


def test_seldon_requests_are_counted(client: httpx.Client) -> None:
    client.post("/seldon/default/iris/api/v1.0/predictions", json={"data": {"ndarray": ROWS}})
    assert 'protocol="seldon-rest"' in client.get("/metrics").text
