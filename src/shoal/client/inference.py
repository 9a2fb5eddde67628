"""A Python client for Shoal (and any V2 server): numpy in, numpy out, over REST or gRPC.

    from shoal.client import Client

    with Client("http://127.0.0.1:8080") as client:          # or Client(grpc="127.0.0.1:8081")
        print(client.models())                                # name, version, state, reason
        result = client.infer("iris", [[5.1, 3.5, 1.4, 0.2]])
        print(result.output, result.model_version)            # numpy array, "2"

``AsyncClient`` has the same methods as coroutines. Inputs are a numpy array (or nested
lists) for a one-input model, a ``{name: array}`` dict, or a list of :class:`shoal.Tensor`.
A single input is named after the model's one declared input, and a row given without its
batch axis gets one when the model declares a batch axis (``[-1, 4]``). REST requests carry
tensors in the binary extension (no JSON number formatting on either side); gRPC uses
``raw_input_contents``. Errors raise :class:`ShoalClientError` with the server's message.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import numpy as np
import orjson

from ..datatypes import NUMPY_DTYPES
from ..errors import ShoalError
from ..protocol import v2_json
from ..types import InferenceRequest, InferenceResponse, RequestedOutput, Tensor
from .errors import GRPC_TO_HTTP, ShoalClientError
from .transport import MESSAGE_LIMIT, HttpTransport, Tls, parse_url

DEFAULT_URL = "http://127.0.0.1:8080"
DEFAULT_GRPC_PORT = 8081
_HEADER_LENGTH = "inference-header-content-length"


@dataclass(slots=True)
class InferResult:
    model_name: str
    model_version: str | None
    id: str | None
    outputs: dict[str, np.ndarray]
    datatypes: dict[str, str] = field(default_factory=dict)
    parameters: dict[str, Any] = field(default_factory=dict)

    def __getitem__(self, name: str) -> np.ndarray:
        return self.outputs[name]

    @property
    def output(self) -> np.ndarray:
        """The only output (a KeyError naming them when there are several)."""
        if len(self.outputs) != 1:
            raise KeyError(f"the answer has {len(self.outputs)} outputs: {list(self.outputs)}")
        return next(iter(self.outputs.values()))

    @classmethod
    def of(cls, response: InferenceResponse) -> InferResult:
        outputs, datatypes = {}, {}
        for tensor in response.outputs:
            data = tensor.data
            if tensor.datatype == "BYTES":
                data = np.vectorize(_text, otypes=[object])(data) if data.size else data
            size = int(np.prod(tensor.shape)) if tensor.shape else 1
            outputs[tensor.name] = data.reshape(tensor.shape) if data.size == size else data
            datatypes[tensor.name] = tensor.datatype
        return cls(response.model_name, response.model_version, response.id, outputs, datatypes,
                   dict(response.parameters))


def _text(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray)):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return bytes(value)
    return value


def given_as_tensors(inputs: Any) -> bool:
    """Whether the caller built the tensors already (nothing to name or shape)."""
    return isinstance(inputs, Tensor) or (
        isinstance(inputs, (list, tuple)) and bool(inputs) and all(isinstance(t, Tensor) for t in inputs)
    )


def as_tensors(inputs: Any, declared: list[dict[str, Any]] | None = None) -> list[Tensor]:
    """The request's tensors from what the caller gave, named and shaped after the model's
    declared inputs (``metadata()["inputs"]``) when those are known."""
    declared = declared or []
    if given_as_tensors(inputs):
        return [inputs] if isinstance(inputs, Tensor) else list(inputs)
    if isinstance(inputs, dict):
        specs = {d["name"]: d for d in declared}
        return [_tensor(name, value, specs.get(name)) for name, value in inputs.items()]
    spec = declared[0] if len(declared) == 1 else None
    return [_tensor(spec["name"] if spec else "input-0", inputs, spec)]


def _tensor(name: str, value: Any, spec: dict[str, Any] | None) -> Tensor:
    tensor = Tensor.from_numpy(name, value)
    if spec is not None and spec.get("datatype") in NUMPY_DTYPES and tensor.datatype != spec["datatype"]:
        declared = NUMPY_DTYPES[spec["datatype"]]
        # Numbers as the model declares them (JSON and CSV give FP64): floats into a narrower
        # float, integers into floats. Never floats into integers, which would drop the
        # fraction silently: the server says no to those, naming the value.
        if declared.kind == "f" and tensor.data.dtype.kind in "iuf":
            tensor = Tensor(name, spec["datatype"], tensor.shape, tensor.data.astype(declared))
    if spec is not None:
        shape = list(spec.get("shape") or [])
        if len(shape) == len(tensor.shape) + 1 and shape[0] == -1:
            # A row sent without its batch axis, to a model that declares one.
            tensor = Tensor(name, tensor.datatype, (1, *tensor.shape), tensor.data.reshape(1, *tensor.shape))
    return tensor


def infer_request(
    tensors: list[Tensor], outputs: list[str] | None, parameters: dict[str, Any] | None,
    request_id: str | None,
) -> InferenceRequest:
    return InferenceRequest(
        tensors, id=request_id, parameters=dict(parameters or {}),
        outputs=[RequestedOutput(o) for o in outputs] if outputs else None,
    )


def rest_infer_body(request: InferenceRequest, binary_output: bool = True) -> tuple[bytes, dict[str, str]]:
    """The V2 REST body (inputs in the binary extension) and its headers."""
    if binary_output:
        request.parameters = {**request.parameters, "binary_data_output": True}
    body, header_length = v2_json.encode_request(request)
    return body, {"Content-Type": "application/octet-stream",
                  "Inference-Header-Content-Length": str(header_length)}


def rest_result(status: int, headers: dict[str, str], content: bytes) -> InferResult:
    check_rest(status, content)
    length = headers.get(_HEADER_LENGTH)
    try:
        return InferResult.of(v2_json.decode_response(content, None if length is None else int(length)))
    except (ShoalError, ValueError) as exc:
        raise ShoalClientError(status, f"the server's answer is not a V2 response: {exc}") from None


def check_rest(status: int, content: bytes) -> Any:
    """The JSON body of a successful answer; ShoalClientError with the server's message
    otherwise."""
    if status >= 400:
        raise ShoalClientError(status, error_message(content) or f"HTTP {status}")
    return content


def error_message(content: bytes) -> str:
    try:
        body = orjson.loads(content)
    except orjson.JSONDecodeError:
        return _quoted(content)
    if isinstance(body, dict):
        if isinstance(body.get("error"), str):
            return body["error"]
        status = body.get("status")
        if isinstance(status, dict) and isinstance(status.get("info"), str):
            return status["info"]  # a Seldon answer
    return _quoted(content)


def _quoted(content: bytes) -> str:
    """An answer that is not Shoal's error JSON (a proxy's HTML page), cut to a message."""
    text = content.decode("utf-8", "replace").strip()
    return text if len(text) <= MESSAGE_LIMIT else text[:MESSAGE_LIMIT] + "…"


def json_object(status: int, content: bytes) -> dict[str, Any]:
    value = json_of(status, content)
    if not isinstance(value, dict):
        raise ShoalClientError(status, f"the server answered {type(value).__name__}, not a JSON object")
    return value


def json_of(status: int, content: bytes) -> Any:
    check_rest(status, content)
    try:
        return orjson.loads(content) if content.strip() else {}
    except orjson.JSONDecodeError:
        raise ShoalClientError(status, f"the server answered something that is not JSON: {content[:200]!r}") from None


def index_rows(rows: Any) -> list[dict[str, str]]:
    """Repository index rows with every field (the protocol lets a server leave out an empty
    version or reason): the same shape over REST and gRPC."""
    return [{"name": str(r.get("name", "")), "version": str(r.get("version", "")),
             "state": str(r.get("state", "")), "reason": str(r.get("reason", ""))}
            for r in rows if isinstance(r, dict)]


def model_path(name: str, version: str | None, suffix: str = "") -> str:
    path = f"/v2/models/{quote(name, safe='')}"
    if version:
        path += f"/versions/{quote(version, safe='')}"
    return path + suffix


def grpc_target(url: str | None, grpc: str | bool | None) -> str | None:
    """The gRPC address to use: ``grpc`` if it is one, the REST URL's host on port 8081 if
    ``grpc`` is True, None for REST."""
    if not grpc:
        return None
    if isinstance(grpc, str):
        return grpc.split("://", 1)[-1].rstrip("/")
    from urllib.parse import urlsplit

    host = urlsplit(url or DEFAULT_URL).hostname or "127.0.0.1"
    return f"[{host}]:{DEFAULT_GRPC_PORT}" if ":" in host else f"{host}:{DEFAULT_GRPC_PORT}"


def grpc_secure(url: str | None, grpc: str | bool | None, tls: Tls) -> bool:
    """gRPC over TLS when the REST URL is https, the gRPC address says grpcs:// or https://,
    or TLS files were given."""
    if isinstance(grpc, str) and "://" in grpc:
        return grpc.split("://", 1)[0] in ("grpcs", "https")
    return (url or "").startswith("https://") or any((tls.cafile, tls.certfile))


def grpc_error(exc: Any) -> ShoalClientError:
    code = exc.code()
    name = code.name if code is not None else "UNKNOWN"
    return ShoalClientError(GRPC_TO_HTTP.get(name, 500), exc.details() or name, name)


def grpc_metadata(token: str | None) -> tuple[tuple[str, str], ...] | None:
    return (("authorization", f"Bearer {token}"),) if token else None


def grpc_model_metadata(message: Any) -> dict[str, Any]:
    def tensors(items: Any) -> list[dict[str, Any]]:
        return [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in items]

    return {"name": message.name, "versions": list(message.versions), "platform": message.platform,
            "inputs": tensors(message.inputs), "outputs": tensors(message.outputs)}


def _grpc_modules() -> tuple[Any, Any, Any]:
    import grpc

    from ..protocol.grpc_gen import grpc_service_pb2 as pb
    from ..protocol.grpc_gen import grpc_service_pb2_grpc as pb_grpc

    return grpc, pb, pb_grpc


class Client:
    """Synchronous client. ``url``: the server's REST address; ``grpc``: a gRPC address
    ``host:port`` (or True for the REST host on port 8081) to use gRPC instead."""

    def __init__(
        self, url: str = DEFAULT_URL, grpc: str | bool | None = None, token: str | None = None,
        timeout: float = 30.0, cafile: str | None = None, certfile: str | None = None,
        keyfile: str | None = None,
    ) -> None:
        self.url = url
        self.token = token
        self.timeout = timeout
        self.tls = Tls(cafile, certfile, keyfile)
        self.target = grpc_target(url, grpc)
        self._secure = grpc_secure(url, grpc, self.tls)
        self._http = HttpTransport(url, token, timeout, tls=self.tls) if self.target is None else None
        self._channel: Any = None
        self._stub: Any = None
        self._metadata: dict[tuple[str, str | None], list[dict[str, Any]]] = {}

    # -- plumbing ----------------------------------------------------------------------------

    def _post(self, path: str, body: bytes = b"", headers: dict[str, str] | None = None) -> Any:
        return json_of(*self._request("POST", path, body, headers or {"Content-Type": "application/json"}))

    def _request(self, method: str, path: str, body: bytes | None = None,
                 headers: dict[str, str] | None = None) -> tuple[int, bytes]:
        assert self._http is not None
        status, _, content = self._http.request(method, path, body, headers)
        return status, content

    def _rpc(self, name: str, message: Any) -> Any:
        grpc, _, pb_grpc = _grpc_modules()
        if self._stub is None:
            self._channel = (grpc.secure_channel(self.target, self.tls.grpc_credentials())
                             if self._secure else grpc.insecure_channel(self.target))
            self._stub = pb_grpc.GRPCInferenceServiceStub(self._channel)
        try:
            return getattr(self._stub, name)(message, timeout=self.timeout,
                                             metadata=grpc_metadata(self.token))
        except grpc.RpcError as exc:
            raise grpc_error(exc) from None

    @property
    def _pb(self) -> Any:
        return _grpc_modules()[1]

    # -- the API -------------------------------------------------------------------------------

    def live(self) -> bool:
        if self.target is not None:
            return self._rpc("ServerLive", self._pb.ServerLiveRequest()).live
        status, _ = self._request("GET", "/v2/health/live")
        return status == 200

    def ready(self, model: str | None = None, version: str | None = None) -> bool:
        """Whether the server (or a model) is ready; False for a model that is not served."""
        if self.target is not None:
            if model is None:
                return self._rpc("ServerReady", self._pb.ServerReadyRequest()).ready
            try:
                request = self._pb.ModelReadyRequest(name=model, version=version or "")
                return self._rpc("ModelReady", request).ready
            except ShoalClientError as exc:
                if exc.status in (404, 503):
                    return False
                raise
        path = "/v2/health/ready" if model is None else model_path(model, version, "/ready")
        return self._request("GET", path)[0] == 200

    def models(self) -> list[dict[str, str]]:
        """Every model and graph of the repository: name, version, state, reason."""
        if self.target is not None:
            reply = self._rpc("RepositoryIndex", self._pb.RepositoryIndexRequest())
            return [{"name": m.name, "version": m.version, "state": m.state, "reason": m.reason}
                    for m in reply.models]
        return index_rows(self._post("/v2/repository/index", b"{}"))

    def metadata(self, model: str, version: str | None = None) -> dict[str, Any]:
        if self.target is not None:
            reply = self._rpc("ModelMetadata", self._pb.ModelMetadataRequest(name=model, version=version or ""))
            return grpc_model_metadata(reply)
        assert self._http is not None
        return json_object(*self._request("GET", model_path(model, version)))

    def infer(
        self, model: str, inputs: Any, version: str | None = None, outputs: list[str] | None = None,
        parameters: dict[str, Any] | None = None, request_id: str | None = None,
    ) -> InferResult:
        tensors = as_tensors(inputs, self._declared(model, version, inputs))
        request = infer_request(tensors, outputs, parameters, request_id)
        if self.target is not None:
            from ..protocol import v2_grpc

            request.model_name, request.model_version = model, version
            reply = self._rpc("ModelInfer", v2_grpc.request_to_proto(request, raw=True))
            return InferResult.of(v2_grpc.decode_response(reply))
        body, headers = rest_infer_body(request)
        assert self._http is not None
        return rest_result(*self._http.request("POST", model_path(model, version, "/infer"), body, headers))

    def infer_json(self, model: str, inputs: Any, version: str | None = None,
                   outputs: list[str] | None = None,
                   parameters: dict[str, Any] | None = None) -> dict[str, Any]:
        """The server's V2 JSON answer as it came (REST only): for ``shoal predict --json``."""
        if self.target is not None:
            raise ShoalClientError(0, "a JSON answer is a REST answer: use a Client without grpc")
        tensors = as_tensors(inputs, self._declared(model, version, inputs))
        request = infer_request(tensors, outputs, parameters, None)
        body, headers = rest_infer_body(request, binary_output=False)
        status, content = self._request("POST", model_path(model, version, "/infer"), body, headers)
        return json_object(status, content)

    def predict_v1(self, model: str, instances: Any, version: str | None = None) -> dict[str, Any]:
        """V1 / TF Serving ``:predict`` with ``{"instances": ...}`` (REST only); a dict with
        ``instances`` or ``inputs`` is sent as the whole body."""
        if self.target is not None:
            raise ShoalClientError(0, "V1 is a REST protocol: use a Client without grpc")
        path = f"/v1/models/{quote(model, safe='')}"
        if version:
            path += f"/versions/{quote(version, safe='')}"
        if isinstance(instances, dict) and ("instances" in instances or "inputs" in instances):
            payload = instances
        else:
            payload = {"instances": np.asarray(instances).tolist()
                       if isinstance(instances, np.ndarray) else instances}
        status, content = self._request("POST", path + ":predict", v2_json.dumps(payload),
                                        {"Content-Type": "application/json"})
        return json_object(status, content)

    def load(self, model: str) -> None:
        if self.target is not None:
            self._rpc("RepositoryModelLoad", self._pb.RepositoryModelLoadRequest(model_name=model))
        else:
            self._post(f"/v2/repository/models/{quote(model, safe='')}/load")

    def unload(self, model: str) -> None:
        if self.target is not None:
            self._rpc("RepositoryModelUnload", self._pb.RepositoryModelUnloadRequest(model_name=model))
        else:
            self._post(f"/v2/repository/models/{quote(model, safe='')}/unload")

    def _declared(self, model: str, version: str | None, inputs: Any) -> list[dict[str, Any]]:
        """The model's declared inputs, asked once per model, only when they are needed: to
        name a single unnamed input or to add a batch axis."""
        if given_as_tensors(inputs):
            return []
        key = (model, version)
        if key not in self._metadata:
            try:
                self._metadata[key] = list(self.metadata(model, version).get("inputs") or [])
            except ShoalClientError as exc:
                if exc.status in (0, 401):
                    raise
                self._metadata[key] = []  # the inference itself will say what is wrong
        return self._metadata[key]

    def close(self) -> None:
        if self._http is not None:
            self._http.close()
        if self._channel is not None:
            self._channel.close()
            self._channel = self._stub = None

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncClient:
    """The same API as :class:`Client`, as coroutines (httpx over REST, grpc.aio over gRPC)."""

    def __init__(
        self, url: str = DEFAULT_URL, grpc: str | bool | None = None, token: str | None = None,
        timeout: float = 30.0, cafile: str | None = None, certfile: str | None = None,
        keyfile: str | None = None,
    ) -> None:
        parts = parse_url(url)
        self.url = parts.geturl().rstrip("/")
        self.token = token
        self.timeout = timeout
        self.tls = Tls(cafile, certfile, keyfile)
        self.target = grpc_target(url, grpc)
        self._secure = grpc_secure(url, grpc, self.tls)
        self._http: Any = None
        self._channel: Any = None
        self._stub: Any = None
        self._metadata: dict[tuple[str, str | None], list[dict[str, Any]]] = {}

    async def _request(self, method: str, path: str, body: bytes | None = None,
                       headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        import httpx

        if self._http is None:
            auth = {"Authorization": f"Bearer {self.token}"} if self.token else {}
            self._http = httpx.AsyncClient(base_url=self.url, headers=auth, timeout=self.timeout,
                                           verify=self.tls.context())
        try:
            reply = await self._http.request(method, path, content=body, headers=headers)
        except httpx.HTTPError as exc:
            raise ShoalClientError(0, f"cannot reach {self.url}: {exc}") from None
        return reply.status_code, {k.lower(): v for k, v in reply.headers.items()}, reply.content

    async def _json(self, method: str, path: str, body: bytes | None = None) -> Any:
        status, _, content = await self._request(method, path, body,
                                                 {"Content-Type": "application/json"} if body is not None else None)
        return json_of(status, content)

    async def _rpc(self, name: str, message: Any) -> Any:
        grpc, _, pb_grpc = _grpc_modules()
        if self._stub is None:
            self._channel = (grpc.aio.secure_channel(self.target, self.tls.grpc_credentials())
                             if self._secure else grpc.aio.insecure_channel(self.target))
            self._stub = pb_grpc.GRPCInferenceServiceStub(self._channel)
        try:
            return await getattr(self._stub, name)(message, timeout=self.timeout,
                                                   metadata=grpc_metadata(self.token))
        except grpc.aio.AioRpcError as exc:
            raise grpc_error(exc) from None

    @property
    def _pb(self) -> Any:
        return _grpc_modules()[1]

    async def live(self) -> bool:
        if self.target is not None:
            return (await self._rpc("ServerLive", self._pb.ServerLiveRequest())).live
        return (await self._request("GET", "/v2/health/live"))[0] == 200

    async def ready(self, model: str | None = None, version: str | None = None) -> bool:
        if self.target is not None:
            if model is None:
                return (await self._rpc("ServerReady", self._pb.ServerReadyRequest())).ready
            try:
                request = self._pb.ModelReadyRequest(name=model, version=version or "")
                return (await self._rpc("ModelReady", request)).ready
            except ShoalClientError as exc:
                if exc.status in (404, 503):
                    return False
                raise
        path = "/v2/health/ready" if model is None else model_path(model, version, "/ready")
        return (await self._request("GET", path))[0] == 200

    async def models(self) -> list[dict[str, str]]:
        if self.target is not None:
            reply = await self._rpc("RepositoryIndex", self._pb.RepositoryIndexRequest())
            return [{"name": m.name, "version": m.version, "state": m.state, "reason": m.reason}
                    for m in reply.models]
        return index_rows(await self._json("POST", "/v2/repository/index", b"{}"))

    async def metadata(self, model: str, version: str | None = None) -> dict[str, Any]:
        if self.target is not None:
            reply = await self._rpc("ModelMetadata", self._pb.ModelMetadataRequest(name=model, version=version or ""))
            return grpc_model_metadata(reply)
        status, _, content = await self._request("GET", model_path(model, version))
        return json_object(status, content)

    async def infer(
        self, model: str, inputs: Any, version: str | None = None, outputs: list[str] | None = None,
        parameters: dict[str, Any] | None = None, request_id: str | None = None,
    ) -> InferResult:
        tensors = as_tensors(inputs, await self._declared(model, version, inputs))
        request = infer_request(tensors, outputs, parameters, request_id)
        if self.target is not None:
            from ..protocol import v2_grpc

            request.model_name, request.model_version = model, version
            reply = await self._rpc("ModelInfer", v2_grpc.request_to_proto(request, raw=True))
            return InferResult.of(v2_grpc.decode_response(reply))
        body, headers = rest_infer_body(request)
        return rest_result(*await self._request("POST", model_path(model, version, "/infer"), body, headers))

    async def load(self, model: str) -> None:
        if self.target is not None:
            await self._rpc("RepositoryModelLoad", self._pb.RepositoryModelLoadRequest(model_name=model))
        else:
            await self._json("POST", f"/v2/repository/models/{quote(model, safe='')}/load", b"")

    async def unload(self, model: str) -> None:
        if self.target is not None:
            await self._rpc("RepositoryModelUnload", self._pb.RepositoryModelUnloadRequest(model_name=model))
        else:
            await self._json("POST", f"/v2/repository/models/{quote(model, safe='')}/unload", b"")

    async def _declared(self, model: str, version: str | None, inputs: Any) -> list[dict[str, Any]]:
        if given_as_tensors(inputs):
            return []
        key = (model, version)
        if key not in self._metadata:
            try:
                self._metadata[key] = list((await self.metadata(model, version)).get("inputs") or [])
            except ShoalClientError as exc:
                if exc.status in (0, 401):
                    raise
                self._metadata[key] = []
        return self._metadata[key]

    async def close(self) -> None:
        if self._http is not None:
            await self._http.aclose()
            self._http = None
        if self._channel is not None:
            await self._channel.close()
            self._channel = self._stub = None

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
