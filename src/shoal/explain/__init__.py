"""Explanations: SHAP feature attributions for any endpoint's predictions, in-process.

The API the transports (V2 ``/explain``, V1 ``:explain``, Seldon ``/api/v1.0/explain``) call::

    from shoal.explain import ExplainMetrics, ExplainerUnavailable, explain, observe, png

    metrics = ExplainMetrics(server_metrics.registry)              # once per server

    # after every successful inference of a model or graph (a request-sampled background):
    observe(name, request, repository.loaded_config(name).explainer)

    # an explain request (decoded as a V2 inference request, numpy tensors):
    response = await explain(endpoint, request, repository.loaded_config(name).explainer,
                             timeout=client_timeout, metrics=metrics)
    picture = await asyncio.to_thread(png, response, 0, features=request)   # Accept: image/png

:func:`explain` answers an :class:`~shoal.types.InferenceResponse` whose outputs are

- ``attributions``: FP64 ``[rows, features]``, or ``[rows, features, outputs]`` when the
  explained output has several columns (classes);
- ``base_values``: FP64 ``[rows]`` or ``[rows, outputs]``: what the attributions start from;
  ``base_values + attributions.sum(axis=1)`` is the explained output;
- the model's own prediction of those rows for the explained output, under its name
  (``predict_proba``, ``predict_raw``, ...), as the model returned it;

and whose ``parameters`` are ``method`` (the method that ran), ``feature_names``, ``inputs``
(the input names, in the order their columns are stacked), ``output`` (the explained output),
``background`` (what the base values come from), ``max_evals`` (permutation, kernel) and,
when the method is not the one asked for, ``note`` (why: a model in worker processes, an
output tree SHAP does not explain).

Errors: :class:`~shoal.errors.InvalidInput` (400) for everything about the request or the
explainer's configuration (too many rows, no background data, a background file of the wrong
width, a method the model cannot take, an output that is not numeric), each naming the problem
and the fix; :class:`ExplainerUnavailable` (501) without the ``explain`` extra; the endpoint's
own errors (503 overloaded, 504, ...) as they come; ``DeadlineExceeded`` (504) past the timeout.

The methods and what each explains (probability, margin): :mod:`shoal.explain.methods`. The
``model.yaml`` section: :mod:`shoal.explain.config`; a background file named there is resolved
against the model's folder when ``model.yaml`` is read (``read_config``), so the config the
repository keeps (``repository.loaded_config(name).explainer``) is ready to use; a config made
by hand takes ``explain(..., folder=model_dir)``.

Importing this package is cheap (pydantic only): shap is imported on the first explanation,
on a worker thread, and matplotlib on the first picture.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .config import BackgroundRows, ExplainerConfig
from .errors import INSTALL, ExplainerUnavailable

if TYPE_CHECKING:
    from ..types import InferenceRequest, InferenceResponse
    from .metrics import ExplainMetrics

__all__ = [
    "INSTALL",
    "BackgroundRows",
    "ExplainMetrics",
    "ExplainerConfig",
    "ExplainerUnavailable",
    "available",
    "explain",
    "forget",
    "observe",
    "png",
    "png_size",
]


def available() -> bool:
    """Whether the ``explain`` extra (shap, matplotlib) is installed; imports neither."""
    return all(importlib.util.find_spec(name) is not None for name in ("shap", "matplotlib"))


async def explain(
    endpoint: Any,
    request: InferenceRequest,
    config: ExplainerConfig | None,
    *,
    max_rows: int | None = None,
    timeout: float | None = None,
    metrics: ExplainMetrics | None = None,
    folder: Path | None = None,
) -> InferenceResponse:
    """Explain ``endpoint``'s predictions of ``request``'s rows.

    ``endpoint``: a ModelEndpoint, GraphEndpoint, or anything with ``name``, ``metadata()`` and
    ``async infer(request, timeout=, deadline=)``. ``config``: the model's ``explainer:``
    (None: the defaults, method auto). ``max_rows``: overrides ``config.max_rows``.
    ``timeout``: seconds for the whole explanation (None: the endpoint's own timeout; 0: none).
    ``metrics``: counts the explanation. ``folder``: the model's folder, for a config whose
    background file was not resolved when ``model.yaml`` was read.
    """
    from .explainer import explain as run

    return await run(
        endpoint, request, config, max_rows=max_rows, timeout=timeout, metrics=metrics, folder=folder
    )


def png(response: InferenceResponse, row: int = 0, *, features: Any = None) -> bytes:
    """A PNG waterfall chart (matplotlib, Agg) of row ``row`` of an explanation: each feature's
    attribution from the base value to the prediction, with the feature names and, given
    ``features`` (the explain request, or a ``[rows, features]`` array), their values. Its size
    is :func:`png_size`. Blocking: call it off the event loop."""
    from .plot import png as draw

    return draw(response, row, features=features)


def png_size(features: int) -> tuple[int, int]:
    """(width, height) in pixels of :func:`png`'s picture of ``features`` features."""
    from .plot import png_size as size

    return size(features)


def observe(model: str, request: InferenceRequest, config: ExplainerConfig | None = None) -> None:
    """Sample ``request``'s rows as background for explaining ``model`` (see
    :func:`shoal.explain.background.observe`): call after each successful inference, on the
    event loop, with ``repository.loaded_config(model).explainer`` (None for a graph)."""
    from .background import observe as keep

    keep(model, request, config)


def forget(model: str) -> None:
    """Drop what was sampled for ``model`` (call when it is unloaded)."""
    from .background import forget as drop

    drop(model)


def __getattr__(name: str) -> Any:
    if name == "ExplainMetrics":
        from .metrics import ExplainMetrics

        return ExplainMetrics
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
