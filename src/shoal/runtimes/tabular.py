"""Feature matrices for tabular runtimes (scikit-learn, XGBoost, LightGBM, CatBoost, ...).

A tabular model takes one matrix, ``[rows, features]``. ``model.yaml`` may split it into
several named inputs (``age: [-1, 1]``, ``history: [-1, 9]``): each input gives as many
columns as one of its rows has values, and the inputs are stacked in the order ``model.yaml``
declares them. Inputs are named, so the order a client lists them in changes nothing; and
without a declared order there is nothing to stack by but a guess, which Shoal does not make.
"""

from __future__ import annotations

import math

import numpy as np

from ..errors import InvalidInput, LoadError
from ..types import InferenceRequest, TensorSpec


def features(request: InferenceRequest, declared: list[TensorSpec]) -> np.ndarray:
    """The feature matrix: the one input as it came (a text pipeline takes a 1-D array of
    strings), or the inputs stacked as columns in declared order."""
    inputs = request.inputs
    if len(declared) < 2 and len(inputs) == 1:
        return inputs[0].data
    given = {t.name: t for t in inputs}
    order = [spec.name for spec in declared]
    if len(declared) < 2 or len(given) != len(inputs) or set(given) != set(order):
        raise InvalidInput(
            f"the request has inputs {[t.name for t in inputs]}, but this model takes "
            + (f"{order}, stacked as feature columns in that order" if len(declared) > 1 else
               "one feature matrix (declare several inputs in model.yaml to send columns apart)")
        )
    try:
        return np.concatenate([_columns(given[name].data) for name in order], axis=1)
    except ValueError as exc:
        raise InvalidInput(f"inputs cannot be stacked as feature columns: {exc}") from None


def _columns(data: np.ndarray) -> np.ndarray:
    """``[rows, ...]`` as ``[rows, values per row]``; a matrix as it is."""
    if data.ndim == 2:
        return data
    return data.reshape(data.shape[0] if data.ndim else 1, -1)


def tabular_inputs(
    declared: list[TensorSpec],
    name: str,
    datatype: str,
    n_features: int | None,
    artifact: str,
    any_datatype: bool = False,
) -> list[TensorSpec]:
    """The model's inputs: those ``model.yaml`` declares, if their columns add up to the
    artifact's feature count (else the load fails, saying so), else one ``[-1, n_features]``
    ``datatype`` matrix.

    Declared inputs may use another numeric datatype than ``datatype`` (the framework converts
    numbers), but not strings where it takes numbers or the reverse; ``any_datatype`` (a
    scikit-learn pipeline may take either) skips that check.
    """
    if not declared:
        return [TensorSpec(name, datatype, (-1, n_features if n_features else -1))]
    if not any_datatype:
        wrong = [s for s in declared if (s.datatype == "BYTES") != (datatype == "BYTES")]
        if wrong:
            takes = "strings (BYTES)" if datatype == "BYTES" else "numbers"
            raise LoadError(
                f"model.yaml input {wrong[0].name!r} is {wrong[0].datatype}, but {artifact} takes "
                f"{takes}: declare it {datatype}"
            )
    if n_features:
        check_feature_columns(declared, n_features, artifact)
    return declared


def check_feature_columns(declared: list[TensorSpec], n_features: int, artifact: str) -> None:
    """Declared inputs must give the artifact's ``n_features`` columns, as features() stacks
    them: a model.yaml that contradicts the artifact would turn every correct request into a
    400 and every declared-shape request into a 500."""
    scalars = [s.name for s in declared if not s.shape]
    if scalars:
        raise LoadError(
            f"model.yaml input {scalars[0]!r} has shape []: an input of a tabular model has one "
            f"row per example ([-1, columns]; {artifact} takes {n_features} features)"
        )
    widths = [_width(spec) for spec in declared]
    described = ", ".join(f"{s.name} {list(s.shape)}" for s in declared)
    known = sum(w for w in widths if w is not None)
    if (None not in widths and known != n_features) or known > n_features:
        raise LoadError(
            f"model.yaml inputs ({described}) give {known} feature columns, but {artifact} "
            f"takes {n_features}: fix their shapes in model.yaml"
        )


def _width(spec: TensorSpec) -> int | None:
    """Columns one row of this input gives; None where a dimension is variable (-1)."""
    dims = spec.shape[1:]
    return None if any(d < 0 for d in dims) else math.prod(dims)
