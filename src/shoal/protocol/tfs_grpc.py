"""TensorFlow Serving gRPC messages <-> the protocol-neutral types.

Tensors follow TensorFlow's own rules (``tf.make_ndarray``): ``tensor_content`` holds the
elements' bytes (decoded zero-copy with ``np.frombuffer``); otherwise the typed ``*_val``
field for the dtype holds them, and a field with fewer values than the shape needs is padded
with its last value (so one value fills the tensor) or, with none, with zeros. More values
than the shape holds is an error here (TensorFlow drops the extra ones silently). Replies
carry numeric tensors in ``tensor_content`` and strings in ``string_val``.

Every Shoal model is described as one signature, ``serving_default``, built from its V2
input and output metadata.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any, Protocol

import numpy as np

from ..datatypes import numpy_dtype
from ..errors import InvalidInput
from ..types import InferenceRequest, InferenceResponse, RequestedOutput, Tensor
from . import v2_binary
from .v1 import tf_serving_state
from .tfs_gen import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_pb2,
    predict_pb2,
    tensor_pb2,
    types_pb2,
)
from .tfs_gen.error_codes_pb2 import OK, UNAVAILABLE

DataType = types_pb2.DataType
ModelVersionStatus = get_model_status_pb2.ModelVersionStatus

SIGNATURE = "serving_default"
PREDICT_METHOD = "tensorflow/serving/predict"
SIGNATURE_DEF_FIELD = "signature_def"

#: V2 datatype -> TensorFlow dtype; the reverse covers every dtype Shoal accepts.
DATATYPE_TO_DT: dict[str, int] = {
    "BOOL": types_pb2.DT_BOOL,
    "INT8": types_pb2.DT_INT8,
    "INT16": types_pb2.DT_INT16,
    "INT32": types_pb2.DT_INT32,
    "INT64": types_pb2.DT_INT64,
    "UINT8": types_pb2.DT_UINT8,
    "UINT16": types_pb2.DT_UINT16,
    "UINT32": types_pb2.DT_UINT32,
    "UINT64": types_pb2.DT_UINT64,
    "FP16": types_pb2.DT_HALF,
    "FP32": types_pb2.DT_FLOAT,
    "FP64": types_pb2.DT_DOUBLE,
    "BYTES": types_pb2.DT_STRING,
}
DT_TO_DATATYPE: dict[int, str] = {dt: datatype for datatype, dt in DATATYPE_TO_DT.items()}

#: V2 datatype -> the TensorProto field that carries it when tensor_content is empty.
VALUE_FIELD = {
    "BOOL": "bool_val",
    "INT8": "int_val",
    "INT16": "int_val",
    "INT32": "int_val",
    "INT64": "int64_val",
    "UINT8": "int_val",
    "UINT16": "int_val",
    "UINT32": "uint32_val",
    "UINT64": "uint64_val",
    "FP16": "half_val",
    "FP32": "float_val",
    "FP64": "double_val",
    "BYTES": "string_val",
}



class VersionState(Protocol):
    """What GetModelStatus reports about one version (a registry entry)."""

    version: str
    reason: str

    @property
    def state(self) -> Any: ...


# ---- model_spec ---------------------------------------------------------------------------


def model_name(spec: model_pb2.ModelSpec) -> str:
    if not spec.name:
        raise InvalidInput("model_spec.name is required")
    return spec.name


def requested_version(spec: model_pb2.ModelSpec) -> str | None:
    """The version a ModelSpec asks for; None means the newest ready one."""
    choice = spec.WhichOneof("version_choice")
    if choice == "version":
        return str(spec.version.value)
    if choice == "version_label":
        raise InvalidInput(
            f"model {spec.name!r}: version labels are not supported (got "
            f"{spec.version_label!r}); ask for a version number in model_spec.version"
        )
    return None


def check_signature(spec: model_pb2.ModelSpec) -> None:
    if spec.signature_name not in ("", SIGNATURE):
        raise InvalidInput(
            f"model {spec.name!r} has no signature {spec.signature_name!r}; "
            f"it serves {SIGNATURE!r}"
        )


def fill_model_spec(
    spec: model_pb2.ModelSpec, name: str, version: str | None, signature: str = ""
) -> None:
    spec.name = name
    if version and version.isdigit():
        spec.version.value = int(version)
    if signature:
        spec.signature_name = signature


# ---- tensors ------------------------------------------------------------------------------


#: The largest tensor a few typed values may be padded to when the server passes no limit.
DEFAULT_PADDING_LIMIT = 64 * 1024 * 1024


def decode_tensor(
    name: str, proto: tensor_pb2.TensorProto, limit: int = DEFAULT_PADDING_LIMIT
) -> Tensor:
    """``limit``: the most bytes a tensor padded from fewer values than its shape holds may
    take (the server's request size limit): padding is how a 30-byte message would
    otherwise ask for gigabytes."""
    datatype = DT_TO_DATATYPE.get(proto.dtype)
    if datatype is None:
        raise InvalidInput(
            f"input {name!r}: dtype {_dtype_name(proto.dtype)} is not supported; use one of "
            f"{', '.join(DataType.Name(dt) for dt in DATATYPE_TO_DT.values())}"
        )
    if proto.tensor_shape.unknown_rank:
        raise InvalidInput(f"input {name!r}: tensor_shape must list its dimensions")
    shape = tuple(dim.size for dim in proto.tensor_shape.dim)
    if any(size < 0 for size in shape):
        raise InvalidInput(f"input {name!r}: shape {list(shape)} has a negative dimension")
    v2_binary.check_shape(shape, name)
    content = proto.tensor_content
    if content:
        if datatype == "BYTES":
            raise InvalidInput(f"input {name!r}: DT_STRING elements go in string_val")
        data = v2_binary.decode_tensor_bytes(content, datatype, shape, name)
    else:
        data = _typed_values(name, proto, datatype, shape, limit)
    return Tensor(name, datatype, shape, data)


def _typed_values(
    name: str, proto: tensor_pb2.TensorProto, datatype: str, shape: tuple[int, ...], limit: int
) -> np.ndarray:
    field = VALUE_FIELD[datatype]
    values = getattr(proto, field)
    given, count = len(values), math.prod(shape)
    if given > count:
        raise InvalidInput(
            f"input {name!r}: {given} values in {field} do not fit shape {list(shape)} "
            f"({count} elements)"
        )
    itemsize = _element_bytes(datatype)
    if given < count and count * itemsize > limit:
        raise InvalidInput(
            f"input {name!r}: shape {list(shape)} padded from {given} value(s) in {field} would "
            f"take {count * itemsize} bytes, more than the {limit}-byte request limit; send "
            "every value (or tensor_content)"
        )
    if datatype == "BYTES":
        array = np.empty(count, dtype=object)
        array[:given] = list(values)
        array[given:] = values[-1] if given else b""
        return array.reshape(shape)
    dtype = numpy_dtype(datatype)
    if field in ("int_val", "half_val") and dtype.itemsize < 4:
        # 8- and 16-bit values travel in int32 fields (FP16 as its bit pattern); numpy would
        # wrap 300 to 44 silently.
        wide = np.fromiter(values, dtype=np.int64, count=given)
        info = np.iinfo(np.uint16 if datatype == "FP16" else dtype)
        if given and (wide.min() < info.min or wide.max() > info.max):
            raise InvalidInput(
                f"input {name!r}: a value in {field} is out of range for {datatype} "
                f"({info.min} to {info.max})"
            )
        array = wide.astype(np.uint16).view(dtype) if datatype == "FP16" else wide.astype(dtype)
    else:
        array = np.fromiter(values, dtype=dtype, count=given)
    if given == count:
        return array.reshape(shape)
    if not given:
        return np.zeros(shape, dtype=dtype)
    return np.pad(array, (0, count - given), mode="edge").reshape(shape)


def _padded_bytes(proto: tensor_pb2.TensorProto) -> int:
    """The bytes a tensor given as fewer typed values than its shape holds is padded to."""
    datatype = DT_TO_DATATYPE.get(proto.dtype)
    if datatype is None or proto.tensor_content or proto.tensor_shape.unknown_rank:
        return 0  # decoded as sent, or refused by decode_tensor
    count = math.prod(dim.size for dim in proto.tensor_shape.dim)
    if count < 0 or len(getattr(proto, VALUE_FIELD[datatype])) >= count:
        return 0
    return count * _element_bytes(datatype)


def _element_bytes(datatype: str) -> int:
    """What one element takes once decoded (BYTES: a pointer in an object array)."""
    return 8 if datatype == "BYTES" else numpy_dtype(datatype).itemsize


def fill_tensor_proto(proto: tensor_pb2.TensorProto, tensor: Tensor) -> None:
    """Write ``tensor`` into ``proto`` (a map slot, so nothing is copied twice)."""
    proto.dtype = DATATYPE_TO_DT[tensor.datatype]
    dims = proto.tensor_shape.dim
    for size in tensor.shape:
        dims.add(size=size)
    if tensor.datatype == "BYTES":
        proto.string_val.extend(_as_bytes(v) for v in tensor.data.reshape(-1))
    else:
        proto.tensor_content = v2_binary.encode_tensor_bytes(tensor.data, tensor.datatype)


def _as_bytes(value: Any) -> bytes:
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    return str(value).encode("utf-8")


def _dtype_name(dt: int) -> str:
    try:
        return DataType.Name(dt)
    except ValueError:
        return str(dt)


# ---- Predict ------------------------------------------------------------------------------


def decode_predict_request(
    message: predict_pb2.PredictRequest,
    input_names: Sequence[str] = (),
    limit: int = DEFAULT_PADDING_LIMIT,
) -> InferenceRequest:
    """``input_names`` (the model's declared inputs) orders the inputs, which a map does not;
    ``limit`` bounds padded tensors (see :func:`decode_tensor`)."""
    check_signature(message.model_spec)
    order = {n: i for i, n in enumerate(input_names)}
    names = sorted(message.inputs, key=lambda n: (order.get(n, len(order)), n))
    padded = sum(_padded_bytes(message.inputs[n]) for n in names)
    if padded > limit:  # one budget for the whole request, not one per input
        raise InvalidInput(
            f"the request's tensors padded from fewer values than their shapes hold would take "
            f"{padded} bytes, more than the {limit}-byte request limit; send every value "
            "(or tensor_content)"
        )
    inputs = [decode_tensor(n, message.inputs[n], limit) for n in names]
    outputs = None
    if message.output_filter:
        wanted = list(message.output_filter)
        repeated = {n for n in wanted if wanted.count(n) > 1}
        if repeated:
            raise InvalidInput(f"output_filter names {sorted(repeated)} more than once")
        outputs = [RequestedOutput(n) for n in wanted]
    return InferenceRequest(inputs=inputs, outputs=outputs, model_name=message.model_spec.name)


def encode_predict_response(response: InferenceResponse) -> predict_pb2.PredictResponse:
    message = predict_pb2.PredictResponse()
    fill_model_spec(message.model_spec, response.model_name, response.model_version, SIGNATURE)
    for tensor in response.outputs:
        fill_tensor_proto(message.outputs[tensor.name], tensor)
    return message


# ---- GetModelMetadata ---------------------------------------------------------------------


def check_metadata_fields(fields: Iterable[str]) -> None:
    fields = list(fields)
    if not fields:
        raise InvalidInput(
            f"GetModelMetadataRequest.metadata_field must name at least one field "
            f"({SIGNATURE_DEF_FIELD!r})"
        )
    for field in fields:
        if field != SIGNATURE_DEF_FIELD:
            raise InvalidInput(
                f"metadata field {field!r} is not supported; the one served is "
                f"{SIGNATURE_DEF_FIELD!r}"
            )


def signature_def_map(metadata: dict[str, Any]) -> get_model_metadata_pb2.SignatureDefMap:
    """One ``serving_default`` predict signature from V2 model metadata (-1: any size)."""
    result = get_model_metadata_pb2.SignatureDefMap()
    signature = result.signature_def[SIGNATURE]
    signature.method_name = PREDICT_METHOD
    for specs, infos in ((metadata["inputs"], signature.inputs),
                         (metadata["outputs"], signature.outputs)):
        for spec in specs:
            info = infos[spec["name"]]
            info.name = spec["name"]
            info.dtype = DATATYPE_TO_DT.get(spec["datatype"], types_pb2.DT_INVALID)
            for size in spec["shape"]:
                info.tensor_shape.dim.add(size=size)
    return result


def encode_metadata_response(
    metadata: dict[str, Any], version: str
) -> get_model_metadata_pb2.GetModelMetadataResponse:
    message = get_model_metadata_pb2.GetModelMetadataResponse()
    fill_model_spec(message.model_spec, metadata["name"], version)
    message.metadata[SIGNATURE_DEF_FIELD].Pack(signature_def_map(metadata))
    return message


# ---- GetModelStatus -----------------------------------------------------------------------


def encode_status_response(
    entries: Iterable[VersionState],
) -> get_model_status_pb2.GetModelStatusResponse:
    """As the REST status route: OK for an available version, else UNAVAILABLE + reason."""
    message = get_model_status_pb2.GetModelStatusResponse()
    for entry in entries:
        state = ModelVersionStatus.State.Value(tf_serving_state(entry.state.value))
        status = message.model_version_status.add(version=int(entry.version), state=state)
        status.status.error_code = OK if state == ModelVersionStatus.AVAILABLE else UNAVAILABLE
        status.status.error_message = entry.reason
    return message
