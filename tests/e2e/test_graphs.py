"""Inference graphs through a real server: every node kind over V2 REST, V1 and gRPC, remote
nodes against a second server, feedback, state across restarts and processes, validation
failures, metrics and logs, concurrency, and the example graph's bandit converging."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
import yaml
from sklearn.datasets import load_iris

from shoal.protocol.grpc_gen import grpc_service_pb2 as pb
from shoal.protocol.grpc_gen import grpc_service_pb2_grpc as pb_grpc
from shoal.protocol.tfs_gen import predict_pb2, prediction_service_pb2_grpc, types_pb2

from .models import IDENTITY, SLOW, custom, sklearn_iris, write
from .process import ShoalProcess

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

DOUBLE = """
    from shoal import Model, TensorSpec

    class Double(Model):
        def load(self):
            self.inputs = [TensorSpec("x", "FP64", (-1, 2))]

        def predict(self, request):
            return {"y": request.as_numpy() * 2}
"""


def graph(root: Path, name: str, spec: dict[str, Any]) -> None:
    write(root / name / "graph.yaml", yaml.safe_dump(spec))


def models(root: Path) -> Path:
    sklearn_iris(root / "iris" / "1", c=0.1)
    sklearn_iris(root / "iris" / "2")
    write(root / "iris" / "model.yaml", "version_policy: all\n")
    custom(root / "identity", IDENTITY)
    custom(root / "slow", SLOW)
    custom(root / "double", DOUBLE)
    return root


def x_body(rows: list[list[float]], **parameters: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"inputs": [{"name": "x", "datatype": "FP64", "shape": [len(rows), 2],
                                        "data": rows}]}
    if parameters:
        body["parameters"] = parameters
    return body


@pytest.fixture(scope="module")
def backend(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ShoalProcess]:
    """Another server: the 'other container' that remote nodes call."""
    root = models(tmp_path_factory.mktemp("backend"))
    graph(root, "ab", {"nodes": {
        "root": {"kind": "bandit", "strategy": "thompson", "arms": ["old", "new"]},
        "old": {"kind": "model", "model": "iris", "version": "1"},
        "new": {"kind": "model", "model": "iris", "version": "2"},
    }})
    process = ShoalProcess(root)
    try:
        process.wait_ready()
        yield process
    finally:
        process.stop()


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory, backend: ShoalProcess) -> Path:
    root = models(tmp_path_factory.mktemp("graphs"))
    double = {"kind": "model", "model": "double"}
    identity = {"kind": "model", "model": "identity"}
    graph(root, "kinds", {"nodes": {
        "root": {"kind": "sequence", "steps": ["prep", {"node": "gate", "map": {"y": "x"}}]},
        "prep": {"kind": "transformer", "path": "plugins.py", "class": "Negate", "child": "double"},
        "gate": {"kind": "switch", "default": "split", "cases": [
            {"when": "headers.\"x-route\" == 'bandit'", "node": "bandit"},
            {"when": "parameters.route == 'ensemble'", "node": "ensemble"},
        ]},
        "split": {"kind": "splitter", "sticky": "parameters.user", "branches": [
            {"node": "identity", "weight": 50}, {"node": "double", "weight": 50}]},
        "bandit": {"kind": "bandit", "strategy": "epsilon_greedy", "arms": ["identity", "double"]},
        "ensemble": {"kind": "ensemble", "children": ["identity", "double"], "combiner": "concat"},
        "identity": identity,
        "double": double,
    }})
    write(root / "kinds" / "plugins.py", """
        from shoal import Model

        class Negate(Model):
            def preprocess(self, request):
                return {"x": -request.as_numpy()}

            def postprocess(self, response):
                return {"y": -response.outputs[0].data}
    """)
    graph(root, "committee", {"nodes": {
        "root": {"kind": "ensemble", "children": ["a", "b", "c"], "combiner": "mean"},
        **{k: {"kind": "model", "model": "slow"} for k in "abc"},
    }})
    graph(root, "remotes", {"nodes": {
        "root": {"kind": "ensemble", "children": ["rest", "grpc", "v1", "local"], "combiner": "collect"},
        "rest": {"kind": "remote", "url": backend.url, "model": "iris", "version": "1"},
        "grpc": {"kind": "remote", "url": backend.grpc_target, "protocol": "v2-grpc", "model": "iris"},
        "v1": {"kind": "remote", "url": backend.url, "protocol": "v1", "model": "iris"},
        "local": {"kind": "model", "model": "iris", "version": "1"},
    }})
    far = {"url": backend.url, "model": "ab"}
    graph(root, "relay", {"nodes": {
        "root": {"kind": "splitter", "branches": [{"node": "both", "weight": 100}]},
        "both": {"kind": "ensemble", "children": ["rest", "grpc"], "combiner": "collect"},
        "rest": {"kind": "remote", **far},
        "grpc": {"kind": "remote", **far, "url": backend.grpc_target, "protocol": "v2-grpc"},
    }})
    # The backend's graph as a remote model (triton runtime) of this repository.
    write(root / "ab-model" / "model.yaml", f"url: {backend.url}\nparameters: {{model_name: ab}}\n")
    graph(root, "relay-model", {"nodes": {
        "root": {"kind": "splitter", "branches": [{"node": "far", "weight": 100}]},
        "far": {"kind": "model", "model": "ab-model"},
    }})
    graph(root, "unreachable", {"nodes": {
        "root": {"kind": "remote", "url": "http://127.0.0.1:9", "model": "iris", "timeout": 2},
    }})
    broken = {
        "cycle": {"root": {"kind": "sequence", "steps": ["again"]},
                  "again": {"kind": "sequence", "steps": ["root"]}},
        "ghost": {"root": {"kind": "model", "model": "no-such-model"}},
        "weights": {"root": {"kind": "splitter", "branches": [{"node": "d", "weight": 70}]}, "d": double},
        "one-arm": {"root": {"kind": "bandit", "strategy": "ucb1", "arms": ["d"]}, "d": double},
        "condition": {"root": {"kind": "switch", "cases": [{"when": "parameters.(", "node": "d"}]},
                      "d": double},
        "missing": {"root": {"kind": "sequence", "steps": ["nowhere"]}},
    }
    for name, nodes in broken.items():
        graph(root, f"bad-{name}", {"nodes": nodes})
    return root


@pytest.fixture(scope="module")
def server(repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ShoalProcess]:
    process = ShoalProcess(repo, "--state-dir", str(tmp_path_factory.mktemp("state")))
    try:
        process.wait_ready()
        yield process
    finally:
        process.stop()


@pytest.fixture(scope="module")
def client(server: ShoalProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=30) as http:
        yield http


@pytest.fixture(scope="module")
def stub(server: ShoalProcess) -> Iterator[pb_grpc.GRPCInferenceServiceStub]:
    with grpc.insecure_channel(server.grpc_target) as channel:
        yield pb_grpc.GRPCInferenceServiceStub(channel)


def test_every_node_kind_over_v2_rest(client: httpx.Client) -> None:
    # prep negates, doubles and negates back: 2x. The splitter (sticky per user) then
    # applies identity or double.
    reply = client.post("/v2/models/kinds/infer", json=x_body([[1, 2]], user="ann"))
    assert reply.status_code == 200, reply.text
    body = reply.json()
    routing = body["parameters"]["routing"]
    assert routing in ("gate=split,split=identity", "gate=split,split=double")
    assert reply.headers["shoal-routing"] == routing and body["id"]
    expected = [2.0, 4.0] if routing.endswith("identity") else [4.0, 8.0]
    assert body["outputs"][0]["data"] == expected
    for _ in range(3):  # sticky: the same user always takes the same branch
        again = client.post("/v2/models/kinds/infer", json=x_body([[1, 2]], user="ann"))
        assert again.json()["parameters"]["routing"] == routing
    ensemble = client.post("/v2/models/kinds/infer", json=x_body([[1, 2]], route="ensemble")).json()
    assert ensemble["parameters"]["routing"] == "gate=ensemble"
    assert ensemble["outputs"][0]["shape"] == [1, 4]
    assert ensemble["outputs"][0]["data"] == [2.0, 4.0, 4.0, 8.0]
    bandit = client.post("/v2/models/kinds/infer", json=x_body([[1, 2]]), headers={"x-route": "bandit"})
    assert bandit.json()["parameters"]["routing"].startswith("gate=bandit,bandit=")


def test_graph_over_v1_and_grpc(client: httpx.Client, stub: pb_grpc.GRPCInferenceServiceStub) -> None:
    reply = client.post("/v1/models/kinds:predict", json={"instances": [[1.0, 2.0]]},
                        headers={"x-route": "bandit"})
    assert reply.status_code == 200, reply.text
    assert reply.headers["shoal-routing"].startswith("gate=bandit,bandit=")
    assert len(reply.headers["shoal-request-id"]) == 32
    assert reply.json()["predictions"] in ([[2.0, 4.0]], [[4.0, 8.0]])

    request = pb.ModelInferRequest(model_name="kinds", id="grpc-1")
    tensor = request.inputs.add(name="x", datatype="FP64", shape=[1, 2])
    tensor.contents.fp64_contents.extend([1.0, 2.0])
    response = stub.ModelInfer(request, metadata=(("x-route", "bandit"),))
    assert response.id == "grpc-1" and response.model_name == "kinds"
    assert response.parameters["routing"].string_param.startswith("gate=bandit,bandit=")
    streamed = list(stub.ModelStreamInfer(iter([request]), metadata=(("x-route", "bandit"),)))
    assert not streamed[0].error_message
    assert streamed[0].infer_response.parameters["routing"].string_param.startswith("gate=bandit,")
    assert stub.ModelReady(pb.ModelReadyRequest(name="kinds")).ready
    meta = stub.ModelMetadata(pb.ModelMetadataRequest(name="kinds"))
    assert meta.platform == "graph" and meta.versions == ["1"]


def test_graph_over_tf_serving_grpc_reads_metadata(server: ShoalProcess) -> None:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "kinds"
    tensor = request.inputs["x"]
    tensor.dtype = types_pb2.DT_DOUBLE
    tensor.tensor_shape.dim.add(size=1)
    tensor.tensor_shape.dim.add(size=2)
    tensor.double_val.extend([1.0, 2.0])
    before = _routed(server, "gate", "bandit")
    with grpc.insecure_channel(server.grpc_target) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        answer = stub.Predict(request, metadata=(("x-route", "bandit"),), timeout=10)
    (output,) = answer.outputs.values()
    assert np.frombuffer(output.tensor_content).tolist() in ([2.0, 4.0], [4.0, 8.0])
    assert _routed(server, "gate", "bandit") == before + 1  # the switch read the metadata


def _routed(server: ShoalProcess, node: str, branch: str) -> float:
    prefix = f'shoal_graph_routes_total{{branch="{branch}",graph="kinds",node="{node}"}} '
    lines = httpx.get(f"{server.url}/metrics").text.splitlines()
    return next((float(line[len(prefix):]) for line in lines if line.startswith(prefix)), 0.0)


def test_remote_nodes_over_every_protocol(client: httpx.Client) -> None:
    rows = load_iris().data[:3].tolist()
    body = {"inputs": [{"name": "input-0", "datatype": "FP64", "shape": [3, 4], "data": rows}]}
    reply = client.post("/v2/models/remotes/infer", json=body)
    assert reply.status_code == 200, reply.text
    outputs = {o["name"]: o["data"] for o in reply.json()["outputs"]}
    assert set(outputs) == {"rest.predict", "grpc.predict", "v1.output-0", "local.predict"}
    assert outputs["rest.predict"] == outputs["grpc.predict"] == outputs["v1.output-0"] == [0, 0, 0]
    unreachable = client.post("/v2/models/unreachable/infer", json=body)
    assert unreachable.status_code == 503
    assert "node 'root': remote model 'iris' at http://127.0.0.1:9 is unreachable" in unreachable.json()["error"]


def test_routing_stays_in_its_graph(client: httpx.Client) -> None:
    """This graph's pinned routes are not sent to a remote graph (which would refuse nodes it
    does not have), and the remote graph's routing does not become this graph's."""
    rows = load_iris().data[:2].tolist()
    body = {"inputs": [{"name": "input-0", "datatype": "FP64", "shape": [2, 4], "data": rows}],
            "parameters": {"routing": "root=both"}}
    reply = client.post("/v2/models/relay/infer", json=body)
    assert reply.status_code == 200, reply.text
    assert reply.json()["parameters"] == {"routing": "root=both"}
    assert {o["name"] for o in reply.json()["outputs"]} == {"rest.predict", "grpc.predict"}
    body["parameters"] = {"routing": "root=far"}
    through_model = client.post("/v2/models/relay-model/infer", json=body)
    assert through_model.status_code == 200, through_model.text
    assert through_model.json()["parameters"] == {"routing": "root=far"}


def test_ensemble_children_run_concurrently(client: httpx.Client) -> None:
    body = x_body([[1, 2]], sleep=0.05)
    client.post("/v2/models/committee/infer", json=body)  # warm up
    best = min(_timed(client, "/v2/models/committee/infer", body) for _ in range(3))
    assert best < 0.12, f"three 50 ms models answered in {best * 1000:.0f} ms"


def _timed(client: httpx.Client, path: str, body: dict[str, Any]) -> float:
    started = time.perf_counter()
    assert client.post(path, json=body).status_code == 200
    return time.perf_counter() - started


def test_feedback_changes_router_state(client: httpx.Client) -> None:
    def pulls() -> dict[str, float]:
        arms = client.get("/v2/models/kinds/routers").json()["routers"]["bandit"]["arms"]
        return {arm: stats["pulls"] for arm, stats in arms.items()}

    before = pulls()
    reply = client.post("/v2/models/kinds/infer", json=x_body([[1, 2]]), headers={"x-route": "bandit"})
    arm = reply.json()["parameters"]["routing"].split("bandit=")[1]
    updated = client.post("/v2/models/kinds/feedback", json={"id": reply.json()["id"], "reward": 1})
    assert updated.json() == {"name": "kinds", "updated": {"bandit": arm}}
    by_routing = client.post("/v2/models/kinds/feedback",
                             json={"routing": reply.headers["shoal-routing"], "reward": 0, "truth": [1]})
    assert by_routing.status_code == 200
    assert pulls()[arm] == before[arm] + 2
    for body, error in [
        ({"id": "unknown", "reward": 1}, "no routing for request id"),
        ({"routing": "bandit=nope", "reward": 1}, "no branch 'nope'"),
        ({"routing": "bandit=identity", "reward": 2}, "between 0 and 1"),
        ({"routing": "bandit=identity"}, "'reward' must be a finite number"),
        ({"routing": "", "reward": 1}, "needs the request's 'id' or the 'routing'"),
    ]:
        bad = client.post("/v2/models/kinds/feedback", json=body)
        assert bad.status_code == 400 and error in bad.json()["error"]
    assert client.post("/v2/models/iris/feedback", json={"reward": 1}).status_code == 400
    assert pulls()[arm] == before[arm] + 2


def test_feedback_is_taken_while_a_model_of_the_graph_is_down(client: httpx.Client) -> None:
    assert client.post("/v2/repository/models/identity/unload").status_code == 200
    try:
        down = client.post("/v2/models/kinds/infer", json=x_body([[1, 2]]))
        assert down.status_code == 503 and "node 'identity'" in down.json()["error"]
        reply = client.post("/v2/models/kinds/feedback", json={"routing": "bandit=double", "reward": 1})
        assert reply.status_code == 200, reply.text
        assert client.get("/v2/models/kinds/routers").status_code == 200
        seldon = client.post("/seldon/ns/kinds/api/v1.0/feedback",
                             json={"response": {"meta": {"routing": {"bandit": 1}}}, "reward": 1})
        assert seldon.status_code == 200, seldon.text
    finally:
        assert client.post("/v2/repository/models/identity/load").status_code == 200
    assert client.post("/v2/models/kinds/infer", json=x_body([[1, 2]])).status_code == 200


def test_validation_failures_name_the_node_and_others_keep_serving(client: httpx.Client) -> None:
    rows = {r["name"]: r for r in client.post("/v2/repository/index", json={}).json()}
    expected = {
        "bad-cycle": "node 'root': the graph has a cycle: root -> again -> root",
        "bad-ghost": "node 'root': unknown model 'no-such-model'",
        "bad-weights": "node 'root': branch weights add up to 70, not 100",
        "bad-one-arm": "node 'root': a bandit needs at least two arms, got 1",
        "bad-condition": "node 'root': case 1 condition 'parameters.(' is not a valid JMESPath",
        "bad-missing": "node 'root': unknown node 'nowhere'",
    }
    for name, reason in expected.items():
        assert rows[name]["state"] == "UNAVAILABLE" and reason in rows[name]["reason"], rows[name]
        assert client.post(f"/v2/models/{name}/infer", json=x_body([[1, 2]])).status_code == 503
    assert rows["kinds"]["state"] == "READY" and rows["double"]["state"] == "READY"
    assert client.get("/v2/health/ready").status_code == 200


def test_metrics_have_node_latency_and_routes(client: httpx.Client) -> None:
    client.post("/v2/models/kinds/infer", json=x_body([[1, 2]], route="ensemble"))
    text = client.get("/metrics").text
    assert 'shoal_graph_node_duration_seconds_count{graph="kinds",node="ensemble"}' in text
    assert 'shoal_graph_routes_total{branch="ensemble",graph="kinds",node="gate"}' in text
    assert 'shoal_requests_total{model="kinds",outcome="success",protocol="v2-rest",version="1"}' in text


def test_triton_config_and_statistics_cover_graphs(
    client: httpx.Client, stub: pb_grpc.GRPCInferenceServiceStub
) -> None:
    before = client.get("/v2/models/kinds/stats").json()["model_stats"][0]
    assert client.post("/v2/models/kinds/infer", json=x_body([[1, 2]], route="ensemble")).status_code == 200
    wrong = {"inputs": [{"name": "x", "datatype": "FP64", "shape": [1, 3], "data": [1, 2, 3]}]}
    # The transformer declares no inputs: the model behind it refuses what the transformer
    # passed on, which is the graph's wiring (500 naming both nodes), not the client's fault.
    refused = client.post("/v2/models/kinds/infer", json=wrong)
    assert refused.status_code == 500
    assert refused.json()["error"].startswith("node 'double': cannot take what node 'prep' produced")
    every = client.get("/v2/models/stats")  # every model, graphs included
    assert every.status_code == 200, every.text
    stats = {s["name"]: s["inference_stats"] for s in every.json()["model_stats"]}
    assert stats["kinds"]["success"]["count"] == before["inference_stats"]["success"]["count"] + 1
    assert stats["kinds"]["fail"]["count"] == before["inference_stats"]["fail"]["count"] + 1
    config = client.get("/v2/models/kinds/config")
    assert config.status_code == 200, config.text
    assert config.json()["platform"] == "graph" and config.json()["max_batch_size"] == 0
    answer = stub.ModelStatistics(pb.ModelStatisticsRequest(name="kinds"))
    assert answer.model_stats[0].inference_stats.success.count >= 1


def test_state_survives_restart_is_shared_and_logs_the_path(repo: Path, tmp_path: Path) -> None:
    state = tmp_path / "state"
    first = ShoalProcess(repo, "--state-dir", str(state), "--log-level", "debug")
    try:
        first.wait_ready()
        reply = httpx.post(f"{first.url}/v2/models/kinds/feedback",
                           json={"routing": "bandit=double", "reward": 1})
        assert reply.status_code == 200, reply.text
        httpx.post(f"{first.url}/v2/models/kinds/infer", json=x_body([[1, 2]], route="ensemble"))
        wrong = {"inputs": [{"name": "x", "datatype": "FP64", "shape": [1, 3], "data": [1, 2, 3]}]}
        failed = httpx.post(f"{first.url}/v2/models/kinds/infer", json=wrong)
        assert failed.status_code == 500  # the model refused what the transformer passed on
    finally:
        first.stop()
    events = first.log_events()
    served = [e for e in events if e["event"] == "graph_request"]
    assert served[-1]["path"] == ["root", "prep", "double", "gate", "ensemble", "identity", "double"]
    assert served[-1]["routing"] == {"gate": "ensemble"}
    refused = [e for e in events if e["event"] == "request_failed"]
    assert refused[-1].get("path") == ["root", "prep", "double"], str(refused[-1])
    assert (state / "kinds" / "bandit.json").is_file()

    # Two processes on one state directory: a restart keeps the counts, and each process
    # sees the other's feedback, with no update lost.
    a, b = ShoalProcess(repo, "--state-dir", str(state)), ShoalProcess(repo, "--state-dir", str(state))
    try:
        a.wait_ready()
        b.wait_ready()
        assert _double_pulls(a) == 1
        httpx.post(f"{a.url}/v2/models/kinds/feedback", json={"routing": "bandit=double", "reward": 1})
        httpx.post(f"{b.url}/v2/models/kinds/feedback", json={"routing": "bandit=double", "reward": 0})
        assert _double_pulls(b) == 3  # b's own update re-read the file under the lock
        assert _double_pulls(a) == 3  # the router view reloads (routing: about a second later)
    finally:
        a.stop()
        b.stop()


def _double_pulls(process: ShoalProcess) -> float:
    routers = httpx.get(f"{process.url}/v2/models/kinds/routers").json()["routers"]
    return routers["bandit"]["arms"]["double"]["pulls"]


def test_the_example_graph_learns_from_feedback(tmp_path: Path) -> None:
    """Traffic and feedback through the server: the Thompson router converges on the
    logistic regression (about 97% right on iris) over the depth-1 stump (about 67%)."""
    root = tmp_path / "repository"
    # Without artifacts or bandit state a local run of the example may have left there.
    shutil.copytree(EXAMPLES / "repository", root,
                    ignore=shutil.ignore_patterns("*.joblib", ".shoal-state"))
    import importlib.util

    spec = importlib.util.spec_from_file_location("build_models", EXAMPLES / "build_models.py")
    assert spec is not None and spec.loader is not None
    build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build)
    build.build(root)

    process = ShoalProcess(root)
    iris = load_iris()
    rng = np.random.default_rng(7)
    arms = []
    try:
        process.wait_ready()
        with httpx.Client(base_url=process.url, timeout=30) as http:
            committee = http.post("/v2/models/iris-graph/infer", json={
                "inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["5.1,3.5,1.4,0.2"]}],
                "parameters": {"committee": True}}).json()
            assert committee["parameters"]["routing"] == "mode=committee"
            assert committee["outputs"][0]["data"] == [0]
            numbers = http.post("/v2/models/iris-graph/infer", json={
                "inputs": [{"name": "text", "datatype": "FP64", "shape": [1], "data": [5.1]}]})
            assert numbers.status_code == 400, numbers.text  # the preprocessor declares BYTES
            assert "node 'parse': input 'text' is FP64" in numbers.json()["error"]
            for _ in range(300):
                index = int(rng.integers(len(iris.target)))
                text = ",".join(str(v) for v in iris.data[index])
                reply = http.post("/v2/models/iris-graph/infer", json={
                    "inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": [text]}]})
                assert reply.status_code == 200, reply.text
                body = reply.json()
                arms.append(body["parameters"]["routing"].split("choose=")[1])
                reward = float(body["outputs"][0]["data"][0] == iris.target[index])
                assert http.post("/v2/models/iris-graph/feedback",
                                 json={"id": body["id"], "reward": reward}).status_code == 200
    finally:
        process.stop()
    share = arms[-100:].count("logistic") / 100
    assert share >= 0.85, f"only {share:.0%} of the last 100 requests went to the better arm"
    assert (root / ".shoal-state" / "iris-graph" / "choose.json").is_file()
