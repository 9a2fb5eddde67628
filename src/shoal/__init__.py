"""Shoal: a multi-framework model server speaking V2 (REST + gRPC) and V1.

The public classes below are imported on first use (PEP 562): ``import shoal`` alone, as the
``shoal`` command does, does not import numpy or the protocol types.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = [
    "InferenceRequest",
    "InferenceResponse",
    "Model",
    "RequestedOutput",
    "Tensor",
    "TensorSpec",
    "__version__",
]

_LAZY = {
    "Model": "model",
    "InferenceRequest": "types",
    "InferenceResponse": "types",
    "RequestedOutput": "types",
    "Tensor": "types",
    "TensorSpec": "types",
}

if TYPE_CHECKING:  # pragma: no cover
    from .model import Model
    from .types import (
        InferenceRequest,
        InferenceResponse,
        RequestedOutput,
        Tensor,
        TensorSpec,
    )


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'shoal' has no attribute {name!r}")
    from importlib import import_module

    value = getattr(import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
