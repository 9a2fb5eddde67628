"""V2 gRPC messages <-> the protocol-neutral types: typed contents and raw contents."""

from __future__ import annotations

import numpy as np
import pytest

from shoal.datatypes import NUMPY_DTYPES
from shoal.errors import InvalidInput
from shoal.protocol import v2_binary, v2_grpc
from shoal.protocol.grpc_gen import grpc_service_pb2 as pb
from shoal.types import InferenceRequest, InferenceResponse, RequestedOutput, Tensor

VALUES = {
    "BOOL": [True, False, True, False],
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
    "FP64": [0.1, -1.25, 1e300, 1.0],
    "BYTES": [b"a", b"", b"\x00\xff", "h\u00e9".encode()],
}
TYPED = [d for d in VALUES if d != "FP16"]


def tensor(datatype: str, name: str = "x") -> Tensor:
    if datatype == "BYTES":
        data = np.empty(4, dtype=object)
        data[:] = VALUES["BYTES"]
        data = data.reshape(2, 2)
    else:
        data = np.array(VALUES[datatype], dtype=NUMPY_DTYPES[datatype]).reshape(2, 2)
    return Tensor(name, datatype, (2, 2), data)


def over_the_wire(message):
    """Serialize and parse back, as a real channel would."""
    return type(message).FromString(message.SerializeToString())


def assert_same(got: Tensor, want: Tensor) -> None:
    assert (got.name, got.datatype, got.shape) == (want.name, want.datatype, want.shape)
    assert got.data.dtype == want.data.dtype
    assert got.data.tolist() == want.data.tolist()


@pytest.mark.parametrize("datatype", TYPED)
def test_typed_contents_round_trip(datatype: str) -> None:
    sent = tensor(datatype)
    message = over_the_wire(v2_grpc.request_to_proto(InferenceRequest([sent]), raw=False))
    assert not message.raw_input_contents
    assert len(getattr(message.inputs[0].contents, v2_grpc.CONTENTS_FIELD[datatype])) == 4
    assert_same(v2_grpc.decode_request(message).inputs[0], sent)


@pytest.mark.parametrize("datatype", list(VALUES))
def test_raw_contents_round_trip(datatype: str) -> None:
    sent = tensor(datatype)
    message = over_the_wire(v2_grpc.request_to_proto(InferenceRequest([sent]), raw=True))
    assert message.raw_input_contents[0] == v2_binary.encode_tensor_bytes(sent.data, datatype)
    assert not message.inputs[0].HasField("contents")
    decoded = v2_grpc.decode_request(message).inputs[0]
    assert_same(decoded, sent)
    if datatype != "BYTES":
        assert not decoded.data.flags.owndata  # a view over the received bytes


@pytest.mark.parametrize("datatype", TYPED)
def test_typed_response(datatype: str) -> None:
    response = InferenceResponse([tensor(datatype, "y")], "m", "3", id="r")
    message = over_the_wire(v2_grpc.encode_response(response, raw=False))
    assert (message.model_name, message.model_version, message.id) == ("m", "3", "r")
    assert not message.raw_output_contents
    out = message.outputs[0]
    assert (out.name, out.datatype, list(out.shape)) == ("y", datatype, [2, 2])
    values = list(getattr(out.contents, v2_grpc.CONTENTS_FIELD[datatype]))
    assert values == list(response.outputs[0].data.reshape(-1).tolist())


@pytest.mark.parametrize("datatype", list(VALUES))
def test_raw_response(datatype: str) -> None:
    sent = tensor(datatype, "y")
    message = over_the_wire(v2_grpc.encode_response(InferenceResponse([sent], "m"), raw=True))
    out = message.outputs[0]
    assert not out.HasField("contents")
    decoded = v2_binary.decode_tensor_bytes(message.raw_output_contents[0], datatype, (2, 2), "y")
    assert decoded.tolist() == sent.data.tolist()


def test_raw_request_gets_raw_response_shape_of_outputs() -> None:
    response = InferenceResponse([tensor("FP32", "a"), tensor("BYTES", "b")], "m")
    message = v2_grpc.encode_response(response, raw=True)
    assert len(message.raw_output_contents) == 2
    assert [o.name for o in message.outputs] == ["a", "b"]
    assert message.model_version == "" and message.id == ""


def test_fp16_output_forces_raw_for_every_output() -> None:
    response = InferenceResponse([tensor("FP16", "h"), tensor("INT32", "i")], "m")
    message = v2_grpc.encode_response(response, raw=False)
    assert len(message.raw_output_contents) == 2
    np.testing.assert_array_equal(
        np.frombuffer(message.raw_output_contents[0], "<f2"), VALUES["FP16"]
    )
    assert not message.outputs[1].HasField("contents")


def test_fp16_request_input_forces_raw() -> None:
    request = InferenceRequest([tensor("FP16", "h"), tensor("INT32", "i")])
    message = v2_grpc.request_to_proto(request, raw=False)
    assert len(message.raw_input_contents) == 2
    decoded = v2_grpc.decode_request(over_the_wire(message))
    assert_same(decoded.inputs[0], request.inputs[0])
    assert_same(decoded.inputs[1], request.inputs[1])


def test_request_fields_round_trip() -> None:
    request = InferenceRequest(
        [tensor("FP32", "a")],
        id="req-7",
        parameters={"flag": True, "count": -3, "ratio": 0.25, "label": "txt", "big": 2**64 - 1},
        outputs=[RequestedOutput("o1"), RequestedOutput("o2", {"binary_data": False})],
        model_name="m",
        model_version="2",
    )
    request.inputs[0].parameters = {"p": 1}
    decoded = v2_grpc.decode_request(over_the_wire(v2_grpc.request_to_proto(request)))
    assert decoded.id == "req-7"
    assert decoded.model_name == "m" and decoded.model_version == "2"
    assert decoded.parameters == {
        "flag": True, "count": -3, "ratio": 0.25, "label": "txt", "big": 2**64 - 1
    }
    assert type(decoded.parameters["flag"]) is bool
    assert type(decoded.parameters["count"]) is int
    assert decoded.inputs[0].parameters == {"p": 1}
    assert decoded.requested_output_names == ["o1", "o2"]
    assert decoded.outputs[1].parameters == {"binary_data": False}


def test_empty_optional_fields_become_none() -> None:
    message = pb.ModelInferRequest(model_name="m")
    decoded = v2_grpc.decode_request(message)
    assert decoded.inputs == [] and decoded.outputs is None
    assert decoded.id is None and decoded.model_version is None and decoded.parameters == {}


def test_response_parameters_round_trip() -> None:
    response = InferenceResponse(
        [tensor("INT64", "y")], "m", parameters={"a": True, "b": 7, "c": 1.5, "d": "s"}
    )
    response.outputs[0].parameters = {"unit": "cm"}
    message = over_the_wire(v2_grpc.encode_response(response, raw=False))
    assert v2_grpc.parameters_from_proto(message.parameters) == {"a": True, "b": 7, "c": 1.5, "d": "s"}
    assert v2_grpc.parameters_from_proto(message.outputs[0].parameters) == {"unit": "cm"}


def test_parameters_of_other_types_travel_as_strings() -> None:
    message = pb.ModelInferRequest()
    v2_grpc.parameters_to_proto(message.parameters, {"l": [1, 2]})
    assert v2_grpc.parameters_from_proto(message.parameters) == {"l": "[1, 2]"}


# -- bad requests -------------------------------------------------------------------------


def bad(message: pb.ModelInferRequest) -> str:
    with pytest.raises(InvalidInput) as info:
        v2_grpc.decode_request(message)
    return str(info.value)


def raw_message(*tensors: Tensor) -> pb.ModelInferRequest:
    return v2_grpc.request_to_proto(InferenceRequest(list(tensors)), raw=True)


def test_raw_count_mismatch() -> None:
    message = raw_message(tensor("FP32", "a"), tensor("FP32", "b"))
    del message.raw_input_contents[1]
    assert "2 inputs but 1 raw_input_contents" in bad(message)


def test_mixing_contents_with_raw() -> None:
    message = raw_message(tensor("FP32", "a"))
    message.inputs[0].contents.fp32_contents.extend([1.0, 2.0, 3.0, 4.0])
    assert "input 'a' sets contents while the request uses raw_input_contents" in bad(message)


def test_fp16_in_typed_contents() -> None:
    message = pb.ModelInferRequest()
    message.inputs.add(name="h", datatype="FP16", shape=[1]).contents.fp32_contents.append(1.0)
    assert "FP16 data must be sent as raw_input_contents" in bad(message)


def test_typed_count_mismatch() -> None:
    message = pb.ModelInferRequest()
    message.inputs.add(name="x", datatype="INT32", shape=[2, 2]).contents.int_contents.extend([1, 2])
    assert "input 'x': 2 INT32 elements do not match shape [2, 2] (4 elements)" in bad(message)


def test_typed_contents_in_the_wrong_field_count_as_missing() -> None:
    message = pb.ModelInferRequest()
    message.inputs.add(name="x", datatype="FP64", shape=[1]).contents.fp32_contents.append(1.0)
    assert "0 FP64 elements do not match shape [1]" in bad(message)


def test_raw_size_mismatch() -> None:
    message = raw_message(tensor("FP32", "a"))
    message.raw_input_contents[0] = b"\x00" * 15
    assert "15 bytes of FP32 data do not match shape [2, 2], which needs 16 bytes" in bad(message)


def test_raw_bytes_overrun() -> None:
    message = raw_message(tensor("BYTES", "s"))
    message.raw_input_contents[0] = b"\xff\x00\x00\x00abc" + b"\x00" * 9  # room for 4 lengths
    assert "BYTES element 0 claims 255 bytes" in bad(message)


@pytest.mark.parametrize(
    "datatype,field,value",
    [("INT8", "int_contents", 300), ("INT16", "int_contents", -40000),
     ("UINT8", "uint_contents", 256), ("UINT16", "uint_contents", 70000)],
)
def test_typed_narrow_ints_out_of_range(datatype: str, field: str, value: int) -> None:
    message = pb.ModelInferRequest()
    item = message.inputs.add(name="x", datatype=datatype, shape=[2])
    getattr(item.contents, field).extend([1, value])
    assert f"input 'x': a value is out of range for {datatype}" in bad(message)


def test_missing_name() -> None:
    message = pb.ModelInferRequest()
    message.inputs.add(datatype="FP32", shape=[1]).contents.fp32_contents.append(1.0)
    assert "input 0 needs a name" in bad(message)


@pytest.mark.parametrize("datatype", ["", "FLOAT"])
def test_missing_or_unknown_datatype(datatype: str) -> None:
    message = pb.ModelInferRequest()
    message.inputs.add(name="x", datatype=datatype, shape=[1])
    assert f"unknown datatype {datatype!r}" in bad(message)


def test_negative_shape() -> None:
    message = pb.ModelInferRequest()
    message.inputs.add(name="x", datatype="FP32", shape=[-1, 2])
    assert "input 'x': shape dimensions must be non-negative" in bad(message)


def test_a_bad_response_names_the_output() -> None:
    message = pb.ModelInferResponse(model_name="m")
    message.outputs.add(name="y", datatype="FP32", shape=[2]).contents.fp32_contents.append(1.0)
    with pytest.raises(InvalidInput, match=r"output 'y': 1 FP32 elements do not match shape \[2\]"):
        v2_grpc.decode_response(message)
