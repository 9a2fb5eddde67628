"""The model-agnostic methods call the model through its endpoint: custom models, graphs,
models in worker processes; predictions keep being answered meanwhile; timeouts stop them."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from explain_helpers import FEATURES, Run, Served, custom, data, request
from shoal.errors import DeadlineExceeded
from shoal.explain import ExplainerConfig, ExplainMetrics, explain, observe

X, Y = data()

INFORMATIVE = """
    import time
    import numpy as np
    from shoal import Model, TensorSpec

    class Informative(Model):
        def load(self):
            self.inputs = [TensorSpec("x", "FP64", (-1, 5))]
            self.outputs = [TensorSpec("score", "FP64", (-1,))]
            self.calls = 0

        def predict(self, request):
            self.calls += 1
            time.sleep(float(request.parameters.get("sleep", self.parameters.get("sleep", 0))))
            x = request.as_numpy()
            return {"score": 1 / (1 + np.exp(-3 * x[:, 0])) + 0.1 * x[:, 1]}
"""


def check_ranking(response: Any) -> None:
    attributions = response.output("attributions").data
    assert attributions.shape[1:] == (FEATURES,)
    strength = np.abs(attributions).mean(axis=0)
    assert strength[0] > strength[1] > 0
    np.testing.assert_allclose(strength[2:], 0, atol=1e-12)  # the model never reads them
    total = attributions.sum(axis=1) + response.output("base_values").data
    np.testing.assert_allclose(total, response.output("score").data, rtol=1e-6, atol=1e-9)


def test_permutation_ranks_the_informative_features_of_a_custom_model(tmp_path: Path, run: Run) -> None:
    custom(tmp_path / "informative", INFORMATIVE,
           "runtime: custom\nexplainer: {background: {rows: 40}, feature_names: [a, b, c, d, e]}\n")
    registry = CollectorRegistry()

    async def test(served: Served) -> Any:
        config = served.config("informative")
        for row in X[:60]:  # as the server does after each prediction
            observe("informative", request(row[None, :], "x"), config)
        return await explain(served.endpoint("informative"), request(X[:4], "x"), config,
                             metrics=ExplainMetrics(registry))

    response = run(test)
    assert response.parameters["method"] == "permutation"  # auto, on a custom model
    assert response.parameters["output"] == "score"
    assert response.parameters["background"] == "rows sampled from requests (40 rows)"
    assert response.parameters["feature_names"] == ["a", "b", "c", "d", "e"]
    assert response.parameters["max_evals"] == 500
    assert response.output("attributions").data.dtype == np.float64
    check_ranking(response)
    labels = {"model": "informative", "method": "permutation"}
    assert registry.get_sample_value("shoal_explanations_total", {**labels, "outcome": "success"}) == 1
    assert registry.get_sample_value("shoal_explanation_duration_seconds_count", labels) == 1


@pytest.mark.parametrize("method", ["kernel", "exact"])
def test_kernel_and_exact_through_the_endpoint(tmp_path: Path, run: Run, method: str) -> None:
    custom(tmp_path / "informative", INFORMATIVE, f"runtime: custom\nexplainer: {{method: {method}}}\n")

    async def test(served: Served) -> Any:
        return await explain(served.endpoint("informative"), request(X[:12], "x"),
                             served.config("informative"))

    response = run(test)
    assert response.parameters["method"] == method
    assert response.parameters["background"] == "the request's rows (12 rows)"
    check_ranking(response)


def test_a_graph_is_explained_by_permutation(tmp_path: Path, run: Run) -> None:
    custom(tmp_path / "informative", INFORMATIVE)
    (tmp_path / "g").mkdir()
    (tmp_path / "g" / "graph.yaml").write_text("root: call\nnodes: {call: {kind: model, model: informative}}\n")

    async def test(served: Served) -> Any:
        assert served.state("g")["state"] == "READY"
        for start in range(0, 30, 3):
            observe("g", request(X[start : start + 3], "x"))
        return await explain(served.endpoint("g"), request(X[:3], "x"), served.config("g"))

    response = run(test)
    assert response.parameters["method"] == "permutation"
    assert response.parameters["background"] == "rows sampled from requests (30 rows)"
    check_ranking(response)


def test_a_model_in_worker_processes_is_explained_by_permutation(tmp_path: Path, run: Run) -> None:
    from sklearn.ensemble import RandomForestClassifier

    (tmp_path / "forest").mkdir()
    joblib.dump(RandomForestClassifier(10, random_state=0).fit(X, Y), tmp_path / "forest" / "model.joblib")
    (tmp_path / "forest" / "model.yaml").write_text("workers: 1\n")

    async def test(served: Served) -> Any:
        assert served.state("forest")["state"] == "READY", served.state("forest")
        return await explain(served.endpoint("forest"), request(X[:10]), served.config("forest"))

    response = run(test, workers=True)
    assert response.parameters["method"] == "permutation"
    assert "worker processes" in response.parameters["note"]
    assert response.parameters["output"] == "predict_proba"
    attributions = response.output("attributions").data
    assert attributions.shape == (10, FEATURES, 2)
    total = attributions.sum(axis=1) + response.output("base_values").data
    np.testing.assert_allclose(total, response.output("predict_proba").data, rtol=1e-6, atol=1e-9)


def test_predictions_keep_answering_while_a_slow_explanation_runs(tmp_path: Path, run: Run) -> None:
    custom(tmp_path / "informative", INFORMATIVE, "runtime: custom\nparameters: {sleep: 0.03}\n")

    async def test(served: Served) -> Any:
        endpoint = served.endpoint("informative")
        observe("informative", request(X[:20], "x"))
        config = ExplainerConfig(max_evals=100)
        explaining = asyncio.create_task(explain(endpoint, request(X[:3], "x"), config))
        calls = endpoint.model.calls + 1  # the explanation's own prediction of the rows
        while endpoint.model.calls <= calls:  # until shap runs (the first time: compiles first)
            await asyncio.sleep(0.01)
        calls = endpoint.model.calls
        latencies = []
        for row in X[:5]:
            started = time.perf_counter()
            await endpoint.infer(request(row[None, :], "x"))
            latencies.append(time.perf_counter() - started)
        assert not explaining.done()
        assert endpoint.model.calls > calls + 5  # the explanation went on meanwhile
        response = await explaining
        return latencies, response

    latencies, response = run(test)
    assert max(latencies) < 0.5, latencies  # a 30 ms model: never stuck behind the explanation
    check_ranking(response)


def test_the_timeout_ends_the_explanation_and_its_model_calls(tmp_path: Path, run: Run) -> None:
    custom(tmp_path / "informative", INFORMATIVE,
           "runtime: custom\nparameters: {sleep: 0.02}\ntimeout: 0.5\n")
    registry = CollectorRegistry()

    async def test(served: Served) -> Any:
        endpoint = served.endpoint("informative")
        with pytest.raises(DeadlineExceeded, match="longer than 0.5 s"):
            await explain(endpoint, request(X[:12], "x"), None, metrics=ExplainMetrics(registry))
        await asyncio.sleep(0.4)
        calls = endpoint.model.calls
        await asyncio.sleep(0.4)
        assert endpoint.model.calls == calls  # shap's thread stopped at its next model call
        # An explicit timeout wins over the model's.
        with pytest.raises(DeadlineExceeded, match="longer than 0.2 s"):
            await explain(endpoint, request(X[:12], "x"), None, timeout=0.2)

    run(test)
    labels = {"model": "informative", "method": "permutation", "outcome": "504"}
    assert registry.get_sample_value("shoal_explanations_total", labels) == 1


def test_a_tree_model_asked_for_probabilities_is_explained_by_permutation(tmp_path: Path, run: Run) -> None:
    xgboost = pytest.importorskip("xgboost")
    (tmp_path / "xgb").mkdir()
    booster = xgboost.train({"objective": "binary:logistic", "nthread": 1}, xgboost.DMatrix(X, label=Y), 10)
    booster.save_model(str(tmp_path / "xgb" / "model.json"))
    (tmp_path / "xgb" / "model.yaml").write_text("explainer: {output: predict_proba}\n")

    async def test(served: Served) -> Any:
        return await explain(served.endpoint("xgb"), request(X[:12].astype(np.float32)),
                             served.config("xgb"))

    response = run(test)
    assert response.parameters["method"] == "permutation"
    assert response.parameters["note"] == (
        "tree SHAP explains predict_raw of this model; predict_proba is explained by permutation"
    )
    attributions = response.output("attributions").data
    assert attributions.shape == (12, FEATURES, 2)
    total = attributions.sum(axis=1) + response.output("base_values").data
    np.testing.assert_allclose(total, response.output("predict_proba").data, rtol=1e-5, atol=1e-6)


def test_request_parameters_reach_the_model(tmp_path: Path, run: Run) -> None:
    custom(tmp_path / "informative", INFORMATIVE)

    async def test(served: Served) -> Any:
        config = ExplainerConfig(method="permutation", max_evals=20)
        started = time.perf_counter()
        await explain(served.endpoint("informative"), request(X[:10], "x", sleep=0.05), config)
        return time.perf_counter() - started

    assert run(test) > 0.1  # each model call slept


TWO_INPUTS = """
    import numpy as np
    from shoal import Model, TensorSpec

    class Two(Model):
        def load(self):
            self.inputs = [TensorSpec("age", "INT64", (-1, 1)), TensorSpec("scores", "FP32", (-1, 2))]

        def predict(self, request):
            age, scores = request.as_numpy("age"), request.as_numpy("scores")
            assert age.dtype == np.int64 and scores.dtype == np.float32
            return {"y": age[:, 0] * 0.5 + scores[:, 1].astype(np.float64)}
"""


def test_several_inputs_are_stacked_as_feature_columns(tmp_path: Path, run: Run) -> None:
    custom(tmp_path / "two", TWO_INPUTS)
    rng = np.random.default_rng(3)
    age = rng.integers(20, 60, size=(12, 1))
    scores = rng.normal(size=(12, 2)).astype(np.float32)

    async def test(served: Served) -> Any:
        from shoal import InferenceRequest, Tensor

        given = InferenceRequest([Tensor.from_numpy("scores", scores), Tensor.from_numpy("age", age)])
        return await explain(served.endpoint("two"), given, ExplainerConfig(method="exact"))

    response = run(test)
    assert response.parameters["feature_names"] == ["age", "scores[0]", "scores[1]"]
    assert response.parameters["inputs"] == ["age", "scores"]  # declared order, not the request's
    attributions = response.output("attributions").data
    np.testing.assert_allclose(attributions[:, 0], 0.5 * (age[:, 0] - age.mean()), atol=1e-9)
    np.testing.assert_allclose(attributions[:, 1], 0, atol=1e-12)
    total = attributions.sum(axis=1) + response.output("base_values").data
    np.testing.assert_allclose(total, response.output("y").data, rtol=1e-6)


def test_a_tree_model_shap_cannot_read_falls_back_under_auto(tmp_path: Path, run: Run) -> None:
    from sklearn.ensemble import GradientBoostingClassifier

    from shoal.errors import InvalidInput

    labels = np.digitize(X[:, 0], [-0.5, 0.5])  # three classes: shap's tree SHAP takes two
    (tmp_path / "gb").mkdir()
    joblib.dump(GradientBoostingClassifier(n_estimators=5).fit(X, labels), tmp_path / "gb" / "model.joblib")

    async def test(served: Served) -> Any:
        with pytest.raises(InvalidInput, match="tree SHAP failed for GradientBoostingClassifier"):
            await explain(served.endpoint("gb"), request(X[:12]), ExplainerConfig(method="tree"))
        return await explain(served.endpoint("gb"), request(X[:12]), None)

    response = run(test)
    assert response.parameters["method"] == "permutation"
    assert response.parameters["note"].startswith("tree SHAP failed for GradientBoostingClassifier")
    assert response.parameters["note"].endswith("explained by permutation instead")
    assert response.parameters["output"] == "predict_proba"
    assert response.output("attributions").shape == (12, FEATURES, 3)
