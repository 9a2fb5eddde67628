"""CatBoost models saved with ``save_model`` (``model.cbm``): CatBoostClassifier,
CatBoostRegressor, CatBoostRanker or the generic CatBoost.

Outputs, as the scikit-learn-style wrappers name them:

- ``predict``: class labels for classification losses, in the labels' own type (INT64, or
  BYTES for string labels, as ``CatBoostClassifier.predict``, one per row); for other losses
  the value ``CatBoostRegressor.predict`` gives (``Exponent`` for Poisson and Tweedie).
- ``predict_proba`` (classification losses only): one column per class.
- ``predict_raw``: raw formula values (``prediction_type="RawFormulaVal"``).

Inputs: one FP32 matrix ``[-1, num_features]`` (CatBoost evaluates in float32). A model with
categorical (or text) features takes one BYTES matrix instead, every cell a string, numbers
included (``"0.5"``), which CatBoost parses itself. Parameters: ``method`` (default outputs),
``thread_count`` (threads per prediction, default 1: Shoal already runs requests side by side),
``device`` (``cpu``, or ``cuda`` / ``gpu`` for CatBoost's GPU evaluator, ``task_type="GPU"``).
"""

from __future__ import annotations

import re
from typing import Any

import catboost
import numpy as np
from catboost.core import is_classification_objective

from ..errors import LoadError
from ..model import Model
from ..types import InferenceRequest, Tensor, TensorSpec
from .native_check import check_native_read, search_path
from .outputs import chosen_outputs, default_outputs, find_artifact
from .tabular import features, tabular_inputs

ARTIFACTS = ("model.cbm",)
INPUT_NAME = "input-0"
GPU_DEVICES = ("cuda", "gpu")


class CatBoostModel(Model):
    platform = "catboost"
    accepted_parameters = frozenset({"method", "thread_count", "device"})

    def load(self) -> None:
        artifact = find_artifact(self.path, ARTIFACTS, "CatBoost")
        self.options = self._predict_options()
        check_native_read("catboost", "CatBoost", search_path(), artifact)
        self.model = catboost.CatBoost()
        try:
            self.model.load_model(str(artifact))
            loss = str(self.model.get_all_params().get("loss_function", ""))
        except Exception as exc:
            raise LoadError(f"cannot read {artifact.name}: {_reason(exc)}") from exc
        if self.model.get_embedding_feature_indices():
            raise LoadError(f"{artifact.name} has embedding features, which Shoal cannot feed yet")
        self.prediction_types = _prediction_types(loss)
        self.offered = list(self.prediction_types)
        self.default_outputs = default_outputs(self.parameters, self.offered)
        n_features = len(self.model.feature_names_)
        textual = self.model.get_cat_feature_indices() or self.model.get_text_feature_indices()
        self.inputs = tabular_inputs(
            self.inputs, INPUT_NAME, "BYTES" if textual else "FP32", n_features, artifact.name
        )
        example = (
            np.full((1, n_features), b"0", dtype=object) if textual
            else np.zeros((1, n_features), dtype=np.float32)
        )
        try:  # fails now, not on the first request; and gives each output's real shape
            results = {name: self._run(name, example) for name in self.offered}
        except Exception as exc:
            raise LoadError(f"{artifact.name} loads but cannot predict: {_reason(exc)}") from exc
        self.outputs = [
            TensorSpec(name, Tensor.from_numpy(name, value).datatype, (-1, *value.shape[1:]))
            for name, value in results.items()
        ]

    def _predict_options(self) -> dict[str, Any]:
        device = str(self.parameters.get("device", "cpu")).lower()
        if device != "cpu" and device not in GPU_DEVICES:
            raise LoadError(
                f"parameters.device is {device!r}; CatBoost takes 'cpu' or 'cuda' (pick the GPU "
                "with CUDA_VISIBLE_DEVICES)"
            )
        return {
            "thread_count": int(self.parameters.get("thread_count", 1)),
            "task_type": "GPU" if device in GPU_DEVICES else "CPU",
        }

    def predict(self, request: InferenceRequest) -> list[Tensor]:
        names = chosen_outputs(request, self.default_outputs, self.offered, self.name)
        matrix = features(request, self.inputs)
        return [Tensor.from_numpy(name, self._run(name, matrix)) for name in names]

    def _run(self, name: str, matrix: np.ndarray) -> np.ndarray:
        result = self.model.predict(matrix, prediction_type=self.prediction_types[name], **self.options)
        if name == "predict" and result.ndim == 2 and result.shape[1] == 1:
            result = result.reshape(-1)  # CatBoostClassifier gives multiclass labels as (n, 1)
        if result.dtype == object:  # string labels, as Python str: Tensor makes U-strings BYTES
            result = result.astype(str)
        return result


def _prediction_types(loss: str) -> dict[str, str]:
    """Output name -> CatBoost prediction_type, as the wrappers' predict methods choose."""
    if is_classification_objective(loss):
        return {"predict": "Class", "predict_proba": "Probability", "predict_raw": "RawFormulaVal"}
    if loss.startswith(("Poisson", "Tweedie")):
        return {"predict": "Exponent", "predict_raw": "RawFormulaVal"}
    if loss == "RMSEWithUncertainty":
        return {"predict": "RMSEWithUncertainty", "predict_raw": "RawFormulaVal"}
    return {"predict": "RawFormulaVal", "predict_raw": "RawFormulaVal"}


def _reason(exc: Exception) -> str:
    """CatBoost's message without the C++ source location in front."""
    return re.sub(r"^\S+\.cpp:\d+: ", "", str(exc).strip()) or type(exc).__name__
