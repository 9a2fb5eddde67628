"""The protocol-neutral tensors, requests and responses."""

from __future__ import annotations

import numpy as np
import pytest

from shoal.datatypes import datatype_of, numpy_dtype
from shoal.errors import InvalidInput
from shoal.types import InferenceRequest, InferenceResponse, RequestedOutput, Tensor, TensorSpec


@pytest.mark.parametrize(
    "value,datatype",
    [
        (np.zeros(2, np.bool_), "BOOL"), (np.zeros(2, np.int8), "INT8"),
        (np.zeros(2, np.int16), "INT16"), (np.zeros(2, np.int32), "INT32"),
        (np.zeros(2, np.int64), "INT64"), (np.zeros(2, np.uint8), "UINT8"),
        (np.zeros(2, np.uint16), "UINT16"), (np.zeros(2, np.uint32), "UINT32"),
        (np.zeros(2, np.uint64), "UINT64"), (np.zeros(2, np.float16), "FP16"),
        (np.zeros(2, np.float32), "FP32"), (np.zeros(2, np.float64), "FP64"),
        (np.zeros(2, ">f8"), "FP64"), (["a", "b"], "BYTES"), ([b"a"], "BYTES"),
    ],
)
def test_from_numpy_datatypes(value, datatype: str) -> None:
    assert Tensor.from_numpy("t", value).datatype == datatype


def test_from_numpy_text_becomes_utf8_bytes() -> None:
    tensor = Tensor.from_numpy("t", np.array([["h\u00e9", "b"]]))
    assert tensor.shape == (1, 2) and tensor.data.dtype == object
    assert tensor.data.tolist() == [["h\u00e9".encode(), b"b"]]
    assert tensor.as_strings() == ["h\u00e9", "b"]


def test_from_numpy_keeps_trailing_nul_bytes() -> None:
    tensor = Tensor.from_numpy("t", [b"a\x00", b"\x00\x00", b"c"])
    assert tensor.data.tolist() == [b"a\x00", b"\x00\x00", b"c"]
    assert Tensor.from_numpy("t", b"z\x00").data.tolist() == b"z\x00"


def test_from_numpy_parameters() -> None:
    assert Tensor.from_numpy("t", [1], {"k": 1}).parameters == {"k": 1}
    assert Tensor.from_numpy("t", [1]).parameters == {}


def test_unsupported_dtypes() -> None:
    with pytest.raises(InvalidInput, match="complex128 has no V2 datatype"):
        Tensor.from_numpy("t", np.zeros(1, np.complex128))
    with pytest.raises(InvalidInput, match="unknown datatype 'INT128'"):
        numpy_dtype("INT128")


def test_object_arrays_are_bytes() -> None:
    assert datatype_of(np.array(["x"], dtype=object)) == "BYTES"


def test_request_helpers() -> None:
    a, b = Tensor.from_numpy("a", [1]), Tensor.from_numpy("b", [2.0])
    request = InferenceRequest([a, b], outputs=[RequestedOutput("y")])
    assert request.input("b") is b
    assert request.as_numpy("a").tolist() == [1]
    assert request.requested_output_names == ["y"]
    assert InferenceRequest([a]).as_numpy().tolist() == [1]
    assert InferenceRequest([a]).requested_output_names is None
    with pytest.raises(InvalidInput, match="no input named 'c'"):
        request.input("c")
    with pytest.raises(InvalidInput, match="expected exactly one input, got 2"):
        request.as_numpy()


def test_response_output_lookup() -> None:
    y = Tensor.from_numpy("y", [1])
    assert InferenceResponse([y]).output("y") is y
    with pytest.raises(KeyError):
        InferenceResponse([y]).output("z")


def test_tensor_spec_to_dict() -> None:
    spec = TensorSpec("x", "FP32", (-1, 3))
    assert spec.to_dict() == {"name": "x", "datatype": "FP32", "shape": [-1, 3]}
