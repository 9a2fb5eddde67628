"""The client direction of the V2 codecs (remote models): requests out, responses in."""

from __future__ import annotations

import numpy as np
import pytest

from shoal.datatypes import NUMPY_DTYPES
from shoal.errors import InvalidInput
from shoal.protocol import v2_grpc, v2_json
from shoal.protocol.grpc_gen import grpc_service_pb2 as pb
from shoal.types import InferenceRequest, InferenceResponse, RequestedOutput, Tensor


def tensor(datatype: str, name: str = "x") -> Tensor:
    if datatype == "BYTES":
        data = np.empty(4, dtype=object)
        data[:] = [b"a", b"", b"\x00\xff", "h\u00e9".encode()]
        return Tensor(name, datatype, (2, 2), data.reshape(2, 2))
    values = [0, 1, 1, 0] if datatype == "BOOL" else [0, 1, 2, 3]
    return Tensor(name, datatype, (2, 2), np.array(values, dtype=NUMPY_DTYPES[datatype]).reshape(2, 2))


def assert_same(got: Tensor, want: Tensor) -> None:
    assert (got.name, got.datatype, got.shape) == (want.name, want.datatype, want.shape)
    assert got.data.dtype == want.data.dtype and got.data.tolist() == want.data.tolist()


@pytest.mark.parametrize("datatype", sorted(NUMPY_DTYPES))
def test_rest_request_round_trip(datatype: str) -> None:
    sent = InferenceRequest(
        [tensor(datatype), Tensor.from_numpy("y", np.arange(3.0), {"note": "kept"})],
        id="r1",
        parameters={"binary_data_output": True, "k": 2},
        outputs=[RequestedOutput("a", {"binary_data": True}), RequestedOutput("b")],
    )
    body, header_length = v2_json.encode_request(sent)
    got = v2_json.decode_request(body, header_length)
    assert_same(got.inputs[0], sent.inputs[0])
    assert_same(got.inputs[1], sent.inputs[1])
    assert got.inputs[1].parameters == {"note": "kept"}
    assert (got.id, got.parameters) == ("r1", {"binary_data_output": True, "k": 2})
    assert [(o.name, o.parameters) for o in got.outputs] == [("a", {"binary_data": True}), ("b", {})]


@pytest.mark.parametrize("binary", [True, False])
def test_rest_response_round_trip(binary: bool) -> None:
    sent = InferenceResponse(
        [tensor("FP32", "a"), tensor("BYTES", "b") if binary else tensor("INT64", "b")],
        model_name="m", model_version="3", id="r1", parameters={"p": 1},
    )
    asked = InferenceRequest([], parameters={"binary_data_output": binary})
    body, header_length = v2_json.encode_response(sent, asked)
    got = v2_json.decode_response(body, header_length)
    for mine, theirs in zip(got.outputs, sent.outputs):
        assert_same(mine, theirs)
    assert (got.model_name, got.model_version, got.id, got.parameters) == ("m", "3", "r1", {"p": 1})


def test_rest_response_with_unclaimed_binary_bytes() -> None:
    body, header_length = v2_json.encode_response(
        InferenceResponse([tensor("FP32", "a")]), InferenceRequest([], parameters={"binary_data_output": True})
    )
    with pytest.raises(InvalidInput, match="no output claims"):
        v2_json.decode_response(body + b"xx", header_length)


@pytest.mark.parametrize("raw", [True, False])
@pytest.mark.parametrize("datatype", [d for d in sorted(NUMPY_DTYPES) if d != "FP16"])
def test_grpc_response_round_trip(datatype: str, raw: bool) -> None:
    sent = InferenceResponse([tensor(datatype, "a")], model_name="m", model_version="2", id="i")
    message = v2_grpc.encode_response(sent, raw=raw)
    got = v2_grpc.decode_response(pb.ModelInferResponse.FromString(message.SerializeToString()))
    assert_same(got.outputs[0], sent.outputs[0])
    assert (got.model_name, got.model_version, got.id) == ("m", "2", "i")


def test_grpc_response_raw_count_mismatch() -> None:
    message = v2_grpc.encode_response(InferenceResponse([tensor("FP32", "a")]), raw=True)
    message.raw_output_contents.append(b"")
    with pytest.raises(InvalidInput, match="1 outputs but 2 raw_output_contents"):
        v2_grpc.decode_response(message)
