"""A model served by another server: V2 REST (binary tensors), V2 gRPC (raw contents), V1.

This is how a model written in another language, or living in another container (Triton,
MLServer, TF Serving, KServe, another Shoal), joins a graph. Connections are pooled per node
and opened on first use. The remote's errors keep their meaning: its 400 is the client's 400,
an unreachable or overloaded remote is a 503, a slow one a 504, anything else a 500.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import grpc
import httpx
import orjson

from ...errors import (
    DeadlineExceeded,
    InvalidInput,
    ModelFailure,
    ShoalError,
    Unavailable,
)
from ...protocol import v1, v2_binary, v2_grpc, v2_json
from ...protocol.grpc_gen import grpc_service_pb2_grpc as pb_grpc
from ...types import InferenceRequest, InferenceResponse, Tensor
from ..context import Call
from ..results import DEFAULT_OUTPUT
from .base import GraphNode, Observer

_HEADER_LENGTH = "inference-header-content-length"


class RemoteCall(GraphNode):
    kind = "remote"

    def __init__(
        self, name: str, observe: Observer, url: str, protocol: str, model: str,
        version: str | None, timeout: float, headers: dict[str, str], outputs: list[str] | None,
    ) -> None:
        super().__init__(name, observe)
        self.url = url.rstrip("/")
        self.protocol = protocol
        self.model = model
        self.version = version
        self.timeout = timeout
        self.headers = headers
        self.requested = outputs
        self._http: httpx.AsyncClient | None = None
        self._channel: grpc.aio.Channel | None = None
        self._stub: Any = None

    async def execute(self, call: Call, request: InferenceRequest) -> InferenceResponse:
        remaining = call.remaining()
        timeout = self.timeout if remaining is None else min(self.timeout, remaining)
        try:
            if self.protocol == "v2-grpc":
                return await self._grpc(call, request, timeout)
            if self.protocol == "v1":
                return await self._v1(request, timeout)
            return await self._v2_rest(call, request, timeout)
        except httpx.TimeoutException:
            raise DeadlineExceeded(f"remote {self.url} did not answer within {timeout:g} s") from None
        except httpx.TransportError as exc:
            raise Unavailable(f"remote {self.url} is unreachable: {exc}") from None

    # -- V2 REST -------------------------------------------------------------------------

    def _client(self) -> httpx.AsyncClient:
        if self._http is None:
            self._http = httpx.AsyncClient(base_url=self.url, headers=self.headers)
        return self._http

    def _path(self, prefix: str, suffix: str) -> str:
        version = f"/versions/{self.version}" if self.version else ""
        return f"{prefix}{self.model}{version}{suffix}"

    async def _v2_rest(self, call: Call, request: InferenceRequest, timeout: float) -> InferenceResponse:
        body, header_length = encode_v2_request(request, call.request_id, self.requested)
        reply = await self._client().post(
            self._path("/v2/models/", "/infer"), content=body, timeout=timeout,
            headers={"Inference-Header-Content-Length": str(header_length),
                     "Content-Type": "application/octet-stream"},
        )
        content = reply.content
        if reply.status_code != 200:
            raise remote_error(reply.status_code, _message(content), self.url)
        length = reply.headers.get(_HEADER_LENGTH)
        if length is None:
            header, binary = v2_json.parse_json_object(content, "remote response"), None
        else:
            view = memoryview(content)
            header = v2_json.parse_json_object(view[: int(length)], "remote response")
            binary = view[int(length):]
        return decode_v2_outputs(header, binary, self.url)

    # -- V2 gRPC -------------------------------------------------------------------------

    async def _grpc(self, call: Call, request: InferenceRequest, timeout: float) -> InferenceResponse:
        if self._stub is None:
            self._channel = grpc.aio.insecure_channel(self.url.removeprefix("grpc://"))
            self._stub = pb_grpc.GRPCInferenceServiceStub(self._channel)
        outgoing = InferenceRequest(
            request.inputs, id=call.request_id, parameters=_scalars(request.parameters),
            outputs=None, model_name=self.model, model_version=self.version,
        )
        message = v2_grpc.request_to_proto(outgoing, raw=True)
        for name in self.requested or ():
            message.outputs.add(name=name)
        try:
            reply = await self._stub.ModelInfer(
                message, timeout=timeout, metadata=tuple(self.headers.items()) or None
            )
        except grpc.aio.AioRpcError as exc:
            raise grpc_error(exc, self.url) from None
        # The response's outputs have the request inputs' layout: decode them as such.
        shaped = SimpleNamespace(
            inputs=reply.outputs, raw_input_contents=reply.raw_output_contents, outputs=(),
            id=reply.id, parameters=reply.parameters, model_name=reply.model_name,
            model_version=reply.model_version,
        )
        decoded = _remote_decode(lambda: v2_grpc.decode_request(shaped), self.url)  # type: ignore[arg-type]
        return InferenceResponse(decoded.inputs, parameters=decoded.parameters)

    # -- V1 ------------------------------------------------------------------------------

    async def _v1(self, request: InferenceRequest, timeout: float) -> InferenceResponse:
        # V1's columnar format, written by the V1 codec (what it answers is what it reads).
        columns = v1.encode_response(InferenceResponse(request.inputs), "columnar")["outputs"]
        reply = await self._client().post(
            self._path("/v1/models/", ":predict"), content=v2_json.dumps({"inputs": columns}),
            timeout=timeout, headers={"Content-Type": "application/json"},
        )
        if reply.status_code != 200:
            raise remote_error(reply.status_code, _message(reply.content), self.url)

        def decode() -> list[Tensor]:
            body = v2_json.parse_json_object(reply.content, "remote response")
            if "outputs" in body:
                payload = {"inputs": body["outputs"]}
            elif "predictions" in body:
                payload = {"instances": body["predictions"]}
            else:
                raise InvalidInput("it has neither 'outputs' nor 'predictions'")
            decoded, _ = v1.decode_request(v2_json.dumps(payload), [])
            return [
                Tensor(DEFAULT_OUTPUT, t.datatype, t.shape, t.data) if t.name == v1.DEFAULT_INPUT
                else t
                for t in decoded.inputs
            ]

        return InferenceResponse(_remote_decode(decode, self.url))

    async def close(self) -> None:
        if self._http is not None:
            await self._http.aclose()
        if self._channel is not None:
            await self._channel.close()


def encode_v2_request(
    request: InferenceRequest, request_id: str, outputs: list[str] | None
) -> tuple[bytes, int]:
    """A V2 REST body with every input in the binary section, asking for binary outputs."""
    chunks = []
    inputs = []
    for tensor in request.inputs:
        raw = v2_binary.encode_tensor_bytes(tensor.data, tensor.datatype)
        chunks.append(raw)
        inputs.append({"name": tensor.name, "datatype": tensor.datatype, "shape": tensor.shape,
                       "parameters": {**tensor.parameters, "binary_data_size": len(raw)}})
    header: dict[str, Any] = {
        "id": request_id,
        "parameters": {**request.parameters, "binary_data_output": True},
        "inputs": inputs,
    }
    if outputs:
        header["outputs"] = [{"name": name} for name in outputs]
    encoded = orjson.dumps(header, option=orjson.OPT_SERIALIZE_NUMPY)
    return b"".join([encoded, *chunks]), len(encoded)


def decode_v2_outputs(header: dict[str, Any], binary: memoryview | None, url: str) -> InferenceResponse:
    # A response's outputs have the request inputs' layout (data or binary_data_size).
    outputs = header.get("outputs")
    decoded = _remote_decode(lambda: v2_json.request_from_dict({"inputs": outputs}, binary), url)
    parameters = header.get("parameters")
    return InferenceResponse(decoded.inputs, parameters=parameters if isinstance(parameters, dict) else {})


def _remote_decode(decode: Any, url: str) -> Any:
    try:
        return decode()
    except InvalidInput as exc:
        raise ModelFailure(f"remote {url} sent an unreadable answer: {exc}") from None


def remote_error(status: int, message: str, url: str) -> ShoalError:
    text = f"remote {url} answered {status}: {message}"
    if status in (400, 413, 422):
        return InvalidInput(text)
    if status in (404, 429, 502, 503):
        return Unavailable(text)
    if status == 504:
        return DeadlineExceeded(text)
    return ModelFailure(text)


def grpc_error(exc: grpc.aio.AioRpcError, url: str) -> ShoalError:
    code = exc.code()
    text = f"remote {url} answered {code.name}: {exc.details()}"
    if code is grpc.StatusCode.INVALID_ARGUMENT:
        return InvalidInput(text)
    if code is grpc.StatusCode.DEADLINE_EXCEEDED:
        return DeadlineExceeded(text)
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.NOT_FOUND,
                grpc.StatusCode.RESOURCE_EXHAUSTED):
        return Unavailable(text)
    return ModelFailure(text)


def _message(content: bytes) -> str:
    try:
        body = orjson.loads(content)
    except orjson.JSONDecodeError:
        return content[:200].decode("utf-8", errors="replace")
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        return body["error"]
    return content[:200].decode("utf-8", errors="replace")


def _scalars(parameters: dict[str, Any]) -> dict[str, Any]:
    """gRPC parameters are scalars only: nested values (Seldon tags, say) stay home."""
    return {k: v for k, v in parameters.items() if isinstance(v, (bool, int, float, str))}
