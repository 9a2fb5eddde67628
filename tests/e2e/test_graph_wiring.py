"""Graph wiring mistakes are the graph author's, found at load where nodes declare metadata,
and at request time a server-side error naming both nodes, never the client's 400."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
import yaml

from shoal.protocol.grpc_gen import grpc_service_pb2 as pb
from shoal.protocol.grpc_gen import grpc_service_pb2_grpc as pb_grpc

from .models import custom, sklearn_iris, write
from .process import ShoalProcess

#: Takes FP32 [-1, 4], as an XGBoost model does.
FP32_MODEL = """
    from shoal import Model, TensorSpec

    class Fp32(Model):
        def load(self):
            self.inputs = [TensorSpec("input-0", "FP32", (-1, 4))]

        def predict(self, request):
            return request.as_numpy().sum(axis=1)
"""

TRANSFORMERS = """
    import numpy as np
    from shoal import Model, TensorSpec

    class Declared(Model):
        '''Says it produces FP64 [-1, 4] (the sum of its parameters' widths).'''
        def load(self):
            self.outputs = [TensorSpec("x", self.parameters.get("datatype", "FP64"),
                                       (-1, self.parameters.get("width", 4)))]

        def preprocess(self, request):
            return {"x": request.as_numpy().astype(np.float64)}

    class Undeclared(Model):
        def preprocess(self, request):
            return {"x": np.asarray(request.as_numpy(), dtype=np.float64) + 0.1}

    class Parse(Model):
        def load(self):
            self.inputs = [TensorSpec("text", "BYTES", (-1,))]
            self.outputs = [TensorSpec("label", "BYTES", (-1,))]

        def preprocess(self, request):
            rows = [[float(v) for v in t.split(",")] for t in request.input("text").as_strings()]
            return {"x": np.array(rows)}

        def postprocess(self, response):
            return {"label": np.array([str(v).encode() for v in response.outputs[0].data], dtype=object)}
"""


def graph(root: Path, name: str, nodes: dict[str, Any], **extra: Any) -> None:
    write(root / name / "graph.yaml", yaml.safe_dump({"nodes": nodes, **extra}))
    write(root / name / "transformers.py", TRANSFORMERS)


def transformer(cls: str, **parameters: Any) -> dict[str, Any]:
    node: dict[str, Any] = {"kind": "transformer", "path": "transformers.py", "class": cls}
    return {**node, "parameters": parameters} if parameters else node


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ShoalProcess]:
    root = tmp_path_factory.mktemp("wiring")
    sklearn_iris(root / "iris")
    custom(root / "xgb-like", FP32_MODEL)
    split = {"kind": "splitter", "branches": [{"node": "fp32", "weight": 50},
                                              {"node": "fp64", "weight": 50}]}
    models = {"fp32": {"kind": "model", "model": "xgb-like"}, "fp64": {"kind": "model", "model": "iris"}}
    # FP64 into a model that takes FP32, behind a splitter: half the requests used to fail.
    graph(root, "bad-datatype", {"root": {"kind": "sequence", "steps": ["prep", "split"]},
                                 "prep": transformer("Declared"), "split": split, **models})
    graph(root, "bad-child", {"root": {**transformer("Declared"), "child": "split"},
                              "split": split, **models})
    graph(root, "bad-width", {"root": {"kind": "sequence", "steps": ["prep", "fp64"]},
                              "prep": transformer("Declared", width=3), "fp64": models["fp64"]})
    graph(root, "good", {"root": {"kind": "sequence", "steps": ["prep", "fp64"]},
                         "prep": transformer("Declared", datatype="FP32"), "fp64": models["fp64"]})
    # Nothing declared: found only at request time, on the FP32 branch.
    graph(root, "undeclared", {"root": {"kind": "sequence", "steps": ["prep", "split"]},
                               "prep": transformer("Undeclared"), "split": split, **models})
    graph(root, "parse", {"root": {**transformer("Parse"), "child": "fp64"}, "fp64": models["fp64"]})
    # The same, with the refusing model inside a nested sequence.
    graph(root, "nested", {"root": {"kind": "sequence", "steps": ["prep", "inner"]},
                           "inner": {"kind": "sequence", "steps": ["fp32"]},
                           "prep": transformer("Undeclared"), "fp32": models["fp32"]})
    process = ShoalProcess(root)
    process.wait_ready()
    yield process
    process.stop()


def index(server: ShoalProcess) -> dict[str, dict[str, str]]:
    return {row["name"]: row for row in httpx.post(f"{server.url}/v2/repository/index").json()}


def rows_body(datatype: str = "FP64", width: int = 4) -> dict[str, Any]:
    return {"inputs": [{"name": "x", "datatype": datatype, "shape": [2, width],
                        "data": [[5.1, 3.5, 1.4, 0.2, 1.0][:width], [6.2, 2.9, 4.3, 1.3, 1.0][:width]]}]}


def test_a_datatype_mismatch_between_nodes_fails_the_load_naming_both(server: ShoalProcess) -> None:
    row = index(server)["bad-datatype"]
    assert row["state"] == "UNAVAILABLE"
    assert "node 'fp32' (model) cannot take what node 'prep' (transformer) produces" in row["reason"]
    assert "'x' is FP64, 'input-0' takes FP32" in row["reason"]


def test_what_a_transformer_hands_its_child_is_checked_too(server: ShoalProcess) -> None:
    row = index(server)["bad-child"]
    assert row["state"] == "UNAVAILABLE"
    assert "node 'fp32' (model) cannot take what node 'root' (transformer) produces" in row["reason"]


def test_a_width_mismatch_between_nodes_fails_the_load(server: ShoalProcess) -> None:
    row = index(server)["bad-width"]
    assert row["state"] == "UNAVAILABLE"
    assert "'x' has shape [-1, 3], 'input-0' takes [-1, 4]" in row["reason"]
    assert index(server)["good"]["state"] == "READY"  # FP32 into FP64 loses nothing


def test_input_one_node_gives_another_is_a_server_error_with_the_routing(server: ShoalProcess) -> None:
    statuses = {}
    for branch in ("fp32", "fp64"):
        body = {**rows_body(), "parameters": {"routing": f"split={branch}"}}
        response = httpx.post(f"{server.url}/v2/models/undeclared/infer", json=body)
        statuses[branch] = response.status_code
        if branch == "fp32":
            error = response.json()["error"]
            assert error.startswith("node 'fp32': cannot take what node 'prep' produced: ")
            assert "expects FP32" in error
            assert response.headers["shoal-routing"] == "split=fp32"
            assert response.headers["shoal-request-id"]
    assert statuses == {"fp32": 500, "fp64": 200}


def test_a_nested_sequence_keeps_where_its_input_came_from(server: ShoalProcess) -> None:
    response = httpx.post(f"{server.url}/v2/models/nested/infer", json=rows_body())
    assert response.status_code == 500
    assert response.json()["error"].startswith("node 'fp32': cannot take what node 'prep' produced")


def test_grpc_errors_carry_the_routing_as_trailing_metadata(server: ShoalProcess) -> None:
    request = pb.ModelInferRequest(model_name="undeclared", parameters={
        "routing": pb.InferParameter(string_param="split=fp32")})
    request.inputs.add(name="x", datatype="FP64", shape=[1, 4]).contents.fp64_contents.extend([1.1] * 4)
    with grpc.insecure_channel(server.grpc_target) as channel:
        with pytest.raises(grpc.RpcError) as info:
            pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=10)
    assert info.value.code() == grpc.StatusCode.INTERNAL
    assert ("shoal-routing", "split=fp32") in tuple(info.value.trailing_metadata())


def test_a_transformer_is_named_as_one_with_every_mismatch(server: ShoalProcess) -> None:
    response = httpx.post(f"{server.url}/v2/models/parse/infer", json=rows_body())
    assert response.status_code == 400  # the client's own input: still the client's
    assert response.json()["error"] == (
        "node 'root': input 'x' (its input 'text') has shape [2, 4] and is FP64 but "
        "transformer 'root' expects [-1] (-1 is any size) and BYTES"
    )


def test_graph_metadata_lists_what_a_transformer_postprocess_declares(server: ShoalProcess) -> None:
    metadata = httpx.get(f"{server.url}/v2/models/parse").json()
    assert metadata["inputs"] == [{"name": "text", "datatype": "BYTES", "shape": [-1]}]
    assert metadata["outputs"] == [{"name": "label", "datatype": "BYTES", "shape": [-1]}]
    body = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["5.1,3.5,1.4,0.2"]}]}
    assert httpx.post(f"{server.url}/v2/models/parse/infer", json=body).json()["outputs"][0]["data"] == ["0"]


def test_graph_statistics_count_inferences(server: ShoalProcess) -> None:
    def stats() -> dict[str, Any]:
        return httpx.get(f"{server.url}/v2/models/good/stats").json()["model_stats"][0]

    before = stats()
    assert httpx.post(f"{server.url}/v2/models/good/infer", json=rows_body()).status_code == 200
    after = stats()
    assert after["inference_count"] == before["inference_count"] + 2  # two rows
    assert after["execution_count"] == before["execution_count"] + 1
