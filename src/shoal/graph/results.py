"""Turning what user code returns into requests and responses, and passing tensors on.

Transformers, combiners and routers are user code: they may return an ``InferenceRequest`` /
``InferenceResponse``, a dict of name -> array, a list of ``Tensor``, one ``Tensor`` or one
array, as a model's ``predict`` may.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import ModelFailure, ShoalError
from ..serving.endpoint import as_response as predict_result
from ..types import InferenceRequest, InferenceResponse, Tensor


@dataclass(slots=True)
class NodeInput(InferenceRequest):
    """A request that one node made for the next (a sequence step's outputs, a transformer's
    preprocessed request): when the next node cannot take it, the graph is miswired, and
    that is the server's fault (500 naming both nodes), not the client's (400)."""

    producer: str = ""


def passed_on(request: InferenceRequest, tensors: list[Tensor], request_id: str | None) -> InferenceRequest:
    """A new request over ``tensors`` that keeps where ``request`` came from."""
    if isinstance(request, NodeInput):
        return NodeInput(tensors, id=request_id, parameters=request.parameters,
                         client_gone=request.client_gone, producer=request.producer)
    return InferenceRequest(tensors, id=request_id, parameters=request.parameters,
                            client_gone=request.client_gone)


def as_response(result: Any, what: str) -> InferenceResponse:
    if isinstance(result, InferenceRequest):  # a transformer without a child passes its request on
        return InferenceResponse(result.inputs)
    if result is None:
        raise ModelFailure(f"{what} returned None")
    try:
        return predict_result(result)
    except ModelFailure:
        raise
    except ShoalError as exc:
        raise ModelFailure(f"{what} returned an unusable result: {exc}") from exc


def as_request(result: Any, like: InferenceRequest, what: str) -> InferenceRequest:
    if isinstance(result, InferenceRequest):
        return result
    return InferenceRequest(
        as_response(result, what).outputs, id=like.id, parameters=like.parameters,
        outputs=like.outputs, client_gone=like.client_gone,
    )


def copy_tensors(tensors: list[Tensor]) -> list[Tensor]:
    """New Tensor objects over the same arrays: user code that reassigns ``tensor.data`` in
    one branch must not change what a sibling branch sees. The arrays themselves are shared."""
    return [Tensor(t.name, t.datatype, t.shape, t.data, t.parameters) for t in tensors]


def renamed(tensors: list[Tensor], mapping: dict[str, str], where: str) -> list[Tensor]:
    """Only the mapped tensors, under their new names."""
    by_name = {t.name: t for t in tensors}
    missing = [name for name in mapping if name not in by_name]
    if missing:
        raise ModelFailure(
            f"{where}: no tensor {missing[0]!r} to map; the previous step produced "
            f"{sorted(by_name)}"
        )
    return [
        Tensor(target, by_name[source].datatype, by_name[source].shape, by_name[source].data,
               by_name[source].parameters)
        for source, target in mapping.items()
    ]
