"""What a real server makes of model folders that say something other than what they mean.

One repository holds a model whose inputs are declared in two parts (stacked in declared
order, whatever order a client sends them in), and folders that used to load and quietly do
the wrong thing: a typo'd parameter, metadata that contradicts the artifact, artifacts of two
runtimes, graph.yaml beside a model, a custom model without predict, a version folder named
v1, a bare version_policy. Each must be UNAVAILABLE with a reason that says what to change,
while the others serve.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import joblib
import numpy as np
import pytest
import xgboost
from sklearn.datasets import load_iris

from .models import sklearn_iris, write
from .process import ShoalProcess

IRIS = load_iris()
ROWS = IRIS.data[[0, 60, 120]]
SPLIT = """
    inputs:
      - {name: sepal, datatype: FP64, shape: [-1, 2]}
      - {name: petal, datatype: FP64, shape: [-1, 2]}
"""
GRAPH = "root: call\nnodes: {call: {kind: model, model: iris}}\n"

#: Model folder -> words the index must give as its reason.
BROKEN = {
    "typo": "'methd' (did you mean 'method'?); it accepts: method",
    "wide": "inputs (x [-1, 5]) give 5 feature columns, but model.joblib takes 4",
    "two-runtimes": "holds artifacts of several runtimes: model.joblib (sklearn), model.json (xgboost)",
    "graph-and-model": "holds both graph.yaml and model artifacts (model.joblib): add runtime: graph",
    "no-predict": "Forgot in model.py does not define predict(self, request)",
    "named-versions": "its sub-folder(s) v1/ look like versions, but version folders are plain integers",
    "bare-policy": "version_policy: must be all, {latest: N} (N >= 1) or {specific: [1, 3]}, not 'latest'",
    "yml": "has model.yml, but Shoal reads model.yaml: rename it to model.yaml",
}


def build(root: Path) -> None:
    sklearn_iris(root / "iris")
    sklearn_iris(root / "iris-split")
    write(root / "iris-split" / "model.yaml", SPLIT)
    sklearn_iris(root / "typo")
    write(root / "typo" / "model.yaml", "parameters: {methd: predict_proba}\n")
    sklearn_iris(root / "wide")
    write(root / "wide" / "model.yaml", "inputs: [{name: x, datatype: FP64, shape: [-1, 5]}]\n")
    sklearn_iris(root / "two-runtimes")
    xgboost.XGBClassifier(n_estimators=3, max_depth=2).fit(IRIS.data, IRIS.target).save_model(
        root / "two-runtimes" / "model.json"
    )
    for name in ("graph-and-model", "graph-chosen"):
        sklearn_iris(root / name)
        write(root / name / "graph.yaml", GRAPH)
    write(root / "graph-chosen" / "model.yaml", "runtime: graph\n")
    write(root / "no-predict" / "model.py", """
        from shoal import Model

        class Forgot(Model):
            def load(self):
                self.ready = True
    """)
    sklearn_iris(root / "named-versions" / "v1")
    sklearn_iris(root / "bare-policy")
    write(root / "bare-policy" / "model.yaml", "version_policy: latest\n")
    sklearn_iris(root / "yml")
    write(root / "yml" / "model.yml", "parameters: {method: predict_proba}\n")


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("checks")
    build(folder)
    return folder


@pytest.fixture(scope="module")
def server(root: Path) -> Iterator[ShoalProcess]:
    process = ShoalProcess(root)
    try:
        process.wait_ready(timeout=60)
        yield process
    finally:
        process.stop()


def column(name: str, values: np.ndarray) -> dict:
    return {"name": name, "datatype": "FP64", "shape": list(values.shape), "data": values.reshape(-1).tolist()}


def proba(server: ShoalProcess, inputs: list[dict]) -> np.ndarray:
    body = {"inputs": inputs, "outputs": [{"name": "predict_proba"}]}
    response = httpx.post(f"{server.url}/v2/models/iris-split/infer", json=body, timeout=30)
    assert response.status_code == 200, response.text
    [output] = response.json()["outputs"]
    return np.array(output["data"]).reshape(output["shape"])


def test_named_inputs_stack_in_declared_order(server: ShoalProcess, root: Path) -> None:
    sepal, petal = column("sepal", ROWS[:, :2]), column("petal", ROWS[:, 2:])
    expected = joblib.load(root / "iris-split" / "model.joblib").predict_proba(ROWS)
    np.testing.assert_allclose(proba(server, [sepal, petal]), expected, rtol=1e-12)
    np.testing.assert_allclose(proba(server, [petal, sepal]), expected, rtol=1e-12)
    v1 = httpx.post(
        f"{server.url}/v1/models/iris-split:predict",
        json={"instances": [{"petal": r[2:].tolist(), "sepal": r[:2].tolist()} for r in ROWS]},
        timeout=30,
    )
    assert v1.status_code == 200, v1.text
    np.testing.assert_array_equal(v1.json()["predictions"], IRIS.target[[0, 60, 120]])


def test_folders_that_say_something_else_are_unavailable_with_the_reason(server: ShoalProcess) -> None:
    index = {row["name"]: row for row in httpx.post(f"{server.url}/v2/repository/index", json={}).json()}
    for name, reason in BROKEN.items():
        assert index[name]["state"] == "UNAVAILABLE", index[name]
        assert reason in index[name]["reason"], index[name]
    for name in ("iris", "iris-split", "graph-chosen"):
        assert index[name]["state"] == "READY", index[name]
    response = httpx.post(f"{server.url}/v2/models/typo/infer", json={"inputs": [column("x", ROWS)]})
    assert response.status_code == 503


def test_runtime_graph_serves_the_graph_beside_an_artifact(server: ShoalProcess) -> None:
    response = httpx.post(f"{server.url}/v2/models/graph-chosen/infer",
                          json={"inputs": [column("x", ROWS)]}, timeout=30)
    assert response.status_code == 200, response.text
    assert response.json()["outputs"][0]["data"] == IRIS.target[[0, 60, 120]].tolist()
