"""V2 gRPC messages <-> the protocol-neutral types.

Raw contents (``raw_input_contents``) decode zero-copy with ``np.frombuffer``; a request that
came raw gets a raw response, as Triton and MLServer do. FP16 has no typed field, so it always
travels raw.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..datatypes import NUMPY_DTYPES, numpy_dtype
from ..errors import InvalidInput
from ..types import InferenceRequest, InferenceResponse, RequestedOutput, Tensor
from . import v2_binary
from .grpc_gen import grpc_service_pb2 as pb
from .v2_binary import _MAX_ELEMENTS

#: datatype -> the InferTensorContents field that carries it.
CONTENTS_FIELD = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}


def parameters_from_proto(params: Any) -> dict[str, Any]:
    if not params:  # the common case, without the items() view
        return {}
    result = {}
    for key, value in params.items():
        choice = value.WhichOneof("parameter_choice")
        result[key] = getattr(value, choice) if choice else None
    return result


def parameters_to_proto(target: Any, params: dict[str, Any]) -> None:
    for key, value in params.items():
        slot = target[key]
        if isinstance(value, bool):
            slot.bool_param = value
        elif isinstance(value, int):
            if value >= 2**63:
                slot.uint64_param = value
            else:
                slot.int64_param = value
        elif isinstance(value, float):
            slot.double_param = value
        else:
            slot.string_param = value if isinstance(value, str) else str(value)


def decode_request(message: pb.ModelInferRequest) -> InferenceRequest:
    raw = message.raw_input_contents
    inputs = message.inputs
    if raw and len(raw) != len(inputs):
        raise InvalidInput(
            f"the request has {len(inputs)} inputs but {len(raw)} raw_input_contents"
        )
    outputs = None
    if message.outputs:
        outputs = [
            RequestedOutput(o.name, parameters_from_proto(o.parameters)) for o in message.outputs
        ]
    return InferenceRequest(
        inputs=_decode_tensors(inputs, raw),
        id=message.id or None,
        parameters=parameters_from_proto(message.parameters),
        outputs=outputs,
        model_name=message.model_name,
        model_version=message.model_version or None,
    )


def _decode_tensors(items: Any, raw: Any, kind: str = "input") -> list[Tensor]:
    """Input or output tensor messages, their data typed or in the matching raw contents."""
    tensors = []
    for index, item in enumerate(items):
        name, datatype = item.name, item.datatype
        if not name:
            raise InvalidInput(f"{kind} {index} needs a name")
        dtype = NUMPY_DTYPES.get(datatype)
        if dtype is None:
            numpy_dtype(datatype)  # the error naming the datatypes there are
        shape = tuple(item.shape)
        if shape and min(shape) < 0:
            raise InvalidInput(f"{kind} {name!r}: shape dimensions must be non-negative")
        count = math.prod(shape)
        if count > _MAX_ELEMENTS or not count:  # zeros: the product of the other dimensions
            v2_binary.check_shape(shape, name, kind)
        if raw:
            if item.HasField("contents"):
                message = "request" if kind == "input" else "response"
                raise InvalidInput(
                    f"{kind} {name!r} sets contents while the {message} uses raw_{kind}_contents"
                )
            buffer = raw[index]
            if datatype != "BYTES" and len(buffer) == count * dtype.itemsize:
                data = np.frombuffer(buffer, dtype=dtype, count=count).reshape(shape)
            else:  # BYTES elements, or the error for a size that does not match
                data = v2_binary.decode_tensor_bytes(buffer, datatype, shape, name)
        else:
            data = _typed_contents(item, datatype, shape, kind)
        parameters = item.parameters
        tensors.append(
            Tensor(name, datatype, shape, data, parameters_from_proto(parameters) if parameters else {})
        )
    return tensors


def _typed_contents(item: Any, datatype: str, shape: tuple[int, ...], kind: str) -> np.ndarray:
    field = CONTENTS_FIELD.get(datatype)
    if field is None:
        raise InvalidInput(f"{kind} {item.name!r}: {datatype} data must be sent as raw_{kind}_contents")
    values = getattr(item.contents, field)
    count = v2_binary.element_count(shape)
    if len(values) != count:
        raise InvalidInput(
            f"{kind} {item.name!r}: {len(values)} {datatype} elements do not match shape "
            f"{list(shape)} ({count} elements)"
        )
    if datatype == "BYTES":
        array = np.empty(count, dtype=object)
        array[:] = list(values)
        return array.reshape(shape)
    dtype = numpy_dtype(datatype)
    if dtype.kind in "iu" and dtype.itemsize < 4 and count:
        # INT8/16 and UINT8/16 travel in 32-bit fields; numpy would wrap 300 to 44 silently.
        wide = np.array(values, dtype=np.int64)
        info = np.iinfo(dtype)
        if wide.min() < info.min or wide.max() > info.max:
            raise InvalidInput(
                f"{kind} {item.name!r}: a value is out of range for {datatype} "
                f"({info.min} to {info.max})"
            )
        return wide.astype(dtype).reshape(shape)
    try:
        return np.array(values, dtype=dtype).reshape(shape)
    except OverflowError as exc:
        raise InvalidInput(f"{kind} {item.name!r}: {exc}") from None


def encode_response(response: InferenceResponse, raw: bool) -> pb.ModelInferResponse:
    message = pb.ModelInferResponse(
        model_name=response.model_name,
        model_version=response.model_version or "",
        id=response.id or "",
    )
    if response.parameters:
        parameters_to_proto(message.parameters, response.parameters)
    raw = raw or any(t.datatype == "FP16" for t in response.outputs)
    raw_contents = []
    for tensor in response.outputs:
        out = message.outputs.add(name=tensor.name, datatype=tensor.datatype, shape=tensor.shape)
        if tensor.parameters:
            parameters_to_proto(out.parameters, tensor.parameters)
        if raw:
            raw_contents.append(v2_binary.encode_tensor_bytes(tensor.data, tensor.datatype))
        else:
            _fill_contents(out.contents, tensor)
    if raw:
        message.raw_output_contents.extend(raw_contents)
    return message


def _fill_contents(contents: Any, tensor: Tensor) -> None:
    values = getattr(contents, CONTENTS_FIELD[tensor.datatype])
    if tensor.datatype == "BYTES":
        values.extend(_as_bytes(v) for v in tensor.data.reshape(-1))
    else:
        values.extend(tensor.data.reshape(-1).tolist())


def _as_bytes(value: Any) -> bytes:
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    return str(value).encode("utf-8")


def request_to_proto(request: InferenceRequest, raw: bool = True) -> pb.ModelInferRequest:
    """The client direction, for tests, benchmarks and remote nodes."""
    message = pb.ModelInferRequest(
        model_name=request.model_name,
        model_version=request.model_version or "",
        id=request.id or "",
    )
    parameters_to_proto(message.parameters, request.parameters)
    raw = raw or any(t.datatype == "FP16" for t in request.inputs)
    for tensor in request.inputs:
        item = message.inputs.add(name=tensor.name, datatype=tensor.datatype, shape=tensor.shape)
        parameters_to_proto(item.parameters, tensor.parameters)
        if raw:
            message.raw_input_contents.append(
                v2_binary.encode_tensor_bytes(tensor.data, tensor.datatype)
            )
        else:
            _fill_contents(item.contents, tensor)
    for output in request.outputs or ():
        requested = message.outputs.add(name=output.name)
        parameters_to_proto(requested.parameters, output.parameters)
    return message


def decode_response(message: pb.ModelInferResponse) -> InferenceResponse:
    """The client direction: a remote server's answer, raw or typed, as an InferenceResponse."""
    raw = message.raw_output_contents
    if raw and len(raw) != len(message.outputs):
        raise InvalidInput(
            f"the response has {len(message.outputs)} outputs but {len(raw)} raw_output_contents"
        )
    return InferenceResponse(
        outputs=_decode_tensors(message.outputs, raw, "output"),
        model_name=message.model_name,
        model_version=message.model_version or None,
        id=message.id or None,
        parameters=parameters_from_proto(message.parameters),
    )
