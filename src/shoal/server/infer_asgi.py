"""The inference routes as a bare ASGI app, in front of the Starlette app.

``POST .../infer`` and ``:predict`` are the hot path: matching them by hand and reading the
body straight from ASGI skips Starlette's router, request object and middleware stack, which
cost more per request than the rest of the server's own work. Everything else (health,
metadata, repository, metrics) is routed by Starlette as usual.
"""

from __future__ import annotations

import asyncio
from typing import Any, Awaitable, Callable

import orjson

from ..errors import InvalidInput, ModelFailure, PayloadTooLarge, ShoalError
from ..graph.context import HEADERS as REQUEST_HEADERS
from ..graph.context import response_headers
from ..graph.endpoint import declared_inputs
from ..protocol import v1, v2_json
from ..serving.dataplane import DataPlane
from ..types import InferenceRequest, InferenceResponse
from .http_protocol import connection_of, send_whole, take_body

ASGIApp = Callable[[dict, Callable[[], Awaitable[dict]], Callable[[dict], Awaitable[None]]], Awaitable[None]]

_JSON_HEADERS = [(b"content-type", b"application/json")]
TIMEOUT_HEADER = "Shoal-Timeout"
_HEADER_LENGTH = v2_json.HEADER_LENGTH.encode()


_ROUTES = (("v2", "/v2/models/", "/infer"), ("v1", "/v1/models/", ":predict"))


def match_infer_path(path: str) -> tuple[str, str, str | None] | None:
    """(protocol, model, version) for ``{prefix}{m}[/versions/{v}]{suffix}``, else None."""
    for protocol, prefix, suffix in _ROUTES:
        if path.startswith(prefix) and path.endswith(suffix):
            parts = path[len(prefix) : -len(suffix)].split("/")
            if len(parts) == 1 and parts[0]:
                return protocol, parts[0], None
            if len(parts) == 3 and parts[1] == "versions" and parts[0] and parts[2]:
                return protocol, parts[0], parts[2]
    return None


class InferenceASGI:
    def __init__(self, dataplane: DataPlane, max_request_size: int, fallback: ASGIApp) -> None:
        self.dataplane = dataplane
        self.limit = max_request_size
        self.fallback = fallback

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        route = match_infer_path(scope["path"]) if scope["type"] == "http" else None
        if route is None:
            await self.fallback(scope, receive, send)
        elif scope["method"] == "POST":
            await self._infer(route, scope, receive, send)
        else:
            message = f"Method Not Allowed: {scope['method']} {scope['path']}"
            await send({"type": "http.response.start", "status": 405,
                        "headers": [*_JSON_HEADERS, (b"allow", b"POST")]})
            await send({"type": "http.response.body", "body": error_body(message)})

    async def _infer(self, route: tuple[str, str, str | None], scope: dict, receive: Any, send: Any) -> None:
        protocol, name, version = route
        cycle = connection_of(receive)
        try:
            body = take_body(cycle) if cycle is not None else None
            if body is None:
                body = await read_body(scope, receive, self.limit)
            elif len(body) > self.limit:
                raise PayloadTooLarge(
                    f"request body of {len(body)} bytes exceeds the {self.limit}-byte limit")
            REQUEST_HEADERS.set(scope["headers"])  # for graph conditions on headers
            if protocol == "v2":
                content, headers = await self._v2(name, version, body, scope, receive)
            else:
                content, headers = await self._v1(name, version, body, scope, receive)
            status = 200
        except asyncio.CancelledError:
            if _client_gone(receive)():
                return  # dropped from a batching queue: nobody left to answer
            raise
        except ShoalError as exc:
            status, content = exc.http_status, error_body(str(exc))
            headers = _JSON_HEADERS + [(k.lower().encode(), v.encode()) for k, v in exc.headers.items()]
        except Exception as exc:  # a bug of ours: still an answer, never a dropped connection
            error = ModelFailure(f"internal error: {type(exc).__name__}: {exc}")
            status, content, headers = 500, error_body(str(error)), _JSON_HEADERS
        # With its length, the answer is not chunked, and goes out in one write with its head
        # (see http_protocol).
        if cycle is not None and send_whole(cycle, status, headers, content):
            return
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-length", b"%d" % len(content)), *headers]})
        await send({"type": "http.response.body", "body": content})

    # _v2 and _v1 hand back the data plane's coroutine instead of awaiting it: one level of
    # ``await`` less per request.
    def _v2(
        self, name: str, version: str | None, body: bytes, scope: dict, receive: Any
    ) -> Awaitable[tuple[bytes, list]]:
        header_length, timeout = _v2_headers(scope)
        gone = _client_gone(receive)

        def decode(_: Any) -> InferenceRequest:
            request = v2_json.decode_request(body, header_length)
            request.client_gone = gone
            return request

        logged = self.dataplane.logs(name)
        return self.dataplane.infer(
            name, version, "v2-rest", decode, _encode_v2, timeout,
            # The payload log keeps a JSON body as received (a binary one is rendered).
            body=body if logged and header_length is None else None,
            sent=_json_content if logged else None,
        )

    def _v1(
        self, name: str, version: str | None, body: bytes, scope: dict, receive: Any
    ) -> Awaitable[tuple[bytes, list]]:
        formats: list[v1.Format] = []
        gone = _client_gone(receive)

        def decode(endpoint: Any) -> Any:
            request, fmt = v1.decode_request(body, declared_inputs(endpoint))
            request.client_gone = gone
            formats.append(fmt)
            return request

        def encode(_: InferenceRequest, response: InferenceResponse) -> tuple[bytes, list]:
            content = v2_json.dumps(v1.encode_response(response, formats[0]))
            if response.parameters or response.id is not None:
                # V1 bodies have no id or parameters: a graph's request id and routing, and a
                # rollout's variant, go in headers (a V1 request has no id: only graphs make one).
                return content, _JSON_HEADERS + response_headers(response.parameters, response.id)
            return content, _JSON_HEADERS

        logged = self.dataplane.logs(name)
        return self.dataplane.infer(
            name, version, "v1-rest", decode, encode, timeout_of(scope),
            body=body if logged else None, sent=_json_content if logged else None,
        )


def _encode_v2(request: InferenceRequest, response: InferenceResponse) -> tuple[bytes, list]:
    content, json_length = v2_json.encode_response(response, request)
    if json_length is None:
        if response.parameters:  # a graph's routing, as a header too
            return content, _JSON_HEADERS + response_headers(response.parameters, None)
        return content, _JSON_HEADERS
    return content, [*response_headers(response.parameters, None),
        (b"content-type", b"application/octet-stream"),
        (_HEADER_LENGTH, str(json_length).encode()),
    ]


def _json_content(encoded: tuple[bytes, list]) -> bytes | None:
    """The body an encoder above produced, when it is JSON (binary outputs: None)."""
    content, headers = encoded
    return None if any(key == _HEADER_LENGTH for key, _ in headers) else content


def _never() -> bool:
    return False


def _client_gone(receive: Any) -> Callable[[], bool]:
    """A free check of whether the client disconnected. ASGI has none short of awaiting
    ``receive()`` in another task, which costs more per request than the rest of the hot path;
    uvicorn's request cycle (``receive``'s owner) records it as ``disconnected``."""
    cycle = getattr(receive, "__self__", None)
    if cycle is None or not hasattr(cycle, "disconnected"):
        return _never
    return lambda: cycle.disconnected


_TIMEOUT = TIMEOUT_HEADER.lower().encode()


def timeout_of(scope: dict) -> float | None:
    """Seconds from the ``Shoal-Timeout`` header, overriding the model's timeout."""
    for key, value in scope["headers"]:
        if key == _TIMEOUT:
            return _seconds(value)
    return None


def _seconds(value: bytes) -> float:
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not seconds > 0 or seconds == float("inf"):
        raise InvalidInput(f"{TIMEOUT_HEADER} must be a positive number of seconds")
    return seconds


def _v2_headers(scope: dict) -> tuple[int | None, float | None]:
    """``Inference-Header-Content-Length`` and ``Shoal-Timeout`` (see :func:`timeout_of`), in
    one pass over the headers."""
    header_length = timeout = None
    for key, value in scope["headers"]:
        if key == _HEADER_LENGTH and header_length is None:
            try:
                header_length = int(value)
            except ValueError:
                raise InvalidInput("Inference-Header-Content-Length must be an integer") from None
        elif key == _TIMEOUT and timeout is None:
            timeout = _seconds(value)
    return header_length, timeout


async def read_body(scope: dict, receive: Any, limit: int) -> bytes:
    """The whole body, refusing (413) anything over ``limit`` before buffering it."""
    for key, value in scope["headers"]:
        if key == b"content-length" and value.isdigit() and int(value) > limit:
            raise PayloadTooLarge(
                f"request body of {value.decode()} bytes exceeds the {limit}-byte limit"
            )
    chunks = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise InvalidInput("the client disconnected before sending the whole body")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"request body exceeds the {limit}-byte limit")
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def error_body(message: str) -> bytes:
    return orjson.dumps({"error": message})
