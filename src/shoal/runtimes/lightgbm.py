"""LightGBM models in LightGBM's text format: ``model.txt``, or ``model.bst`` (the name KServe
and MLServer use) with ``runtime: lightgbm`` in ``model.yaml``.

Outputs, named so that clients of MLServer's and KServe's LightGBM servers keep working:

- ``predict``: what ``Booster.predict`` returns, as those servers answer: probabilities for
  classification objectives (``binary``: the positive class's, one per row; ``multiclass``,
  ``multiclassova``: one column per class), values for everything else.
- ``predict_raw``: raw scores (``raw_score=True``).
- For classification objectives only: ``predict_proba``, one column per class (a binary model
  gives two, as ``LGBMClassifier.predict_proba``), and ``predict_class``, the class index
  (INT64; LightGBM's file does not keep label names, so index ``i`` is the scikit-learn
  wrapper's ``classes_[i]``).

Inputs are one FP64 matrix ``[-1, num_features]``: LightGBM compares features against its
thresholds in double precision. Parameters: ``method`` (default outputs), ``num_threads``
(threads per prediction, default 1: Shoal already runs requests side by side).
"""

from __future__ import annotations

import lightgbm
import numpy as np

from ..errors import LoadError
from ..model import Model
from ..types import InferenceRequest, Tensor, TensorSpec
from .lightgbm_text import check_model_text
from .native_check import check_native_read, library_path
from .outputs import chosen_outputs, default_outputs, find_artifact
from .tabular import features, tabular_inputs

ARTIFACTS = ("model.txt", "model.bst")
INPUT_NAME = "input-0"
CLASSIFICATION = ("binary", "multiclass", "multiclassova")


class LightGBMModel(Model):
    platform = "lightgbm"
    accepted_parameters = frozenset({"method", "num_threads", "device"})

    def load(self) -> None:
        artifact = find_artifact(self.path, ARTIFACTS, "LightGBM")
        device = str(self.parameters.get("device", "cpu"))
        if device != "cpu":
            raise LoadError(
                f"parameters.device is {device!r}, but LightGBM predicts on the CPU only "
                "(its GPU builds speed up training, not prediction)"
            )
        self.objective = check_model_text(artifact.read_bytes(), artifact.name)
        check_native_read("lightgbm", "LightGBM", library_path(lightgbm.basic), artifact)
        try:
            self.booster = lightgbm.Booster(model_file=str(artifact))
        except Exception as exc:
            raise LoadError(f"cannot read {artifact.name}: {type(exc).__name__}: {exc}") from exc
        self.options = {"num_threads": int(self.parameters.get("num_threads", 1))}
        self.classes = max(self.booster.num_model_per_iteration(), 2)
        n_features = self.booster.num_feature()
        self.inputs = tabular_inputs(self.inputs, INPUT_NAME, "FP64", n_features, artifact.name)
        self.outputs = self._output_specs()
        self.offered = [spec.name for spec in self.outputs]
        self.default_outputs = default_outputs(self.parameters, self.offered)
        try:  # fails now, not on the first request
            self._compute(self.offered, np.zeros((1, n_features)))
        except Exception as exc:
            raise LoadError(f"{artifact.name} loads but cannot predict: {exc}") from exc

    @property
    def classifier(self) -> bool:
        return self.objective in CLASSIFICATION

    def _output_specs(self) -> list[TensorSpec]:
        per_model = (-1,) if self.booster.num_model_per_iteration() == 1 else (-1, self.classes)
        specs = [TensorSpec("predict", "FP64", per_model), TensorSpec("predict_raw", "FP64", per_model)]
        if self.classifier:
            specs += [
                TensorSpec("predict_proba", "FP64", (-1, self.classes)),
                TensorSpec("predict_class", "INT64", (-1,)),
            ]
        return specs

    def predict(self, request: InferenceRequest) -> list[Tensor]:
        names = chosen_outputs(request, self.default_outputs, self.offered, self.name)
        results = self._compute(names, features(request, self.inputs))
        return [Tensor.from_numpy(name, results[name]) for name in names]

    def _compute(self, names: list[str], matrix: np.ndarray) -> dict[str, np.ndarray]:
        results: dict[str, np.ndarray] = {}
        if "predict_raw" in names:
            results["predict_raw"] = self.booster.predict(matrix, raw_score=True, **self.options)
        if {"predict", "predict_proba", "predict_class"}.intersection(names):
            results["predict"] = value = self.booster.predict(matrix, **self.options)
            if self.classifier:
                proba = np.column_stack((1 - value, value)) if value.ndim == 1 else value
                results["predict_proba"] = proba
                results["predict_class"] = np.argmax(proba, axis=1).astype(np.int64)
        return results

