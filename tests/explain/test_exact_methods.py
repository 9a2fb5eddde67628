"""Tree, linear and exact SHAP: sum(attributions) + base_value is the explained output of the
model, to 1e-6 relative."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import joblib
import numpy as np
import pytest

from explain_helpers import FEATURES, Run, Served, custom, data, request
from shoal.datatypes import numpy_dtype
from shoal.explain import ExplainerConfig, explain

X, Y = data()
ROWS = X[:7]


def additive(response: Any, output: str) -> np.ndarray:
    """Checks the additivity, returns the attributions."""
    attributions = response.output("attributions").data
    base = response.output("base_values").data
    predicted = np.asarray(response.output(output).data, dtype=np.float64)
    assert attributions.dtype == np.float64 and base.dtype == np.float64
    assert attributions.shape[:2] == (len(predicted), FEATURES)
    total = attributions.sum(axis=1) + base
    assert total.shape == predicted.shape
    scale = np.maximum(np.abs(predicted), 1.0)
    assert np.all(np.abs(total - predicted) <= 1e-6 * scale), np.max(np.abs(total - predicted))
    return attributions


def sklearn_model(estimator: Any) -> Callable[[Path], None]:
    def write(folder: Path) -> None:
        folder.mkdir(parents=True)
        joblib.dump(estimator, folder / "model.joblib")

    return write


def xgboost_model(objective: str, **params: Any) -> Callable[[Path], None]:
    def write(folder: Path) -> None:
        import xgboost

        folder.mkdir(parents=True)
        labels = np.digitize(X[:, 0], [-0.5, 0.5]) if objective.startswith("multi") else Y
        booster = xgboost.train(
            {"objective": objective, "nthread": 1, **params}, xgboost.DMatrix(X, label=labels), 20
        )
        booster.save_model(str(folder / "model.json"))

    return write


def lightgbm_model(objective: str, **params: Any) -> Callable[[Path], None]:
    def write(folder: Path) -> None:
        import lightgbm

        folder.mkdir(parents=True)
        labels = np.digitize(X[:, 0], [-0.5, 0.5]) if objective == "multiclass" else Y
        booster = lightgbm.train(
            {"objective": objective, "verbose": -1, "num_threads": 1, **params},
            lightgbm.Dataset(X, label=labels), 20,
        )
        booster.save_model(str(folder / "model.txt"))

    return write


def catboost_model(folder: Path) -> None:
    import catboost

    folder.mkdir(parents=True)
    catboost.CatBoostClassifier(iterations=20, verbose=0, thread_count=1, allow_writing_files=False).fit(X, Y).save_model(
        str(folder / "model.cbm")
    )


def sklearn_cases() -> list[Any]:
    from sklearn.ensemble import (
        GradientBoostingClassifier,
        RandomForestClassifier,
        RandomForestRegressor,
    )

    return [
        pytest.param(sklearn_model(RandomForestClassifier(20, random_state=0).fit(X, Y)),
                     "predict_proba", (7, FEATURES, 2), id="random-forest-classifier"),
        pytest.param(sklearn_model(RandomForestRegressor(20, random_state=0).fit(X, X[:, 0] + X[:, 1])),
                     "predict", (7, FEATURES), id="random-forest-regressor"),
        pytest.param(sklearn_model(GradientBoostingClassifier(n_estimators=20).fit(X, Y)),
                     "decision_function", (7, FEATURES), id="gradient-boosting"),
    ]


@pytest.mark.parametrize(
    ("write", "output", "shape"),
    [
        *sklearn_cases(),
        pytest.param(xgboost_model("binary:logistic"), "predict_raw", (7, FEATURES), id="xgboost"),
        pytest.param(xgboost_model("multi:softprob", num_class=3), "predict_raw", (7, FEATURES, 3),
                     id="xgboost-multiclass"),
        pytest.param(lightgbm_model("binary"), "predict_raw", (7, FEATURES), id="lightgbm"),
        pytest.param(lightgbm_model("multiclass", num_class=3), "predict_raw", (7, FEATURES, 3),
                     id="lightgbm-multiclass"),
        pytest.param(catboost_model, "predict_raw", (7, FEATURES), id="catboost"),
    ],
)
def test_tree_shap_adds_up_to_the_raw_output(
    tmp_path: Path, run: Run, write: Callable[[Path], None], output: str, shape: tuple[int, ...]
) -> None:
    write(tmp_path / "m")

    async def test(served: Served) -> Any:
        endpoint = served.endpoint("m")
        rows = ROWS.astype(numpy_dtype(endpoint.metadata()["inputs"][0]["datatype"]))  # FP32: XGBoost
        return await explain(endpoint, request(rows), served.config("m"))

    response = run(test)
    assert response.parameters["method"] == "tree"
    assert response.parameters["output"] == output
    assert response.parameters["background"] == "none (tree path-dependent)"
    assert response.parameters["feature_names"] == [f"input-0[{i}]" for i in range(FEATURES)]
    assert response.output("attributions").shape == shape
    attributions = additive(response, output)
    # The label depends on feature 0 most, and never on 2..4.
    strength = np.abs(attributions).reshape(7, FEATURES, -1).mean(axis=(0, 2))
    assert strength[0] > 3 * strength[2:].max()


def test_tree_shap_with_a_background_file_is_interventional(tmp_path: Path, run: Run) -> None:
    from sklearn.ensemble import RandomForestClassifier

    sklearn_model(RandomForestClassifier(20, random_state=0).fit(X, Y))(tmp_path / "m")
    np.save(tmp_path / "m" / "background.npy", X[:150])
    (tmp_path / "m" / "model.yaml").write_text("explainer: {method: tree, background: background.npy}\n")

    async def test(served: Served) -> Any:
        return await explain(served.endpoint("m"), request(ROWS), served.config("m"))

    response = run(test)
    assert response.parameters["method"] == "tree"
    assert response.parameters["background"] == "file background.npy (100 of 150 rows)"
    additive(response, "predict_proba")


def test_linear_shap_adds_up_to_the_log_odds(tmp_path: Path, run: Run) -> None:
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    sklearn_model(LogisticRegression(max_iter=500).fit(X, Y))(tmp_path / "binary")
    iris = load_iris()
    sklearn_model(LogisticRegression(max_iter=500).fit(iris.data, iris.target))(tmp_path / "iris")
    names = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
    np.savetxt(tmp_path / "iris" / "background.csv", iris.data[::3], delimiter=",",
               header=",".join(names), comments="")
    (tmp_path / "iris" / "model.yaml").write_text("explainer: {background: background.csv}\n")
    np.save(tmp_path / "binary" / "background.npy", X[:50])
    (tmp_path / "binary" / "model.yaml").write_text(
        "explainer: {method: linear, background: background.npy, "
        f"feature_names: [{', '.join(f'f{i}' for i in range(FEATURES))}]}}\n"
    )

    async def test(served: Served) -> Any:
        binary = await explain(served.endpoint("binary"), request(ROWS), served.config("binary"))
        multi = await explain(served.endpoint("iris"), request(iris.data[:4]), served.config("iris"))
        return binary, multi

    binary, multi = run(test)
    assert binary.parameters["method"] == "linear"
    assert binary.parameters["output"] == "decision_function"
    assert binary.parameters["feature_names"] == [f"f{i}" for i in range(FEATURES)]
    additive(binary, "decision_function")
    assert multi.parameters["method"] == "linear"  # auto, on a linear model
    assert multi.parameters["feature_names"] == names  # the background's header
    assert multi.output("attributions").shape == (4, 4, 3)
    attributions = multi.output("attributions").data
    total = attributions.sum(axis=1) + multi.output("base_values").data
    np.testing.assert_allclose(total, multi.output("decision_function").data, rtol=1e-6, atol=1e-9)


LINEAR_PLUS = """
    import numpy as np
    from shoal import Model, TensorSpec

    class Small(Model):
        def load(self):
            self.inputs = [TensorSpec("x", "FP64", (-1, 3))]
            self.outputs = [TensorSpec("y", "FP64", (-1,))]

        def predict(self, request):
            x = request.as_numpy()
            return {"y": 2 * x[:, 0] + x[:, 1] * x[:, 2]}
"""


def test_exact_shap_on_a_small_model(tmp_path: Path, run: Run) -> None:
    custom(tmp_path / "small", LINEAR_PLUS, "runtime: custom\nexplainer: {method: exact}\n")
    rows = np.random.default_rng(1).normal(size=(12, 3))

    async def test(served: Served) -> Any:
        return await explain(served.endpoint("small"), request(rows, "x"), served.config("small"))

    response = run(test)
    assert response.parameters["method"] == "exact"
    assert response.parameters["background"] == "the request's rows (12 rows)"
    assert response.parameters["feature_names"] == ["x[0]", "x[1]", "x[2]"]
    attributions = response.output("attributions").data
    predicted = response.output("y").data
    total = attributions.sum(axis=1) + response.output("base_values").data
    np.testing.assert_allclose(total, predicted, rtol=1e-6, atol=1e-9)
    # An additive term's exact Shapley value: its difference from the background's mean.
    np.testing.assert_allclose(attributions[:, 0], 2 * (rows[:, 0] - rows[:, 0].mean()), atol=1e-9)


def test_a_config_made_by_hand_resolves_its_background_against_folder(tmp_path: Path, run: Run) -> None:
    custom(tmp_path / "small", LINEAR_PLUS)
    np.save(tmp_path / "bg.npy", np.zeros((4, 3)))

    async def test(served: Served) -> Any:
        config = ExplainerConfig(method="exact", background="bg.npy")
        return await explain(served.endpoint("small"), request(np.ones((1, 3)), "x"), config,
                             folder=tmp_path)

    response = run(test)
    np.testing.assert_allclose(response.output("attributions").data, [[2.0, 0.5, 0.5]])
    np.testing.assert_allclose(response.output("base_values").data, [0.0])
