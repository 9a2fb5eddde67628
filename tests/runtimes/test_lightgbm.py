"""The LightGBM runtime with tiny models trained here: metadata, outputs, bad artifacts."""

from __future__ import annotations

import re
from pathlib import Path

import lightgbm
import numpy as np
import pytest

from shoal import InferenceRequest, RequestedOutput, Tensor
from shoal.errors import InvalidInput, LoadError
from shoal.repository.config import ModelConfig
from shoal.runtimes import create_model
from shoal.runtimes.lightgbm import LightGBMModel
from shoal.serving.endpoint import conform_inputs

RNG = np.random.default_rng(0)
X = RNG.normal(size=(300, 5))
BINARY_Y = (X[:, 0] + X[:, 1] > 0).astype(int)
MULTI_Y = (X[:, 0] > 0).astype(int) + (X[:, 1] > 0)


def train(objective: str, y: np.ndarray, **params: object) -> lightgbm.Booster:
    return lightgbm.train(
        {"objective": objective, "num_leaves": 7, "verbose": -1, **params}, lightgbm.Dataset(X, y), 6
    )


def save(folder: Path, booster: lightgbm.Booster, artifact: str = "model.txt") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    booster.save_model(folder / artifact)
    return folder


def loaded(folder: Path, **parameters: object) -> LightGBMModel:
    model = LightGBMModel("m", "1", folder, parameters)
    model.load()
    return model


def run(model: LightGBMModel, rows: np.ndarray, *outputs: str) -> dict[str, np.ndarray]:
    request = InferenceRequest(
        [Tensor.from_numpy("input-0", rows)],
        outputs=[RequestedOutput(o) for o in outputs] if outputs else None,
    )
    return {t.name: t.data for t in model.predict(request)}


@pytest.fixture(scope="module")
def binary() -> lightgbm.Booster:
    return train("binary", BINARY_Y)


def test_binary_outputs_match_lightgbm(tmp_path: Path, binary) -> None:
    model = loaded(save(tmp_path, binary))
    assert [s.to_dict() for s in model.inputs] == [
        {"name": "input-0", "datatype": "FP64", "shape": [-1, 5]}
    ]
    assert [(s.name, s.datatype, s.shape) for s in model.outputs] == [
        ("predict", "FP64", (-1,)), ("predict_raw", "FP64", (-1,)),
        ("predict_proba", "FP64", (-1, 2)), ("predict_class", "INT64", (-1,)),
    ]
    rows = X[:6]
    p = binary.predict(rows)
    np.testing.assert_array_equal(run(model, rows)["predict"], p)  # the default, as MLServer/KServe
    out = run(model, rows, "predict_class", "predict_proba", "predict_raw")
    assert list(out) == ["predict_class", "predict_proba", "predict_raw"]
    np.testing.assert_array_equal(out["predict_proba"], np.column_stack((1 - p, p)))
    np.testing.assert_array_equal(out["predict_class"], (p > 0.5).astype(np.int64))
    np.testing.assert_array_equal(out["predict_raw"], binary.predict(rows, raw_score=True))


def test_sklearn_classifier_saved_as_model_bst(tmp_path: Path) -> None:
    """KServe's and MLServer's file name: model.bst, with runtime: lightgbm in model.yaml."""
    estimator = lightgbm.LGBMClassifier(n_estimators=5, num_leaves=7, verbose=-1).fit(X, MULTI_Y)
    folder = save(tmp_path, estimator.booster_, "model.bst")
    model = create_model("m", "1", folder, folder, ModelConfig(runtime="lightgbm"))
    assert isinstance(model, LightGBMModel)
    model.load()
    assert {s.name: s.shape for s in model.outputs}["predict_proba"] == (-1, 3)
    out = run(model, X[:8], "predict", "predict_proba", "predict_class")
    np.testing.assert_allclose(out["predict_proba"], estimator.predict_proba(X[:8]))
    np.testing.assert_array_equal(out["predict"], out["predict_proba"])
    np.testing.assert_array_equal(out["predict_class"], estimator.predict(X[:8]))


def test_regression_has_no_class_outputs(tmp_path: Path) -> None:
    booster = train("regression", X[:, 0] * 3)
    model = loaded(save(tmp_path, booster), method=["predict", "predict_raw"])
    assert [s.name for s in model.outputs] == ["predict", "predict_raw"]
    out = run(model, X[:4])
    np.testing.assert_array_equal(out["predict"], booster.predict(X[:4]))
    with pytest.raises(InvalidInput, match="no output 'predict_proba'"):
        run(model, X[:4], "predict_proba")
    with pytest.raises(LoadError, match="offers"):
        loaded(tmp_path, method="predict_proba")


def test_endpoint_checks_shape_and_takes_fp32(tmp_path: Path, binary) -> None:
    model = loaded(save(tmp_path, binary))
    with pytest.raises(InvalidInput, match=r"expects \[-1, 5\]"):
        conform_inputs([Tensor.from_numpy("x", X[:2, :3])], model.inputs, "m")
    [conformed] = conform_inputs([Tensor.from_numpy("x", X[:2].astype(np.float32))], model.inputs, "m")
    assert conformed.datatype == "FP64"  # FP32 -> FP64 is lossless
    with pytest.raises(InvalidInput, match="is BYTES but model 'm' expects FP64"):
        conform_inputs([Tensor.from_numpy("x", np.full((2, 5), b"1", dtype=object))], model.inputs, "m")


def test_gpu_is_refused_clearly(tmp_path: Path, binary) -> None:
    with pytest.raises(LoadError, match="CPU only"):
        loaded(save(tmp_path, binary), device="cuda")


def truncate(text: bytes) -> bytes:
    return text[: len(text) // 2]


def cut_parameters(text: bytes) -> bytes:
    return text[: text.index(b"end of parameters") - 20]


def shift_tree(text: bytes) -> bytes:
    return text.replace(b"Tree=1\n", b"Tree=1\n\n", 1)


def loop_tree(text: bytes) -> bytes:
    """Tree 0's first right child points back at the root: LightGBM would spin forever."""
    line = re.search(rb"^right_child=(\S+)", text, re.MULTILINE)
    start, end = line.span(1)
    return text[:start] + b"0" + text[end:]


def rename_field(text: bytes) -> bytes:
    """Same length, so the layout checks pass; LightGBM's parser would abort the process."""
    start = text.index(b"Tree=3\n")
    at = text.index(b"leaf_value=", start)
    return text[:at] + b"leaf_valuX=" + text[at + len(b"leaf_value="):]


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (lambda text: b"not a model at all", "does not start with"),
        (lambda text: b"", "does not start with"),
        (truncate, "no 'end of trees'"),
        (cut_parameters, "no 'end of parameters'"),
        (shift_tree, "tree 2 is not where tree_sizes says"),
        (loop_tree, "tree 0 do not form a tree"),
        (rename_field, r"LightGBM crashed \(SIGABRT\).*leaf_value"),
    ],
)
def test_corrupt_artifact_is_a_load_error(tmp_path: Path, binary, damage, reason) -> None:
    folder = save(tmp_path, binary)
    (folder / "model.txt").write_bytes(damage((folder / "model.txt").read_bytes()))
    with pytest.raises(LoadError, match=reason):
        loaded(folder)
