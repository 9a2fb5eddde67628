"""V1 / TF Serving REST: row (instances) and columnar (inputs) formats."""

from __future__ import annotations

import base64

import numpy as np
import orjson
import pytest

from shoal.errors import InvalidInput
from shoal.protocol import v1, v2_json
from shoal.types import InferenceResponse, Tensor, TensorSpec

ONE_INPUT = [TensorSpec("features", "FP32", (-1, 2))]


def decode(payload, inputs=()):
    raw = payload if isinstance(payload, bytes) else orjson.dumps(payload)
    return v1.decode_request(raw, list(inputs))


def bad(payload, inputs=()) -> str:
    with pytest.raises(InvalidInput) as info:
        decode(payload, inputs)
    return str(info.value)


def wire(value):
    """What the REST layer sends: orjson with numpy support, read back."""
    return orjson.loads(v2_json.dumps(value))


# -- row format ---------------------------------------------------------------------------


def test_instances_of_values_use_the_single_declared_input() -> None:
    request, fmt = decode({"instances": [[1, 2], [3, 4]]}, ONE_INPUT)
    assert fmt == "row"
    (tensor,) = request.inputs
    assert (tensor.name, tensor.datatype, tensor.shape) == ("features", "FP32", (2, 2))
    assert tensor.data.dtype == np.float32
    assert tensor.data.tolist() == [[1, 2], [3, 4]]


def test_instances_without_declared_inputs_use_the_default_name_and_inferred_types() -> None:
    ints, _ = decode({"instances": [1, 2, 3]})
    floats, _ = decode({"instances": [[0.5], [1.5]]})
    bools, _ = decode({"instances": [True, False]})
    assert ints.inputs[0].name == v1.DEFAULT_INPUT
    assert (ints.inputs[0].datatype, ints.inputs[0].shape) == ("INT64", (3,))
    assert (floats.inputs[0].datatype, floats.inputs[0].shape) == ("FP64", (2, 1))
    assert bools.inputs[0].datatype == "BOOL"


def test_several_declared_inputs_and_unnamed_rows_use_the_default_name() -> None:
    specs = [TensorSpec("a", "FP32", (-1,)), TensorSpec("b", "FP32", (-1,))]
    request, _ = decode({"instances": [1.0, 2.0]}, specs)
    assert request.inputs[0].name == v1.DEFAULT_INPUT


def test_named_instances_become_one_column_per_input() -> None:
    specs = [TensorSpec("age", "INT32", (-1,)), TensorSpec("tags", "BYTES", (-1, 2))]
    request, fmt = decode(
        {"instances": [{"age": 3, "tags": ["a", "b"]}, {"tags": ["c", "d"], "age": 5}]}, specs
    )
    assert fmt == "row"
    age, tags = request.inputs
    assert (age.name, age.datatype, age.data.dtype, age.data.tolist()) == (
        "age", "INT32", np.int32, [3, 5]
    )
    assert (tags.name, tags.datatype, tags.shape) == ("tags", "BYTES", (2, 2))
    assert tags.data.tolist() == [[b"a", b"b"], [b"c", b"d"]]


def test_b64_instances() -> None:
    blobs = [b"\x89PNG\x00", b"\xff\xd8"]
    rows = [{"b64": base64.b64encode(b).decode()} for b in blobs]
    request, _ = decode({"instances": rows})
    tensor = request.inputs[0]
    assert (tensor.datatype, tensor.shape) == ("BYTES", (2,))
    assert tensor.data.tolist() == blobs


def test_b64_inside_named_instances() -> None:
    rows = [{"image": {"b64": base64.b64encode(b"img").decode()}, "k": 1}]
    request, _ = decode({"instances": rows})
    image, k = request.inputs
    assert image.data.tolist() == [b"img"] and k.data.tolist() == [1]


def test_text_instances_are_utf8_bytes() -> None:
    request, _ = decode({"instances": ["h\u00e9", "x"]})
    assert request.inputs[0].data.tolist() == ["h\u00e9".encode(), b"x"]
    assert request.inputs[0].as_strings() == ["h\u00e9", "x"]


def test_empty_instances() -> None:
    request, fmt = decode({"instances": []}, ONE_INPUT)
    assert fmt == "row" and request.inputs[0].shape == (0,)


# -- columnar format ----------------------------------------------------------------------


def test_columnar_single_value() -> None:
    request, fmt = decode({"inputs": [[1, 2], [3, 4]]}, ONE_INPUT)
    assert fmt == "columnar"
    assert request.inputs[0].name == "features"
    assert request.inputs[0].data.dtype == np.float32


def test_columnar_dict_of_inputs() -> None:
    request, fmt = decode({"inputs": {"a": [1, 2], "b": ["x", "y"], "c": 0.5}})
    assert fmt == "columnar"
    a, b, c = request.inputs
    assert (a.name, a.datatype, a.data.tolist()) == ("a", "INT64", [1, 2])
    assert (b.name, b.datatype, b.data.tolist()) == ("b", "BYTES", [b"x", b"y"])
    assert (c.name, c.datatype, c.shape) == ("c", "FP64", ())


def test_columnar_b64_value() -> None:
    request, _ = decode({"inputs": {"b64": base64.b64encode(b"raw").decode()}})
    assert request.inputs[0].name == v1.DEFAULT_INPUT
    assert request.inputs[0].data.tolist() == b"raw"


# -- responses ----------------------------------------------------------------------------


def test_row_response_with_one_output() -> None:
    response = InferenceResponse([Tensor.from_numpy("y", np.array([[0.25, 0.75], [1, 0]]))])
    assert wire(v1.encode_response(response, "row")) == {"predictions": [[0.25, 0.75], [1, 0]]}


def test_row_response_with_several_outputs_is_a_list_of_per_row_dicts() -> None:
    response = InferenceResponse(
        [
            Tensor.from_numpy("label", np.array(["cat", "dog"])),
            Tensor.from_numpy("score", np.array([0.9, 0.8], dtype=np.float32)),
            Tensor.from_numpy("probs", np.array([[1, 0], [0, 1]], dtype=np.int32)),
        ]
    )
    assert wire(v1.encode_response(response, "row")) == {
        "predictions": [
            {"label": "cat", "score": pytest.approx(0.9), "probs": [1, 0]},
            {"label": "dog", "score": pytest.approx(0.8), "probs": [0, 1]},
        ]
    }


def test_columnar_responses() -> None:
    one = InferenceResponse([Tensor.from_numpy("y", np.array([1, 2]))])
    two = InferenceResponse(
        [Tensor.from_numpy("y", np.array([1, 2])), Tensor.from_numpy("t", np.array([["a"]]))]
    )
    assert wire(v1.encode_response(one, "columnar")) == {"outputs": [1, 2]}
    assert wire(v1.encode_response(two, "columnar")) == {"outputs": {"y": [1, 2], "t": [["a"]]}}


def test_bytes_output_keeps_its_shape_as_strings() -> None:
    response = InferenceResponse([Tensor.from_numpy("t", np.array([["a", "b"], ["c", "d"]]))])
    assert wire(v1.encode_response(response, "row")) == {"predictions": [["a", "b"], ["c", "d"]]}


@pytest.mark.parametrize("second", [np.zeros(3), np.float64(1.0)])
def test_row_response_with_different_batch_sizes(second) -> None:
    response = InferenceResponse(
        [Tensor.from_numpy("a", np.zeros(1)), Tensor.from_numpy("b", second)]
    )
    with pytest.raises(InvalidInput, match="do not share one batch size; use the columnar format"):
        v1.encode_response(response, "row")


# -- bad requests -------------------------------------------------------------------------


def test_malformed_json() -> None:
    assert "not valid JSON" in bad(b'{"instances": [1,')


def test_body_not_an_object() -> None:
    assert "must be a JSON object" in bad(b"[1, 2]")


def test_neither_instances_nor_inputs() -> None:
    assert "needs 'instances' or 'inputs'" in bad({"signature_name": "x"})


def test_both_instances_and_inputs() -> None:
    assert "either 'instances' or 'inputs', not both" in bad({"instances": [1], "inputs": [1]})


def test_instances_not_a_list() -> None:
    assert "'instances' must be a list" in bad({"instances": {"a": 1}})


def test_named_instances_with_different_keys() -> None:
    assert "same named inputs" in bad({"instances": [{"a": 1}, {"b": 2}]})


def test_ragged_numeric_rows() -> None:
    message = bad({"instances": [[1, 2], [3]]})
    assert "input 'input-0'" in message and "inhomogeneous" in message


def test_ragged_numeric_rows_with_a_declared_datatype() -> None:
    message = bad({"instances": [[1, 2], [3]]}, ONE_INPUT)
    assert "input 'features'" in message and "inhomogeneous" in message


@pytest.mark.parametrize(
    "rows", [[["a", "b"], ["c"]], [["a"], "b"], [[["a"]], [["b", "c"]]]]
)
def test_ragged_text_rows(rows) -> None:
    assert "rows have different lengths" in bad({"instances": rows})


def test_invalid_base64() -> None:
    assert "invalid base64" in bad({"instances": [{"b64": "not base64!"}]})


def test_strings_mixed_with_numbers() -> None:
    assert "mixes strings with other values" in bad({"instances": ["a", 1]})


def test_non_scalar_values() -> None:
    assert "values must be numbers, booleans or strings" in bad({"inputs": {"a": [None, 1]}})


def test_declared_integer_input_refuses_fractions() -> None:
    specs = [TensorSpec("n", "INT64", (-1,))]
    assert "INT64 data must be integers" in bad({"instances": [1, 2.5]}, specs)
