"""The Seldon protocol through a real server, for models and graphs, as Seldon Core's
clients send it (``/api/v1.0/...`` and the ingress paths ``/seldon/[<ns>/]<model>/...``).
Feedback bodies and answers go through ``seldon_proto``: what ``SeldonClient`` sends and
what it can parse."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from . import seldon_proto
from .models import IDENTITY, custom, sklearn_iris, write
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
#: How deep a Seldon message may nest: what orjson writes back (it reads 1024 levels).
MAX_DEPTH = 254


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ShoalProcess]:
    root: Path = tmp_path_factory.mktemp("seldon")
    sklearn_iris(root / "iris" / "1", c=0.1)
    sklearn_iris(root / "iris" / "2")
    write(root / "iris" / "model.yaml", "version_policy: all\n")
    custom(root / "text", TEXT)
    custom(root / "echo", IDENTITY)
    write(root / "ab" / "graph.yaml", yaml.safe_dump({"nodes": {
        "root": {"kind": "bandit", "strategy": "thompson", "arms": ["old", "new"]},
        "old": {"kind": "model", "model": "iris", "version": "1"},
        "new": {"kind": "model", "model": "iris", "version": "2"},
    }}))
    write(root / "chain" / "graph.yaml", yaml.safe_dump({"nodes": {  # no routers
        "root": {"kind": "sequence", "steps": ["iris"]},
        "iris": {"kind": "model", "model": "iris", "version": "2"},
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


def pulls(client: httpx.Client) -> dict[str, dict[str, float]]:
    """The bandit's arms in graph 'ab': pulls and summed reward."""
    arms = client.get("/v2/models/ab/routers").json()["routers"]["root"]["arms"]
    return {arm: {"pulls": s["pulls"], "reward": s["reward"]} for arm, s in arms.items()}


def test_graph_routing_and_feedback(client: httpx.Client) -> None:
    request = {"data": {"ndarray": ROWS}}
    reply = client.post("/seldon/default/ab/api/v1.0/predictions", json=request)
    assert reply.status_code == 200, reply.text
    prediction = reply.json()
    index = prediction["meta"]["routing"]["root"]
    arm = ["old", "new"][index]
    assert reply.headers["shoal-routing"] == f"root={arm}"
    before = pulls(client)
    # The Seldon client echoes the response (and its meta.routing) with the reward.
    feedback = client.post("/seldon/default/ab/api/v1.0/feedback",
                           json={**seldon_proto.feedback_body(request, prediction, 1.0),
                                 "truth": {"data": {"ndarray": [0, 2]}}})
    assert feedback.status_code == 200, feedback.text
    assert seldon_proto.parse(feedback.json()).meta.routing == {"root": index}
    assert pulls(client)[arm]["pulls"] == before[arm]["pulls"] + 1
    # Without routing, the puid finds the request this process served.
    other = client.post("/seldon/default/ab/api/v1.0/predictions", json=request).json()
    other_arm = ["old", "new"][other["meta"]["routing"]["root"]]
    by_puid = client.post("/api/v1.0/feedback", headers={"Seldon-Model": "ab"},
                          json={"response": {"meta": {"puid": other["meta"]["puid"]}}, "reward": 1})
    assert by_puid.status_code == 200, by_puid.text
    assert seldon_proto.parse(by_puid.json()).meta.routing == other["meta"]["routing"]
    assert pulls(client)[other_arm]["pulls"] == before[other_arm]["pulls"] + 1 + (arm == other_arm)
    # meta.routing in a request pins the route.
    for choice in (0, 1):
        pinned = client.post("/seldon/default/ab/api/v1.0/predictions",
                             json={"data": {"ndarray": ROWS}, "meta": {"routing": {"root": choice}}})
        assert pinned.json()["meta"]["routing"] == {"root": choice}


def test_client_feedback_with_reward_0_counts_once(client: httpx.Client) -> None:
    """``SeldonClient.feedback(reward=0)`` sends no 'reward' (proto3 JSON leaves out
    defaults): it is a reward of 0. Sending it again (a retry) is a duplicate that says so."""
    request = {"data": {"ndarray": ROWS}}
    prediction = client.post("/seldon/default/ab/api/v1.0/predictions", json=request).json()
    arm = ["old", "new"][prediction["meta"]["routing"]["root"]]
    before = pulls(client)[arm]
    body = seldon_proto.feedback_body(request, prediction, 0.0)
    assert "reward" not in body
    first = client.post("/seldon/default/ab/api/v1.0/feedback", json=body)
    assert first.status_code == 200, first.text
    assert "duplicate" not in seldon_proto.parse(first.json()).meta.tags
    for retry in (body, seldon_proto.feedback_body(request, prediction, 1.0)):
        again = client.post("/seldon/default/ab/api/v1.0/feedback", json=retry)
        assert again.status_code == 200, again.text
        answer = seldon_proto.parse(again.json())
        assert answer.meta.tags["duplicate"].bool_value is True and answer.meta.routing == {}
    assert pulls(client)[arm] == {"pulls": before["pulls"] + 1, "reward": before["reward"]}


def test_v2_feedback_by_id_counts_once(client: httpx.Client) -> None:
    reply = client.post("/v2/models/ab/infer", json={"inputs": [
        {"name": "input-0", "datatype": "FP64", "shape": [2, 4], "data": ROWS}]})
    assert reply.status_code == 200, reply.text
    request_id, arm = reply.json()["id"], reply.json()["parameters"]["routing"].split("=")[1]
    before = pulls(client)[arm]["pulls"]
    first = client.post("/v2/models/ab/feedback", json={"id": request_id, "reward": 1})
    assert first.json() == {"name": "ab", "updated": {"root": arm}}
    again = client.post("/v2/models/ab/feedback", json={"id": request_id, "reward": 1})
    assert again.status_code == 200 and again.json() == {"name": "ab", "updated": {}, "duplicate": True}
    refused = client.post("/v2/models/ab/feedback", json={"id": request_id, "reward": 5})
    assert refused.status_code == 400  # a duplicate is checked like any feedback
    assert pulls(client)[arm]["pulls"] == before + 1


def test_feedback_for_a_graph_without_routers_is_accepted(client: httpx.Client) -> None:
    request = {"data": {"ndarray": ROWS}}
    for path in ("/seldon/default/chain/api/v1.0", "/seldon/chain/api/v1.0"):
        prediction = client.post(f"{path}/predictions", json=request)
        assert prediction.status_code == 200, prediction.text
        feedback = client.post(f"{path}/feedback",
                               json=seldon_proto.feedback_body(request, prediction.json(), 1.0))
        assert feedback.status_code == 200, feedback.text
        answer = seldon_proto.parse(feedback.json())
        assert answer.meta.puid == prediction.json()["meta"]["puid"] and answer.meta.routing == {}
    reply = client.post("/v2/models/chain/infer", json={"inputs": [
        {"name": "input-0", "datatype": "FP64", "shape": [2, 4], "data": ROWS}]})
    for request_id in (reply.json()["id"], "never-served"):
        v2 = client.post("/v2/models/chain/feedback", json={"id": request_id, "reward": 1})
        assert v2.status_code == 200 and v2.json() == {"name": "chain", "updated": {}}, v2.text


def test_deployment_paths_without_a_namespace(client: httpx.Client) -> None:
    """``SeldonClient`` without a namespace posts to ``/seldon/<deployment>/api/v1.0/...``."""
    request = {"data": {"ndarray": ROWS}}
    reply = client.post("/seldon/ab/api/v1.0/predictions", json=request)
    assert reply.status_code == 200, reply.text
    prediction = seldon_proto.parse(reply.json())
    feedback = client.post("/seldon/ab/api/v1.0/feedback",
                           json=seldon_proto.feedback_body(request, reply.json(), 1.0))
    assert feedback.status_code == 200, feedback.text
    assert seldon_proto.parse(feedback.json()).meta.routing == prediction.meta.routing


def nested(levels: int) -> str:
    """A JSON value of ``levels`` nested lists."""
    return "[" * levels + "1" + "]" * levels


@pytest.mark.parametrize(
    ("kind", "message", "around"),
    [  # around: the levels the answer puts around the value (the message; message, meta, tags)
        ("jsonData", '{{"jsonData": {}}}', 1),
        ("meta.tags", '{{"strData": "x", "meta": {{"tags": {{"t": {}}}}}}}', 3),
    ],
)
def test_json_that_nests_too_deep_is_refused(
    client: httpx.Client, kind: str, message: str, around: int
) -> None:
    """orjson reads 1024 levels but writes 254: what the answer echoes must fit, else 400."""
    path = "/seldon/default/echo/api/v1.0/predictions"
    deepest = MAX_DEPTH - around
    fits = client.post(path, content=message.format(nested(deepest)))
    assert fits.status_code == 200, fits.text
    assert fits.text.count("[" * deepest) == 1  # echoed whole
    for levels in (deepest + 1, 1000):
        reply = client.post(path, content=message.format(nested(levels)))
        assert reply.status_code == 400, reply.text
        assert f"'{kind}' nests too deep" in seldon_proto.parse(reply.json()).status.info


def test_feedback_for_a_plain_model_is_accepted(client: httpx.Client) -> None:
    reply = client.post("/seldon/default/iris/api/v1.0/feedback", json={"reward": 1})
    assert reply.status_code == 200 and reply.json()["meta"]["routing"] == {}


@pytest.mark.parametrize(
    ("path", "body", "status", "error"),
    [
        ("/seldon/default/iris/api/v1.0/predictions", {"nothing": 1}, 400, "needs 'data'"),
        ("/seldon/default/ghost/api/v1.0/predictions", {"data": {"ndarray": [[1]]}}, 404, "not served"),
        ("/seldon/ghost/api/v1.0/feedback", {"reward": 1}, 404, "not served"),
        ("/api/v1.0/predictions", {"data": {"ndarray": [[1]]}}, 400, "Seldon-Model header"),
        ("/seldon/default/ab/api/v1.0/feedback", {"reward": 1}, 400, "needs the request's 'id'"),
        ("/seldon/default/ab/api/v1.0/feedback", {"reward": "high"}, 400, "'reward' must be a number"),
        ("/seldon/default/ab/api/v1.0/feedback",
         {"response": {"meta": {"routing": {"root": 5}}}, "reward": 1}, 400, "no branch 5"),
        ("/seldon/default/ab/api/v1.0/predictions",
         {"data": {"ndarray": ROWS}, "meta": {"routing": {"nope": 0}}}, 400, "no routing node 'nope'"),
    ],
)
def test_errors_are_seldon_messages(
    client: httpx.Client, path: str, body: dict, status: int, error: str
) -> None:
    """The client parses every answer as a SeldonMessage: an extra field would lose it."""
    reply = client.post(path, json=body)
    assert reply.status_code == status
    answer = seldon_proto.parse(reply.json())
    assert (answer.status.code, answer.status.status) == (status, 1)  # FAILURE
    assert error in answer.status.info and answer.status.reason


def test_seldon_requests_are_counted(client: httpx.Client) -> None:
    client.post("/seldon/default/iris/api/v1.0/predictions", json={"data": {"ndarray": ROWS}})
    assert 'protocol="seldon-rest"' in client.get("/metrics").text
