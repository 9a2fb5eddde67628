"""Feature matrices for tabular runtimes (scikit-learn, XGBoost, LightGBM, CatBoost, ...)."""

from __future__ import annotations

import numpy as np

from ..errors import InvalidInput
from ..types import InferenceRequest, TensorSpec


def features(request: InferenceRequest, declared: list[TensorSpec] | None = None) -> np.ndarray:
    """One input is the feature matrix; several are stacked as columns, in the order of the
    ``declared`` inputs when every input is one of them (a client may list them in any
    order), else in request order."""
    inputs = request.inputs
    if len(inputs) == 1:
        return inputs[0].data
    position = {spec.name: index for index, spec in enumerate(declared or ())}
    if position and all(t.name in position for t in inputs):
        inputs = sorted(inputs, key=lambda t: position[t.name])
    columns = [t.data.reshape(t.data.shape[0] if t.data.ndim else 1, -1) for t in inputs]
    try:
        return np.concatenate(columns, axis=1)
    except ValueError as exc:
        raise InvalidInput(f"inputs cannot be stacked as feature columns: {exc}") from None
