"""V1 / TensorFlow Serving REST: the row (``instances``) and columnar (``inputs``) formats.

Row format: ``{"instances": [row, ...]}``; each row is a value (one input) or an object of
named inputs. Columnar format: ``{"inputs": value}`` or ``{"inputs": {name: value}}``.
Binary values are ``{"b64": "..."}`` objects, as in TF Serving. The answer mirrors the
question: rows give ``{"predictions": [...]}``, columns give ``{"outputs": ...}``.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any, Literal

import numpy as np

from ..datatypes import canonical
from ..errors import InvalidInput
from ..types import InferenceRequest, InferenceResponse, Tensor, TensorSpec
from .v2_json import MAX_NESTING, json_array, json_data, json_numbers, parse_json_object

Format = Literal["row", "columnar"]
DEFAULT_INPUT = "input-0"


def decode_request(body: bytes, inputs: list[TensorSpec]) -> tuple[InferenceRequest, Format]:
    payload = parse_json_object(body)
    if "instances" in payload and "inputs" in payload:
        raise InvalidInput("use either 'instances' or 'inputs', not both")
    if "instances" in payload:
        rows = payload["instances"]
        if not isinstance(rows, list):
            raise InvalidInput("'instances' must be a list")
        if rows and all(isinstance(r, dict) and not _is_b64(r) for r in rows):
            names = list(rows[0])
            if any(list(r) != names and set(r) != set(names) for r in rows):
                raise InvalidInput("every instance must have the same named inputs")
            columns = {n: [r[n] for r in rows] for n in names}
        else:
            columns = {_single_name(inputs): rows}
        fmt: Format = "row"
    elif "inputs" in payload:
        value = payload["inputs"]
        if _is_v2_inputs(value):
            raise InvalidInput(
                "this is a V2 inference request ('inputs' as a list of {name, datatype, shape, "
                "data} objects): send it to POST /v2/models/{model}/infer; V1 :predict takes "
                "{\"instances\": [...]} or {\"inputs\": ...}"
            )
        if isinstance(value, dict) and not _is_b64(value):
            columns = value
        else:
            columns = {_single_name(inputs): value}
        fmt = "columnar"
    else:
        raise InvalidInput("a V1 request needs 'instances' or 'inputs'")
    declared = {spec.name: spec.datatype for spec in inputs}
    tensors = [json_tensor(name, value, declared.get(name)) for name, value in columns.items()]
    return InferenceRequest(inputs=tensors), fmt


_V2_TENSOR_KEYS = frozenset(("name", "datatype", "shape"))


def _is_v2_inputs(value: Any) -> bool:
    """A V2 body's ``inputs``: a list of objects that each have a name, datatype and shape.
    V1 never means that (a list of objects in ``inputs`` is no tensor, unless they are b64)."""
    return (
        isinstance(value, list) and bool(value) and isinstance(value[0], dict)
        and all(isinstance(t, dict) and _V2_TENSOR_KEYS <= t.keys() for t in value)
    )


def _single_name(inputs: list[TensorSpec]) -> str:
    return inputs[0].name if len(inputs) == 1 else DEFAULT_INPUT


def _is_b64(value: Any) -> bool:
    return isinstance(value, dict) and len(value) == 1 and "b64" in value


def json_tensor(name: str, value: Any, datatype: str | None) -> Tensor:
    """Nested JSON lists as a tensor: numbers as the declared datatype (with ``"NaN"``,
    ``"Infinity"``, ``"-Infinity"`` for a float one), strings (or ``{"b64": ...}``) as BYTES,
    else as JSON has them (FP64, INT64, BOOL). Seldon's ndarray too."""
    if datatype and datatype != "BYTES":
        return Tensor.from_numpy(name, json_numbers(value, datatype, name))
    if _contains_text(value):
        array = _bytes_array(value, name)
        return Tensor(name, "BYTES", tuple(array.shape), array)
    try:
        array = np.array(value)
    except (ValueError, TypeError, OverflowError) as exc:
        raise InvalidInput(f"input {name!r}: {exc}") from None
    if array.dtype.kind not in "biuf":
        raise InvalidInput(f"input {name!r}: values must be numbers, booleans or strings")
    if datatype is None and array.dtype.kind == "i":
        array = array.astype(np.int64, copy=False)
    return Tensor.from_numpy(name, array)


def _contains_text(value: Any) -> bool:
    while isinstance(value, list) and value:
        value = value[0]
    return isinstance(value, str) or _is_b64(value)


def _bytes_array(value: Any, name: str) -> np.ndarray:
    def convert(item: Any, depth: int = 0) -> Any:
        if isinstance(item, list):
            if depth >= MAX_NESTING:
                raise InvalidInput(f"input {name!r}: values nest deeper than {MAX_NESTING} levels")
            return [convert(i, depth + 1) for i in item]
        if isinstance(item, str):
            return item.encode("utf-8")
        if _is_b64(item):
            try:
                return base64.b64decode(item["b64"], validate=True)
            except (binascii.Error, TypeError):
                raise InvalidInput(f"input {name!r}: invalid base64 value") from None
        raise InvalidInput(f"input {name!r}: mixes strings with other values")

    try:
        array = np.array(convert(value), dtype=object)
    except ValueError:
        array = None
    # With dtype=object numpy keeps ragged rows as list elements instead of failing.
    if array is None or any(isinstance(item, list) for item in array.reshape(-1)):
        raise InvalidInput(f"input {name!r}: rows have different lengths")
    return array


def encode_response(response: InferenceResponse, fmt: Format) -> dict[str, Any]:
    """A dict for orjson; arrays stay numpy (nested by their shape)."""
    values = {t.name: _value(t) for t in response.outputs}
    if fmt == "columnar":
        if len(values) == 1:
            return {"outputs": next(iter(values.values()))}
        return {"outputs": values}
    if len(values) == 1:
        return {"predictions": next(iter(values.values()))}
    rows = _row_count(response.outputs)
    return {"predictions": [{n: v[i] for n, v in values.items()} for i in range(rows)]}


def _value(tensor: Tensor) -> Any:
    if tensor.datatype == "BYTES":
        return np.array(json_data(tensor), dtype=object).reshape(tensor.shape).tolist()
    return json_array(canonical(tensor.data, tensor.datatype))


def _row_count(outputs: list[Tensor]) -> int:
    counts = {t.shape[0] if t.shape else None for t in outputs}
    if len(counts) != 1 or None in counts:
        raise InvalidInput(
            "the model's outputs do not share one batch size; use the columnar format ('inputs')"
        )
    return counts.pop()


#: Shoal's version states -> TensorFlow Serving's; a version that failed to load has ended.
TF_SERVING_STATES = {"READY": "AVAILABLE", "LOADING": "LOADING", "UNLOADING": "UNLOADING"}


def tf_serving_state(state: str) -> str:
    """A version's state as TF Serving's GetModelStatus names it (REST and gRPC alike)."""
    return TF_SERVING_STATES.get(state, "END")
