"""The byte layout shared by the REST binary extension and gRPC raw contents."""

from __future__ import annotations

import numpy as np
import pytest

from shoal.datatypes import NUMPY_DTYPES
from shoal.errors import InvalidInput
from shoal.protocol import v2_binary

NUMERIC = [d for d in NUMPY_DTYPES if d != "BYTES"]


def sample(datatype: str, shape: tuple[int, ...] = (2, 3)) -> np.ndarray:
    count = int(np.prod(shape))
    if datatype == "BOOL":
        return (np.arange(count) % 2 == 0).reshape(shape)
    dtype = NUMPY_DTYPES[datatype]
    if dtype.kind == "f":
        return (np.arange(count, dtype=dtype) - 2.5).reshape(shape)
    info = np.iinfo(dtype)
    values = np.array([info.min, info.max, 0, 1, 7, info.max - 1][:count], dtype=dtype)
    return np.resize(values, shape)


@pytest.mark.parametrize("datatype", NUMERIC)
def test_numeric_round_trip(datatype: str) -> None:
    array = sample(datatype)
    raw = v2_binary.encode_tensor_bytes(array, datatype)
    assert len(raw) == array.size * NUMPY_DTYPES[datatype].itemsize
    decoded = v2_binary.decode_tensor_bytes(raw, datatype, (2, 3), "x")
    assert decoded.dtype == NUMPY_DTYPES[datatype]
    assert decoded.shape == (2, 3)
    np.testing.assert_array_equal(decoded, array)


def test_numeric_layout_is_little_endian_row_major() -> None:
    array = np.array([[1, 2], [3, 256]], dtype=">i4")  # big-endian in memory
    raw = v2_binary.encode_tensor_bytes(array, "INT32")
    assert raw == b"".join(v.to_bytes(4, "little") for v in (1, 2, 3, 256))


def test_bool_is_one_byte_per_element() -> None:
    assert v2_binary.encode_tensor_bytes(np.array([True, False, True]), "BOOL") == b"\x01\x00\x01"


def test_encode_casts_to_the_declared_datatype() -> None:
    raw = v2_binary.encode_tensor_bytes(np.array([1.5, 2.5]), "FP32")
    np.testing.assert_array_equal(np.frombuffer(raw, "<f4"), [1.5, 2.5])


def test_decode_is_zero_copy_and_read_only() -> None:
    body = b"HEADER" + np.arange(6, dtype="<f4").tobytes()
    view = memoryview(body)[6:]
    decoded = v2_binary.decode_tensor_bytes(view, "FP32", (2, 3), "x")
    assert np.shares_memory(decoded, np.frombuffer(body, dtype=np.uint8))
    assert not decoded.flags.writeable
    np.testing.assert_array_equal(decoded.reshape(-1), np.arange(6))


def test_empty_tensor() -> None:
    decoded = v2_binary.decode_tensor_bytes(b"", "INT64", (2, 0), "x")
    assert decoded.shape == (2, 0)
    assert v2_binary.encode_tensor_bytes(decoded, "INT64") == b""


def test_bytes_elements_are_length_prefixed() -> None:
    array = np.array([b"ab", b"", "h\u00e9"], dtype=object)
    raw = v2_binary.encode_tensor_bytes(array, "BYTES")
    assert raw == (
        b"\x02\x00\x00\x00ab" + b"\x00\x00\x00\x00" + b"\x03\x00\x00\x00h\xc3\xa9"
    )


def test_bytes_round_trip_keeps_shape_and_binary_content() -> None:
    array = np.array([[b"\x00\xff", b"a"], [b"", b"xyz" * 100]], dtype=object)
    raw = v2_binary.encode_tensor_bytes(array, "BYTES")
    decoded = v2_binary.decode_tensor_bytes(raw, "BYTES", (2, 2), "x")
    assert decoded.dtype == object and decoded.shape == (2, 2)
    assert decoded.tolist() == array.tolist()
    assert all(type(v) is bytes for v in decoded.reshape(-1))


def test_size_mismatch_names_shape_and_needed_bytes() -> None:
    with pytest.raises(InvalidInput) as info:
        v2_binary.decode_tensor_bytes(b"\x00" * 10, "FP32", (3,), "feat")
    message = str(info.value)
    assert "'feat'" in message and "[3]" in message and "needs 12 bytes" in message


def test_too_many_bytes_is_a_mismatch_too() -> None:
    with pytest.raises(InvalidInput, match="do not match shape"):
        v2_binary.decode_tensor_bytes(b"\x00" * 16, "FP32", (3,), "x")


def test_bytes_truncated_length_prefix() -> None:
    raw = b"\x01\x00\x00\x00a" + b"\x05\x00\x00"
    with pytest.raises(InvalidInput, match="ends after 1 of 2 elements"):
        v2_binary.decode_tensor_bytes(raw, "BYTES", (2,), "x")


def test_bytes_element_overrunning_the_buffer() -> None:
    raw = b"\x0a\x00\x00\x00abc"
    with pytest.raises(InvalidInput, match="claims 10 bytes but only 3 remain"):
        v2_binary.decode_tensor_bytes(raw, "BYTES", (1,), "x")


def test_bytes_leftover() -> None:
    raw = b"\x01\x00\x00\x00a" + b"junk"
    with pytest.raises(InvalidInput, match="4 bytes left over after 1 BYTES elements"):
        v2_binary.decode_tensor_bytes(raw, "BYTES", (1,), "x")


def test_unknown_datatype() -> None:
    with pytest.raises(InvalidInput, match="unknown datatype 'FP8'"):
        v2_binary.decode_tensor_bytes(b"", "FP8", (0,), "x")
