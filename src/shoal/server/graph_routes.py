"""REST routes for graphs and for Seldon Core clients.

- ``POST /v2/models/{graph}/feedback``: ``{"id" | "routing", "reward", "truth"?}`` updates the
  learning routers on that request's path; ``GET /v2/models/{graph}/routers`` shows them.
- Seldon protocol, for any model or graph: ``POST /api/v1.0/predictions`` and
  ``/api/v1.0/feedback`` (the model is named by the ``Seldon-Model`` header, or is the only
  one served), and the per-deployment paths of Seldon's ingress,
  ``/seldon/{namespace}/{model}/api/v1.0/predictions`` and ``.../feedback``, also without the
  namespace (``SeldonClient`` leaves it out when it is given none).
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ..errors import InvalidInput, ShoalError
from ..graph.context import (
    HEADERS,
    ROUTING_PARAMETER,
    new_request_id,
    parse_routing,
    response_headers,
)
from ..graph.endpoint import GraphEndpoint, declared_inputs
from ..protocol import seldon, v2_json
from ..rollout.endpoint import RolloutEndpoint
from ..serving.dataplane import DataPlane
from ..serving.endpoint import ModelState
from .infer_asgi import read_body

JSON = "application/json"
SELDON_MODEL_HEADER = "seldon-model"


def _json(value: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(v2_json.dumps(value), status, headers=headers, media_type=JSON)


def _first(encoded: tuple[bytes, Any]) -> bytes:
    return encoded[0]


def graph_routes(dataplane: DataPlane, max_request_size: int) -> list[Route]:
    def loaded(name: str, version: str | None = None) -> Any:
        """The endpoint, ready or not: feedback about past requests and router state need the
        graph loaded, not every model it calls up."""
        entry = dataplane.registry.entry(name, version)
        if entry.state is ModelState.READY and entry.endpoint is not None:
            return entry.endpoint
        return dataplane.registry.get(name, version)  # raises: 503 with the reason

    def graph(name: str, version: str | None = None) -> GraphEndpoint:
        endpoint = loaded(name, version)
        if not isinstance(endpoint, GraphEndpoint):
            raise InvalidInput(f"model {name!r} is not a graph; feedback updates a graph's routers")
        return endpoint

    async def feedback(request: Request) -> Response:
        params = request.path_params
        endpoint = graph(params["name"], params.get("version"))
        body = v2_json.parse_json_object(await read_body(request.scope, request.receive, max_request_size))
        request_id = body.get("id")
        if request_id is not None and not isinstance(request_id, str):
            raise InvalidInput("'id' must be a string")
        routing = parse_routing(body["routing"]) if body.get("routing") is not None else None
        result = await endpoint.feedback(body.get("reward"), routing, request_id, body.get("truth"))  # type: ignore[arg-type]
        answer: dict[str, Any] = {"name": endpoint.name, "updated": result.updated}
        if result.duplicate:
            answer["duplicate"] = True
        return _json(answer)

    async def routers(request: Request) -> Response:
        params = request.path_params
        endpoint = graph(params["name"], params.get("version"))
        return _json({"name": endpoint.name, "routers": await endpoint.router_state()})

    def seldon_model(request: Request) -> str:
        name = request.path_params.get("name") or request.headers.get(SELDON_MODEL_HEADER)
        if name:
            return name
        names = dataplane.registry.names()
        if len(names) == 1:
            return names[0]
        raise InvalidInput(
            f"{len(names)} models are served here: name one with the Seldon-Model header or "
            "POST /seldon/<namespace>/<model>/api/v1.0/predictions"
        )

    async def seldon_predict(request: Request) -> Response:
        try:
            name = seldon_model(request)
            body = await read_body(request.scope, request.receive, max_request_size)
            decoded: list[tuple[seldon.SeldonRequest, Any]] = []

            def decode(endpoint: Any) -> Any:
                message = seldon.decode_request(body, declared_inputs(endpoint))
                if message.meta.routing and isinstance(endpoint, GraphEndpoint):
                    pinned = endpoint.routing_names(message.meta.routing)
                    message.request.parameters[ROUTING_PARAMETER] = pinned
                elif message.meta.routing and isinstance(endpoint, RolloutEndpoint):
                    # The graph the rollout picks turns the indices into its branches.
                    message.request.parameters[ROUTING_PARAMETER] = dict(message.meta.routing)
                message.request.id = message.request.id or new_request_id()
                decoded.append(message)
                return message.request

            def encode(_: Any, response: Any) -> tuple[bytes, dict[str, str]]:
                message = decoded[0]
                meta = seldon.Meta(message.meta.puid or response.id, message.meta.tags, {})
                routing = response.parameters.get(ROUTING_PARAMETER)
                served = _graph_that_served(dataplane, response) if routing else None
                if served is not None:
                    meta.routing = served.routing_indices(parse_routing(routing))
                headers = {k.decode(): v.decode()
                           for k, v in response_headers(response.parameters, None)}
                return v2_json.dumps(seldon.encode_response(response, message.kind, meta)), headers

            HEADERS.set(request.headers.raw)
            logged = dataplane.logs(name)
            content, headers = await dataplane.infer(
                name, None, "seldon-rest", decode, encode,
                body=body if logged else None, sent=_first if logged else None,
            )
            return Response(content, media_type=JSON, headers=headers)
        except ShoalError as exc:
            return _seldon_error(exc)

    async def seldon_feedback(request: Request) -> Response:
        try:
            name = seldon_model(request)
            body = await read_body(request.scope, request.receive, max_request_size)
            message = seldon.decode_feedback(body)
            endpoint = loaded(name)
            if not isinstance(endpoint, GraphEndpoint):
                # A plain model has no routers: accepted and ignored, as Seldon's wrapper does
                # for a model without send_feedback.
                return _json(seldon.encode_feedback_answer(seldon.Meta(message.meta.puid)))
            routing = endpoint.routing_names(message.meta.routing) if message.meta.routing else None
            result = await endpoint.feedback(message.reward, routing, message.meta.puid, message.truth)
            meta = seldon.Meta(message.meta.puid, routing=endpoint.routing_indices(result.updated))
            return _json(seldon.encode_feedback_answer(meta, result.duplicate))
        except ShoalError as exc:
            return _seldon_error(exc)

    m = "/v2/models/{name}"
    mv = "/v2/models/{name}/versions/{version}"
    seldon_prefix = "/seldon/{namespace}/{name}/api/v1.0"
    default_namespace = "/seldon/{name}/api/v1.0"
    return [
        Route(f"{m}/feedback", feedback, methods=["POST"]),
        Route(f"{mv}/feedback", feedback, methods=["POST"]),
        Route(f"{m}/routers", routers, methods=["GET"]),
        Route(f"{mv}/routers", routers, methods=["GET"]),
        Route("/api/v1.0/predictions", seldon_predict, methods=["POST"]),
        Route("/api/v1.0/feedback", seldon_feedback, methods=["POST"]),
        Route(f"{seldon_prefix}/predictions", seldon_predict, methods=["POST"]),
        Route(f"{seldon_prefix}/feedback", seldon_feedback, methods=["POST"]),
        Route(f"{default_namespace}/predictions", seldon_predict, methods=["POST"]),
        Route(f"{default_namespace}/feedback", seldon_feedback, methods=["POST"]),
    ]


def _graph_that_served(dataplane: DataPlane, response: Any) -> GraphEndpoint | None:
    """The graph that produced an answer (under a rollout, the variant that served)."""
    try:
        endpoint = dataplane.registry.served(response.model_name, response.model_version)
    except ShoalError:
        return None
    return endpoint if isinstance(endpoint, GraphEndpoint) else None


def _seldon_error(error: ShoalError) -> Response:
    return _json(seldon.error_message(error.http_status, str(error)), error.http_status,
                 headers=error.headers or None)
