"""What the request path hands the payload logger, and the CloudEvents made from it.

The request path only fills a :class:`Record` (references to what it already has: the body
as received, the decoded request, the response and the bytes sent) and puts it on a queue.
Everything that costs something happens on the logger's thread: turning tensors into V2
JSON for protocols whose bodies are not JSON (gRPC, the binary extension), building the
CloudEvents, and writing them out.

Events are CloudEvents 1.0 with KServe's logger's types and extension attributes, so
consumers of KServe's logger read them unchanged: ``type``
``org.kubeflow.serving.inference.request`` / ``...response``, the same ``id`` for both events of
a request, and ``inferenceservicename``, ``endpoint``, ``component``, ``namespace``,
``metadata`` (the allow-listed request headers as JSON), plus Shoal's ``modelversion``,
``protocol``, ``status``, ``variant`` and ``routing``. They are written here with orjson
rather than built through the ``cloudevents`` SDK objects: the SDK costs about 15 µs per event
(attribute validation and the standard library's JSON), as much as a whole prediction of a
small model, and this thread shares the server's CPU. Every sink's output is parsed by the
SDK in the tests (``tests/e2e/test_payload_*.py``, ``tests/observe/test_payload_*.py``).
"""

from __future__ import annotations

import base64
import os
import re
import time
import socket
from dataclasses import dataclass
from typing import Any

import orjson

from ...datatypes import canonical
from ...protocol.v2_json import json_array, requested_outputs, response_fields
from ...types import InferenceRequest, InferenceResponse, Tensor

REQUEST_TYPE = "org.kubeflow.serving.inference.request"
RESPONSE_TYPE = "org.kubeflow.serving.inference.response"
SPECVERSION = "1.0"
JSON = "application/json"
#: A request event of a request that failed before its body could be read as JSON.
OCTET_STREAM = "application/octet-stream"
#: A response parameter / attribute carrying the rollout variant that answered.
VARIANT_PARAMETER = "shoal-variant"
ROUTING_PARAMETER = "routing"

_HOST = socket.gethostname()


def namespace() -> str | None:
    """The Kubernetes namespace, where known: ``POD_NAMESPACE`` (the downward API), else the
    service account's namespace file."""
    name = os.environ.get("POD_NAMESPACE")
    if name:
        return name
    try:
        with open("/var/run/secrets/kubernetes.io/serviceaccount/namespace") as handle:
            return handle.read().strip() or None
    except OSError:
        return None


@dataclass(slots=True)
class Record:
    """One logged request, as the request path leaves it (nothing rendered yet)."""

    model: str
    """The served name (``inferenceservicename``): a model, a graph, or a rollout's name."""
    version: str
    """The version that served it (``model:version`` for a rollout variant of another model)."""
    protocol: str
    component: str
    """``predictor`` for a model, ``graph`` for a graph."""
    arrived: float
    """``time.time()`` when the request arrived."""
    finished: float
    request: InferenceRequest | None
    body: bytes | None
    """The request body as received, for JSON protocols; None: render ``request``."""
    response: InferenceResponse | None
    sent: bytes | None
    """The response body as sent, for JSON protocols; None: render ``response``."""
    status: int
    error: str | None
    metadata: dict[str, list[str]] | None
    mode: str
    size: int
    """Bytes this record holds on to (its share of the in-memory queue's bound)."""
    event_id: str | None = None
    """The events' ``id``, fixed at the first rendering (the sink's and the dashboard's agree)."""


@dataclass(slots=True)
class Event:
    """A rendered CloudEvent: its attributes (all strings) and its data (JSON bytes, or raw
    bytes when ``attributes['datacontenttype']`` is not JSON; None: no data)."""

    attributes: dict[str, str]
    data: bytes | None

    @property
    def key(self) -> str:
        return self.attributes["id"]

    @property
    def model(self) -> str:
        return self.attributes.get("inferenceservicename", "")


def render(record: Record, source_prefix: str, space: str | None) -> list[Event]:
    """The record's events (request, response, or both, per its ``mode``)."""
    request = record.request
    response = record.response
    event_id = record.event_id
    if event_id is None:
        event_id = record.event_id = (
            request.id if request is not None and request.id else None) or new_event_id()
    common = {
        "specversion": SPECVERSION,
        "id": event_id,
        "source": f"{source_prefix}{record.model}",
        "inferenceservicename": record.model,
        "endpoint": "default",
        "component": record.component,
        "modelversion": record.version,
        "protocol": record.protocol,
        "status": str(record.status),
    }
    if space:
        common["namespace"] = space
    variant = _variant(response, record)
    if variant:
        common["variant"] = variant
        if variant == "canary":  # KServe's name for the canary's predictor
            common["endpoint"] = "canary"
    if response is not None:
        routing = response.parameters.get(ROUTING_PARAMETER)
        if isinstance(routing, str) and routing:
            common["routing"] = routing
    if record.metadata:
        common["metadata"] = orjson.dumps(record.metadata).decode()
    events = []
    if record.mode in ("all", "request"):
        data, content_type = _request_data(record)
        attributes = {**common, "type": REQUEST_TYPE, "time": _rfc3339(record.arrived)}
        if data is not None:
            attributes["datacontenttype"] = content_type
        events.append(Event(attributes, data))
    if record.mode in ("all", "response"):
        attributes = {**common, "type": RESPONSE_TYPE, "time": _rfc3339(record.finished),
                      "datacontenttype": JSON}
        events.append(Event(attributes, _response_data(record)))
    return events


def new_event_id() -> str:
    """128 random bits in UUID text form (``uuid.uuid4()`` costs three times as much)."""
    h = os.urandom(16).hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _variant(response: InferenceResponse | None, record: Record) -> str | None:
    if response is not None:
        value = response.parameters.get(VARIANT_PARAMETER)
        return value if isinstance(value, str) else None
    return None


def _request_data(record: Record) -> tuple[bytes | None, str]:
    body = record.body
    if body is not None:
        if record.status == 200 or _is_json(body):
            return body, JSON
        return body, OCTET_STREAM  # what a client sent that is not JSON: kept, as bytes
    if record.request is None:
        return None, JSON  # a gRPC message that could not be decoded: nothing readable
    return request_json(record.request), JSON


def _response_data(record: Record) -> bytes:
    if record.error is not None:
        return orjson.dumps({"error": record.error})
    if record.sent is not None:
        return record.sent
    if record.response is None:
        return b"null"
    return response_json(record.response)


def _is_json(body: bytes) -> bool:
    try:
        orjson.loads(body)
    except orjson.JSONDecodeError:
        return False
    return True


def request_json(request: InferenceRequest) -> bytes:
    """A request as V2 JSON, every tensor's data inline (how gRPC and binary requests are
    logged, so every record reads without the proto)."""
    body: dict[str, Any] = {}
    if request.id is not None:
        body["id"] = request.id
    if request.parameters:
        body["parameters"] = request.parameters
    body["inputs"] = [_tensor(t) for t in request.inputs]
    if request.outputs is not None:
        body["outputs"] = requested_outputs(request.outputs)
    return _dumps(body)


def response_json(response: InferenceResponse) -> bytes:
    body = response_fields(response)
    body["outputs"] = [_tensor(t) for t in response.outputs]
    return _dumps(body)


def _tensor(tensor: Tensor) -> dict[str, Any]:
    entry: dict[str, Any] = {"name": tensor.name, "datatype": tensor.datatype,
                             "shape": list(tensor.shape)}
    parameters = {k: v for k, v in tensor.parameters.items() if k != "binary_data_size"}
    if parameters:
        entry["parameters"] = parameters
    data = tensor.data.reshape(-1)
    if tensor.datatype == "BYTES":
        # Text as text; bytes that are not UTF-8 keep every byte visible (\xNN escapes).
        entry["data"] = [
            v.decode("utf-8", "backslashreplace") if isinstance(v, (bytes, bytearray)) else str(v)
            for v in data
        ]
    else:
        entry["data"] = json_array(canonical(data, tensor.datatype))
    return entry


def _fallback(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


def _dumps(value: Any) -> bytes:
    return orjson.dumps(value, default=_fallback, option=orjson.OPT_SERIALIZE_NUMPY)


_second: list[Any] = [None, ""]  # the last whole second formatted, and its text


def _rfc3339(seconds: float) -> str:
    """RFC 3339 in UTC with microseconds; the date and time part is formatted once a second."""
    whole = int(seconds)
    if _second[0] != whole:
        _second[0], _second[1] = whole, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole))
    return f"{_second[1]}.{int((seconds - whole) * 1e6):06d}Z"


def default_source_prefix() -> str:
    """``source`` is this prefix plus the served name: the host, so events from several
    servers can be told apart."""
    return f"shoal://{_HOST}/models/"


# -- the wire forms -------------------------------------------------------------------------

def structured(event: Event) -> bytes:
    """The event in the JSON event format (one line, no newline): the file sink's lines, the
    Kafka sink's message values, and the spool's lines."""
    body: dict[str, Any] = dict(event.attributes)
    if event.data is not None:
        if event.attributes.get("datacontenttype", JSON) == JSON:
            data = event.data
            if b"\n" in data or b"\r" in data:
                # A pretty-printed body: its line breaks can only sit between tokens (inside
                # a JSON string they are escaped), so as spaces they mean the same, and the
                # event stays one line.
                data = data.replace(b"\r", b" ").replace(b"\n", b" ")
            body["data"] = orjson.Fragment(data)  # already JSON: embedded as is
        else:
            body["data_base64"] = base64.b64encode(event.data).decode()
    return orjson.dumps(body)


def from_structured(line: bytes) -> Event:
    """The inverse of :func:`structured` (the spool reads its lines back with it)."""
    body = orjson.loads(line)
    data: bytes | None = None
    if "data" in body:
        data = orjson.dumps(body.pop("data"))
    elif "data_base64" in body:
        data = base64.b64decode(body.pop("data_base64"))
    return Event({k: str(v) for k, v in body.items()}, data)


#: What the HTTP binding lets a header value carry as is: printable ASCII but space, '"' and '%'.
_UNSAFE = re.compile(r"[^\x21\x23\x24\x26-\x7e]")


def binary_headers(event: Event) -> list[tuple[str, str]]:
    """HTTP binary content mode: ``ce-`` headers (values percent-encoded as the HTTP binding
    asks), and the data's content type as ``content-type``."""
    headers = []
    for name, value in event.attributes.items():
        if name == "datacontenttype":
            headers.append(("content-type", value))
        else:
            headers.append((f"ce-{name}", _header_value(value)))
    return headers


def _header_value(value: str) -> str:
    if _UNSAFE.search(value) is None:
        return value
    return "".join(
        chr(b) if _UNSAFE.match(chr(b)) is None else f"%{b:02X}" for b in value.encode("utf-8")
    )
