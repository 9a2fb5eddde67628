"""Seldon Core's protocol: ``SeldonMessage`` and ``Feedback`` as JSON <-> the neutral types.

A request carries one payload: ``data`` (``ndarray`` or ``tensor``, with column ``names``),
``strData``, ``jsonData`` or ``binData``; and ``meta`` (``puid`` the request id, ``tags``,
``routing``). The payload becomes one input tensor, named after the model's single declared
input (else ``input-0``). The answer mirrors the question's payload kind, as Seldon's wrapper
does; ``meta`` echoes the tags and carries the puid and the routing taken (node -> branch
index).

Every answer, errors included, is a ``SeldonMessage`` and nothing more: Seldon's clients
parse it as the proto (unknown fields refused), so one extra field loses the whole answer.
"""

from __future__ import annotations

import base64
import binascii
import math
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import orjson

from ..datatypes import canonical
from ..errors import InvalidInput, NotSupported
from ..types import InferenceRequest, InferenceResponse, Tensor, TensorSpec
from .v1 import DEFAULT_INPUT, json_tensor
from .v2_binary import check_shape
from .v2_json import json_array, json_data, json_numbers, parse_json_object

Kind = Literal["ndarray", "tensor", "strData", "jsonData", "binData"]
#: Tensor parameter that tells a model how a BYTES input from Seldon should be read.
CONTENT_TYPE = "content_type"
#: How many levels deep orjson writes JSON (it reads 1024): a request's values that the
#: answer carries back must fit, where the answer puts them.
MAX_WRITTEN_DEPTH = 254


@dataclass(slots=True)
class Meta:
    puid: str | None = None
    tags: dict[str, Any] = field(default_factory=dict)
    routing: dict[str, int] = field(default_factory=dict)


@dataclass(slots=True)
class SeldonRequest:
    request: InferenceRequest
    kind: Kind
    meta: Meta


@dataclass(slots=True)
class Feedback:
    reward: float
    truth: Any
    meta: Meta


def decode_request(body: bytes, inputs: list[TensorSpec]) -> SeldonRequest:
    message = parse_json_object(body)
    meta = decode_meta(message.get("meta"))
    if len(inputs) > 1:
        raise InvalidInput(
            f"the model takes {len(inputs)} inputs ({[s.name for s in inputs]}); a Seldon "
            "message carries one: use the V2 protocol"
        )
    name = inputs[0].name if inputs else DEFAULT_INPUT
    datatype = inputs[0].datatype if inputs else None
    kind, tensor = _payload(message, name, datatype)
    _as_json(meta.tags, "'meta.tags'", 2)  # echoed in the answer's meta
    request = InferenceRequest([tensor], id=meta.puid)
    return SeldonRequest(request, kind, meta)


def decode_meta(value: Any) -> Meta:
    if value is None:
        return Meta()
    if not isinstance(value, dict):
        raise InvalidInput("'meta' must be an object")
    puid = value.get("puid") or None
    if puid is not None and not isinstance(puid, str):
        raise InvalidInput("'meta.puid' must be a string")
    tags = value.get("tags") or {}
    if not isinstance(tags, dict):
        raise InvalidInput("'meta.tags' must be an object")
    routing = value.get("routing") or {}
    if not isinstance(routing, dict) or not all(
        isinstance(v, int) and not isinstance(v, bool) for v in routing.values()
    ):
        raise InvalidInput("'meta.routing' must map node names to branch indices (integers)")
    return Meta(puid, dict(tags), dict(routing))


def _payload(message: dict[str, Any], name: str, datatype: str | None) -> tuple[Kind, Tensor]:
    if "data" in message:
        data = message["data"]
        if not isinstance(data, dict):
            raise InvalidInput("'data' must be an object")
        names = data.get("names") or []
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise InvalidInput("'data.names' must be a list of strings")
        parameters = {"names": names} if names else {}
        if "ndarray" in data:
            return "ndarray", _array_tensor(name, data["ndarray"], datatype, parameters)
        if "tensor" in data:
            return "tensor", _tensor_tensor(name, data["tensor"], datatype, parameters)
        if "tftensor" in data:
            raise NotSupported("'data.tftensor' is not supported; send 'ndarray' or 'tensor'")
        raise InvalidInput("'data' needs 'ndarray' or 'tensor'")
    if "strData" in message:
        text = message["strData"]
        if not isinstance(text, str):
            raise InvalidInput("'strData' must be a string")
        return "strData", _bytes_tensor(name, text.encode("utf-8"), "str")
    if "jsonData" in message:
        return "jsonData", _bytes_tensor(name, _as_json(message["jsonData"], "'jsonData'", 1), "json")
    if "binData" in message:
        try:
            raw = base64.b64decode(message["binData"], validate=True)
        except (binascii.Error, TypeError, ValueError):
            raise InvalidInput("'binData' must be base64") from None
        return "binData", _bytes_tensor(name, raw, "bytes")
    raise InvalidInput("a Seldon message needs 'data', 'strData', 'jsonData' or 'binData'")


def _array_tensor(name: str, value: Any, datatype: str | None, parameters: dict[str, Any]) -> Tensor:
    if not isinstance(value, list):
        raise InvalidInput("'data.ndarray' must be a (nested) list")
    try:
        tensor = json_tensor(name, value, datatype)  # V1's rows are the same nested lists
    except InvalidInput as exc:
        raise InvalidInput(f"'data.ndarray': {exc}") from None
    tensor.parameters = parameters
    return tensor


def _tensor_tensor(name: str, value: Any, datatype: str | None, parameters: dict[str, Any]) -> Tensor:
    if not isinstance(value, dict):
        raise InvalidInput("'data.tensor' must be an object with 'shape' and 'values'")
    shape, values = value.get("shape"), value.get("values")
    if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise InvalidInput("'data.tensor.shape' must be a list of non-negative integers")
    if not isinstance(values, list):
        raise InvalidInput("'data.tensor.values' must be a list of numbers")
    wanted = datatype if datatype and datatype != "BYTES" else "FP64"
    array = json_numbers(values, wanted, name)
    count = math.prod(check_shape(tuple(shape), name))  # exact: numpy's prod wraps around
    if array.size != count:
        raise InvalidInput(f"'data.tensor' has {array.size} values but shape {shape} needs {count}")
    array = array.reshape(shape)
    return Tensor(name, wanted, tuple(shape), array, parameters)


def _as_json(value: Any, where: str, depth: int) -> bytes:
    """``value`` written as JSON, refused (400) unless it could also be written ``depth``
    levels down, where the answer puts it (``jsonData`` in the message, ``meta.tags`` in its
    meta): orjson writes fewer levels than it reads, and would fail only after the model ran.
    A parsed request holds nothing else that orjson cannot write."""
    wrapped = value
    for _ in range(depth):
        wrapped = [wrapped]
    try:
        raw = orjson.dumps(wrapped)
    except orjson.JSONEncodeError:
        raise InvalidInput(
            f"{where} nests too deep: JSON that a Seldon answer carries back may nest at most "
            f"{MAX_WRITTEN_DEPTH} levels, the message's own included"
        ) from None
    return raw[depth:len(raw) - depth]  # orjson writes the wrapping lists as bare brackets


def _bytes_tensor(name: str, raw: bytes, content_type: str) -> Tensor:
    array = np.empty(1, dtype=object)
    array[0] = raw
    return Tensor(name, "BYTES", (1,), array, {CONTENT_TYPE: content_type})


# -- answers ------------------------------------------------------------------------------


def encode_response(response: InferenceResponse, kind: Kind, meta: Meta) -> dict[str, Any]:
    """A SeldonMessage for orjson (numeric arrays stay numpy)."""
    message: dict[str, Any] = {}
    outputs = response.outputs
    if len(outputs) != 1:
        message["jsonData"] = {t.name: _nested(t) for t in outputs}
    else:
        tensor = outputs[0]
        message.update(_single(tensor, kind))
    message["meta"] = {
        "puid": meta.puid or response.id or "",
        "tags": meta.tags,
        "routing": meta.routing,
        "requestPath": {},
        "metrics": [],
    }
    return message


def _single(tensor: Tensor, kind: Kind) -> dict[str, Any]:
    text = tensor.datatype == "BYTES"
    if text and tensor.data.size == 1 and kind in ("strData", "jsonData", "binData"):
        raw = tensor.data.reshape(-1)[0]
        raw = raw if isinstance(raw, (bytes, bytearray)) else str(raw).encode("utf-8")
        if kind == "binData":
            return {"binData": base64.b64encode(raw).decode("ascii")}
        if kind == "jsonData":
            try:
                return {"jsonData": orjson.loads(raw)}
            except orjson.JSONDecodeError:
                pass
        return {"strData": raw.decode("utf-8", errors="replace")}
    if kind == "jsonData":
        return {"jsonData": _nested(tensor)}
    names = _names(tensor)
    if kind == "tensor" and not text:
        values = json_array(np.ascontiguousarray(tensor.data.reshape(-1), dtype=np.float64))
        return {"data": {"names": names, "tensor": {"shape": list(tensor.shape), "values": values}}}
    return {"data": {"names": names, "ndarray": _nested(tensor)}}


def _nested(tensor: Tensor) -> Any:
    if tensor.datatype == "BYTES":
        return np.array(json_data(tensor), dtype=object).reshape(tensor.shape).tolist()
    return json_array(canonical(tensor.data, tensor.datatype))


def _names(tensor: Tensor) -> list[str]:
    """An output's column names: its own ``names`` parameter, else Seldon's ``t:<i>``."""
    given = tensor.parameters.get("names")
    if isinstance(given, list):
        return [str(n) for n in given]
    return [f"t:{i}" for i in range(tensor.shape[1])] if len(tensor.shape) == 2 else []


def decode_feedback(body: bytes) -> Feedback:
    """``{"request", "response", "reward", "truth"}``; the routing comes from the response.

    ``reward`` is a proto3 float: its JSON form leaves out the default, so an absent (or
    null) reward is 0, as Seldon Core reads it; ``SeldonClient.feedback(reward=0)`` sends none.
    """
    message = parse_json_object(body)
    reward = message.get("reward")
    if reward is None:
        reward = 0.0
    if isinstance(reward, bool) or not isinstance(reward, (int, float)):
        raise InvalidInput("feedback's 'reward' must be a number")
    response = message.get("response") or {}
    request = message.get("request") or {}
    if not isinstance(response, dict) or not isinstance(request, dict):
        raise InvalidInput("'request' and 'response' must be Seldon messages (objects)")
    meta = decode_meta(response.get("meta"))
    if meta.puid is None:
        meta.puid = decode_meta(request.get("meta")).puid
    return Feedback(float(reward), message.get("truth"), meta)


def encode_feedback_answer(meta: Meta, duplicate: bool = False) -> dict[str, Any]:
    """The answer to feedback: its ``puid`` and the routers updated (node -> branch index).
    Feedback that repeats a request id's updates nothing and says so in ``meta.tags``."""
    answer: dict[str, Any] = {"puid": meta.puid or "", "routing": meta.routing}
    if duplicate:
        answer["tags"] = {"duplicate": True}
    return {"meta": answer}


def error_message(status: int, message: str) -> dict[str, Any]:
    """Seldon's failure status, the whole answer: a SeldonMessage has no other error field."""
    return {
        "status": {"code": status, "info": message, "reason": _REASONS.get(status, "ERROR"),
                   "status": "FAILURE"},
    }


_REASONS = {400: "BAD_DATA", 404: "NOT_FOUND", 413: "TOO_LARGE", 500: "MICROSERVICE_ERROR",
            501: "NOT_IMPLEMENTED", 503: "UNAVAILABLE", 504: "TIMEOUT"}
