"""Remote V2 servers (Triton, KServe, MLServer, another Shoal) served as Shoal models.

``model.yaml``::

    url: http://triton:8000        # or grpc://triton:8001, or host:port with parameters.protocol
    parameters:
      model_name: resnet           # the remote's name for the model (default: this model's name)
      model_version: "2"           # default: the remote picks its version
      timeout: 30                  # seconds per call to the remote
      retries: 2                   # extra attempts after a connection failure or a 503

Loading asks the remote whether the model is ready and reads its metadata (platform, inputs,
outputs), which this model then reports and checks requests against. A remote that cannot be
reached at load time fails the load with the reason, like any other broken artifact: reload
the model (``POST /v2/repository/models/{name}/load``) once the remote is up.

Inference forwards each request with its parameters and requested outputs: over HTTP with
every tensor in the binary extension, over gRPC with raw contents, on one keep-alive
connection pool (HTTP) or channel (gRPC) per model version, from the event loop (no thread is
held while the remote works). A remote that is down is a 503 within milliseconds, never a hang.
Traced, each attempt is a ``shoal.remote <model>`` CLIENT span that sends its ``traceparent``
along, so a traced remote server continues the trace.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, Literal, Protocol, TypeVar
from urllib.parse import quote, urlsplit

import aiohttp
import grpc
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..datatypes import DATATYPES
from ..errors import (
    DeadlineExceeded,
    InvalidInput,
    LoadError,
    ModelFailure,
    NotSupported,
    Overloaded,
    PayloadTooLarge,
    ShoalError,
    Unavailable,
)
from ..model import Model
from ..observe import tracing
from ..protocol import v2_grpc, v2_json
from ..protocol.grpc_gen import grpc_service_pb2 as pb
from ..protocol.grpc_gen import grpc_service_pb2_grpc as pb_grpc
from ..repository.config import ModelConfig
from ..types import InferenceRequest, InferenceResponse, RequestedOutput, TensorSpec

T = TypeVar("T")

#: A dead host (no RST, packets dropped) fails after this long, even with a long ``timeout``.
CONNECT_TIMEOUT_S = 5.0
#: Pause before the first retry; it doubles after each further attempt.
BACKOFF_S = 0.05
GRPC_OPTIONS = [
    ("grpc.max_send_message_length", -1),
    ("grpc.max_receive_message_length", -1),
    # A remote that comes back is reached again within about a second (the default waits
    # up to two minutes between reconnection attempts).
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
]


class RemoteSettings(BaseModel):
    """``parameters`` of a triton-runtime model; unknown keys are refused (typos fail loudly)."""

    model_config = ConfigDict(extra="forbid")

    protocol: Literal["http", "grpc"] | None = None
    model_name: str | None = None
    model_version: int | str | None = None
    timeout: float = Field(30.0, gt=0)
    retries: int = Field(2, ge=0, le=10)


class RemoteDown(Unavailable):
    """The remote could not be reached, or answered 503 (gRPC: UNAVAILABLE): worth another
    attempt (``retries``)."""


class RemoteUnreachable(RemoteDown):
    """The remote could not be reached: refused, reset or closed connection, no connection
    in time. Unlike an answered 503, this can mean that the remote's process is gone."""


def remote_settings(parameters: dict[str, Any]) -> RemoteSettings:
    """A triton-runtime model's ``parameters``, checked."""
    try:
        return RemoteSettings.model_validate(parameters)
    except ValidationError as exc:
        problems = "; ".join(
            f"parameters.{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
        raise LoadError(f"runtime 'triton': {problems}") from None


def create(name: str, version: str, version_dir: Any, model_dir: Any, config: ModelConfig) -> Model:
    if not config.url:
        raise LoadError("runtime 'triton' needs the remote server's address: url: in model.yaml")
    return TritonModel(name, version, version_dir, config.parameters, url=config.url)


class TritonModel(Model):
    platform = "triton"
    accepted_parameters = frozenset(RemoteSettings.model_fields)

    def __init__(
        self,
        name: str,
        version: str = "1",
        path: Any = None,
        parameters: dict[str, Any] | None = None,
        *,
        url: str | None = None,
        settings: RemoteSettings | None = None,
    ) -> None:
        """``url`` may be left out by a subclass that learns its address later (the
        ``process`` runtime: a port per start of its program), which then calls
        :meth:`point_at`; ``settings`` replaces ``parameters`` as the source of the
        client's settings for such a subclass."""
        super().__init__(name, version, path, parameters)
        self.settings = settings if settings is not None else remote_settings(self.parameters)
        self.remote_name = self.settings.model_name or name
        version_setting = self.settings.model_version
        self.remote_version = None if version_setting is None else str(version_setting)
        self.remote: Remote | None = None
        #: The name of the CLIENT span of each call (tracing); point_at sets its attributes.
        self.call_span = f"shoal.remote {self.remote_name}"
        self.protocol, self.address = "http", ""
        self.traced_call: dict[str, str] = {}
        if url is not None:
            self.point_at(*parse_url(url, self.settings.protocol))

    def point_at(self, protocol: str, address: str) -> None:
        """Where the remote is: ``http`` and a base URL, or ``grpc`` and ``host:port``.
        Remote clients made after this (:meth:`new_remote`) use it."""
        self.protocol, self.address = protocol, address
        self.traced_call = {tracing.REMOTE_MODEL: self.remote_name,
                            tracing.REMOTE_ADDRESS: address,
                            tracing.REMOTE_PROTOCOL: f"v2-{protocol}"}

    def new_remote(self) -> Remote:
        """A client (connection pool or channel) for the current address."""
        return HttpRemote(self) if self.protocol == "http" else GrpcRemote(self)

    @property
    def where(self) -> str:
        """How errors name the remote model: ``remote model 'iris' at http://host:8000``."""
        version = f" version {self.remote_version}" if self.remote_version else ""
        return f"remote model {self.remote_name!r}{version} at {self.address}"

    async def load(self) -> None:
        self.remote = self.new_remote()
        try:
            await self.read_metadata(self.remote)
        except BaseException as exc:
            await self.remote.close()
            self.remote = None
            if isinstance(exc, ShoalError) and not isinstance(exc, LoadError):
                raise LoadError(str(exc)) from None
            raise

    async def read_metadata(self, remote: Remote) -> None:
        """Whether the remote model is ready, then its platform, inputs and outputs (those
        declared in model.yaml win)."""
        if not await self._retrying(remote.ready):
            raise LoadError(f"{self.where} is not ready")
        metadata = await self._retrying(remote.metadata)
        declared_inputs, declared_outputs = self.inputs, self.outputs
        self.inputs = declared_inputs or _specs(metadata.get("inputs"), "inputs", self.where)
        self.outputs = declared_outputs or _specs(metadata.get("outputs"), "outputs", self.where)
        self.platform = str(metadata.get("platform") or type(self).platform)

    async def predict(self, request: InferenceRequest) -> InferenceResponse:
        remote = self.remote
        if remote is None:
            raise Unavailable(f"model {self.name!r} is not connected to its remote")
        return await self._retrying(lambda: remote.infer(request))

    async def unload(self) -> None:
        if self.remote is not None:
            await self.remote.close()
            self.remote = None

    async def _retrying(self, call: Callable[[], Awaitable[T]]) -> T:
        attempt = 0
        while True:
            try:
                return await call()
            except RemoteDown as exc:
                if attempt >= self.settings.retries:
                    if attempt:
                        exc.message += f" (after {attempt + 1} attempts)"
                    raise
            await asyncio.sleep(BACKOFF_S * 2**attempt)
            attempt += 1

    def outgoing(self, request: InferenceRequest, binary_outputs: bool = False) -> InferenceRequest:
        """The request as the remote gets it: its names for the model, the same tensors.

        The client's own request is left as it is: its parameters (``binary_data_output``...)
        still decide how this server encodes the answer.
        """
        parameters, outputs = request.parameters, request.outputs
        if binary_outputs:
            parameters = {**parameters, "binary_data_output": True}
            if outputs is not None:
                outputs = [RequestedOutput(o.name, {**o.parameters, "binary_data": True})
                           for o in outputs]
        return InferenceRequest(
            inputs=request.inputs,
            id=request.id,
            parameters=parameters,
            outputs=outputs,
            model_name=self.remote_name,
            model_version=self.remote_version,
        )


def parse_url(url: str, protocol: str | None) -> tuple[str, str]:
    """``(protocol, address)``: an HTTP base URL, or a gRPC ``host:port`` target."""
    parts = urlsplit(url if "://" in url else f"//{url}")
    schemes = {"http": "http", "https": "http", "grpc": "grpc", "": protocol or "http"}
    if parts.scheme not in schemes:
        raise LoadError(f"url {url!r}: use http://, https:// or grpc:// (or host:port)")
    chosen = schemes[parts.scheme]
    if protocol is not None and protocol != chosen:
        raise LoadError(f"url {url!r} is {chosen} but parameters.protocol says {protocol}")
    try:
        port = parts.port
    except ValueError:
        raise LoadError(f"url {url!r} has an invalid port") from None
    if not parts.hostname:
        raise LoadError(f"url {url!r} names no host")
    if chosen == "grpc":
        if parts.path.strip("/") or port is None:
            raise LoadError(f"url {url!r}: a gRPC address is host:port, with no path")
        return chosen, parts.netloc
    return chosen, f"{parts.scheme or 'http'}://{parts.netloc}{parts.path.rstrip('/')}"


def _specs(raw: Any, field: str, where: str) -> list[TensorSpec]:
    try:
        specs = [TensorSpec(str(t["name"]), str(t["datatype"]), tuple(int(d) for d in t["shape"]))
                 for t in raw or ()]
    except (KeyError, TypeError, ValueError) as exc:
        raise LoadError(f"{where}: unreadable metadata {field}: {exc!r}") from None
    unknown = [s.datatype for s in specs if s.datatype not in DATATYPES]
    if unknown:
        raise LoadError(f"{where}: metadata {field} use unknown datatypes {unknown}")
    return specs


class Remote(Protocol):
    async def ready(self) -> bool: ...
    async def metadata(self) -> dict[str, Any]: ...
    async def infer(self, request: InferenceRequest) -> InferenceResponse: ...
    async def close(self) -> None: ...


class HttpRemote:
    """V2 REST with the binary tensor extension, over one keep-alive aiohttp session.

    aiohttp rather than httpx: on this path httpx's AsyncClient costs about 0.9 ms more per
    request (p50 1.47 ms against 0.59 ms for a one-row call to a local Shoal, 2 cores).

    With ``binary`` off, tensors travel as JSON ``data`` both ways: the V2 protocol's base,
    for a server without the binary extension (the ``process`` runtime's programs, unless
    they list ``binary_tensor_data`` in their server metadata).
    """

    def __init__(self, model: TritonModel, binary: bool = True) -> None:
        self.model = model
        self.binary = binary
        self.url = f"{model.address}/v2/models/{quote(model.remote_name, safe='')}"
        if model.remote_version:
            self.url += f"/versions/{quote(model.remote_version, safe='')}"
        self.session = self.open()

    def open(self) -> Any:
        """The connection pool ``_send`` uses (a subclass may bring another, with its own
        ``_send`` and ``close``: the process runtime's loopback client)."""
        timeout = self.model.settings.timeout
        return aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=timeout, sock_connect=min(timeout, CONNECT_TIMEOUT_S))
        )

    async def ready(self) -> bool:
        status, _, _ = await self._send("GET", f"{self.url}/ready")
        return status == 200

    async def metadata(self) -> dict[str, Any]:
        _, _, content = await self._send("GET", self.url)
        try:
            return v2_json.parse_json_object(content, "metadata")
        except InvalidInput as exc:
            raise ModelFailure(f"{self.model.where} sent unreadable {exc}") from None

    async def extensions(self) -> list[str]:
        """The V2 extensions the server lists in its metadata (``GET /v2``); none if it does
        not answer that."""
        try:
            _, _, content = await self._send("GET", f"{self.model.address}/v2")
            listed = v2_json.parse_json_object(content, "server metadata").get("extensions")
        except (ShoalError, InvalidInput):
            return []
        return [str(e) for e in listed] if isinstance(listed, list) else []

    async def infer(self, request: InferenceRequest) -> InferenceResponse:
        if self.binary:
            body, header_length = v2_json.encode_request(
                self.model.outgoing(request, binary_outputs=True)
            )
            sent = {"Inference-Header-Content-Length": str(header_length),
                    "Content-Type": "application/octet-stream"}
        else:
            body = json_request(self.model.outgoing(request), self.model.where)
            sent = {"Content-Type": "application/json"}
        if tracing.TRACER is None:
            _, headers, content = await self._send(
                "POST", f"{self.url}/infer", data=body, headers=sent
            )
        else:
            with tracing.client_span(self.model.call_span, self.model.traced_call) as context:
                _, headers, content = await self._send(
                    "POST", f"{self.url}/infer", data=body, headers={**sent, **context}
                )
        length = headers.get(v2_json.HEADER_LENGTH)
        try:
            return v2_json.decode_response(content, None if length is None else int(length))
        except (InvalidInput, ValueError) as exc:
            raise ModelFailure(f"{self.model.where} sent a response Shoal cannot read: {exc}") from None

    async def close(self) -> None:
        await self.session.close()

    async def _send(self, method: str, url: str, **kwargs: Any) -> tuple[int, Any, bytes]:
        where = self.model.where
        try:
            async with self.session.request(method, url, **kwargs) as response:
                content = await response.read()
        except aiohttp.ConnectionTimeoutError:
            raise RemoteUnreachable(f"{where}: no connection within {CONNECT_TIMEOUT_S:g} s") from None
        except (asyncio.TimeoutError, TimeoutError):
            raise DeadlineExceeded(
                f"{where} did not answer within {self.model.settings.timeout:g} s"
            ) from None
        except aiohttp.ClientError as exc:  # refused, reset, closed mid-answer
            raise RemoteUnreachable(f"{where} is unreachable: {exc or type(exc).__name__}") from None
        if response.status >= 400:
            raise http_error(response.status, error_message(content, response.reason), where)
        return response.status, response.headers, content


#: How a client asks Shoal for binary outputs: between that client and Shoal only, never
#: forwarded to a server that speaks JSON alone.
BINARY_PARAMETERS = ("binary_data_output", "binary_data")


def json_request(request: InferenceRequest, where: str) -> bytes:
    """A V2 REST request body with every tensor as JSON ``data`` (no binary extension)."""
    inputs = []
    for tensor in request.inputs:
        try:
            data = v2_json.json_data(tensor)
        except InvalidInput:  # BYTES that are not UTF-8: JSON strings cannot carry them
            raise InvalidInput(
                f"{where} takes JSON tensors only, and input {tensor.name!r} holds BYTES "
                "that are not UTF-8 text"
            ) from None
        entry: dict[str, Any] = {"name": tensor.name, "datatype": tensor.datatype,
                                 "shape": tensor.shape, "data": data}
        if tensor.parameters:
            entry["parameters"] = tensor.parameters
        inputs.append(entry)
    body: dict[str, Any] = {"inputs": inputs}
    if request.id is not None:
        body["id"] = request.id
    parameters = {k: v for k, v in request.parameters.items() if k not in BINARY_PARAMETERS}
    if parameters:
        body["parameters"] = parameters
    if request.outputs is not None:
        body["outputs"] = v2_json.requested_outputs([
            RequestedOutput(o.name, {k: v for k, v in o.parameters.items()
                                     if k not in BINARY_PARAMETERS})
            for o in request.outputs
        ])
    return v2_json.dumps(body)


def error_message(content: bytes, reason: str | None) -> str:
    """A remote's error answer in a few words: its V2 ``error`` field, else its body's start."""
    try:
        return str(v2_json.parse_json_object(content)["error"])
    except (InvalidInput, KeyError):
        return content.decode("utf-8", "replace").strip()[:500] or reason or "no message"


def http_error(status: int, message: str, where: str) -> ShoalError:
    """The remote's HTTP error as the Shoal error a client of this model should see.

    A 404 means the remote lost the model, which is this model being unavailable, not absent.
    """
    text = f"{where} answered {status}: {message}"
    if status == 503:
        return RemoteDown(text)
    if status == 404:
        return Unavailable(text)
    if status == 413:
        return PayloadTooLarge(text)
    if status == 429:
        return Overloaded(text)
    if status == 501:
        return NotSupported(text)
    if status == 504:
        return DeadlineExceeded(text)
    if status < 500:
        return InvalidInput(text)
    return ModelFailure(text)


class GrpcRemote:
    """V2 gRPC with raw contents, over one ``grpc.aio`` channel."""

    def __init__(self, model: TritonModel) -> None:
        self.model = model
        self.channel = grpc.aio.insecure_channel(model.address, options=GRPC_OPTIONS)
        self.stub = pb_grpc.GRPCInferenceServiceStub(self.channel)

    async def ready(self) -> bool:
        message = pb.ModelReadyRequest(
            name=self.model.remote_name, version=self.model.remote_version or ""
        )
        return bool((await self._call(self.stub.ModelReady, message)).ready)

    async def metadata(self) -> dict[str, Any]:
        message = pb.ModelMetadataRequest(
            name=self.model.remote_name, version=self.model.remote_version or ""
        )
        answer = await self._call(self.stub.ModelMetadata, message)
        return {
            "platform": answer.platform,
            "inputs": [_tensor_metadata(t) for t in answer.inputs],
            "outputs": [_tensor_metadata(t) for t in answer.outputs],
        }

    async def infer(self, request: InferenceRequest) -> InferenceResponse:
        message = v2_grpc.request_to_proto(self.model.outgoing(request), raw=True)
        if tracing.TRACER is None:
            answer = await self._call(self.stub.ModelInfer, message)
        else:
            with tracing.client_span(self.model.call_span, self.model.traced_call) as context:
                answer = await self._call(self.stub.ModelInfer, message, tuple(context.items()))
        try:
            return v2_grpc.decode_response(answer)
        except InvalidInput as exc:
            raise ModelFailure(f"{self.model.where} sent a response Shoal cannot read: {exc}") from None

    async def close(self) -> None:
        await self.channel.close()

    async def _call(
        self, method: Any, message: Any, metadata: tuple[tuple[str, str], ...] | None = None
    ) -> Any:
        try:
            return await method(message, timeout=self.model.settings.timeout, metadata=metadata)
        except grpc.aio.AioRpcError as exc:
            if exc.code() is grpc.StatusCode.DEADLINE_EXCEEDED:
                raise DeadlineExceeded(
                    f"{self.model.where} did not answer within {self.model.settings.timeout:g} s"
                ) from None
            raise grpc_error(exc.code(), exc.details() or "", self.model.where,
                             answered=_answered(self.channel)) from None


def _tensor_metadata(tensor: Any) -> dict[str, Any]:
    return {"name": tensor.name, "datatype": tensor.datatype, "shape": list(tensor.shape)}


def _answered(channel: grpc.aio.Channel) -> bool:
    """After an error status: whether the remote server sent it (an UNAVAILABLE it answers on
    purpose), rather than the client's transport (no connection, the connection lost). gRPC
    tells them apart by nothing but the words; the channel does: still READY after an
    answer, IDLE or TRANSIENT_FAILURE once its connection failed or was lost."""
    return channel.get_state(try_to_connect=False) is grpc.ChannelConnectivity.READY


def grpc_error(code: grpc.StatusCode, message: str, where: str,
               answered: bool | None = None) -> ShoalError:
    """The remote's gRPC status as the Shoal error a client of this model should see.
    ``answered``: whether the remote server sent it (an UNAVAILABLE it sends is not a failure
    to reach it), when the caller knows."""
    if code is grpc.StatusCode.UNAVAILABLE:
        if answered:
            return RemoteDown(f"{where} answered UNAVAILABLE: {message}")
        if answered is None:
            return RemoteDown(f"{where} is unreachable: {message}")
        return RemoteUnreachable(f"{where} is unreachable: {message}")
    text = f"{where} answered {code.name}: {message}"
    if code is grpc.StatusCode.DEADLINE_EXCEEDED:
        return DeadlineExceeded(text)
    if code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.OUT_OF_RANGE,
                grpc.StatusCode.FAILED_PRECONDITION):
        return InvalidInput(text)
    if code in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.CANCELLED):
        return Unavailable(text)
    if code is grpc.StatusCode.RESOURCE_EXHAUSTED:
        return Overloaded(text)
    if code is grpc.StatusCode.UNIMPLEMENTED:
        return NotSupported(text)
    return ModelFailure(text)
