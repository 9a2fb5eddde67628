"""V2 / Open Inference Protocol REST bodies: JSON, with the binary tensor extension.

A request body is a JSON header optionally followed by binary tensor data; the header's length
arrives in ``Inference-Header-Content-Length``. Responses serialise numpy arrays with orjson
directly (no Python lists), and put requested outputs in the binary section.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson

from ..datatypes import canonical, numpy_dtype
from ..errors import InvalidInput
from ..types import InferenceRequest, InferenceResponse, RequestedOutput, Tensor
from . import v2_binary

HEADER_LENGTH = "inference-header-content-length"
_DUMP_OPTIONS = orjson.OPT_SERIALIZE_NUMPY


def parse_json_object(body: bytes | memoryview, what: str = "request body") -> dict[str, Any]:
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"{what} is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise InvalidInput(f"{what} must be a JSON object")
    return value


def decode_request(body: bytes, header_length: int | None = None) -> InferenceRequest:
    return request_from_dict(*_split_body(body, header_length))


def _split_body(
    body: bytes, header_length: int | None
) -> tuple[dict[str, Any], memoryview | None]:
    """The JSON header and the binary section that follows it (None without the extension)."""
    if header_length is None:
        return parse_json_object(body), None
    if header_length < 0 or header_length > len(body):
        raise InvalidInput(
            f"Inference-Header-Content-Length is {header_length} but the body has only "
            f"{len(body)} bytes"
        )
    view = memoryview(body)
    return parse_json_object(view[:header_length], "JSON header"), view[header_length:]


def request_from_dict(header: dict[str, Any], binary: memoryview | None = None) -> InferenceRequest:
    raw_inputs = header.get("inputs")
    if not isinstance(raw_inputs, list):
        raise InvalidInput("'inputs' must be a list of tensors")
    return InferenceRequest(
        inputs=_decode_tensors(raw_inputs, binary),
        id=_optional_str(header.get("id"), "id"),
        parameters=_parameters(header.get("parameters"), "request"),
        outputs=_requested_outputs(header.get("outputs")),
    )


def _decode_tensors(
    raw_tensors: list[Any], binary: memoryview | None, kind: str = "input"
) -> list[Tensor]:
    offset = 0
    tensors = []
    for position, raw in enumerate(raw_tensors):
        tensor, offset = _decode_input(raw, position, binary, offset)
        tensors.append(tensor)
    if binary is not None and offset != len(binary):
        raise InvalidInput(
            f"the body has {len(binary) - offset} bytes of binary data that no {kind} claims"
        )
    return tensors


def _decode_input(
    raw: Any, position: int, binary: memoryview | None, offset: int
) -> tuple[Tensor, int]:
    if not isinstance(raw, dict):
        raise InvalidInput(f"input {position} must be a JSON object")
    name = raw.get("name")
    if not isinstance(name, str) or not name:
        raise InvalidInput(f"input {position} needs a non-empty string 'name'")
    datatype = raw.get("datatype")
    if not isinstance(datatype, str):
        raise InvalidInput(f"input {name!r} needs a string 'datatype'")
    numpy_dtype(datatype)
    shape = parse_shape(raw.get("shape"), name)
    parameters = _parameters(raw.get("parameters"), f"input {name!r}")
    binary_size = parameters.pop("binary_data_size", None)
    if binary_size is not None:
        if binary is None:
            raise InvalidInput(
                f"input {name!r} has binary_data_size but the request has no "
                "Inference-Header-Content-Length header"
            )
        if not isinstance(binary_size, int) or isinstance(binary_size, bool) or binary_size < 0:
            raise InvalidInput(f"input {name!r}: binary_data_size must be a non-negative integer")
        if offset + binary_size > len(binary):
            raise InvalidInput(
                f"input {name!r}: binary_data_size {binary_size} overruns the "
                f"{len(binary) - offset} bytes of binary data left"
            )
        chunk = binary[offset : offset + binary_size]
        data = v2_binary.decode_tensor_bytes(chunk, datatype, shape, name)
        return Tensor(name, datatype, shape, data, parameters), offset + binary_size
    if "data" not in raw:
        raise InvalidInput(f"input {name!r} has neither 'data' nor parameters.binary_data_size")
    data = json_data_to_array(raw["data"], datatype, shape, name)
    return Tensor(name, datatype, shape, data, parameters), offset


def parse_shape(value: Any, name: str) -> tuple[int, ...]:
    if not isinstance(value, list):
        raise InvalidInput(f"input {name!r}: 'shape' must be a list of non-negative integers")
    for d in value:  # a loop, not all(...): this runs for every tensor of every request
        if type(d) is not int or d < 0:  # JSON integers are exactly int (never bool, never a subclass)
            if isinstance(d, int) and not isinstance(d, bool) and d >= 0:
                continue
            raise InvalidInput(f"input {name!r}: 'shape' must be a list of non-negative integers")
    return v2_binary.check_shape(tuple(value), name)


def json_data_to_array(data: Any, datatype: str, shape: tuple[int, ...], name: str) -> np.ndarray:
    """JSON ``data`` (flat or nested, row-major) to an array of exactly ``shape``."""
    count = v2_binary.element_count(shape)
    if datatype == "BYTES":
        flat = _flatten(data)
        if len(flat) != count:
            raise _length_error(name, len(flat), shape, count)
        array = np.empty(count, dtype=object)
        for index, element in enumerate(flat):
            if isinstance(element, str):
                array[index] = element.encode("utf-8")
            else:
                raise InvalidInput(f"input {name!r}: BYTES elements must be strings in JSON")
        return array.reshape(shape)
    array = json_numbers(data, datatype, name)
    if array.size != count:
        raise _length_error(name, array.size, shape, count)
    return array.reshape(shape)


def json_numbers(data: Any, datatype: str, name: str) -> np.ndarray:
    """JSON numbers or booleans as ``datatype``, refusing values the conversion would change.

    ``np.array(data, dtype=...)`` alone would truncate 1.7 to 1, wrap -1 to 255, read null
    as NaN and parse "1.5" from a string: a model must see exactly what the client sent.
    """
    dtype = numpy_dtype(datatype)
    try:
        array = np.array(data)
    except (ValueError, TypeError, OverflowError) as exc:
        raise InvalidInput(f"input {name!r}: data is not valid {datatype}: {exc}") from None
    if not array.size:
        return array.astype(dtype)
    kind = array.dtype.kind
    if dtype.kind == "b":
        if kind != "b":
            raise InvalidInput(f"input {name!r}: {datatype} data must be true or false")
    elif dtype.kind == "f":
        if kind in "UO":  # "NaN" / "Infinity" strings, or integers beyond 64 bits
            return _special_floats(data, dtype, datatype, name).reshape(array.shape)
        if kind not in "iuf":
            raise InvalidInput(f"input {name!r}: {datatype} data must be numbers")
        return _floats(array, dtype, datatype, name)
    elif kind == "f":
        # numpy widens integers beyond INT64 (or mixed with 3.0) to float64: convert exactly.
        return _exact_integers(data, dtype, datatype, name).reshape(array.shape)
    elif kind not in "iu":
        raise InvalidInput(f"input {name!r}: {datatype} data must be integers")
    else:
        _check_range(int(array.min()), int(array.max()), dtype, datatype, name)
    return array.astype(dtype, copy=False)


#: How JSON, which has no literal for them, carries non-finite floats (as proto3's JSON
#: mapping does): these strings are read as the values, and written for them.
NONFINITE = {"NaN": float("nan"), "Infinity": float("inf"), "-Infinity": float("-inf")}


def _floats(array: np.ndarray, dtype: np.dtype, datatype: str, name: str) -> np.ndarray:
    """JSON numbers as a float datatype. A decimal literal becomes the nearest value (that is
    what 0.1 means), but an integer too large to be represented (9007199254740993 as FP64)
    or a number beyond the type's range (1e40 as FP32, which would become inf) is refused."""
    if array.dtype == dtype:  # JSON floats as FP64: nothing to convert, nothing to refuse
        return array
    with np.errstate(over="ignore"):  # an overflow is looked for below
        result = array.astype(dtype, copy=False)
    if array.dtype.kind in "iu":
        limit = 2 ** (np.finfo(dtype).nmant + 1)  # every integer up to this one is exact
        if int(array.max()) > limit or int(array.min()) < -limit:
            back = result.astype(array.dtype)
            with np.errstate(invalid="ignore"):
                changed = (back != array) | ~np.isfinite(result)
            if changed.any():
                value = array.reshape(-1)[int(np.argmax(changed.reshape(-1)))]
                raise InvalidInput(
                    f"input {name!r}: {int(value)} cannot be represented exactly as {datatype}"
                )
    elif dtype.itemsize < array.dtype.itemsize and np.isinf(result).any():
        overflow = np.isinf(result) & np.isfinite(array)
        if overflow.any():
            value = array.reshape(-1)[int(np.argmax(overflow.reshape(-1)))]
            info = np.finfo(dtype)
            raise InvalidInput(
                f"input {name!r}: {value.item()!r} is out of range for {datatype} "
                f"({float(info.min):g} to {float(info.max):g})"
            )
    return result


def _special_floats(data: Any, dtype: np.dtype, datatype: str, name: str) -> np.ndarray:
    """Numbers mixed with ``"NaN"``/``"Infinity"``/``"-Infinity"``, or integers beyond 64 bits:
    the strings are swapped for their values in one pass, and only integers too large to be
    exact in every float are looked at one by one."""
    values = [NONFINITE.get(v, v) if type(v) is str else v for v in _flatten(data)]
    exact_up_to = 2 ** (np.finfo(dtype).nmant + 1)
    for value in [v for v in values if type(v) is int and not -exact_up_to <= v <= exact_up_to]:
        with np.errstate(over="ignore"):
            try:
                exact = float(dtype.type(value)) == value
            except OverflowError:
                exact = False
        if not exact:
            raise InvalidInput(f"input {name!r}: {value} cannot be represented exactly as {datatype}")
    kinds = set(map(type, values))
    if not kinds <= {int, float}:  # a string other than the three, a bool, a null, an object
        bad = next(v for v in values if type(v) not in (int, float))
        shown = f"{bad[:40]!r}" if isinstance(bad, str) else orjson.dumps(bad).decode()[:40]
        raise InvalidInput(
            f"input {name!r}: {datatype} data must be numbers (or \"NaN\", \"Infinity\", "
            f"\"-Infinity\"), not {shown}"
        )
    return _floats(np.array(values, dtype=np.float64), dtype, datatype, name)


def _exact_integers(data: Any, dtype: np.dtype, datatype: str, name: str) -> np.ndarray:
    values = []
    for value in _flatten(data):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if type(value) is not int:
            raise InvalidInput(f"input {name!r}: {datatype} data must be integers")
        values.append(value)
    _check_range(min(values), max(values), dtype, datatype, name)
    return np.array(values, dtype=dtype)


def _check_range(low: int, high: int, dtype: np.dtype, datatype: str, name: str) -> None:
    info = np.iinfo(dtype)
    if low < info.min or high > info.max:
        raise InvalidInput(
            f"input {name!r}: a value is out of range for {datatype} ({info.min} to {info.max})"
        )


#: The most levels tensor data may nest: numpy's limit on dimensions. Deeper JSON (which the
#: parser accepts up to 1024 levels) would otherwise exhaust Python's recursion.
MAX_NESTING = 64


def _flatten(data: Any, depth: int = 0) -> list[Any]:
    if not isinstance(data, list):
        return [data]
    if not any(isinstance(item, list) for item in data):
        return data
    if depth >= MAX_NESTING:
        raise InvalidInput(f"tensor data nests deeper than {MAX_NESTING} levels")
    flat: list[Any] = []
    for item in data:
        flat.extend(_flatten(item, depth + 1))
    return flat


def _length_error(name: str, got: int, shape: tuple[int, ...], count: int) -> InvalidInput:
    return InvalidInput(
        f"input {name!r}: {got} data elements do not match shape {list(shape)} ({count} elements)"
    )


def _optional_str(value: Any, field: str) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise InvalidInput(f"'{field}' must be a string")


def _parameters(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidInput(f"{where} 'parameters' must be a JSON object")
    return dict(value)


def _requested_outputs(value: Any) -> list[RequestedOutput] | None:
    if value is None:
        return None
    if not isinstance(value, list):
        raise InvalidInput("'outputs' must be a list")
    outputs = []
    for raw in value:
        if not isinstance(raw, dict) or not isinstance(raw.get("name"), str):
            raise InvalidInput("each requested output needs a string 'name'")
        outputs.append(RequestedOutput(raw["name"], _parameters(raw.get("parameters"), "output")))
    return outputs


def wants_binary(request: InferenceRequest | None) -> tuple[bool, dict[str, bool]]:
    """(binary by default?, each requested output's own ``binary_data`` choice).

    ``binary_data_output`` sets the default; an output's ``binary_data`` overrides it.
    """
    if request is None:
        return False, {}
    everything = bool(request.parameters.get("binary_data_output", False))
    named = {
        o.name: bool(o.parameters["binary_data"])
        for o in request.outputs or ()
        if "binary_data" in o.parameters
    }
    return everything, named


def encode_response(
    response: InferenceResponse, request: InferenceRequest | None = None
) -> tuple[bytes, int | None]:
    """The response body, and the JSON header length when binary outputs follow it."""
    everything, binary_choice = wants_binary(request)
    outputs = []
    chunks: list[bytes] = []
    for tensor in response.outputs:
        entry: dict[str, Any] = {
            "name": tensor.name,
            "datatype": tensor.datatype,
            "shape": tensor.shape,
        }
        parameters = dict(tensor.parameters)
        if binary_choice.get(tensor.name, everything):
            raw = v2_binary.encode_tensor_bytes(tensor.data, tensor.datatype)
            parameters["binary_data_size"] = len(raw)
            chunks.append(raw)
        else:
            entry["data"] = json_data(tensor)
        if parameters:
            entry["parameters"] = parameters
        outputs.append(entry)
    body = response_fields(response)
    body["outputs"] = outputs
    header = dumps(body)
    if not chunks:
        return header, None
    return b"".join([header, *chunks]), len(header)


def response_fields(response: InferenceResponse) -> dict[str, Any]:
    """A V2 response body's fields other than ``outputs``."""
    body: dict[str, Any] = {"model_name": response.model_name}
    if response.model_version is not None:
        body["model_version"] = response.model_version
    if response.id is not None:
        body["id"] = response.id
    if response.parameters:
        body["parameters"] = response.parameters
    return body


def requested_outputs(outputs: list[RequestedOutput]) -> list[dict[str, Any]]:
    """A V2 request's ``outputs`` as JSON."""
    return [{"name": o.name, "parameters": o.parameters} if o.parameters else {"name": o.name}
            for o in outputs]


def json_data(tensor: Tensor) -> Any:
    """A tensor's elements, flattened, in a form orjson writes without Python lists."""
    data = tensor.data
    if tensor.datatype == "BYTES":
        return [_text(v) for v in data.reshape(-1)]
    return json_array(canonical(data.reshape(-1), tensor.datatype))


def json_array(array: np.ndarray) -> Any:
    """A numeric array, in its shape, as JSON can hold it: the array itself when orjson writes
    it natively (contiguous, one of numpy's canonical dtypes: see ``datatypes.canonical``),
    nested lists when it holds NaN or infinities, which become ``"NaN"``, ``"Infinity"`` and
    ``"-Infinity"`` (orjson would write ``null``, and a client could not tell them apart)."""
    if not array.flags.c_contiguous:
        array = np.ascontiguousarray(array)
    if array.dtype.kind != "f" or np.isfinite(array).all():
        return array
    values = array.astype(object)
    values[np.isnan(array)] = "NaN"
    values[array == np.inf] = "Infinity"
    values[array == -np.inf] = "-Infinity"
    return values.tolist()


def _text(value: Any) -> str:
    if isinstance(value, (bytes, bytearray)):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidInput(
                "a BYTES output is not UTF-8 text; ask for it with binary_data"
            ) from None
    return str(value)


def _fallback(value: Any) -> Any:
    """What orjson cannot write by itself: numpy scalars of a non-canonical type
    (``numpy.longlong``, ...), and arrays it does not take natively (non-contiguous, object)."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def dumps(value: Any) -> bytes:
    return orjson.dumps(value, default=_fallback, option=_DUMP_OPTIONS)


# -- the client direction (remote models) ------------------------------------------------


def encode_request(request: InferenceRequest) -> tuple[bytes, int]:
    """A request body with every input in the binary section, and its JSON header's length.

    Binary inputs skip JSON number formatting on both sides and carry FP16 and arbitrary
    BYTES, which JSON cannot.
    """
    inputs = []
    chunks: list[bytes] = []
    for tensor in request.inputs:
        raw = v2_binary.encode_tensor_bytes(tensor.data, tensor.datatype)
        chunks.append(raw)
        inputs.append({
            "name": tensor.name,
            "datatype": tensor.datatype,
            "shape": tensor.shape,
            "parameters": {**tensor.parameters, "binary_data_size": len(raw)},
        })
    body: dict[str, Any] = {"inputs": inputs}
    if request.id is not None:
        body["id"] = request.id
    if request.parameters:
        body["parameters"] = request.parameters
    if request.outputs is not None:
        body["outputs"] = requested_outputs(request.outputs)
    header = orjson.dumps(body, option=_DUMP_OPTIONS)
    return b"".join([header, *chunks]), len(header)


def decode_response(body: bytes, header_length: int | None = None) -> InferenceResponse:
    """A V2 response body (JSON outputs, binary outputs or both) as an InferenceResponse."""
    header, binary = _split_body(body, header_length)
    raw_outputs = header.get("outputs")
    if not isinstance(raw_outputs, list):
        raise InvalidInput("'outputs' must be a list of tensors")
    version = header.get("model_version")
    return InferenceResponse(
        outputs=_decode_tensors(raw_outputs, binary, "output"),
        model_name=str(header.get("model_name", "")),
        model_version=None if version is None else str(version),
        id=_optional_str(header.get("id"), "id"),
        parameters=_parameters(header.get("parameters"), "response"),
    )
