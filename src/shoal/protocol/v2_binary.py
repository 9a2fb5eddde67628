"""The byte layout shared by the REST binary tensor extension and gRPC raw contents.

Numeric tensors are little-endian, row-major, unpadded; BYTES tensors are a sequence of
elements, each a 4-byte little-endian length followed by that many bytes. Numeric decoding
is zero-copy: the array is a read-only view over the received buffer.
"""

from __future__ import annotations

import math
import struct
import sys

import numpy as np

from ..datatypes import numpy_dtype
from ..errors import InvalidInput

_LENGTH = struct.Struct("<I")


#: numpy refuses an array whose dimensions, zeros aside, multiply to more bytes than an
#: address holds, even an empty one ([0, 2**62]): such shapes are refused first.
_MAX_ELEMENTS = sys.maxsize // 16


def element_count(shape: tuple[int, ...]) -> int:
    return math.prod(shape)


def check_shape(shape: tuple[int, ...], name: str, kind: str = "input") -> tuple[int, ...]:
    """``shape``, or a 400 if no array could have it (a client's arithmetic, not ours)."""
    if math.prod(d for d in shape if d) > _MAX_ELEMENTS:
        raise InvalidInput(f"{kind} {name!r}: shape {list(shape)} is larger than any tensor can be")
    return shape


def decode_tensor_bytes(
    buffer: bytes | memoryview, datatype: str, shape: tuple[int, ...], name: str
) -> np.ndarray:
    """Turn one tensor's raw bytes into an array of ``shape``; the sizes must agree exactly."""
    count = element_count(shape)
    if datatype == "BYTES":
        return decode_bytes_elements(buffer, count, name).reshape(shape)
    dtype = numpy_dtype(datatype)
    expected = count * dtype.itemsize
    if len(buffer) != expected:
        raise InvalidInput(
            f"input {name!r}: {len(buffer)} bytes of {datatype} data do not match shape "
            f"{list(shape)}, which needs {expected} bytes"
        )
    return np.frombuffer(buffer, dtype=dtype, count=count).reshape(shape)


def decode_bytes_elements(buffer: bytes | memoryview, count: int, name: str) -> np.ndarray:
    view = memoryview(buffer)
    size = len(view)
    if count * _LENGTH.size > size:
        # Checked before allocating: every element takes at least its 4-byte length, so a
        # shape of 200 million elements over 9 bytes is refused without an 1.6 GB array.
        raise InvalidInput(
            f"input {name!r}: shape needs {count} BYTES elements, but the {size} bytes of "
            f"data hold at most {size // _LENGTH.size}"
        )
    elements = np.empty(count, dtype=object)
    offset = 0
    for index in range(count):
        if offset + 4 > size:
            raise InvalidInput(
                f"input {name!r}: BYTES data ends after {index} of {count} elements"
            )
        (length,) = _LENGTH.unpack_from(view, offset)
        offset += 4
        if offset + length > size:
            raise InvalidInput(
                f"input {name!r}: BYTES element {index} claims {length} bytes but only "
                f"{size - offset} remain"
            )
        elements[index] = bytes(view[offset : offset + length])
        offset += length
    if offset != size:
        raise InvalidInput(
            f"input {name!r}: {size - offset} bytes left over after {count} BYTES elements"
        )
    return elements


def encode_tensor_bytes(array: np.ndarray, datatype: str) -> bytes:
    if datatype == "BYTES":
        return encode_bytes_elements(array)
    dtype = numpy_dtype(datatype)
    return np.ascontiguousarray(array, dtype=dtype).tobytes()


def encode_bytes_elements(array: np.ndarray) -> bytes:
    parts: list[bytes] = []
    for element in array.reshape(-1):
        if isinstance(element, str):
            element = element.encode("utf-8")
        elif not isinstance(element, (bytes, bytearray)):
            element = str(element).encode("utf-8")
        parts.append(_LENGTH.pack(len(element)))
        parts.append(bytes(element))
    return b"".join(parts)
