"""Checking ``model.yaml``'s declared inputs against what the artifact itself states.

Requests are checked against the declared inputs, so a declaration that contradicts the
artifact turns correct requests into 400s and declared-shape ones into framework errors (500).
Where an artifact states its inputs (an ONNX graph, a ``torch.export`` program, a TensorFlow
signature, an MLflow signature), a declared input must have the same datatype and rank, and
every dimension the artifact fixes must be declared with that size. Declaring a fixed size
where the artifact is dynamic is allowed: that is what restating an input is for.
"""

from __future__ import annotations

from ..errors import LoadError
from ..types import TensorSpec


def contradiction(declared: TensorSpec, actual: TensorSpec) -> str | None:
    """Why ``declared`` cannot describe the artifact's ``actual`` input, or None."""
    if declared.datatype != actual.datatype:
        return f"is {declared.datatype}, but the model takes {actual.datatype}"
    if not actual.accepts(declared.shape):
        return (
            f"has shape {list(declared.shape)}, but the model takes {list(actual.shape)} "
            "(-1 is any size)"
        )
    return None


def check_declared(
    declared: list[TensorSpec],
    actual: list[TensorSpec],
    artifact: str,
    by_position: bool = False,
) -> None:
    """Raise LoadError naming the first declared input that contradicts the artifact's.

    Inputs are paired by name, or by position (``by_position``: a runtime that feeds inputs
    positionally, or an artifact whose inputs have no names). A declared input the artifact
    does not have is an error too; the artifact's inputs that are not declared are left to the
    runtime's checks.
    """
    if not declared or not actual:
        return
    if by_position:
        if len(declared) != len(actual):
            raise LoadError(
                f"model.yaml declares {len(declared)} inputs, but {artifact} takes "
                f"{len(actual)}: {[s.name for s in actual]}"
            )
        pairs = list(zip(declared, actual))
    else:
        known = {spec.name: spec for spec in actual}
        unknown = [spec.name for spec in declared if spec.name not in known]
        if unknown:
            raise LoadError(
                f"model.yaml inputs {unknown} are not inputs of {artifact}, whose inputs are "
                f"{sorted(known)}"
            )
        pairs = [(spec, known[spec.name]) for spec in declared]
    for want, have in pairs:
        problem = contradiction(want, have)
        if problem:
            raise LoadError(
                f"model.yaml input {want.name!r} {problem} ({artifact} input {have.name!r}): "
                "fix model.yaml or remove the declaration"
            )
