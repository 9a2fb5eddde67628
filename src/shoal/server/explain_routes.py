"""Explanation routes: V2 ``/explain``, V1 ``:explain`` (KServe's) and Seldon's
``/api/v1.0/explain``, every one a thin layer over :func:`shoal.explain.explain`.

- ``POST /v2/models/{m}[/versions/{v}]/explain``: a V2 inference request (JSON or binary) in,
  a V2 response out (``attributions``, ``base_values``, the model's prediction; ``parameters``
  name the method and the features); with ``Accept: image/png`` or ``?format=png``, a PNG of
  the first row's attributions.
- ``POST /v1/models/{m}[/versions/{v}]:explain``: V1 instances in, ``{"explanations": [...]}``
  out, one entry per instance: attributions by feature name, base value, prediction.
- ``POST /api/v1.0/explain`` (and ``/seldon/[{ns}/]{m}/api/v1.0/explain``): a SeldonMessage
  in, the same explanations in a SeldonMessage's ``jsonData``.

Without the ``explain`` extra every route answers 501 naming it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ..errors import InvalidInput
from ..graph.endpoint import declared_inputs
from ..protocol import seldon, v1, v2_json
from ..serving.dataplane import DataPlane
from ..types import InferenceRequest, InferenceResponse
from .infer_asgi import read_body, timeout_of

JSON = "application/json"
PNG = "image/png"


def explain_routes(
    dataplane: DataPlane, max_request_size: int, metrics: Any
) -> tuple[list[Route], Callable[[str, str | None, Request], Awaitable[Response]]]:
    """The routes, and the V1 ``:explain`` handler (the V1 verb route dispatches to it)."""
    async def run(name: str, version: str | None, request: InferenceRequest, timeout: float | None) -> InferenceResponse:
        from ..explain import explain

        endpoint = dataplane.registry.served(name, version)  # the model's own version
        config = dataplane.repository.loaded_config(name).explainer
        return await explain(endpoint, request, config, timeout=timeout, metrics=metrics)

    async def v2(request: Request) -> Response:
        name, version = request.path_params["name"], request.path_params.get("version")
        body = await read_body(request.scope, request.receive, max_request_size)
        length = request.headers.get(v2_json.HEADER_LENGTH)
        try:
            decoded = v2_json.decode_request(body, None if length is None else int(length))
        except ValueError:
            raise InvalidInput(f"{v2_json.HEADER_LENGTH} must be an integer") from None
        response = await run(name, version, decoded, timeout_of(request.scope))
        if _wants_png(request):
            return await _png(response, decoded)
        content, json_length = v2_json.encode_response(response, decoded)
        if json_length is None:
            return Response(content, media_type=JSON)
        return Response(content, media_type="application/octet-stream",
                        headers={v2_json.HEADER_LENGTH: str(json_length)})

    async def v1_explain(name: str, version: str | None, request: Request) -> Response:
        body = await read_body(request.scope, request.receive, max_request_size)
        endpoint = dataplane.registry.served(name, version)
        decoded, _ = v1.decode_request(body, declared_inputs(endpoint))
        response = await run(name, version, decoded, timeout_of(request.scope))
        if _wants_png(request):
            return await _png(response, decoded)
        return Response(v2_json.dumps({"explanations": explanations(response)}), media_type=JSON)

    async def seldon_explain(request: Request) -> Response:
        name = request.path_params.get("name") or request.headers.get("seldon-model")
        if not name:
            names = dataplane.registry.names()
            if len(names) != 1:
                raise InvalidInput(f"{len(names)} models are served here: name one with the "
                                   "Seldon-Model header or POST /seldon/<namespace>/<model>/api/v1.0/explain")
            name = names[0]
        body = await read_body(request.scope, request.receive, max_request_size)
        endpoint = dataplane.registry.served(name, None)
        message = seldon.decode_request(body, declared_inputs(endpoint))
        response = await run(name, None, message.request, timeout_of(request.scope))
        answer = {"jsonData": {"explanations": explanations(response)},
                  "meta": {"puid": message.meta.puid} if message.meta.puid else {}}
        return Response(v2_json.dumps(answer), media_type=JSON)

    m = "/v2/models/{name}"
    mv = "/v2/models/{name}/versions/{version}"
    seldon_prefix = "/seldon/{namespace}/{name}/api/v1.0"
    return [
        Route(f"{m}/explain", v2, methods=["POST"]),
        Route(f"{mv}/explain", v2, methods=["POST"]),
        Route("/api/v1.0/explain", seldon_explain, methods=["POST"]),
        Route(f"{seldon_prefix}/explain", seldon_explain, methods=["POST"]),
        Route("/seldon/{name}/api/v1.0/explain", seldon_explain, methods=["POST"]),
    ], v1_explain


def explanations(response: InferenceResponse) -> list[dict[str, Any]]:
    """V1's answer: one entry per row, attributions by feature name (a list per feature when
    the explained output has several columns), the base value and the prediction."""
    outputs = {t.name: np.asarray(t.data).reshape(t.shape) for t in response.outputs}
    attributions = outputs.pop("attributions")
    base_values = outputs.pop("base_values")
    prediction = next(iter(outputs.values()), None)
    names = list(response.parameters.get("feature_names") or [])
    if len(names) != attributions.shape[1]:
        names = [f"feature_{i}" for i in range(attributions.shape[1])]
    entries = []
    for row in range(attributions.shape[0]):
        entry: dict[str, Any] = {
            "attributions": {name: attributions[row, i].tolist() for i, name in enumerate(names)},
            "base_value": base_values[row].tolist(),
        }
        if prediction is not None and prediction.shape and prediction.shape[0] == attributions.shape[0]:
            entry["prediction"] = prediction[row].tolist()
        entries.append(entry)
    if response.parameters.get("method"):
        for entry in entries:
            entry["method"] = response.parameters["method"]
    return entries


def _wants_png(request: Request) -> bool:
    return request.query_params.get("format") == "png" or PNG in request.headers.get("accept", "")


async def _png(response: InferenceResponse, request: InferenceRequest) -> Response:
    from ..explain import png

    try:
        picture = await asyncio.to_thread(png, response, 0, features=request)
    except ValueError as exc:  # NaN or infinite values: there is no picture of those
        raise InvalidInput(f"this explanation cannot be drawn: {exc}") from None
    return Response(picture, media_type=PNG)
