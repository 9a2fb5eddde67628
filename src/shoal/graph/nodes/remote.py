"""A model served by another server: V2 REST (binary tensors), V2 gRPC (raw contents), V1.

This is how a model written in another language, or living in another container (Triton,
MLServer, TF Serving, KServe, another Shoal), joins a graph. It speaks as the ``triton``
runtime (remote models) does and needs the same extra (``pip install 'shoal[triton]'``, for
aiohttp): the same codecs, the same gRPC channel options, the same meaning for the remote's
errors (its 400 is the client's 400, an unreachable or overloaded remote a 503, a slow one a
504). Unlike a remote model, a node is not probed when the graph loads: connections are
pooled per node and opened on first use.

The graph's ``routing`` parameter stays home (see :func:`~shoal.graph.context.without_routing`).
Traced, each call is a ``shoal.remote <model>`` CLIENT span whose ``traceparent`` goes along
(HTTP header, gRPC metadata), so a traced remote server continues the same trace.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import aiohttp
import grpc

from ...errors import DeadlineExceeded, InvalidInput, ModelFailure, Unavailable
from ...observe import tracing
from ...protocol import v1, v2_grpc, v2_json
from ...protocol.grpc_gen import grpc_service_pb2_grpc as pb_grpc
from ...runtimes.triton import (
    CONNECT_TIMEOUT_S,
    GRPC_OPTIONS,
    error_message,
    grpc_error,
    http_error,
    parse_url,
)
from ...serving.endpoint import DEFAULT_OUTPUT
from ...types import InferenceRequest, InferenceResponse, RequestedOutput, Tensor
from ..context import Call, without_routing
from .base import GraphNode, Observer


class RemoteCall(GraphNode):
    kind = "remote"

    def __init__(
        self, name: str, observe: Observer, url: str, protocol: str, model: str,
        version: str | None, timeout: float, headers: dict[str, str], outputs: list[str] | None,
    ) -> None:
        super().__init__(name, observe)
        self.protocol = protocol
        # An HTTP base URL, or a gRPC host:port; a malformed one fails the graph's load.
        _, self.address = parse_url(url, "grpc" if protocol == "v2-grpc" else "http")
        self.model = model
        self.version = version
        self.timeout = timeout
        self.headers = headers
        self.requested = outputs
        self.where = f"remote model {model!r} at {self.address}"
        self._call_span = f"shoal.remote {model}"
        self._traced_call = {tracing.REMOTE_MODEL: model, tracing.REMOTE_ADDRESS: self.address,
                             tracing.REMOTE_PROTOCOL: protocol}
        self._session: aiohttp.ClientSession | None = None
        self._channel: grpc.aio.Channel | None = None
        self._stub: Any = None

    async def execute(self, call: Call, request: InferenceRequest) -> InferenceResponse:
        remaining = call.remaining()
        timeout = self.timeout if remaining is None else min(self.timeout, remaining)
        parameters = without_routing(request.parameters)
        if self.protocol == "v2-grpc":
            response = await self._grpc(call, request.inputs, parameters, timeout)
        elif self.protocol == "v1":
            response = await self._v1(request.inputs, timeout)
        else:
            response = await self._v2_rest(call, request.inputs, parameters, timeout)
        return InferenceResponse(response.outputs, parameters=without_routing(response.parameters))

    # -- V2 REST and V1 --------------------------------------------------------------------

    def _path(self, prefix: str, suffix: str) -> str:
        version = f"/versions/{quote(self.version, safe='')}" if self.version else ""
        return f"{self.address}{prefix}{quote(self.model, safe='')}{version}{suffix}"

    async def _v2_rest(
        self, call: Call, inputs: list[Tensor], parameters: dict[str, Any], timeout: float
    ) -> InferenceResponse:
        outgoing = InferenceRequest(
            inputs, id=call.request_id, parameters={**parameters, "binary_data_output": True},
            outputs=[RequestedOutput(o, {"binary_data": True}) for o in self.requested]
            if self.requested else None,
        )
        body, header_length = v2_json.encode_request(outgoing)
        headers, content = await self._post(
            self._path("/v2/models/", "/infer"), body, timeout,
            {"Inference-Header-Content-Length": str(header_length),
             "Content-Type": "application/octet-stream"},
        )
        length = headers.get(v2_json.HEADER_LENGTH)
        return self._decode(
            lambda: v2_json.decode_response(content, None if length is None else int(length))
        )

    async def _v1(self, inputs: list[Tensor], timeout: float) -> InferenceResponse:
        # V1's columnar format, written by the V1 codec (what it answers is what it reads).
        columns = v1.encode_response(InferenceResponse(inputs), "columnar")["outputs"]
        _, content = await self._post(
            self._path("/v1/models/", ":predict"), v2_json.dumps({"inputs": columns}), timeout,
            {"Content-Type": "application/json"},
        )

        def decode() -> InferenceResponse:
            body = v2_json.parse_json_object(content, "remote response")
            if "outputs" in body:
                payload = {"inputs": body["outputs"]}
            elif "predictions" in body:
                payload = {"instances": body["predictions"]}
            else:
                raise InvalidInput("it has neither 'outputs' nor 'predictions'")
            decoded, _ = v1.decode_request(v2_json.dumps(payload), [])
            return InferenceResponse([
                Tensor(DEFAULT_OUTPUT, t.datatype, t.shape, t.data) if t.name == v1.DEFAULT_INPUT
                else t
                for t in decoded.inputs
            ])

        return self._decode(decode)

    async def _post(
        self, url: str, body: bytes, timeout: float, headers: dict[str, str]
    ) -> tuple[Any, bytes]:
        if tracing.TRACER is None:
            return await self._send(url, body, timeout, headers)
        with tracing.client_span(self._call_span, self._traced_call) as context:
            return await self._send(url, body, timeout, {**headers, **context})

    async def _send(
        self, url: str, body: bytes, timeout: float, headers: dict[str, str]
    ) -> tuple[Any, bytes]:
        if self._session is None:  # opened on the loop, on first use
            self._session = aiohttp.ClientSession(headers=self.headers)
        limits = aiohttp.ClientTimeout(total=timeout, sock_connect=min(timeout, CONNECT_TIMEOUT_S))
        try:
            async with self._session.post(url, data=body, headers=headers, timeout=limits) as reply:
                content = await reply.read()
        except aiohttp.ConnectionTimeoutError:
            raise Unavailable(f"{self.where}: no connection within {limits.sock_connect:g} s") from None
        except (asyncio.TimeoutError, TimeoutError):
            raise DeadlineExceeded(f"{self.where} did not answer within {timeout:g} s") from None
        except aiohttp.ClientError as exc:  # refused, reset, closed mid-answer
            raise Unavailable(f"{self.where} is unreachable: {exc or type(exc).__name__}") from None
        if reply.status >= 400:
            raise http_error(reply.status, error_message(content, reply.reason), self.where)
        return reply.headers, content

    # -- V2 gRPC ---------------------------------------------------------------------------

    async def _grpc(
        self, call: Call, inputs: list[Tensor], parameters: dict[str, Any], timeout: float
    ) -> InferenceResponse:
        if self._stub is None:
            self._channel = grpc.aio.insecure_channel(self.address, options=GRPC_OPTIONS)
            self._stub = pb_grpc.GRPCInferenceServiceStub(self._channel)
        outgoing = InferenceRequest(
            inputs, id=call.request_id, parameters=parameters,
            outputs=[RequestedOutput(o) for o in self.requested] if self.requested else None,
            model_name=self.model, model_version=self.version,
        )
        message = v2_grpc.request_to_proto(outgoing, raw=True)
        metadata = tuple((k.lower(), v) for k, v in self.headers.items())
        if tracing.TRACER is None:
            reply = await self._model_infer(message, timeout, metadata or None)
        else:
            with tracing.client_span(self._call_span, self._traced_call) as context:
                reply = await self._model_infer(message, timeout, (*metadata, *context.items()))
        return self._decode(lambda: v2_grpc.decode_response(reply))

    async def _model_infer(
        self, message: Any, timeout: float, metadata: tuple[tuple[str, str], ...] | None
    ) -> Any:
        try:
            return await self._stub.ModelInfer(message, timeout=timeout, metadata=metadata)
        except grpc.aio.AioRpcError as exc:
            if exc.code() is grpc.StatusCode.DEADLINE_EXCEEDED:
                raise DeadlineExceeded(f"{self.where} did not answer within {timeout:g} s") from None
            raise grpc_error(exc.code(), exc.details() or "", self.where) from None

    # -------------------------------------------------------------------------------------

    def _decode(self, decode: Callable[[], InferenceResponse]) -> InferenceResponse:
        try:
            return decode()
        except (InvalidInput, ValueError) as exc:
            raise ModelFailure(f"{self.where} sent an answer Shoal cannot read: {exc}") from None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
        if self._channel is not None:
            await self._channel.close()

