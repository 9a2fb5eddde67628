"""Every codec against random tensors, declared shapes included that are huge next to the data
sent: decoding either gives exactly the declared shape or a 400 (InvalidInput), never another
exception, and never allocates more than the bytes received allow.

A request is a few hundred bytes here; before allocation was bounded by the data, a BYTES
shape of [1, 200000000] over 9 bytes made the server allocate 1.6 GB before refusing it.
"""

from __future__ import annotations

import math
import struct
import tracemalloc
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shoal.errors import InvalidInput
from shoal.protocol import seldon, tfs_grpc, v1, v2_grpc, v2_json
from shoal.protocol.grpc_gen import grpc_service_pb2 as pb
from shoal.protocol.tfs_gen import predict_pb2, tensor_pb2
from shoal.types import TensorSpec

#: Far more than any request below can justify (they are at most a few KiB), far less than
#: an allocation driven by a declared shape (the smallest huge shape here is 8 MB of objects).
ALLOCATION_LIMIT = 4 * 1024 * 1024
HUGE = [10**6, 2**31, 10**12, 2**62]
DATATYPES = ["BOOL", "INT8", "INT32", "INT64", "UINT8", "UINT64", "FP16", "FP32", "FP64", "BYTES"]

dims = st.one_of(st.integers(0, 4), st.sampled_from(HUGE))
shapes = st.lists(dims, min_size=0, max_size=4)
counts = st.integers(0, 8)


@contextmanager
def bounded_allocation() -> Iterator[None]:
    tracemalloc.start()
    try:
        yield
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < ALLOCATION_LIMIT, f"decoding allocated {peak} bytes"


def elements(datatype: str, count: int) -> list[Any]:
    if datatype == "BYTES":
        return [f"s{i}" for i in range(count)]
    if datatype == "BOOL":
        return [bool(i % 2) for i in range(count)]
    if datatype.startswith("FP"):
        return [i + 0.5 for i in range(count)]
    return list(range(count))


def raw_bytes(datatype: str, values: list[Any]) -> bytes:
    if datatype == "BYTES":
        return b"".join(struct.pack("<I", len(v)) + v.encode() for v in values)
    dtype = {"BOOL": "?", "INT8": "<i1", "INT32": "<i4", "INT64": "<i8", "UINT8": "<u1",
             "UINT64": "<u8", "FP16": "<f2", "FP32": "<f4", "FP64": "<f8"}[datatype]
    return np.array(values, dtype=dtype).tobytes()


def check(decode: Callable[[], list[Any]], shape: list[int], sent: int) -> None:
    """Decoding gives the declared shape from exactly the elements sent, or a 400."""
    with bounded_allocation():
        try:
            arrays = decode()
        except InvalidInput:
            return
    (array,) = arrays
    assert array.shape == tuple(shape)
    assert array.size == sent == math.prod(shape)


FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(st.sampled_from(DATATYPES), shapes, counts)
def test_v2_json(datatype: str, shape: list[int], count: int) -> None:
    body = orjson.dumps({"inputs": [{"name": "x", "datatype": datatype, "shape": shape,
                                     "data": elements(datatype, count)}]})
    check(lambda: [t.data for t in v2_json.decode_request(body).inputs], shape, count)


@FUZZ
@given(st.sampled_from(DATATYPES), shapes, counts)
def test_v2_binary(datatype: str, shape: list[int], count: int) -> None:
    data = raw_bytes(datatype, elements(datatype, count))
    header = orjson.dumps({"inputs": [{"name": "x", "datatype": datatype, "shape": shape,
                                       "parameters": {"binary_data_size": len(data)}}]})
    body = header + data
    check(lambda: [t.data for t in v2_json.decode_request(body, len(header)).inputs], shape, count)


def grpc_request(datatype: str, shape: list[int], count: int, raw: bool) -> pb.ModelInferRequest:
    message = pb.ModelInferRequest(model_name="m")
    item = message.inputs.add(name="x", datatype=datatype, shape=shape)
    values = elements(datatype, count)
    if raw or datatype == "FP16":
        message.raw_input_contents.append(raw_bytes(datatype, values))
    else:
        field = getattr(item.contents, v2_grpc.CONTENTS_FIELD[datatype])
        field.extend(v.encode() for v in values) if datatype == "BYTES" else field.extend(values)
    return message


@FUZZ
@given(st.sampled_from(DATATYPES), shapes, counts, st.booleans())
def test_v2_grpc(datatype: str, shape: list[int], count: int, raw: bool) -> None:
    message = grpc_request(datatype, shape, count, raw)
    wire = message.SerializeToString()  # decoded from bytes, as the server receives it
    check(lambda: [t.data for t in v2_grpc.decode_request(
        pb.ModelInferRequest.FromString(wire)).inputs], shape, count)


@FUZZ
@given(st.sampled_from([d for d in DATATYPES if d != "BYTES"]), shapes, counts, st.booleans())
def test_tf_serving(datatype: str, shape: list[int], count: int, content: bool) -> None:
    proto = tensor_pb2.TensorProto(dtype=tfs_grpc.DATATYPE_TO_DT[datatype])
    for size in shape:
        proto.tensor_shape.dim.add(size=size)
    values = elements(datatype, count)
    if content:
        proto.tensor_content = raw_bytes(datatype, values)
    elif datatype == "FP16":
        proto.half_val.extend(np.array(values, dtype=np.float16).view(np.uint16).tolist())
    else:
        getattr(proto, tfs_grpc.VALUE_FIELD[datatype]).extend(values)
    wire = proto.SerializeToString()
    with bounded_allocation():
        try:
            tensor = tfs_grpc.decode_tensor("x", tensor_pb2.TensorProto.FromString(wire), limit=2**20)
        except InvalidInput:
            return
    # TensorFlow's rule: fewer typed values than the shape holds are padded, within the limit.
    assert tensor.shape == tuple(shape) and tensor.data.size == math.prod(shape)
    assert not (content and count) or count == math.prod(shape)  # empty content: typed path


@FUZZ
@given(st.sampled_from(["FP64", "INT64", "BYTES", None]), st.recursive(
    st.one_of(st.integers(-5, 5), st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=3)),
    lambda inner: st.lists(inner, max_size=4), max_leaves=20))
def test_v1(datatype: str | None, instances: Any) -> None:
    specs = [TensorSpec("x", datatype, (-1,))] if datatype else []
    body = orjson.dumps({"instances": instances})
    with bounded_allocation():
        try:
            request, _ = v1.decode_request(body, specs)
        except InvalidInput:
            return
    assert all(isinstance(t.data, np.ndarray) for t in request.inputs)


@FUZZ
@given(st.sampled_from(["FP64", "FP32", "INT64", None]), shapes, counts)
def test_seldon_tensor(datatype: str | None, shape: list[int], count: int) -> None:
    specs = [TensorSpec("x", datatype, (-1,))] if datatype else []
    body = orjson.dumps({"data": {"tensor": {"shape": shape, "values": elements("FP64", count)}}})
    check(lambda: [seldon.decode_request(body, specs).request.inputs[0].data], shape, count)


def test_the_reported_bomb_is_refused_cheaply_on_every_binary_path() -> None:
    """The issue's reproduction: BYTES [1, 200000000] declared over 9 bytes of data."""
    data = struct.pack("<I", 5) + b"hello"
    header = orjson.dumps({"inputs": [{"name": "x", "datatype": "BYTES", "shape": [1, 200_000_000],
                                       "parameters": {"binary_data_size": len(data)}}]})
    message = pb.ModelInferRequest(model_name="m", raw_input_contents=[data])
    message.inputs.add(name="x", datatype="BYTES", shape=[1, 200_000_000])
    for decode in (lambda: v2_json.decode_request(header + data, len(header)),
                   lambda: v2_grpc.decode_request(message)):
        with bounded_allocation(), pytest.raises(InvalidInput, match="200000000 BYTES elements"):
            decode()


def test_tf_serving_padding_is_bounded_by_the_request_limit() -> None:
    proto = tensor_pb2.TensorProto(dtype=tfs_grpc.DATATYPE_TO_DT["FP64"], double_val=[1.0])
    proto.tensor_shape.dim.add(size=10**9)  # 8 GB from one value
    with bounded_allocation(), pytest.raises(InvalidInput, match="request limit"):
        tfs_grpc.decode_tensor("x", proto, limit=64 * 2**20)
    # One budget per request: 20 inputs of 16 MiB each from one value apiece would be 1.3 GB.
    request = predict_pb2.PredictRequest()
    for index in range(20):
        proto = request.inputs[f"x{index}"]
        proto.dtype = tfs_grpc.DATATYPE_TO_DT["FP32"]
        proto.float_val.append(1.0)
        proto.tensor_shape.dim.add(size=4 * 2**20)
    with bounded_allocation(), pytest.raises(InvalidInput, match="request limit"):
        tfs_grpc.decode_predict_request(request, limit=64 * 2**20)
    small = tensor_pb2.TensorProto(dtype=tfs_grpc.DATATYPE_TO_DT["FP64"], double_val=[7.0])
    small.tensor_shape.dim.add(size=3)
    assert tfs_grpc.decode_tensor("x", small, limit=64 * 2**20).data.tolist() == [7.0] * 3


def nested(leaf: str, depth: int = 900) -> str:
    return "[" * depth + leaf + "]" * depth


@pytest.mark.parametrize("decode", [
    lambda: v2_json.decode_request(b'{"inputs": [{"name": "x", "datatype": "BYTES", "shape": [1], '
                                   b'"data": %s}]}' % nested('"x"').encode()),
    lambda: v2_json.decode_request(b'{"inputs": [{"name": "x", "datatype": "FP64", "shape": [1], '
                                   b'"data": ["NaN", %s]}]}' % nested("1.0").encode()),
    lambda: v1.decode_request(b'{"instances": %s}' % nested('"x"').encode(), []),
    lambda: v1.decode_request(b'{"instances": %s}' % nested("1.0").encode(), []),
    lambda: seldon.decode_request(b'{"data": {"ndarray": %s}}' % nested('"x"').encode(), []),
], ids=["v2-bytes", "v2-nan", "v1-strings", "v1-numbers", "seldon-strings"])
def test_data_nested_too_deep_is_refused(decode: Callable[[], Any]) -> None:
    """JSON parses up to 1024 levels; walking that deep used to exhaust Python's recursion (500)."""
    with pytest.raises(InvalidInput):
        decode()
