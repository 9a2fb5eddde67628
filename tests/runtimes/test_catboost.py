"""The CatBoost runtime with tiny models trained here: metadata, outputs, bad artifacts."""

from __future__ import annotations

from pathlib import Path

import catboost
import numpy as np
import pytest

from shoal import InferenceRequest, RequestedOutput, Tensor
from shoal.errors import InvalidInput, LoadError
from shoal.repository.config import ModelConfig
from shoal.runtimes import create_model
from shoal.runtimes.catboost import CatBoostModel
from shoal.serving.endpoint import conform_inputs

RNG = np.random.default_rng(0)
X = RNG.normal(size=(200, 4)).astype(np.float32)
MULTI_Y = (X[:, 0] > 0).astype(int) + (X[:, 1] > 0)


def save(folder: Path, estimator: catboost.CatBoost) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    estimator.save_model(str(folder / "model.cbm"))
    return folder


def loaded(folder: Path, **parameters: object) -> CatBoostModel:
    model = CatBoostModel("m", "1", folder, parameters)
    model.load()
    return model


def run(model: CatBoostModel, rows: np.ndarray, *outputs: str) -> dict[str, np.ndarray]:
    request = InferenceRequest(
        [Tensor.from_numpy("input-0", rows)],
        outputs=[RequestedOutput(o) for o in outputs] if outputs else None,
    )
    return {t.name: t.data for t in model.predict(request)}


@pytest.fixture(scope="module")
def classifier() -> catboost.CatBoostClassifier:
    return catboost.CatBoostClassifier(iterations=10, depth=3, verbose=False, allow_writing_files=False).fit(X, MULTI_Y)


def test_classifier_outputs_match_catboost(tmp_path: Path, classifier) -> None:
    model = loaded(save(tmp_path, classifier))
    assert [s.to_dict() for s in model.inputs] == [
        {"name": "input-0", "datatype": "FP32", "shape": [-1, 4]}
    ]
    assert [(s.name, s.datatype, s.shape) for s in model.outputs] == [
        ("predict", "INT64", (-1,)), ("predict_proba", "FP64", (-1, 3)), ("predict_raw", "FP64", (-1, 3)),
    ]
    rows = X[:6]
    assert list(run(model, rows)) == ["predict"]
    out = run(model, rows, "predict_proba", "predict")
    np.testing.assert_array_equal(out["predict"], classifier.predict(rows).reshape(-1))
    np.testing.assert_array_equal(out["predict_proba"], classifier.predict_proba(rows))


def test_string_labels_come_back_as_bytes(tmp_path: Path) -> None:
    labels = np.where(X[:, 0] > 0, "yes", "no")
    estimator = catboost.CatBoostClassifier(iterations=5, depth=2, verbose=False, allow_writing_files=False).fit(X, labels)
    model = loaded(save(tmp_path, estimator), method=["predict", "predict_proba"])
    assert {s.name: s.datatype for s in model.outputs}["predict"] == "BYTES"
    out = run(model, X[:5])
    assert [v.decode() for v in out["predict"]] == list(estimator.predict(X[:5]))
    assert out["predict_proba"].shape == (5, 2)


def test_regressor(tmp_path: Path) -> None:
    estimator = catboost.CatBoostRegressor(iterations=10, depth=3, verbose=False, allow_writing_files=False).fit(X, X[:, 0] * 2)
    folder = save(tmp_path, estimator)
    model = create_model("m", "1", folder, folder, ModelConfig())
    assert isinstance(model, CatBoostModel)
    model.load()
    assert [(s.name, s.shape) for s in model.outputs] == [("predict", (-1,)), ("predict_raw", (-1,))]
    np.testing.assert_array_equal(run(model, X[:3])["predict"], estimator.predict(X[:3]))
    with pytest.raises(InvalidInput, match="no output 'predict_proba'"):
        run(model, X[:3], "predict_proba")
    with pytest.raises(LoadError, match="offers"):
        loaded(folder, method="predict_proba")


def test_categorical_features_take_a_bytes_matrix(tmp_path: Path) -> None:
    colour = RNG.choice(["red", "green", "blue"], size=len(X))
    table = np.empty((len(X), 3), dtype=object)
    table[:, :2], table[:, 2] = X[:, :2], colour
    y = ((X[:, 0] > 0) ^ (colour == "red")).astype(int)
    estimator = catboost.CatBoostClassifier(iterations=10, depth=3, verbose=False, allow_writing_files=False, cat_features=[2])
    model = loaded(save(tmp_path, estimator.fit(table, y)))
    assert model.inputs[0].datatype == "BYTES" and model.inputs[0].shape == (-1, 3)
    cells = np.array([[str(v).encode() for v in row] for row in table[:5]], dtype=object)
    out = run(model, cells, "predict_proba")
    np.testing.assert_allclose(out["predict_proba"], estimator.predict_proba(table[:5]))


def test_endpoint_checks_shape_and_datatype(tmp_path: Path, classifier) -> None:
    model = loaded(save(tmp_path, classifier))
    with pytest.raises(InvalidInput, match=r"expects \[-1, 4\]"):
        conform_inputs([Tensor.from_numpy("x", X[:2, :3])], model.inputs, "m")
    with pytest.raises(InvalidInput, match="is FP64 but model 'm' expects FP32"):
        conform_inputs([Tensor.from_numpy("x", X[:2].astype(np.float64) + 0.1)], model.inputs, "m")


def test_gpu_without_a_gpu_is_a_load_error(tmp_path: Path, classifier) -> None:
    with pytest.raises(LoadError, match="cannot predict"):
        loaded(save(tmp_path, classifier), device="cuda")
    with pytest.raises(LoadError, match="'cpu' or 'cuda'"):
        loaded(tmp_path, device="tpu")


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (lambda data: b"this is not a model", "cannot read model.cbm"),
        (lambda data: b"", "cannot read model.cbm"),
        (lambda data: data[: len(data) // 2], "Failed to read"),
        (lambda data: data[:100] + bytes(b ^ 0xFF for b in data[100:200]) + data[200:], "verification failed"),
    ],
)
def test_corrupt_artifact_is_a_load_error(tmp_path: Path, classifier, damage, reason) -> None:
    folder = save(tmp_path, classifier)
    (folder / "model.cbm").write_bytes(damage((folder / "model.cbm").read_bytes()))
    with pytest.raises(LoadError, match=reason):
        loaded(folder)
