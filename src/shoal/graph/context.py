"""What one request carries through a graph: its id, the routes taken, the path, the clock.

Request headers reach the graph through a context variable that the transports set: the
protocol-neutral ``InferenceRequest`` has no headers, and only graph conditions read them.
The transports store the raw source (ASGI's header list, or gRPC's metadata getter) and the
graph turns it into a dict only when a condition asks.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from ..errors import InvalidInput

#: Raw request headers: a list of (bytes, bytes) pairs (ASGI), or a callable that returns
#: gRPC invocation metadata. None outside a request.
HEADERS: ContextVar[Any] = ContextVar("shoal_request_headers", default=None)

ROUTING_PARAMETER = "routing"
ROUTING_HEADER = "Shoal-Routing"
REQUEST_ID_HEADER = "Shoal-Request-Id"
#: The rollout variant that answered (``stable``, ``canary``): a response parameter, and a
#: header over REST.
VARIANT_PARAMETER = "shoal-variant"
VARIANT_HEADER = "Shoal-Variant"
_ROUTES_TAKEN = (ROUTING_PARAMETER, VARIANT_PARAMETER)


def new_request_id() -> str:
    return uuid.uuid4().hex


def normalize_headers(source: Any) -> dict[str, str]:
    if source is None:
        return {}
    pairs = source() if callable(source) else source
    headers: dict[str, str] = {}
    for key, value in pairs or ():
        if isinstance(key, bytes):
            key = key.decode("latin-1")
        if isinstance(value, bytes):
            value = value.decode("latin-1")
        headers[key.lower()] = value
    return headers


@dataclass(slots=True)
class Call:
    graph: str
    request_id: str
    deadline_at: float | None = None
    """``time.monotonic()`` value by which the graph must answer; None: no limit."""
    client_timeout: float | None = None
    pinned: dict[str, str] = field(default_factory=dict)
    """Routes the client asked for (``routing`` parameter, Seldon ``meta.routing``)."""
    routing: dict[str, str] = field(default_factory=dict)
    """Router node -> the branch it took, in the order decisions were made."""
    path: list[str] = field(default_factory=list)
    client_gone: Callable[[], bool] | None = None
    header_source: Any = None
    _headers: dict[str, str] | None = None

    def headers(self) -> dict[str, str]:
        if self._headers is None:
            self._headers = normalize_headers(self.header_source)
        return self._headers

    def remaining(self) -> float | None:
        if self.deadline_at is None:
            return None
        return max(self.deadline_at - time.monotonic(), 1e-6)


def format_routing(routing: dict[str, str]) -> str:
    """``router=arm,switch=branch``: node names cannot hold ``=`` or ``,``."""
    return ",".join(f"{node}={branch}" for node, branch in routing.items())


def parse_routing(value: Any) -> dict[str, str]:
    """A routing as a client echoes it: the ``a=b,c=d`` string or a JSON object."""
    if isinstance(value, dict):
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
            raise InvalidInput("'routing' must map node names to branch names (strings)")
        return dict(value)
    if not isinstance(value, str):
        raise InvalidInput("'routing' must be a string like 'router=arm' or an object")
    routing = {}
    for part in filter(None, (p.strip() for p in value.split(","))):
        node, sep, branch = part.partition("=")
        if not sep or not node or not branch:
            raise InvalidInput(f"routing entry {part!r} is not 'node=branch'")
        routing[node.strip()] = branch.strip()
    return routing


def without_routing(parameters: dict[str, Any]) -> dict[str, Any]:
    """Parameters minus this graph's ``routing``: what its nodes send on and take back. A
    model or remote never sees the graph's pinned routes (a remote graph would refuse nodes
    it does not have), and a remote graph's routing never becomes this graph's; nor does the
    rollout variant of a model it calls become the graph's own."""
    if ROUTING_PARAMETER not in parameters and VARIANT_PARAMETER not in parameters:
        return parameters
    return {k: v for k, v in parameters.items() if k not in _ROUTES_TAKEN}


def response_headers(parameters: dict[str, Any], request_id: str | None) -> list[tuple[bytes, bytes]]:
    """REST headers for an answer: a graph's routing taken, a rollout's variant and, for bodies
    that cannot carry it (V1), the request id. Values that are not plain ASCII stay out of the headers."""
    headers = []
    routing = parameters.get(ROUTING_PARAMETER) if parameters else None
    if isinstance(routing, str) and _header_safe(routing):
        headers.append((ROUTING_HEADER.lower().encode(), routing.encode()))
    variant = parameters.get(VARIANT_PARAMETER) if parameters else None
    if isinstance(variant, str) and _header_safe(variant):
        headers.append((VARIANT_HEADER.lower().encode(), variant.encode()))
    if request_id is not None and _header_safe(request_id):
        headers.append((REQUEST_ID_HEADER.lower().encode(), request_id.encode()))
    return headers


def error_context(routing: dict[str, str], request_id: str) -> dict[str, str]:
    """What a failed graph request's answer carries (REST headers, gRPC trailing metadata):
    the routing it took before it failed, and its request id."""
    context = {}
    formatted = format_routing(routing)
    if formatted and _header_safe(formatted):
        context[ROUTING_HEADER] = formatted
    if _header_safe(request_id):
        context[REQUEST_ID_HEADER] = request_id
    return context


def _header_safe(value: str) -> bool:
    return value.isascii() and value.isprintable()
