"""Services whose requests are parsed by Shoal, not by gRPC, so bad bytes are a client error.

A message that does not parse (corrupted or truncated protobuf) fails inside gRPC's own
deserializer, which answers ``UNKNOWN``: to a client that reads like a server fault. The
generated ``add_*_to_server`` functions are given a stand-in server that takes their method
handlers and registers them with the request bytes passed through; each method then parses
its message itself and answers ``INVALID_ARGUMENT`` when it cannot.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

import grpc
from google.protobuf.message import DecodeError

Deserializer = Callable[[bytes], Any]


#: A unary method's behaviour over the request's bytes: it parses them itself.
RawUnary = Callable[[bytes, Any], Awaitable[Any]]


def add_parsed_service(
    server: grpc.aio.Server, add_to_server: Callable[[Any, Any], None], servicer: Any,
    raw: Mapping[str, RawUnary] | None = None,
) -> None:
    """``add_to_server(servicer, server)`` (a generated function), with requests parsed by
    the methods: a message that does not parse is ``INVALID_ARGUMENT``. ``raw`` maps unary
    method names to behaviours that take the request bytes and do that themselves (one
    coroutine less per call on a hot method); the generated handler's response serializer
    stays."""
    add_to_server(servicer, _Registrar(server, raw or {}))


class _Registrar:
    """What the generated code calls on a server, forwarded with every handler wrapped."""

    def __init__(self, server: grpc.aio.Server, raw: Mapping[str, RawUnary]) -> None:
        self.server = server
        self.raw = raw

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        """Replaced by the registered handlers, which carry the same methods."""

    def add_registered_method_handlers(self, service: str, handlers: dict[str, Any]) -> None:
        wrapped = {
            name: (
                handler._replace(request_deserializer=None, unary_unary=self.raw[name])
                if name in self.raw else _parsing(handler)
            )
            for name, handler in handlers.items()
        }
        self.server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, wrapped),))
        self.server.add_registered_method_handlers(service, wrapped)


def _parsing(handler: Any) -> Any:
    parse = handler.request_deserializer
    if handler.request_streaming and handler.response_streaming:
        behavior = handler.stream_stream

        async def stream_stream(raw_requests: AsyncIterator[bytes], context: Any) -> AsyncIterator[Any]:
            async for response in behavior(_each_parsed(raw_requests, parse, context), context):
                yield response

        return handler._replace(request_deserializer=None, stream_stream=stream_stream)
    if not handler.request_streaming and not handler.response_streaming:
        behavior = handler.unary_unary

        async def unary_unary(raw: bytes, context: Any) -> Any:
            return await behavior(await _parsed(raw, parse, context), context)

        return handler._replace(request_deserializer=None, unary_unary=unary_unary)
    return handler  # no such method in Shoal's services


async def _parsed(raw: bytes, parse: Deserializer, context: Any) -> Any:
    try:
        return parse(raw)
    except DecodeError as exc:
        await malformed(context, exc)
        raise  # abort raises; this is for type checkers


async def malformed(context: Any, exc: DecodeError) -> None:
    """Answer a request that does not parse: ``INVALID_ARGUMENT``, with protobuf's message
    (it names the type: "Error parsing message with type ...")."""
    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"malformed request: {exc}")


async def _each_parsed(raw_requests: AsyncIterator[bytes], parse: Deserializer, context: Any) -> AsyncIterator[Any]:
    async for raw in raw_requests:
        yield await _parsed(raw, parse, context)
