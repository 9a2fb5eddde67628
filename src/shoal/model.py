"""The public base class for anything Shoal serves.

Runtimes (scikit-learn, ...) and users' custom classes both subclass :class:`Model`.
The lifecycle follows KServe's, which users already know: ``load`` once, then per request
``preprocess`` -> ``predict`` -> ``postprocess``. Each may be a plain function or a coroutine:
plain functions run on Shoal's worker threads, never on the event loop, so a slow model
cannot freeze health checks or other models. (The one exception is a ``predict`` whose model
says, through :meth:`Model.runs_on_loop`, that a request costs a few microseconds; no custom
model does unless it overrides that method.)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .types import InferenceRequest, InferenceResponse, Tensor, TensorSpec

#: What ``predict`` may return; the server turns each into an InferenceResponse.
PredictResult = InferenceResponse | dict[str, Any] | list[Tensor] | Tensor | np.ndarray


class Model:
    """Subclass and override ``load`` and ``predict`` (and optionally the others).

    Declare ``inputs`` / ``outputs`` (lists of :class:`~shoal.types.TensorSpec`) in ``load``
    or in ``model.yaml`` so clients can read them from the metadata endpoints and requests
    are checked against them.
    """

    #: A short name for the framework, shown as ``platform`` in model metadata.
    platform: str = "custom"

    #: The ``model.yaml`` ``parameters`` this class reads. A set makes any other key fail the
    #: load, naming it and these, so a typo (``methd``, ``devise``) is reported instead of
    #: silently doing nothing; None (the default for custom models) accepts any key.
    accepted_parameters: frozenset[str] | None = None

    def __init__(
        self,
        name: str,
        version: str = "1",
        path: Path | None = None,
        parameters: dict[str, Any] | None = None,
    ) -> None:
        self.name = name
        self.version = version
        self.path = path
        self.parameters: dict[str, Any] = dict(parameters or {})
        self.inputs: list[TensorSpec] = []
        self.outputs: list[TensorSpec] = []

    def load(self) -> None:
        """Read artifacts from ``self.path``; raise to report a failed load."""

    def preprocess(self, request: InferenceRequest) -> InferenceRequest:
        return request

    def predict(self, request: InferenceRequest) -> PredictResult:
        raise NotImplementedError(f"{type(self).__name__} does not implement predict")

    def postprocess(self, response: InferenceResponse) -> InferenceResponse:
        return response

    def runs_on_loop(self, request: InferenceRequest) -> bool:
        """Whether ``predict`` on this request may run on the event loop instead of a worker
        thread: only for a plain ``predict`` (no ``preprocess`` / ``postprocess``) whose cost
        is a few microseconds, bounded by the request's size, that never waits (no I/O, no
        lock, no GIL release worth having). Handing such a request to a thread and back costs
        several times the prediction. False (the default): always a worker thread."""
        return False

    def unload(self) -> None:
        """Release resources; called after the model stops receiving requests."""
