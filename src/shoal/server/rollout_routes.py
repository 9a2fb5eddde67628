"""REST control of rollouts, under the model's path.

- ``GET /v2/models/{m}/rollout``: the spec, the state and each variant's figures since the
  last change (open, like metadata);
- ``PUT /v2/models/{m}/rollout``: set it live (the body is the spec);
- ``POST .../rollout/promote``, ``.../rollback``, ``.../pause``, ``.../resume``;
- ``DELETE /v2/models/{m}/rollout``.

Every change needs the admin token when the server has one.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ..protocol import v2_json
from ..repository.layout import check_model_name
from ..rollout.manager import RolloutManager
from .auth import AdminToken
from .infer_asgi import read_body

JSON = "application/json"
#: A rollout spec is a few hundred bytes; a body far beyond that is a mistake.
MAX_SPEC_SIZE = 64 * 1024


def _json(value: Any) -> Response:
    return Response(v2_json.dumps(value), media_type=JSON)


def rollout_routes(rollouts: RolloutManager, admin: AdminToken) -> list[Route]:
    async def status(request: Request) -> Response:
        return _json(await rollouts.status(check_model_name(request.path_params["name"])))

    async def set_spec(request: Request) -> Response:
        admin.check_request(request.headers)
        name = check_model_name(request.path_params["name"])
        body = v2_json.parse_json_object(await read_body(request.scope, request.receive, MAX_SPEC_SIZE))
        return _json(await rollouts.set(name, body))

    def action(method: Callable[[str], Awaitable[dict[str, Any]]]) -> Any:
        async def handle(request: Request) -> Response:
            admin.check_request(request.headers)
            name = check_model_name(request.path_params["name"])
            await read_body(request.scope, request.receive, MAX_SPEC_SIZE)
            return _json(await method(name))

        return handle

    path = "/v2/models/{name}/rollout"
    return [
        Route(path, status, methods=["GET"]),
        Route(path, set_spec, methods=["PUT"]),
        Route(path, action(rollouts.delete), methods=["DELETE"]),
        Route(f"{path}/promote", action(rollouts.promote), methods=["POST"]),
        Route(f"{path}/rollback", action(rollouts.rollback), methods=["POST"]),
        Route(f"{path}/pause", action(rollouts.pause), methods=["POST"]),
        Route(f"{path}/resume", action(rollouts.resume), methods=["POST"]),
    ]
