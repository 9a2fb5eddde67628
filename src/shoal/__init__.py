"""Shoal: a multi-framework model server speaking V2 (REST + gRPC) and V1."""

from .model import Model
from .types import InferenceRequest, InferenceResponse, RequestedOutput, Tensor, TensorSpec

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
