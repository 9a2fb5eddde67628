"""Feature matrices for tabular runtimes (scikit-learn, XGBoost, LightGBM, CatBoost, ...)."""

from __future__ import annotations

import numpy as np

from ..errors import InvalidInput
from ..types import InferenceRequest


def features(request: InferenceRequest) -> np.ndarray:
    """One input is the feature matrix; several are stacked as columns in request order."""
    if len(request.inputs) == 1:
        return request.inputs[0].data
    columns = [t.data.reshape(t.data.shape[0] if t.data.ndim else 1, -1) for t in request.inputs]
    try:
        return np.concatenate(columns, axis=1)
    except ValueError as exc:
        raise InvalidInput(f"inputs cannot be stacked as feature columns: {exc}") from None
