"""scikit-learn estimators and pipelines saved with joblib or pickle.

Loading a pickle runs code from the file, so only serve repositories you trust; Shoal refuses
artifacts that any user on the machine could have rewritten (world-writable file or folder).

Outputs are estimator methods: ``predict`` by default, ``predict_proba`` (or any method in
:data:`METHODS` the estimator has) when a request names it as an output or ``model.yaml``
sets ``parameters.method``.
"""

from __future__ import annotations

import joblib
import numpy as np

from ..datatypes import datatype_of
from ..errors import InvalidInput, LoadError
from ..model import Model
from ..types import InferenceRequest, Tensor, TensorSpec
from . import IMPORT_LOCK
from .tabular import features, tabular_inputs
from .trust import refuse_untrusted

ARTIFACTS = ("model.joblib", "model.pkl", "model.pickle")
METHODS = ("predict", "predict_proba", "predict_log_proba", "decision_function", "transform")
INPUT_NAME = "input-0"


class SKLearnModel(Model):
    platform = "sklearn"
    accepted_parameters = frozenset({"method"})

    def load(self) -> None:
        artifact = next((self.path / a for a in ARTIFACTS if (self.path / a).is_file()), None)
        if artifact is None:
            raise LoadError(f"no scikit-learn artifact ({', '.join(ARTIFACTS)}) in {self.path}")
        refuse_untrusted(artifact)
        try:
            with IMPORT_LOCK:  # unpickling imports the estimator's modules
                self.estimator = joblib.load(artifact)
        except Exception as exc:
            raise LoadError(f"cannot read {artifact.name}: {type(exc).__name__}: {exc}") from exc
        self.methods = [m for m in METHODS if callable(getattr(self.estimator, m, None))]
        if not self.methods:
            raise LoadError(f"{artifact.name} holds a {type(self.estimator).__name__}, not an estimator")
        self.default_methods = self._default_methods()
        count = getattr(self.estimator, "n_features_in_", None)
        self.inputs = tabular_inputs(
            self.inputs, INPUT_NAME, "FP64", int(count) if count else None, artifact.name,
            any_datatype=True,
        )
        self.outputs = [self._output_spec(m) for m in self.methods]

    def _default_methods(self) -> list[str]:
        wanted = self.parameters.get("method", "predict")
        wanted = [wanted] if isinstance(wanted, str) else list(wanted)
        missing = [m for m in wanted if m not in self.methods]
        if missing:
            raise LoadError(
                f"parameters.method asks for {missing}; this estimator offers {self.methods}"
            )
        return wanted

    def _output_spec(self, method: str) -> TensorSpec:
        classes = getattr(self.estimator, "classes_", None)
        if method == "predict":
            datatype = datatype_of(np.asarray(classes)) if classes is not None else "FP64"
            targets = getattr(self.estimator, "n_outputs_", 1)
            return TensorSpec(method, datatype, (-1,) if targets == 1 else (-1, targets))
        if method in ("predict_proba", "predict_log_proba") and classes is not None:
            return TensorSpec(method, "FP64", (-1, len(classes)))
        if method == "decision_function" and classes is not None and len(classes) == 2:
            return TensorSpec(method, "FP64", (-1,))
        return TensorSpec(method, "FP64", (-1, -1))

    def predict(self, request: InferenceRequest) -> list[Tensor]:
        methods = request.requested_output_names or self.default_methods
        for method in methods:
            if method not in self.methods:
                raise InvalidInput(
                    f"model {self.name!r} has no output {method!r}; it offers {self.methods}"
                )
        matrix = features(request, self.inputs)
        return [Tensor.from_numpy(m, getattr(self.estimator, m)(matrix)) for m in methods]
