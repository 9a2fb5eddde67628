"""The TF Serving gRPC codec, with Shoal's generated messages (no TensorFlow import)."""

from __future__ import annotations

import numpy as np
import pytest
from google.protobuf import descriptor_pool

from shoal.datatypes import numpy_dtype
from shoal.errors import InvalidInput
from shoal.protocol import tfs_grpc
from shoal.protocol.tfs_gen import get_model_metadata_pb2, predict_pb2, tensor_pb2, types_pb2
from shoal.serving.endpoint import ModelState
from shoal.serving.registry import VersionEntry
from shoal.types import InferenceResponse, Tensor

Status = tfs_grpc.ModelVersionStatus


def proto(dtype: int, shape: list[int], **fields: object) -> tensor_pb2.TensorProto:
    message = tensor_pb2.TensorProto(dtype=dtype, **fields)
    for size in shape:
        message.tensor_shape.dim.add(size=size)
    return message


def test_tensor_content_decodes_without_copying() -> None:
    values = np.arange(6, dtype="<f4").reshape(2, 3)
    tensor = tfs_grpc.decode_tensor("x", proto(types_pb2.DT_FLOAT, [2, 3], tensor_content=values.tobytes()))
    assert (tensor.datatype, tensor.shape) == ("FP32", (2, 3))
    np.testing.assert_array_equal(tensor.data, values)
    assert not tensor.data.flags.owndata and not tensor.data.flags.writeable  # a view on the bytes


def test_tensor_content_size_must_match_the_shape() -> None:
    with pytest.raises(InvalidInput, match=r"8 bytes of FP64 data do not match shape \[2\]"):
        tfs_grpc.decode_tensor("x", proto(types_pb2.DT_DOUBLE, [2], tensor_content=b"\0" * 8))


@pytest.mark.parametrize(
    "dtype, field, values, datatype, expected",
    [
        (types_pb2.DT_FLOAT, "float_val", [1.5, 2.5], "FP32", np.array([1.5, 2.5], "<f4")),
        (types_pb2.DT_DOUBLE, "double_val", [1.5, 2.5], "FP64", np.array([1.5, 2.5])),
        (types_pb2.DT_INT32, "int_val", [-1, 2], "INT32", np.array([-1, 2], "<i4")),
        (types_pb2.DT_INT16, "int_val", [-300, 2], "INT16", np.array([-300, 2], "<i2")),
        (types_pb2.DT_INT8, "int_val", [-128, 127], "INT8", np.array([-128, 127], "i1")),
        (types_pb2.DT_UINT8, "int_val", [0, 255], "UINT8", np.array([0, 255], "u1")),
        (types_pb2.DT_UINT16, "int_val", [0, 65535], "UINT16", np.array([0, 65535], "<u2")),
        (types_pb2.DT_INT64, "int64_val", [-(2**40), 3], "INT64", np.array([-(2**40), 3])),
        (types_pb2.DT_UINT32, "uint32_val", [2**32 - 1, 0], "UINT32", np.array([2**32 - 1, 0], "<u4")),
        (types_pb2.DT_UINT64, "uint64_val", [2**64 - 1, 0], "UINT64", np.array([2**64 - 1, 0], "<u8")),
        (types_pb2.DT_BOOL, "bool_val", [True, False], "BOOL", np.array([True, False])),
        (types_pb2.DT_HALF, "half_val", np.array([1.5, -2], "<f2").view("<u2").tolist(), "FP16",
         np.array([1.5, -2], "<f2")),
    ],
)
def test_typed_values(dtype: int, field: str, values: list, datatype: str, expected: np.ndarray) -> None:
    tensor = tfs_grpc.decode_tensor("x", proto(dtype, [2], **{field: values}))
    assert tensor.datatype == datatype
    assert tensor.data.dtype == expected.dtype
    np.testing.assert_array_equal(tensor.data, expected)


def test_short_values_are_padded_with_the_last_one_as_tensorflow_does() -> None:
    one = tfs_grpc.decode_tensor("x", proto(types_pb2.DT_FLOAT, [2, 2], float_val=[7.0]))
    np.testing.assert_array_equal(one.data, np.full((2, 2), 7.0, "<f4"))
    two = tfs_grpc.decode_tensor("x", proto(types_pb2.DT_INT64, [2, 2], int64_val=[1, 2]))
    np.testing.assert_array_equal(two.data, [[1, 2], [2, 2]])
    none = tfs_grpc.decode_tensor("x", proto(types_pb2.DT_DOUBLE, [3]))
    np.testing.assert_array_equal(none.data, np.zeros(3))
    strings = tfs_grpc.decode_tensor("s", proto(types_pb2.DT_STRING, [3], string_val=[b"a", b"b"]))
    assert strings.data.dtype == object and strings.data.tolist() == [b"a", b"b", b"b"]
    scalar = tfs_grpc.decode_tensor("x", proto(types_pb2.DT_INT32, [], int_val=[5]))
    assert scalar.shape == () and scalar.data.item() == 5


@pytest.mark.parametrize(
    "message, error",
    [
        (proto(types_pb2.DT_FLOAT, [1], float_val=[1.0, 2.0]), r"2 values in float_val do not fit shape \[1\]"),
        (proto(types_pb2.DT_INT8, [1], int_val=[300]), r"out of range for INT8 \(-128 to 127\)"),
        (proto(types_pb2.DT_UINT8, [1], int_val=[-1]), "out of range for UINT8"),
        (proto(types_pb2.DT_COMPLEX64, [1], scomplex_val=[1, 2]), "DT_COMPLEX64 is not supported"),
        (proto(types_pb2.DT_BFLOAT16, [1], half_val=[1]), "DT_BFLOAT16 is not supported"),
        (proto(99, [1]), "dtype 99 is not supported"),
        (proto(types_pb2.DT_STRING, [1], tensor_content=b"abcd"), "string_val"),
        (proto(types_pb2.DT_FLOAT, [-1, 2]), "negative dimension"),
        (tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, tensor_shape={"unknown_rank": True}),
         "must list its dimensions"),
    ],
)
def test_bad_tensors(message: tensor_pb2.TensorProto, error: str) -> None:
    with pytest.raises(InvalidInput, match=error):
        tfs_grpc.decode_tensor("x", message)


def test_encoding_uses_tensor_content_for_numbers_and_string_val_for_bytes() -> None:
    numbers = tensor_pb2.TensorProto()
    array = np.arange(6, dtype=">f8").reshape(3, 2)  # big-endian in: little-endian on the wire
    tfs_grpc.fill_tensor_proto(numbers, Tensor.from_numpy("y", array))
    assert numbers.dtype == types_pb2.DT_DOUBLE and not numbers.double_val
    assert [d.size for d in numbers.tensor_shape.dim] == [3, 2]
    assert numbers.tensor_content == array.astype("<f8").tobytes()
    texts = tensor_pb2.TensorProto()
    tfs_grpc.fill_tensor_proto(texts, Tensor("s", "BYTES", (2,), np.array([b"\xff", "é"], dtype=object)))
    assert texts.dtype == types_pb2.DT_STRING and list(texts.string_val) == [b"\xff", "é".encode()]
    for tensor in (numbers, texts):
        again = tfs_grpc.decode_tensor("y", tensor)
        assert again.shape == tuple(d.size for d in tensor.tensor_shape.dim)


def test_every_v2_datatype_round_trips() -> None:
    for datatype in tfs_grpc.DATATYPE_TO_DT:
        if datatype == "BYTES":
            data = np.array([[b"1", b""]], dtype=object)
        else:
            data = np.array([[1, 0]]).astype(numpy_dtype(datatype))
        message = tensor_pb2.TensorProto()
        tfs_grpc.fill_tensor_proto(message, Tensor("t", datatype, (1, 2), data))
        decoded = tfs_grpc.decode_tensor("t", message)
        assert decoded.datatype == datatype and decoded.shape == (1, 2)
        np.testing.assert_array_equal(decoded.data, data)


def predict(inputs: dict[str, tensor_pb2.TensorProto], **spec: object) -> predict_pb2.PredictRequest:
    message = predict_pb2.PredictRequest(model_spec=spec or {"name": "m"})
    for name, value in inputs.items():
        message.inputs[name].CopyFrom(value)
    return message


def test_predict_request_orders_inputs_by_the_model_declaration() -> None:
    one = proto(types_pb2.DT_FLOAT, [1], float_val=[1.0])
    message = predict({"a": one, "c": one, "b": one})
    names = [t.name for t in tfs_grpc.decode_predict_request(message, ["c", "a"]).inputs]
    assert names == ["c", "a", "b"]  # declared first, then any others by name
    request = tfs_grpc.decode_predict_request(message)
    assert [t.name for t in request.inputs] == ["a", "b", "c"]
    assert request.model_name == "m" and request.outputs is None


def test_output_filter_becomes_requested_outputs() -> None:
    message = predict({"x": proto(types_pb2.DT_FLOAT, [1])})
    message.output_filter.extend(["p", "q"])
    assert tfs_grpc.decode_predict_request(message).requested_output_names == ["p", "q"]
    message.output_filter.append("p")
    with pytest.raises(InvalidInput, match=r"\['p'\] more than once"):
        tfs_grpc.decode_predict_request(message)


def test_model_spec_rules() -> None:
    spec = predict_pb2.PredictRequest().model_spec
    with pytest.raises(InvalidInput, match="model_spec.name is required"):
        tfs_grpc.model_name(spec)
    spec.name = "m"
    assert tfs_grpc.requested_version(spec) is None
    spec.version.value = 3
    assert tfs_grpc.requested_version(spec) == "3"
    spec.version_label = "canary"  # the oneof drops the version
    with pytest.raises(InvalidInput, match="version labels are not supported"):
        tfs_grpc.requested_version(spec)
    spec.signature_name = "serving_default"
    tfs_grpc.check_signature(spec)
    spec.signature_name = "other"
    with pytest.raises(InvalidInput, match="no signature 'other'"):
        tfs_grpc.decode_predict_request(predict_pb2.PredictRequest(model_spec=spec))


def test_predict_response_names_the_version_and_signature() -> None:
    response = InferenceResponse(
        [Tensor.from_numpy("p", np.array([1, 2])), Tensor.from_numpy("s", np.array(["a"]))],
        model_name="m", model_version="4",
    )
    message = tfs_grpc.encode_predict_response(response)
    spec = message.model_spec
    assert (spec.name, spec.version.value, spec.signature_name) == ("m", 4, "serving_default")
    assert message.outputs["p"].dtype == types_pb2.DT_INT64
    assert list(message.outputs["s"].string_val) == [b"a"]


METADATA = {
    "name": "m",
    "versions": ["2"],
    "platform": "sklearn",
    "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4]},
               {"name": "t", "datatype": "BYTES", "shape": [-1]}],
    "outputs": [{"name": "y", "datatype": "INT64", "shape": [-1]}],
}


def test_metadata_is_a_packed_signature_def_map() -> None:
    message = tfs_grpc.encode_metadata_response(METADATA, "2")
    assert message.model_spec.name == "m" and message.model_spec.version.value == 2
    packed = message.metadata["signature_def"]
    assert packed.type_url == "type.googleapis.com/tensorflow.serving.SignatureDefMap"
    signatures = get_model_metadata_pb2.SignatureDefMap.FromString(packed.value)
    signature = signatures.signature_def["serving_default"]
    assert signature.method_name == "tensorflow/serving/predict"
    x, t, y = signature.inputs["x"], signature.inputs["t"], signature.outputs["y"]
    assert (x.name, x.dtype, [d.size for d in x.tensor_shape.dim]) == ("x", types_pb2.DT_FLOAT, [-1, 4])
    assert t.dtype == types_pb2.DT_STRING and y.dtype == types_pb2.DT_INT64


def test_metadata_fields() -> None:
    tfs_grpc.check_metadata_fields(["signature_def"])
    with pytest.raises(InvalidInput, match="at least one"):
        tfs_grpc.check_metadata_fields([])
    with pytest.raises(InvalidInput, match="'graph' is not supported"):
        tfs_grpc.check_metadata_fields(["signature_def", "graph"])


def test_status_maps_shoal_states_to_tf_serving_states() -> None:
    entries = [
        VersionEntry("1", ModelState.READY),
        VersionEntry("2", ModelState.LOADING),
        VersionEntry("3", ModelState.UNLOADING),
        VersionEntry("4", ModelState.UNAVAILABLE, "cannot read model.joblib"),
    ]
    rows = tfs_grpc.encode_status_response(entries).model_version_status
    assert [(r.version, r.state) for r in rows] == [
        (1, Status.AVAILABLE), (2, Status.LOADING), (3, Status.UNLOADING), (4, Status.END)
    ]
    assert rows[0].status.error_code == 0 and rows[3].status.error_code == 14  # UNAVAILABLE
    assert rows[3].status.error_message == "cannot read model.joblib"


def test_messages_live_in_a_private_descriptor_pool() -> None:
    """tensorflow and tensorflow-serving-api register the same names in the default pool."""
    default = descriptor_pool.Default()
    for module in (predict_pb2, tensor_pb2, get_model_metadata_pb2):
        assert module.DESCRIPTOR.pool is not default
    assert predict_pb2.DESCRIPTOR.pool is tensor_pb2.DESCRIPTOR.pool
    assert predict_pb2.PredictRequest.DESCRIPTOR.full_name == "tensorflow.serving.PredictRequest"
