"""The gRPC transport: ``inference.GRPCInferenceService`` on ``grpc.aio``.

Errors become status codes from :mod:`shoal.errors`; a request with ``raw_input_contents``
gets ``raw_output_contents`` back. The same port serves TF Serving's services
(:mod:`.tfs_grpc`), gRPC health checking (:mod:`.grpc_health`) and server reflection
(:mod:`.grpc_reflection`).
"""

from __future__ import annotations

from typing import Any, AsyncIterator, Awaitable, Callable, TypeVar

import grpc
from google.protobuf import json_format
from google.protobuf.message import DecodeError
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ..errors import InvalidInput, ShoalError
from ..graph.context import HEADERS as REQUEST_HEADERS
from ..protocol import v2_grpc
from ..protocol.grpc_gen import grpc_service_pb2 as pb
from ..protocol.grpc_gen import grpc_service_pb2_grpc as pb_grpc
from ..repository.layout import check_model_name
from ..serving.dataplane import DataPlane
from .auth import AdminToken
from .grpc_health import HealthServicer
from .grpc_parsing import add_parsed_service, malformed
from .grpc_reflection import add_to_server as add_reflection

T = TypeVar("T")

_parse_infer = pb.ModelInferRequest.FromString


async def _guard(context: grpc.aio.ServicerContext, call: Callable[[], Awaitable[T]]) -> T:
    try:
        return await call()
    except ShoalError as exc:  # headers (a failed graph request's routing) as trailing metadata
        trailing = tuple((key.lower(), value) for key, value in exc.headers.items())
        await context.abort(exc.grpc_code, str(exc), trailing)
    except Exception as exc:
        await context.abort(grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}: {exc}")
    raise AssertionError("unreachable")


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, dataplane: DataPlane, admin: AdminToken = AdminToken(None)) -> None:
        self.dataplane = dataplane
        self.admin = admin

    async def ServerLive(self, request: Any, context: Any) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=self.dataplane.live)

    async def ServerReady(self, request: Any, context: Any) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.dataplane.ready)

    async def ModelReady(self, request: Any, context: Any) -> pb.ModelReadyResponse:
        async def call() -> pb.ModelReadyResponse:
            return pb.ModelReadyResponse(
                ready=self.dataplane.model_ready(request.name, request.version or None)
            )

        return await _guard(context, call)

    async def ServerMetadata(self, request: Any, context: Any) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(**self.dataplane.server_metadata())

    async def ModelMetadata(self, request: Any, context: Any) -> pb.ModelMetadataResponse:
        async def call() -> pb.ModelMetadataResponse:
            meta = self.dataplane.model_metadata(request.name, request.version or None)
            return pb.ModelMetadataResponse(
                name=meta["name"],
                versions=meta["versions"],
                platform=meta["platform"],
                inputs=[pb.ModelMetadataResponse.TensorMetadata(**t) for t in meta["inputs"]],
                outputs=[pb.ModelMetadataResponse.TensorMetadata(**t) for t in meta["outputs"]],
            )

        return await _guard(context, call)

    async def ModelConfig(self, request: Any, context: Any) -> pb.ModelConfigResponse:
        async def call() -> pb.ModelConfigResponse:
            config = self.dataplane.model_config(request.name, request.version or None)
            return pb.ModelConfigResponse(config=json_format.ParseDict(config, pb.ModelConfig()))

        return await _guard(context, call)

    async def ModelStatistics(self, request: Any, context: Any) -> pb.ModelStatisticsResponse:
        async def call() -> pb.ModelStatisticsResponse:
            stats = self.dataplane.model_statistics(request.name, request.version or None)
            return json_format.ParseDict(stats, pb.ModelStatisticsResponse())

        return await _guard(context, call)

    async def ModelInfer(self, request: pb.ModelInferRequest, context: Any) -> pb.ModelInferResponse:
        REQUEST_HEADERS.set(context.invocation_metadata)  # read only by graph conditions
        return await _guard(context, lambda: self._infer(request, context.time_remaining()))

    async def model_infer_bytes(self, body: bytes, context: Any) -> pb.ModelInferResponse:
        """``ModelInfer`` as served: the request's bytes in, parsed here, and ``ModelInfer``'s
        steps (and ``_guard``'s error handling) inline, so the hottest method of the port runs
        in one coroutine over the data plane's instead of five."""
        try:
            request = _parse_infer(body)
        except DecodeError as exc:
            await malformed(context, exc)
            raise
        REQUEST_HEADERS.set(context.invocation_metadata)  # read only by graph conditions
        try:
            return await self._infer(request, context.time_remaining())
        except ShoalError as exc:  # as _guard answers
            trailing = tuple((key.lower(), value) for key, value in exc.headers.items())
            await context.abort(exc.grpc_code, str(exc), trailing)
        except Exception as exc:
            await context.abort(grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}: {exc}")
        raise AssertionError("unreachable")

    def _infer(
        self, request: pb.ModelInferRequest, deadline: float | None = None
    ) -> Awaitable[pb.ModelInferResponse]:
        """The data plane's coroutine for ``request`` (handed back, not awaited here: one
        level of ``await`` less per call)."""
        raw = bool(request.raw_input_contents)
        return self.dataplane.infer(
            request.model_name,
            request.model_version or None,
            "v2-grpc",
            lambda _: v2_grpc.decode_request(request),
            lambda _, response: v2_grpc.encode_response(response, raw=raw),
            deadline=deadline if deadline is None else max(deadline, 1e-6),
        )

    async def ModelStreamInfer(
        self, request_iterator: AsyncIterator[pb.ModelInferRequest], context: Any
    ) -> AsyncIterator[pb.ModelStreamInferResponse]:
        REQUEST_HEADERS.set(context.invocation_metadata)
        async for request in request_iterator:
            try:
                response = await self._infer(request)
            except ShoalError as exc:
                yield pb.ModelStreamInferResponse(error_message=str(exc))
            else:
                yield pb.ModelStreamInferResponse(infer_response=response)

    async def RepositoryIndex(self, request: Any, context: Any) -> pb.RepositoryIndexResponse:
        rows = self.dataplane.index(request.ready)
        return pb.RepositoryIndexResponse(
            models=[pb.RepositoryIndexResponse.ModelIndex(**row) for row in rows]
        )

    async def RepositoryModelLoad(self, request: Any, context: Any) -> pb.RepositoryModelLoadResponse:
        async def call() -> pb.RepositoryModelLoadResponse:
            self.admin.check_metadata(context.invocation_metadata())
            name = _model_name(request)
            await self.dataplane.load(name)
            return pb.RepositoryModelLoadResponse(model_name=name, isLoaded=True)

        return await _guard(context, call)

    async def RepositoryModelUnload(
        self, request: Any, context: Any
    ) -> pb.RepositoryModelUnloadResponse:
        async def call() -> pb.RepositoryModelUnloadResponse:
            self.admin.check_metadata(context.invocation_metadata())
            name = _model_name(request)
            await self.dataplane.unload(name)
            return pb.RepositoryModelUnloadResponse(model_name=name, isUnloaded=True)

        return await _guard(context, call)


def _model_name(request: Any) -> str:
    """Triton clients send ``model_name``; KServe's proto puts it in field 1."""
    name = request.model_name or request.repository_name
    if not name:
        raise InvalidInput("model_name is required")
    return check_model_name(name)


def build_server(
    dataplane: DataPlane, max_message_size: int, reuse_port: bool = False,
    admin: AdminToken = AdminToken(None),
) -> grpc.aio.Server:
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", max_message_size),
            ("grpc.max_send_message_length", max_message_size),
            # Off unless several server processes share the port on purpose: then a port
            # already in use is an error, not a silent second listener.
            ("grpc.so_reuseport", int(reuse_port)),
        ]
    )
    servicer = InferenceServicer(dataplane, admin)
    add_parsed_service(
        server, pb_grpc.add_GRPCInferenceServiceServicer_to_server, servicer,
        raw={"ModelInfer": servicer.model_infer_bytes},
    )
    from . import tfs_grpc  # TF Serving's services; that module builds on this one's _guard

    tfs_grpc.add_to_server(dataplane, server, max_message_size)
    inference = [pb.DESCRIPTOR.services_by_name["GRPCInferenceService"], *tfs_grpc.SERVICES]
    add_parsed_service(
        server, health_pb2_grpc.add_HealthServicer_to_server,
        HealthServicer(dataplane, tuple(s.full_name for s in inference)),
    )
    add_reflection(server, [*inference, health_pb2.DESCRIPTOR.services_by_name["Health"]])
    return server
