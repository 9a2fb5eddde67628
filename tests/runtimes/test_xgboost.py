"""The XGBoost runtime with tiny models trained here: metadata, outputs, bad artifacts."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import xgboost

from shoal import InferenceRequest, RequestedOutput, Tensor, TensorSpec
from shoal.errors import InvalidInput, LoadError
from shoal.repository.config import ModelConfig
from shoal.runtimes import create_model
from shoal.runtimes.xgboost import XGBoostModel
from shoal.serving.endpoint import conform_inputs

RNG = np.random.default_rng(0)
X = RNG.normal(size=(200, 6)).astype(np.float32)
BINARY_Y = (X[:, 0] + X[:, 1] > 0).astype(int)
MULTI_Y = (X[:, 0] > 0).astype(int) + (X[:, 1] > 0)


def save(folder: Path, model: xgboost.XGBModel | xgboost.Booster, artifact: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():  # "model.bst": XGBoost notes it writes UBJSON
        warnings.simplefilter("ignore")
        model.save_model(folder / artifact)
    return folder


def loaded(folder: Path, **parameters: object) -> XGBoostModel:
    model = XGBoostModel("m", "1", folder, parameters)
    model.load()
    return model


def run(model: XGBoostModel, rows: np.ndarray, *outputs: str) -> dict[str, np.ndarray]:
    request = InferenceRequest(
        [Tensor.from_numpy("input-0", rows)],
        outputs=[RequestedOutput(o) for o in outputs] if outputs else None,
    )
    return {t.name: t.data for t in model.predict(request)}


@pytest.fixture(scope="module")
def classifier() -> xgboost.XGBClassifier:
    return xgboost.XGBClassifier(n_estimators=8, max_depth=3).fit(X, BINARY_Y)


def test_sklearn_classifier_outputs_match_xgboost(tmp_path: Path, classifier) -> None:
    model = loaded(save(tmp_path, classifier, "model.json"))
    assert [s.to_dict() for s in model.inputs] == [
        {"name": "input-0", "datatype": "FP32", "shape": [-1, 6]}
    ]
    assert [(s.name, s.datatype, s.shape) for s in model.outputs] == [
        ("predict", "INT64", (-1,)), ("predict_proba", "FP32", (-1, 2)), ("predict_raw", "FP32", (-1,)),
    ]
    rows = X[:5]
    assert list(run(model, rows)) == ["predict"]
    out = run(model, rows, "predict_proba", "predict", "predict_raw")
    assert list(out) == ["predict_proba", "predict", "predict_raw"]
    np.testing.assert_array_equal(out["predict"], classifier.predict(rows))
    assert out["predict"].dtype == np.int64
    np.testing.assert_allclose(out["predict_proba"], classifier.predict_proba(rows), rtol=1e-6)
    np.testing.assert_allclose(out["predict_raw"], classifier.predict(rows, output_margin=True), rtol=1e-6)


@pytest.mark.parametrize("objective", ["multi:softprob", "multi:softmax"])
def test_multiclass_matches_xgboost(tmp_path: Path, objective: str) -> None:
    estimator = xgboost.XGBClassifier(n_estimators=5, max_depth=3, objective=objective).fit(X, MULTI_Y)
    model = loaded(save(tmp_path, estimator, "model.ubj"))
    assert {s.name: s.shape for s in model.outputs} == {
        "predict": (-1,), "predict_proba": (-1, 3), "predict_raw": (-1, 3)
    }
    out = run(model, X[:7], "predict", "predict_proba")
    np.testing.assert_array_equal(out["predict"], estimator.predict(X[:7]))
    np.testing.assert_allclose(out["predict_proba"], estimator.predict_proba(X[:7]), rtol=1e-5)


def test_native_booster_is_served_by_its_objective(tmp_path: Path) -> None:
    """A Booster from xgboost.train has no scikit-learn metadata: the objective decides."""
    booster = xgboost.train(
        {"objective": "binary:logistic", "max_depth": 2}, xgboost.DMatrix(X, BINARY_Y), 4
    )
    model = loaded(save(tmp_path, booster, "model.bst"), method=["predict", "predict_proba"])
    out = run(model, X[:4])
    p = booster.predict(xgboost.DMatrix(X[:4]))
    np.testing.assert_array_equal(out["predict"], (p > 0.5).astype(np.int64))
    np.testing.assert_allclose(out["predict_proba"][:, 1], p, rtol=1e-6)


def test_regressor_values(tmp_path: Path) -> None:
    estimator = xgboost.XGBRegressor(n_estimators=6).fit(X, X[:, 0] * 2)
    model = loaded(save(tmp_path, estimator, "model.json"))
    assert [(s.name, s.datatype) for s in model.outputs] == [("predict", "FP32"), ("predict_raw", "FP32")]
    np.testing.assert_allclose(run(model, X[:3])["predict"], estimator.predict(X[:3]), rtol=1e-6)
    with pytest.raises(InvalidInput, match="no output 'predict_proba'"):
        run(model, X[:3], "predict_proba")


def test_default_output_from_parameters(tmp_path: Path, classifier) -> None:
    folder = save(tmp_path, classifier, "model.json")
    assert list(run(loaded(folder, method="predict_proba"), X[:2])) == ["predict_proba"]
    with pytest.raises(LoadError, match="offers"):
        loaded(folder, method="decision_function")


def test_detected_from_the_artifact(tmp_path: Path, classifier) -> None:
    folder = save(tmp_path, classifier, "model.ubj")
    model = create_model("m", "1", folder, folder, ModelConfig())
    assert isinstance(model, XGBoostModel)


def test_endpoint_checks_shape_and_datatype(tmp_path: Path, classifier) -> None:
    model = loaded(save(tmp_path, classifier, "model.json"))
    with pytest.raises(InvalidInput, match=r"expects \[-1, 6\]"):
        conform_inputs([Tensor.from_numpy("x", X[:2, :4])], model.inputs, "m")
    with pytest.raises(InvalidInput, match="is FP64 but model 'm' expects FP32"):
        conform_inputs([Tensor.from_numpy("x", X[:2].astype(np.float64) + 0.1)], model.inputs, "m")
    with pytest.raises(InvalidInput, match="is INT64 but model 'm' expects FP32"):
        big = np.full((2, 6), 2**24 + 1, dtype=np.int64)  # no exact FP32 value
        conform_inputs([Tensor.from_numpy("x", big)], model.inputs, "m")
    [conformed] = conform_inputs([Tensor.from_numpy("x", X[:2].astype(np.float16))], model.inputs, "m")
    assert conformed.datatype == "FP32" and conformed.name == "input-0"


def test_several_declared_inputs_are_stacked_as_columns(tmp_path: Path, classifier) -> None:
    """model.yaml may declare the features as several inputs: they are stacked in that order."""
    model = loaded(save(tmp_path, classifier, "model.json"))
    model.inputs = [TensorSpec("a", "FP32", (-1, 2)), TensorSpec("b", "FP32", (-1, 4))]
    tensors = [Tensor.from_numpy("b", X[:3, 2:]), Tensor.from_numpy("a", X[:3, :2])]
    request = InferenceRequest(conform_inputs(tensors, model.inputs, "m"))
    np.testing.assert_array_equal(model.predict(request)[0].data, classifier.predict(X[:3]))


@pytest.mark.parametrize(
    ("artifact", "damage", "reason"),
    [
        ("model.json", lambda data: b"this is not a model", "Invalid model format"),
        ("model.json", lambda data: data[: len(data) // 2], "cannot read model.json"),
        ("model.ubj", lambda data: data[: len(data) // 2], "not a complete UBJSON model"),
        ("model.bst", lambda data: data[:-1], "not a complete UBJSON model"),
        ("model.ubj", lambda data: b"", "cannot read model.ubj"),
    ],
)
def test_corrupt_artifact_is_a_load_error(tmp_path: Path, classifier, artifact, damage, reason) -> None:
    folder = save(tmp_path, classifier, artifact)
    (folder / artifact).write_bytes(damage((folder / artifact).read_bytes()))
    with pytest.raises(LoadError, match=reason):
        loaded(folder)


def test_a_lightgbm_model_bst_says_which_runtime_to_name(tmp_path: Path) -> None:
    (tmp_path / "model.bst").write_text("tree\nversion=v4\nnum_class=1\n")
    model = create_model("m", "1", tmp_path, tmp_path, ModelConfig())
    with pytest.raises(LoadError, match="LightGBM model.*runtime: lightgbm"):
        model.load()


def test_gpu_asked_for_but_unavailable_is_a_load_error(tmp_path: Path, classifier) -> None:
    """CI has no GPU: XGBoost would quietly predict on the CPU, Shoal refuses instead."""
    if xgboost.build_info().get("USE_CUDA"):
        pytest.skip("this machine's xgboost may really use the GPU")
    with pytest.raises(LoadError, match="'cuda'.*CPU"):
        loaded(save(tmp_path, classifier, "model.json"), device="cuda")
