"""The REST transport: V2 (Open Inference Protocol, binary extension, repository extension),
V1 / TensorFlow Serving, health, ``/metrics``, the OpenAI-compatible API under ``/openai/v1``
(:mod:`.openai_routes`), and (unless ``--no-ui``) the dashboard under ``/ui`` (:mod:`shoal.ui`).

Handlers only decode, call the data plane and encode. Every error, including unknown routes
and oversized bodies, leaves as ``{"error": "..."}`` with the status from :mod:`shoal.errors`,
except under ``/openai/v1``, whose routes answer OpenAI's error body themselves.
"""

from __future__ import annotations

from typing import Any

from google.protobuf import json_format
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ..errors import InvalidInput, ShoalError, Unavailable
from ..observe.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from .._lazy import lazy_module
from ..protocol import v1, v2_json

# TF Serving's metadata classes: imported by the first GET .../metadata of the V1 API.
tfs_grpc = lazy_module("shoal.protocol.tfs_grpc")
model_pb2 = lazy_module("shoal.protocol.tfs_gen.model_pb2")
from ..repository.layout import check_model_name
from ..serving.dataplane import DataPlane
from . import infer_asgi
from ..rollout.manager import RolloutManager
from ..explain.metrics import ExplainMetrics
from ..ui import Dashboard, SeriesRecorder, ServerInfo, ui_routes
from .auth import AdminToken
from .explain_routes import explain_routes
from .graph_routes import graph_routes
from .openai_routes import openai_routes
from .rollout_routes import rollout_routes

JSON = "application/json"
#: TF Serving REST verbs Shoal does not serve (501): both take tf.Example inputs.
TF_SERVING_ONLY_VERBS = ("classify", "regress")
ANY_METHOD = ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]  # HEAD comes with GET


def json_response(value: Any, status: int = 200) -> Response:
    return Response(v2_json.dumps(value), status, media_type=JSON)


def error_response(status: int, message: str) -> Response:
    return Response(infer_asgi.error_body(message), status, media_type=JSON)


async def read_body(request: Request, limit: int) -> bytes:
    return await infer_asgi.read_body(request.scope, request.receive, limit)


def build_app(
    dataplane: DataPlane, max_request_size: int, rollouts: RolloutManager | None = None,
    admin: AdminToken = AdminToken(None), ui: bool = True,
    series: SeriesRecorder | None = None, server_info: ServerInfo | None = None,
) -> infer_asgi.InferenceASGI:
    """The REST app. With ``ui``, the dashboard's pages and JSON endpoints too
    (:mod:`shoal.ui`); its charts come from ``series`` (the caller starts and stops it; an
    idle recorder, with no points, when None)."""
    explaining, v1_explain = explain_routes(
        dataplane, max_request_size, ExplainMetrics(dataplane.metrics.registry)
    )

    async def v1_verb(request: Request) -> Response:
        """``/v1/models/{m}[/versions/{v}]:{verb}`` for every verb but ``:predict`` (which
        :mod:`.infer_asgi` answers). Model names have no ``:``, so the verb is never part of one."""
        params = request.path_params
        name, version, verb = params["name"], params.get("version"), params["verb"]
        if verb == "explain":
            if request.method != "POST":
                raise HTTPException(405, "Method Not Allowed", headers={"Allow": "POST"})
            return await v1_explain(name, version, request)
        if verb in TF_SERVING_ONLY_VERBS:
            dataplane.registry.entry(name, version)  # 404 for an unknown model, as TF Serving
            return error_response(
                501, f"TF Serving's :{verb} is not served here (it takes tf.Example inputs "
                     f"and needs a {verb} signature); use POST {_v1_path(name, version)}:predict"
            )
        return error_response(
            404, f"unknown V1 verb ':{verb}' in {request.method} {request.url.path}; V1 serves "
                 f":predict and :explain (TF Serving's :classify and :regress are not served)"
        )

    async def v1_metadata(request: Request) -> Response:
        params = request.path_params
        endpoint = dataplane.registry.get(params["name"], params.get("version"))
        return json_response(tfs_rest_metadata(endpoint.metadata(), endpoint.version))

    async def v2_server_metadata(request: Request) -> Response:
        return json_response(dataplane.server_metadata())

    async def live(request: Request) -> Response:
        return json_response({"live": dataplane.live})

    async def ready(request: Request) -> Response:
        if not dataplane.ready:
            raise Unavailable(f"server is not ready: {dataplane.not_ready_reason()}")
        return json_response({"ready": True})

    async def model_metadata(request: Request) -> Response:
        params = request.path_params
        return json_response(dataplane.model_metadata(params["name"], params.get("version")))

    async def model_ready(request: Request) -> Response:
        params = request.path_params
        endpoint = dataplane.registry.get(params["name"], params.get("version"))  # 404 / 503
        if not endpoint.ready:  # a rollout whose stable variant is down
            raise Unavailable(f"model {params['name']!r} is not ready: {endpoint.unready_reason()}")
        if dataplane.draining:
            raise Unavailable("server is shutting down")
        return json_response({"name": params["name"], "ready": True})

    async def model_config(request: Request) -> Response:
        params = request.path_params
        return json_response(dataplane.model_config(params["name"], params.get("version")))

    async def model_stats(request: Request) -> Response:
        params = request.path_params
        return json_response(
            dataplane.model_statistics(params.get("name", ""), params.get("version"))
        )

    async def model_replicas(request: Request) -> Response:
        params = request.path_params
        return json_response(dataplane.repository.replicas(params["name"], params.get("version")))

    async def model_list(request: Request) -> Response:
        return json_response({"models": dataplane.registry.names()})

    async def v1_status(request: Request) -> Response:
        params = request.path_params
        name = params["name"]
        entries = dataplane.registry.entries(name)
        if params.get("version"):
            entries = [dataplane.registry.entry(name, params["version"])]
        elif not entries:
            dataplane.registry.entry(name)  # raises 404
        is_ready = any(e.state.value == "READY" for e in entries)
        return json_response(
            {
                "name": name,
                "ready": is_ready,
                "model_version_status": [_tf_status(e) for e in entries],
            }
        )

    async def repository_index(request: Request) -> Response:
        body = await read_body(request, max_request_size)
        options = v2_json.parse_json_object(body) if body.strip() else {}
        ready_only = options.get("ready", False)
        if not isinstance(ready_only, bool):
            raise InvalidInput("'ready' must be a boolean")
        return json_response(dataplane.index(ready_only))

    async def repository_load(request: Request) -> Response:
        admin.check_request(request.headers)
        name = check_model_name(request.path_params["name"])
        await read_body(request, max_request_size)
        await dataplane.load(name)
        return json_response({"name": name, "load": True})

    async def repository_unload(request: Request) -> Response:
        admin.check_request(request.headers)
        name = check_model_name(request.path_params["name"])
        await read_body(request, max_request_size)
        await dataplane.unload(name)
        return json_response({"name": name, "unload": True})

    async def metrics(request: Request) -> Response:
        return Response(dataplane.metrics.exposition(), media_type=METRICS_CONTENT_TYPE)

    m = "/v2/models/{name}"
    mv = "/v2/models/{name}/versions/{version}"
    routes = [
        # Before /v1/models/{name}, which would take "m:verb" for a model name.
        Route("/v1/models/{name}:{verb}", v1_verb, methods=ANY_METHOD),
        Route("/v1/models/{name}/versions/{version}:{verb}", v1_verb, methods=ANY_METHOD),
        Route("/v1/models/{name}/metadata", v1_metadata, methods=["GET"]),
        Route("/v1/models/{name}/versions/{version}/metadata", v1_metadata, methods=["GET"]),
        Route("/v2/health/live", live, methods=["GET"]),
        Route("/v2/health/ready", ready, methods=["GET"]),
        Route("/v2", v2_server_metadata, methods=["GET"]),
        Route("/v2/models", model_list, methods=["GET"]),
        Route("/v2/models/stats", model_stats, methods=["GET"]),  # before {name} matches it
        Route(m, model_metadata, methods=["GET"]),
        Route(mv, model_metadata, methods=["GET"]),
        Route(f"{m}/ready", model_ready, methods=["GET"]),
        Route(f"{mv}/ready", model_ready, methods=["GET"]),
        Route(f"{m}/config", model_config, methods=["GET"]),
        Route(f"{mv}/config", model_config, methods=["GET"]),
        Route(f"{m}/stats", model_stats, methods=["GET"]),
        Route(f"{mv}/stats", model_stats, methods=["GET"]),
        Route(f"{m}/replicas", model_replicas, methods=["GET"]),
        Route(f"{mv}/replicas", model_replicas, methods=["GET"]),
        Route("/v2/repository/index", repository_index, methods=["POST"]),
        Route("/v2/repository/models/{name}/load", repository_load, methods=["POST"]),
        Route("/v2/repository/models/{name}/unload", repository_unload, methods=["POST"]),
        Route("/v1/models", model_list, methods=["GET"]),
        Route("/v1/models/{name}", v1_status, methods=["GET"]),
        Route("/v1/models/{name}/versions/{version}", v1_status, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        *graph_routes(dataplane, max_request_size),
        *explaining,
        *(rollout_routes(rollouts, admin) if rollouts is not None else []),
        *openai_routes(dataplane, max_request_size),  # /openai/v1: errors in OpenAI's shape
    ]
    if ui:
        dashboard = Dashboard(
            dataplane, rollouts, admin,
            series if series is not None else SeriesRecorder(dataplane.metrics),
            server_info if server_info is not None else ServerInfo(),
        )
        routes.extend(ui_routes(dashboard))

    async def shoal_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ShoalError)
        response = error_response(exc.http_status, str(exc))
        response.headers.update(exc.headers)
        return response

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        response = error_response(exc.status_code, f"{exc.detail}: {request.method} {request.url.path}")
        response.headers.update(exc.headers or {})  # 405's Allow
        return response

    async def unexpected(request: Request, exc: Exception) -> Response:
        return error_response(500, f"internal error: {type(exc).__name__}: {exc}")

    app = Starlette(
        routes=routes,
        exception_handlers={ShoalError: shoal_error, HTTPException: http_error, Exception: unexpected},
    )
    return infer_asgi.InferenceASGI(dataplane, max_request_size, app)


def _v1_path(name: str, version: str | None) -> str:
    return f"/v1/models/{name}" + (f"/versions/{version}" if version else "")


def tfs_rest_metadata(metadata: dict[str, Any], version: str) -> dict[str, Any]:
    """TF Serving's REST answer to ``GET /v1/models/{m}/metadata``: the GetModelMetadataResponse
    as TF Serving prints it (proto field names, every field, int64 as strings), with the
    ``signature_def`` Any unpacked, the very signature the gRPC GetModelMetadata describes."""
    spec = model_pb2.ModelSpec()
    tfs_grpc.fill_model_spec(spec, metadata["name"], version)
    return {
        "model_spec": _proto_json(spec),
        "metadata": {tfs_grpc.SIGNATURE_DEF_FIELD: _proto_json(tfs_grpc.signature_def_map(metadata))},
    }


def _proto_json(message: Any) -> dict[str, Any]:
    return json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )


def _tf_status(entry: Any) -> dict[str, Any]:
    """TensorFlow Serving's GetModelStatus shape."""
    state = v1.tf_serving_state(entry.state.value)
    return {
        "version": entry.version,
        "state": state,
        "status": {"error_code": "OK" if state == "AVAILABLE" else "UNAVAILABLE",
                   "error_message": entry.reason},
    }
