"""Which outputs a tree-model runtime computes for a request.

The rule users know from the scikit-learn runtime: a request gets the model's default outputs
(``predict``, or ``parameters.method`` in ``model.yaml``: one name or a list) unless it names
outputs itself. Asking for an output the model does not have is the client's mistake (400);
configuring one is the operator's (the load fails).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import InvalidInput, LoadError
from ..types import InferenceRequest


def default_outputs(parameters: dict[str, Any], offered: list[str]) -> list[str]:
    wanted = parameters.get("method", "predict")
    wanted = [wanted] if isinstance(wanted, str) else list(wanted)
    missing = [name for name in wanted if name not in offered]
    if missing or not wanted:
        raise LoadError(f"parameters.method asks for {missing or wanted}; this model offers {offered}")
    return wanted


def chosen_outputs(
    request: InferenceRequest, defaults: list[str], offered: list[str], model: str
) -> list[str]:
    names = request.requested_output_names or defaults
    for name in names:
        if name not in offered:
            raise InvalidInput(f"model {model!r} has no output {name!r}; it offers {offered}")
    return names


def find_artifact(folder: Path, names: tuple[str, ...], framework: str) -> Path:
    for name in names:
        if (folder / name).is_file():
            return folder / name
    raise LoadError(f"no {framework} artifact ({', '.join(names)}) in {folder}")
