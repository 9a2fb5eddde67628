"""Tabular runtimes (scikit-learn, XGBoost, LightGBM, CatBoost): several declared inputs are
stacked in declared order, never in request order, and declared inputs must give the
artifact's feature count. Models are trained here and loaded as the repository loads them."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import catboost
import joblib
import lightgbm
import numpy as np
import pytest
import xgboost
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression

from shoal.errors import InvalidInput, LoadError
from shoal.model import Model
from shoal.repository.config import ModelConfig, TensorConfig
from shoal.runtimes import create_model
from shoal.serving.endpoint import conform_inputs
from shoal.types import InferenceRequest, RequestedOutput, Tensor

IRIS = load_iris()
X, Y = IRIS.data, IRIS.target  # 4 features: sepal length/width, petal length/width


def sklearn_model(folder: Path) -> str:
    joblib.dump(LogisticRegression(max_iter=500).fit(X, Y), folder / "model.joblib")
    return "sklearn"


def xgboost_model(folder: Path) -> str:
    xgboost.XGBClassifier(n_estimators=5, max_depth=2).fit(X, Y).save_model(folder / "model.json")
    return "xgboost"


def lightgbm_model(folder: Path) -> str:
    booster = lightgbm.LGBMClassifier(n_estimators=5, num_leaves=4, verbose=-1).fit(X, Y).booster_
    booster.save_model(folder / "model.txt")
    return "lightgbm"


def catboost_model(folder: Path) -> str:
    classifier = catboost.CatBoostClassifier(iterations=5, depth=2, verbose=False, allow_writing_files=False)
    classifier.fit(X, Y).save_model(str(folder / "model.cbm"))
    return "catboost"


BUILDERS: dict[str, Callable[[Path], str]] = {
    "sklearn": sklearn_model, "xgboost": xgboost_model, "lightgbm": lightgbm_model,
    "catboost": catboost_model,
}


def load(folder: Path, inputs: list[dict] | None = None, **config: object) -> Model:
    """As the repository loads a model: create (model.yaml applied), load, re-apply model.yaml."""
    settings = ModelConfig(inputs=[TensorConfig(**t) for t in inputs or []], **config)
    model = create_model("m", "1", folder, folder, settings)
    model.load()
    if settings.inputs:
        model.inputs = [t.spec() for t in settings.inputs]
    return model


def split(datatype: str = "FP64", widths: tuple[int, int] = (2, 2)) -> list[dict]:
    return [{"name": "sepal", "datatype": datatype, "shape": [-1, widths[0]]},
            {"name": "petal", "datatype": datatype, "shape": [-1, widths[1]]}]


def predict(model: Model, tensors: list[Tensor], output: str) -> np.ndarray:
    request = InferenceRequest(conform_inputs(tensors, model.inputs, "m"), outputs=[RequestedOutput(output)])
    return model.predict(request)[0].data


@pytest.fixture(params=sorted(BUILDERS))
def framework(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, Path]:
    return BUILDERS[request.param](tmp_path), tmp_path


def test_several_inputs_stack_in_declared_order_whatever_the_request_order(framework) -> None:
    name, folder = framework
    datatype = "FP32" if name in ("xgboost", "catboost") else "FP64"
    model = load(folder, split(datatype))
    rows = X[[0, 60, 120]].astype(np.float32 if datatype == "FP32" else np.float64)
    sepal, petal = Tensor.from_numpy("sepal", rows[:, :2]), Tensor.from_numpy("petal", rows[:, 2:])
    declared_order = predict(model, [sepal, petal], "predict_proba")
    swapped = predict(model, [petal, sepal], "predict_proba")
    np.testing.assert_array_equal(swapped, declared_order)
    whole = predict(load(folder), [Tensor.from_numpy("input-0", rows)], "predict_proba")
    np.testing.assert_array_equal(declared_order, whole)  # the columns the model was trained on


def test_sklearn_iris_split_in_two_inputs_answers_as_the_estimator(tmp_path: Path) -> None:
    """The reported case: the same named tensors sent petal-first gave other probabilities."""
    sklearn_model(tmp_path)
    estimator = joblib.load(tmp_path / "model.joblib")
    model = load(tmp_path, split())
    rows = X[[0, 60, 120]]
    got = predict(model, [Tensor.from_numpy("petal", rows[:, 2:]), Tensor.from_numpy("sepal", rows[:, :2])],
                  "predict_proba")
    np.testing.assert_array_equal(got, estimator.predict_proba(rows))


def test_several_inputs_without_a_declared_order_are_refused(framework) -> None:
    """No request order fallback: stacking undeclared inputs would be a guess."""
    _, folder = framework
    model = load(folder)
    halves = [Tensor.from_numpy("b", X[:2, 2:]), Tensor.from_numpy("a", X[:2, :2])]
    with pytest.raises(InvalidInput, match=r"the request has inputs \['b', 'a'\], but this model takes one feature matrix"):
        model.predict(InferenceRequest(halves))


def test_declared_inputs_must_add_up_to_the_artifacts_feature_count(framework) -> None:
    name, folder = framework
    datatype = "FP32" if name in ("xgboost", "catboost") else "FP64"
    artifact = next(p.name for p in folder.iterdir())
    one = [{"name": "x", "datatype": datatype, "shape": [-1, 5]}]
    with pytest.raises(LoadError, match=rf"inputs \(x \[-1, 5\]\) give 5 feature columns, but {artifact} takes 4"):
        load(folder, one)
    with pytest.raises(LoadError, match="give 5 feature columns, but .* takes 4"):
        load(folder, split(datatype, (2, 3)))
    with pytest.raises(LoadError, match="give 5 feature columns"):  # known columns already too many
        load(folder, [*split(datatype, (2, 3)), {"name": "rest", "datatype": datatype, "shape": [-1, -1]}])
    assert len(load(folder, split(datatype)).inputs) == 2
    assert len(load(folder, [{"name": "x", "datatype": datatype, "shape": [-1, -1]}]).inputs) == 1


@pytest.mark.parametrize("name", ["xgboost", "lightgbm", "catboost"])
def test_tree_models_refuse_string_inputs_for_numeric_features(tmp_path: Path, name: str) -> None:
    BUILDERS[name](tmp_path)
    with pytest.raises(LoadError, match="input 'x' is BYTES, but .* takes numbers"):
        load(tmp_path, [{"name": "x", "datatype": "BYTES", "shape": [-1, 4]}])


def test_one_column_inputs_are_rank_one(tmp_path: Path) -> None:
    """[-1] is one value per row: one column, as a [-1, 1] input would be."""
    sklearn_model(tmp_path)
    estimator = joblib.load(tmp_path / "model.joblib")
    columns = [{"name": n, "datatype": "FP64", "shape": [-1]} for n in ("sl", "sw", "pl", "pw")]
    model = load(tmp_path, columns)
    rows = X[[0, 60, 120]]
    tensors = [Tensor.from_numpy(c["name"], rows[:, i]) for i, c in reversed(list(enumerate(columns)))]
    np.testing.assert_array_equal(predict(model, tensors, "predict_proba"), estimator.predict_proba(rows))
    with pytest.raises(LoadError, match="give 3 feature columns"):
        load(tmp_path, columns[:3])


def test_a_single_input_reaches_the_estimator_as_sent(tmp_path: Path) -> None:
    """A text pipeline takes a 1-D array of strings: one input is never reshaped."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.pipeline import make_pipeline

    texts = ["good film", "great film", "bad film", "awful film"]
    pipeline = make_pipeline(TfidfVectorizer(), LogisticRegression()).fit(texts, [1, 1, 0, 0])
    joblib.dump(pipeline, tmp_path / "model.joblib")
    model = load(tmp_path, [{"name": "text", "datatype": "BYTES", "shape": [-1]}])
    sent = np.array(["great", "awful"], dtype=object)
    out = predict(model, [Tensor("text", "BYTES", (2,), sent)], "predict")
    assert out.tolist() == pipeline.predict(sent).tolist() == [1, 0]
