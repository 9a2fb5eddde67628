"""XGBoost models saved with ``save_model``: ``model.json``, ``model.ubj`` or ``model.bst``.

Whether the model came from the native API (``xgboost.train``) or the scikit-learn wrappers
(``XGBClassifier``, ``XGBRegressor``, ...), Shoal serves the Booster and reads what it is from
its objective, so both behave the same:

- ``predict``: class labels (INT64 class indices, as ``XGBClassifier.predict``) for
  classification objectives (``binary:logistic``, ``binary:logitraw``, ``binary:hinge``,
  ``multi:softprob``, ``multi:softmax``); the booster's values (FP32) for everything else.
- ``predict_proba``: class probabilities, one column per class, so a binary model gives two
  columns as in scikit-learn (not for ``binary:hinge``).
- ``predict_raw``: untransformed margins (``output_margin=True``).

Inputs are one FP32 matrix ``[-1, num_features]`` (XGBoost computes in float32). Parameters:
``method`` (default outputs), ``nthread`` (threads per prediction, default 1: Shoal already
runs requests side by side), ``device`` (``cpu``, ``cuda``, ``cuda:1``; passed to the booster).
"""

from __future__ import annotations

import json
import re
import threading
import warnings
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import numpy as np
import xgboost

from ..errors import LoadError
from ..model import Model
from ..types import InferenceRequest, Tensor, TensorSpec
from .native_check import check_native_read, library_path
from .outputs import chosen_outputs, default_outputs, find_artifact
from .tabular import features, tabular_inputs
from .ubjson import UBJSONError, check_ubjson

ARTIFACTS = ("model.json", "model.ubj", "model.bst")
INPUT_NAME = "input-0"
#: Objectives whose value is the positive class's probability (or a margin that becomes one).
BINARY = ("binary:logistic", "binary:logitraw")
MULTICLASS = ("multi:softprob", "multi:softmax")
CLASSIFICATION = (*BINARY, *MULTICLASS, "binary:hinge")

# XGBoost reads ``model.bst`` as UBJSON, which is right, and warns on every load that it guessed.
warnings.filterwarnings("ignore", message=r".*Unknown file format: `bst`", category=UserWarning)


class XGBoostModel(Model):
    platform = "xgboost"
    accepted_parameters = frozenset({"method", "nthread", "device"})

    def load(self) -> None:
        artifact = find_artifact(self.path, ARTIFACTS, "XGBoost")
        data = artifact.read_bytes()
        if data.startswith(b"tree\n"):
            raise LoadError(
                f"{artifact.name} is a LightGBM model, not an XGBoost one: add 'runtime: lightgbm' "
                "to model.yaml"
            )
        if artifact.suffix != ".json" and data[:1] == b"{":
            try:
                check_ubjson(data)
            except UBJSONError as exc:
                raise LoadError(f"{artifact.name} is not a complete UBJSON model: {exc}") from None
        check_native_read("xgboost", "XGBoost", library_path(xgboost.core), artifact)
        try:
            self.booster = xgboost.Booster(model_file=str(artifact))
            self.booster.set_param(self._booster_params())
            config = json.loads(self.booster.save_config())
        except Exception as exc:
            raise LoadError(f"cannot read {artifact.name}: {_reason(exc)}") from exc
        self._check_device(config)
        learner = config["learner"]
        self.objective: str = learner["objective"]["name"]
        model_param = learner["learner_model_param"]
        self.classes = max(int(model_param.get("num_class", 0)), 2)
        self.targets = int(model_param.get("num_target", 1))
        booster_kind = learner["gradient_booster"]["name"]
        # inplace_predict is lock-free for tree boosters only (XGBoost's documentation).
        self._lock: AbstractContextManager[Any] = (
            nullcontext() if booster_kind in ("gbtree", "dart") else threading.Lock()
        )
        n_features = self.booster.num_features()
        self.inputs = tabular_inputs(self.inputs, INPUT_NAME, "FP32", n_features, artifact.name)
        self.outputs = self._output_specs()
        self.offered = [spec.name for spec in self.outputs]
        self.default_outputs = default_outputs(self.parameters, self.offered)
        try:  # fails now, not on the first request, if the device or the model cannot predict
            self._compute(self.offered, np.zeros((1, n_features), dtype=np.float32))
        except Exception as exc:
            raise LoadError(f"{artifact.name} loads but cannot predict: {_reason(exc)}") from exc

    def _booster_params(self) -> dict[str, Any]:
        params: dict[str, Any] = {"nthread": int(self.parameters.get("nthread", 1))}
        if "device" in self.parameters:
            params["device"] = str(self.parameters["device"])
        return params

    def _check_device(self, config: dict[str, Any]) -> None:
        """XGBoost quietly falls back to the CPU when it cannot use the GPU asked for."""
        wanted = str(self.parameters.get("device", "cpu"))
        actual = config["learner"]["generic_param"].get("device", "cpu")
        if wanted != "cpu" and actual == "cpu":
            cuda = xgboost.build_info().get("USE_CUDA")
            raise LoadError(
                f"parameters.device asks for {wanted!r}, but XGBoost would run on the CPU: "
                + ("no GPU is visible" if cuda else "this xgboost build has no CUDA support")
            )

    @property
    def classifier(self) -> bool:
        return self.objective in CLASSIFICATION

    def _output_specs(self) -> list[TensorSpec]:
        multiclass = self.objective in MULTICLASS
        multilabel = self.objective in BINARY and self.targets > 1
        per_row: tuple[int, ...] = (-1,) if self.targets == 1 else (-1, self.targets)
        raw = (-1, self.classes) if multiclass else per_row
        if not self.classifier:
            return [TensorSpec("predict", "FP32", per_row), TensorSpec("predict_raw", "FP32", raw)]
        specs = [TensorSpec("predict", "INT64", per_row if multilabel else (-1,))]
        if self.objective != "binary:hinge":
            columns = self.targets if multilabel else self.classes
            specs.append(TensorSpec("predict_proba", "FP32", (-1, columns)))
        return [*specs, TensorSpec("predict_raw", "FP32", raw)]

    def predict(self, request: InferenceRequest) -> list[Tensor]:
        names = chosen_outputs(request, self.default_outputs, self.offered, self.name)
        results = self._compute(names, features(request, self.inputs))
        return [Tensor.from_numpy(name, results[name]) for name in names]

    def _compute(self, names: list[str], matrix: np.ndarray) -> dict[str, np.ndarray]:
        results: dict[str, np.ndarray] = {}
        if "predict_raw" in names or self.objective in ("binary:logitraw", "multi:softmax"):
            results["predict_raw"] = self._run(matrix, "margin")
        if not self.classifier:
            if "predict" in names:
                results["predict"] = self._run(matrix, "value")
            return results
        if self.objective == "binary:hinge":
            results["predict"] = self._run(matrix, "value").astype(np.int64)
            return results
        proba = self._probabilities(matrix, results.get("predict_raw"))
        if "predict" in names:  # multi-label (binary objective, several targets): one per target
            chosen = proba > 0.5 if self.objective in BINARY else np.argmax(proba, axis=1)
            results["predict"] = chosen.astype(np.int64)
        if "predict_proba" in names:
            results["predict_proba"] = np.column_stack((1 - proba, proba)) if proba.ndim == 1 else proba
        return results

    def _probabilities(self, matrix: np.ndarray, margin: np.ndarray | None) -> np.ndarray:
        """As XGBClassifier.predict_proba computes them, per objective."""
        if self.objective == "binary:logitraw":
            return (1 / (1 + np.exp(-margin))).astype(np.float32)
        if self.objective == "multi:softmax":
            shifted = np.exp(margin - margin.max(axis=1, keepdims=True))
            return (shifted / shifted.sum(axis=1, keepdims=True)).astype(np.float32)
        return self._run(matrix, "value")

    def _run(self, matrix: np.ndarray, kind: str) -> np.ndarray:
        with self._lock:
            return self.booster.inplace_predict(
                matrix, predict_type=kind, validate_features=False
            )


def _reason(exc: Exception) -> str:
    """XGBoost's first message line, without its timestamp, source location and stack trace."""
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return re.sub(r"^\[[\d:]+\] \S+:\d+: ", "", first) or type(exc).__name__
