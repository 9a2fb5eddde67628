"""V2 REST bodies: JSON tensors and the binary tensor extension."""

from __future__ import annotations

import numpy as np
import orjson
import pytest

from shoal.datatypes import NUMPY_DTYPES
from shoal.errors import InvalidInput
from shoal.protocol import v2_binary, v2_json
from shoal.types import InferenceRequest, InferenceResponse, RequestedOutput, Tensor

JSON_VALUES = {
    "BOOL": [True, False, True, True],
    "INT8": [-128, 127, 0, 1],
    "INT16": [-32768, 32767, 0, 1],
    "INT32": [-(2**31), 2**31 - 1, 0, 1],
    "INT64": [-(2**63), 2**63 - 1, 0, 1],
    "UINT8": [0, 255, 1, 2],
    "UINT16": [0, 65535, 1, 2],
    "UINT32": [0, 2**32 - 1, 1, 2],
    "UINT64": [0, 2**64 - 1, 1, 2],
    "FP16": [0.5, -1.25, 65504.0, 0.0],
    "FP32": [0.5, -1.25, 3.0, 1e10],
    "FP64": [0.1, -1.25, 1e300, 1],
    "BYTES": ["a", "", "h\u00e9llo", "x y"],
}


def body(*inputs: dict, **extra) -> bytes:
    return orjson.dumps({"inputs": list(inputs), **extra})


def binary_body(header: dict, *chunks: bytes) -> tuple[bytes, int]:
    head = orjson.dumps(header)
    return head + b"".join(chunks), len(head)


def split_response(content: bytes, header_length: int | None) -> tuple[dict, bytes]:
    if header_length is None:
        return orjson.loads(content), b""
    return orjson.loads(content[:header_length]), content[header_length:]


def bad(raw: bytes, header_length: int | None = None) -> str:
    with pytest.raises(InvalidInput) as info:
        v2_json.decode_request(raw, header_length)
    return str(info.value)


# -- JSON data ---------------------------------------------------------------------------


@pytest.mark.parametrize("datatype", list(JSON_VALUES))
def test_json_round_trip_every_datatype(datatype: str) -> None:
    values = JSON_VALUES[datatype]
    request = v2_json.decode_request(
        body({"name": "x", "datatype": datatype, "shape": [2, 2], "data": values})
    )
    tensor = request.inputs[0]
    assert (tensor.name, tensor.datatype, tensor.shape) == ("x", datatype, (2, 2))
    assert tensor.data.dtype == NUMPY_DTYPES[datatype]
    if datatype == "BYTES":
        assert tensor.data.reshape(-1).tolist() == [v.encode() for v in values]
    else:
        np.testing.assert_array_equal(tensor.data.reshape(-1), np.array(values, tensor.data.dtype))

    content, header_length = v2_json.encode_response(InferenceResponse([tensor], "m", "1"))
    assert header_length is None
    decoded = orjson.loads(content)
    assert decoded["model_name"] == "m" and decoded["model_version"] == "1"
    (out,) = decoded["outputs"]
    assert out == {"name": "x", "datatype": datatype, "shape": [2, 2], "data": out["data"]}
    if datatype == "FP16":
        np.testing.assert_array_equal(np.array(out["data"], np.float16), np.float16(values))
    else:
        assert out["data"] == values


def test_nested_and_flat_data_give_the_same_array() -> None:
    flat = v2_json.decode_request(
        body({"name": "x", "datatype": "FP32", "shape": [2, 3], "data": [1, 2, 3, 4, 5, 6]})
    )
    nested = v2_json.decode_request(
        body({"name": "x", "datatype": "FP32", "shape": [2, 3], "data": [[1, 2, 3], [4, 5, 6]]})
    )
    np.testing.assert_array_equal(flat.inputs[0].data, nested.inputs[0].data)
    assert nested.inputs[0].data.shape == (2, 3)


def test_nested_bytes_data_is_flattened() -> None:
    request = v2_json.decode_request(
        body({"name": "t", "datatype": "BYTES", "shape": [2, 2], "data": [["a", "b"], ["c", "d"]]})
    )
    assert request.inputs[0].data.tolist() == [[b"a", b"b"], [b"c", b"d"]]


def test_response_data_is_flat_row_major() -> None:
    tensor = Tensor.from_numpy("y", np.arange(6, dtype=np.int32).reshape(2, 3))
    content, _ = v2_json.encode_response(InferenceResponse([tensor], "m"))
    out = orjson.loads(content)["outputs"][0]
    assert out["data"] == [0, 1, 2, 3, 4, 5] and out["shape"] == [2, 3]


def test_response_of_non_contiguous_and_big_endian_arrays() -> None:
    transposed = np.arange(6, dtype=np.float64).reshape(2, 3).T
    big = np.array([1, 2, 3], dtype=">i4")
    response = InferenceResponse(
        [Tensor("t", "FP64", (3, 2), transposed), Tensor("b", "INT32", (3,), big)], "m"
    )
    outputs = orjson.loads(v2_json.encode_response(response)[0])["outputs"]
    assert outputs[0]["data"] == [0, 3, 1, 4, 2, 5]
    assert outputs[1]["data"] == [1, 2, 3]


def test_request_id_parameters_and_requested_outputs() -> None:
    request = v2_json.decode_request(
        body(
            {"name": "x", "datatype": "INT64", "shape": [1], "data": [1], "parameters": {"k": "v"}},
            id="req-1",
            parameters={"flag": True, "n": 3, "f": 0.5, "s": "str"},
            outputs=[{"name": "a"}, {"name": "b", "parameters": {"binary_data": True}}],
        )
    )
    assert request.id == "req-1"
    assert request.parameters == {"flag": True, "n": 3, "f": 0.5, "s": "str"}
    assert request.inputs[0].parameters == {"k": "v"}
    assert request.requested_output_names == ["a", "b"]
    assert request.outputs[1].parameters == {"binary_data": True}

    response = InferenceResponse(
        [Tensor.from_numpy("a", np.array([1]))], "m", None, id="req-1", parameters={"p": 1}
    )
    decoded = orjson.loads(v2_json.encode_response(response)[0])
    assert decoded["id"] == "req-1" and decoded["parameters"] == {"p": 1}
    assert "model_version" not in decoded


def test_no_requested_outputs_is_none() -> None:
    request = v2_json.decode_request(body({"name": "x", "datatype": "INT64", "shape": [0], "data": []}))
    assert request.outputs is None and request.id is None and request.parameters == {}
    assert request.inputs[0].data.shape == (0,)


# -- binary extension: requests ----------------------------------------------------------


@pytest.mark.parametrize("datatype", list(NUMPY_DTYPES))
def test_binary_input_every_datatype(datatype: str) -> None:
    if datatype == "BYTES":
        array = np.array([b"a", b"\x00\xff", b"", b"long" * 10], dtype=object).reshape(2, 2)
    else:
        array = np.array(JSON_VALUES[datatype], dtype=NUMPY_DTYPES[datatype]).reshape(2, 2)
    raw = v2_binary.encode_tensor_bytes(array, datatype)
    header = {
        "inputs": [
            {"name": "x", "datatype": datatype, "shape": [2, 2],
             "parameters": {"binary_data_size": len(raw)}}
        ]
    }
    content, length = binary_body(header, raw)
    tensor = v2_json.decode_request(content, length).inputs[0]
    assert tensor.datatype == datatype and tensor.shape == (2, 2)
    assert tensor.data.tolist() == array.tolist()
    assert "binary_data_size" not in tensor.parameters


def test_binary_input_is_zero_copy_over_the_request_body() -> None:
    array = np.arange(12, dtype="<f4")
    header = {
        "inputs": [
            {"name": "x", "datatype": "FP32", "shape": [3, 4],
             "parameters": {"binary_data_size": array.nbytes}}
        ]
    }
    content, length = binary_body(header, array.tobytes())
    data = v2_json.decode_request(content, length).inputs[0].data
    assert np.shares_memory(data, np.frombuffer(content, dtype=np.uint8))
    assert not data.flags.writeable
    np.testing.assert_array_equal(data.reshape(-1), array)


def test_binary_and_json_inputs_mixed_in_order() -> None:
    a = np.array([1, 2, 3], dtype="<i4")
    c = np.array([b"hi", b"there"], dtype=object)
    raw_c = v2_binary.encode_tensor_bytes(c, "BYTES")
    header = {
        "inputs": [
            {"name": "a", "datatype": "INT32", "shape": [3], "parameters": {"binary_data_size": 12}},
            {"name": "b", "datatype": "FP64", "shape": [2], "data": [0.5, 1.5]},
            {"name": "c", "datatype": "BYTES", "shape": [2],
             "parameters": {"binary_data_size": len(raw_c)}},
        ]
    }
    content, length = binary_body(header, a.tobytes(), raw_c)
    request = v2_json.decode_request(content, length)
    assert [t.name for t in request.inputs] == ["a", "b", "c"]
    assert request.inputs[0].data.tolist() == [1, 2, 3]
    assert request.inputs[1].data.tolist() == [0.5, 1.5]
    assert request.inputs[2].data.tolist() == [b"hi", b"there"]


def test_header_length_equal_to_body_with_json_inputs() -> None:
    content = body({"name": "x", "datatype": "INT64", "shape": [1], "data": [5]})
    request = v2_json.decode_request(content, len(content))
    assert request.inputs[0].data.tolist() == [5]


# -- binary extension: responses ---------------------------------------------------------


def _response() -> InferenceResponse:
    return InferenceResponse(
        [
            Tensor.from_numpy("scores", np.array([[0.25, 0.75]], dtype=np.float32)),
            Tensor.from_numpy("label", np.array(["cat"])),
            Tensor.from_numpy("half", np.array([1.5, -2], dtype=np.float16)),
        ],
        "m",
        "2",
    )


def _request(parameters: dict | None = None, outputs: list[RequestedOutput] | None = None):
    return InferenceRequest(inputs=[], parameters=parameters or {}, outputs=outputs)


def _decode_outputs(content: bytes, header_length: int | None) -> dict[str, object]:
    header, binary = split_response(content, header_length)
    values: dict[str, object] = {}
    offset = 0
    for out in header["outputs"]:
        size = (out.get("parameters") or {}).get("binary_data_size")
        if size is None:
            values[out["name"]] = ("json", out["data"])
        else:
            chunk = binary[offset : offset + size]
            offset += size
            array = v2_binary.decode_tensor_bytes(chunk, out["datatype"], tuple(out["shape"]), "o")
            values[out["name"]] = ("binary", array.tolist())
    assert offset == len(binary)
    return values


def test_binary_data_output_puts_every_output_in_binary() -> None:
    content, length = v2_json.encode_response(_response(), _request({"binary_data_output": True}))
    assert length is not None
    values = _decode_outputs(content, length)
    assert values == {
        "scores": ("binary", [[0.25, 0.75]]),
        "label": ("binary", [b"cat"]),
        "half": ("binary", [1.5, -2.0]),
    }
    header = orjson.loads(content[:length])
    assert header["model_name"] == "m" and header["model_version"] == "2"
    assert all("data" not in out for out in header["outputs"])


def test_per_output_binary_data() -> None:
    request = _request(
        outputs=[
            RequestedOutput("scores", {"binary_data": True}),
            RequestedOutput("label"),
            RequestedOutput("half", {"binary_data": False}),
        ]
    )
    values = _decode_outputs(*v2_json.encode_response(_response(), request))
    assert values["scores"] == ("binary", [[0.25, 0.75]])
    assert values["label"] == ("json", ["cat"])
    assert values["half"] == ("json", [1.5, -2.0])


def test_output_binary_data_false_overrides_binary_data_output() -> None:
    request = _request(
        {"binary_data_output": True}, [RequestedOutput("label", {"binary_data": False})]
    )
    values = _decode_outputs(*v2_json.encode_response(_response(), request))
    assert values["label"] == ("json", ["cat"])
    assert values["scores"][0] == "binary" and values["half"][0] == "binary"


def test_no_binary_request_gives_plain_json() -> None:
    content, length = v2_json.encode_response(_response(), _request())
    assert length is None
    assert _decode_outputs(content, None)["label"] == ("json", ["cat"])


def test_non_utf8_bytes_output_must_go_binary() -> None:
    response = InferenceResponse([Tensor("b", "BYTES", (1,), np.array([b"\xff"], dtype=object))])
    with pytest.raises(InvalidInput, match="binary_data"):
        v2_json.encode_response(response)
    content, length = v2_json.encode_response(response, _request({"binary_data_output": True}))
    assert content[length:] == b"\x01\x00\x00\x00\xff"


# -- bad requests -------------------------------------------------------------------------


def test_malformed_json() -> None:
    assert "not valid JSON" in bad(b'{"inputs": [')


def test_malformed_json_header() -> None:
    content, length = binary_body({"inputs": []}, b"")
    assert "JSON header is not valid JSON" in bad(b"{nope" + content, 5)


@pytest.mark.parametrize("raw", [b"[]", b"1", b'"inputs"', b"null"])
def test_body_not_an_object(raw: bytes) -> None:
    assert "must be a JSON object" in bad(raw)


@pytest.mark.parametrize("inputs", [None, {}, "x", 3])
def test_inputs_not_a_list(inputs) -> None:
    raw = orjson.dumps({} if inputs is None else {"inputs": inputs})
    assert "'inputs' must be a list" in bad(raw)


def test_input_not_an_object() -> None:
    assert "input 0 must be a JSON object" in bad(body([1, 2]))


@pytest.mark.parametrize("name", [None, "", 3])
def test_missing_name(name) -> None:
    tensor = {"datatype": "FP32", "shape": [1], "data": [1]}
    if name is not None:
        tensor["name"] = name
    assert "input 0 needs a non-empty string 'name'" in bad(body(tensor))


def test_missing_datatype() -> None:
    assert "input 'x' needs a string 'datatype'" in bad(body({"name": "x", "shape": [1], "data": [1]}))


def test_unknown_datatype() -> None:
    message = bad(body({"name": "x", "datatype": "FLOAT32", "shape": [1], "data": [1]}))
    assert "unknown datatype 'FLOAT32'" in message and "FP32" in message


@pytest.mark.parametrize("shape", [None, [-1], [2, -3], [1.5], ["2"], [True], 4])
def test_bad_shape(shape) -> None:
    tensor = {"name": "x", "datatype": "FP32", "data": [1]}
    if shape is not None:
        tensor["shape"] = shape
    assert "'shape' must be a list of non-negative integers" in bad(body(tensor))


@pytest.mark.parametrize(
    "datatype,data",
    [("FP32", [1, 2, 3]), ("FP32", [[1, 2], [3, 4], [5, 6]]), ("BYTES", ["a"]), ("INT64", [])],
)
def test_data_length_not_matching_shape(datatype: str, data) -> None:
    message = bad(body({"name": "x", "datatype": datatype, "shape": [2, 2], "data": data}))
    assert "do not match shape [2, 2] (4 elements)" in message


def test_ragged_nested_data() -> None:
    message = bad(body({"name": "x", "datatype": "FP32", "shape": [2, 2], "data": [[1, 2], [3]]}))
    assert "input 'x'" in message and "not valid FP32" in message


def test_missing_data() -> None:
    message = bad(body({"name": "x", "datatype": "FP32", "shape": [1]}))
    assert "neither 'data' nor parameters.binary_data_size" in message


@pytest.mark.parametrize(
    "datatype,data,fragment",
    [
        ("INT32", [1.7], "INT32 data must be integers"),
        ("INT64", [True], "INT64 data must be integers"),
        ("FP32", [None], "FP32 data must be numbers"),
        ("FP32", ["1.5"], "FP32 data must be numbers"),
        ("BOOL", [1], "BOOL data must be true or false"),
        ("INT8", [128], "out of range for INT8 (-128 to 127)"),
        ("UINT8", [-1], "out of range for UINT8 (0 to 255)"),
        ("UINT32", [2**32], "out of range for UINT32"),
        ("INT64", [2**63], "out of range for INT64"),
        ("UINT64", [2.0**64], "out of range for UINT64"),
        ("UINT64", [1, 2.5], "UINT64 data must be integers"),
        ("INT64", ["7"], "INT64 data must be integers"),
        ("FP64", {"a": 1}, "FP64 data must be numbers"),
        ("BYTES", [1], "BYTES elements must be strings"),
    ],
)
def test_data_of_the_wrong_kind_is_refused_not_converted(datatype, data, fragment) -> None:
    assert fragment in bad(body({"name": "x", "datatype": datatype, "shape": [1], "data": data}))


def test_integers_beyond_int64_stay_exact() -> None:
    values = [[0, 2**64 - 1], [3.0, 2**63 + 1]]  # numpy alone would infer float64 here
    request = v2_json.decode_request(
        body({"name": "x", "datatype": "UINT64", "shape": [2, 2], "data": values})
    )
    assert request.inputs[0].data.tolist() == [[0, 2**64 - 1], [3, 2**63 + 1]]


def test_ints_are_valid_float_data() -> None:
    request = v2_json.decode_request(body({"name": "x", "datatype": "FP32", "shape": [2], "data": [1, 2]}))
    assert request.inputs[0].data.dtype == np.float32


@pytest.mark.parametrize("length", [-1, 10_000])
def test_header_length_outside_the_body(length: int) -> None:
    content = body({"name": "x", "datatype": "FP32", "shape": [1], "data": [1]})
    message = bad(content, length)
    assert f"Inference-Header-Content-Length is {length}" in message
    assert f"only {len(content)} bytes" in message


def _binary_input(size, datatype="FP32", shape=(2,)) -> dict:
    return {"name": "x", "datatype": datatype, "shape": list(shape),
            "parameters": {"binary_data_size": size}}


def test_binary_data_size_overrunning_the_body() -> None:
    content, length = binary_body({"inputs": [_binary_input(8)]}, b"\x00" * 4)
    assert "binary_data_size 8 overruns the 4 bytes of binary data left" in bad(content, length)


def test_binary_data_size_without_header_length() -> None:
    assert "no Inference-Header-Content-Length" in bad(body(_binary_input(8)))


@pytest.mark.parametrize("size", [-1, "8", 1.5, True])
def test_binary_data_size_not_a_non_negative_int(size) -> None:
    content, length = binary_body({"inputs": [_binary_input(size)]}, b"\x00" * 8)
    assert "binary_data_size must be a non-negative integer" in bad(content, length)


def test_binary_data_size_not_matching_shape() -> None:
    content, length = binary_body({"inputs": [_binary_input(4)]}, b"\x00" * 4)
    assert "4 bytes of FP32 data do not match shape [2], which needs 8 bytes" in bad(content, length)


def test_leftover_binary_bytes() -> None:
    content, length = binary_body({"inputs": [_binary_input(8)]}, b"\x00" * 11)
    assert "3 bytes of binary data that no input claims" in bad(content, length)


def test_leftover_binary_bytes_with_only_json_inputs() -> None:
    content, length = binary_body(
        {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1]}]}, b"extra"
    )
    assert "5 bytes of binary data that no input claims" in bad(content, length)


def test_binary_bytes_element_overrunning() -> None:
    raw = b"\x09\x00\x00\x00abc"
    content, length = binary_body({"inputs": [_binary_input(len(raw), "BYTES", (1,))]}, raw)
    assert "BYTES element 0 claims 9 bytes but only 3 remain" in bad(content, length)


@pytest.mark.parametrize(
    "extra,fragment",
    [
        ({"id": 5}, "'id' must be a string"),
        ({"parameters": [1]}, "request 'parameters' must be a JSON object"),
        ({"outputs": {"name": "a"}}, "'outputs' must be a list"),
        ({"outputs": [{"nom": "a"}]}, "each requested output needs a string 'name'"),
    ],
)
def test_bad_request_fields(extra: dict, fragment: str) -> None:
    content = body({"name": "x", "datatype": "FP32", "shape": [1], "data": [1]}, **extra)
    assert fragment in bad(content)


def test_bad_input_parameters() -> None:
    content = body({"name": "x", "datatype": "FP32", "shape": [1], "data": [1], "parameters": 3})
    assert "input 'x' 'parameters' must be a JSON object" in bad(content)
