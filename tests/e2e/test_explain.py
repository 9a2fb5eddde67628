"""Explanations through a real server: V2 (JSON, binary, PNG), V1 :explain and Seldon, on a
linear model, a forest and a custom model explained through its endpoint."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import joblib
import numpy as np
import pytest
from sklearn.datasets import load_diabetes

from .models import custom, iris_rows, sklearn_iris, write
from .process import ShoalProcess

pytest.importorskip("shap")

WEIGHTED = """
    import numpy as np
    from shoal import Model, TensorSpec

    class Weighted(Model):
        def load(self):
            self.inputs = [TensorSpec("x", "FP64", (-1, 3))]

        def predict(self, request):
            x = request.as_numpy("x")
            return {"score": x @ np.array([3.0, 0.0, -1.0])}
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ShoalProcess]:
    from sklearn.ensemble import RandomForestRegressor

    root = tmp_path_factory.mktemp("explain")
    sklearn_iris(root / "iris")
    data = load_diabetes()
    forest = RandomForestRegressor(n_estimators=20, max_depth=4, random_state=0).fit(data.data, data.target)
    (root / "forest").mkdir()
    joblib.dump(forest, root / "forest" / "model.joblib")
    custom(root / "weighted", WEIGHTED, "runtime: custom\nexplainer: {method: permutation, background: bg.npy}\n")
    np.save(root / "weighted" / "bg.npy", np.random.default_rng(0).normal(size=(50, 3)))
    write(root / "iris" / "model.yaml", "explainer: {max_rows: 5, background: background.npy}\n")
    np.save(root / "iris" / "background.npy", iris_rows(100))
    process = ShoalProcess(root)
    try:
        process.wait_ready(60)
        yield process
    finally:
        process.stop()


def v2_body(rows: np.ndarray) -> dict:
    return {"inputs": [{"name": "x", "datatype": "FP64", "shape": list(rows.shape),
                        "data": rows.ravel().tolist()}]}


def outputs(answer: dict) -> dict[str, np.ndarray]:
    return {o["name"]: np.asarray(o["data"]).reshape(o["shape"]) for o in answer["outputs"]}


def test_a_forest_is_explained_by_tree_shap_and_adds_up(server: ShoalProcess) -> None:
    rows = load_diabetes().data[:3]
    answer = httpx.post(f"{server.url}/v2/models/forest/explain", json=v2_body(rows), timeout=120)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["parameters"]["method"] == "tree"
    got = outputs(body)
    attributions, base = got.pop("attributions"), got.pop("base_values")
    assert attributions.shape == (3, 10)
    prediction = next(iter(got.values())).reshape(3)
    np.testing.assert_allclose(base.reshape(3) + attributions.sum(axis=1), prediction, rtol=1e-6)


def test_a_linear_model_over_binary_v2_and_v1_and_seldon(server: ShoalProcess) -> None:
    rows = iris_rows(2)
    raw = rows.astype("<f8").tobytes()
    header = json.dumps({"inputs": [{"name": "x", "datatype": "FP64", "shape": [2, 4],
                                     "parameters": {"binary_data_size": len(raw)}}]}).encode()
    answer = httpx.post(f"{server.url}/v2/models/iris/explain", content=header + raw, timeout=120,
                        headers={"Inference-Header-Content-Length": str(len(header)),
                                 "Content-Type": "application/octet-stream"})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["parameters"]["method"] == "linear"
    got = outputs(body)
    assert got["attributions"].shape[:2] == (2, 4)

    v1 = httpx.post(f"{server.url}/v1/models/iris:explain", json={"instances": rows.tolist()}, timeout=120)
    assert v1.status_code == 200, v1.text
    explanations = v1.json()["explanations"]
    assert len(explanations) == 2
    assert len(explanations[0]["attributions"]) == 4 and "base_value" in explanations[0]

    seldon = httpx.post(f"{server.url}/seldon/iris/api/v1.0/explain",
                        json={"data": {"ndarray": rows.tolist()}}, timeout=120)
    assert seldon.status_code == 200, seldon.text
    assert len(seldon.json()["jsonData"]["explanations"]) == 2


def test_a_custom_model_is_explained_through_its_endpoint(server: ShoalProcess) -> None:
    rows = np.array([[1.0, 5.0, 2.0], [-1.0, 0.0, 0.5]])
    answer = httpx.post(f"{server.url}/v2/models/weighted/explain", json=v2_body(rows), timeout=120)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["parameters"]["method"] == "permutation"
    attributions = outputs(body)["attributions"]
    # The weights are 3, 0, -1: the first feature matters most, the second not at all.
    assert np.all(np.abs(attributions[:, 0]) > np.abs(attributions[:, 1]))
    np.testing.assert_allclose(attributions[:, 1], 0.0, atol=1e-9)


def test_a_png_of_the_first_row(server: ShoalProcess) -> None:
    from PIL import Image

    from shoal.explain import png_size

    rows = load_diabetes().data[:1]
    for how in ({"headers": {"Accept": "image/png"}}, {"params": {"format": "png"}}):
        answer = httpx.post(f"{server.url}/v2/models/forest/explain", json=v2_body(rows), timeout=120, **how)
        assert answer.status_code == 200 and answer.headers["content-type"] == "image/png"
        picture = Image.open(io.BytesIO(answer.content))
        assert picture.format == "PNG" and picture.size == png_size(10)


def test_bad_explain_requests_are_400s_naming_the_problem(server: ShoalProcess) -> None:
    too_many = httpx.post(f"{server.url}/v2/models/iris/explain", json=v2_body(iris_rows(6)), timeout=60)
    assert too_many.status_code == 400 and "5" in too_many.json()["error"]
    wrong = httpx.post(f"{server.url}/v2/models/iris/explain", json=v2_body(np.zeros((1, 2))), timeout=60)
    assert wrong.status_code == 400
    missing = httpx.post(f"{server.url}/v2/models/nope/explain", json=v2_body(iris_rows(1)), timeout=60)
    assert missing.status_code == 404
    metrics = httpx.get(f"{server.url}/metrics").text
    assert "shoal_explanations_total" in metrics


def test_predictions_keep_answering_while_an_explanation_runs(server: ShoalProcess) -> None:
    import threading
    import time

    rows = np.random.default_rng(1).normal(size=(5, 3))
    done = threading.Event()

    def explain() -> None:
        httpx.post(f"{server.url}/v2/models/weighted/explain", json=v2_body(rows), timeout=120)
        done.set()

    worker = threading.Thread(target=explain)
    worker.start()
    latencies = []
    with httpx.Client() as client:
        while not done.is_set() and len(latencies) < 200:
            started = time.perf_counter()
            assert client.post(f"{server.url}/v2/models/iris/infer", json=v2_body(iris_rows(1))).status_code == 200
            latencies.append(time.perf_counter() - started)
    worker.join()
    assert max(latencies) < 1.0, max(latencies)
