"""TensorFlow Serving's gRPC API end to end, with the real ``tensorflow-serving-api`` client.

This is the one module that imports TensorFlow (about 5 s): tensors are built and read with
``tf.make_tensor_proto`` / ``tf.make_ndarray``, as TF Serving users do.
"""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import httpx
import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.framework.tensor_pb2 import TensorProto
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from .models import iris_rows
from .process import ShoalProcess

Status = get_model_status_pb2.ModelVersionStatus


@pytest.fixture(scope="module")
def channel(server: ShoalProcess) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(server.grpc_target) as channel:
        yield channel


@pytest.fixture(scope="module")
def predictions(channel: grpc.Channel) -> prediction_service_pb2_grpc.PredictionServiceStub:
    return prediction_service_pb2_grpc.PredictionServiceStub(channel)


@pytest.fixture(scope="module")
def models(channel: grpc.Channel) -> model_service_pb2_grpc.ModelServiceStub:
    return model_service_pb2_grpc.ModelServiceStub(channel)


def predict_request(model: str, inputs: dict, version: int | None = None) -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    if version is not None:
        request.model_spec.version.value = version
    for name, value in inputs.items():
        proto = value if isinstance(value, TensorProto) else tf.make_tensor_proto(value)
        request.inputs[name].CopyFrom(proto)
    return request


def v2_outputs(server: ShoalProcess, model: str, rows: np.ndarray, outputs: list[str] | None = None) -> dict:
    body = {"inputs": [{"name": "input-0", "datatype": "FP64", "shape": list(rows.shape),
                        "data": rows.reshape(-1).tolist()}]}
    if outputs:
        body["outputs"] = [{"name": n} for n in outputs]
    answer = httpx.post(f"{server.url}/v2/models/{model}/infer", json=body).json()
    return {o["name"]: np.array(o["data"]).reshape(o["shape"]) for o in answer["outputs"]}


def test_predict_matches_the_v2_answer(server: ShoalProcess, predictions) -> None:
    rows = iris_rows(3)
    response = predictions.Predict(predict_request("iris", {"input-0": rows}), timeout=10)
    assert response.model_spec.name == "iris"
    assert response.model_spec.version.value == 2  # the newest ready version
    assert response.model_spec.signature_name == "serving_default"
    assert list(response.outputs) == ["predict"]
    predicted = tf.make_ndarray(response.outputs["predict"])
    assert predicted.dtype == np.int64
    np.testing.assert_array_equal(predicted, v2_outputs(server, "iris", rows)["predict"])


def test_output_filter_and_version(server: ShoalProcess, predictions) -> None:
    rows = iris_rows(2)
    request = predict_request("iris", {"input-0": rows}, version=1)
    request.output_filter.extend(["predict_proba", "predict"])
    response = predictions.Predict(request, timeout=10)
    assert response.model_spec.version.value == 1
    assert sorted(response.outputs) == ["predict", "predict_proba"]
    expected = v2_outputs(server, "iris/versions/1", rows, ["predict_proba", "predict"])
    np.testing.assert_allclose(tf.make_ndarray(response.outputs["predict_proba"]), expected["predict_proba"])
    np.testing.assert_array_equal(tf.make_ndarray(response.outputs["predict"]), expected["predict"])


@pytest.mark.parametrize(
    "proto",
    [
        pytest.param(lambda: tf.make_tensor_proto(np.arange(6, dtype=np.float32).reshape(2, 3)), id="fp32-content"),
        pytest.param(lambda: tf.make_tensor_proto(1.5, shape=[2, 3]), id="one-value-fills"),
        pytest.param(lambda: tf.make_tensor_proto([1.0, 2.0], shape=[2, 2]), id="last-value-pads"),
        pytest.param(lambda: tf.make_tensor_proto(np.array([b"ab", b"\xff", b""])), id="strings"),
        pytest.param(lambda: tf.make_tensor_proto(np.array([[-3, 7]], dtype=np.int8)), id="int8"),
        pytest.param(lambda: tf.make_tensor_proto(np.array([1.5, -2.0], dtype=np.float16)), id="fp16"),
        pytest.param(lambda: tf.make_tensor_proto(np.array([True, False])), id="bool"),
        pytest.param(lambda: tf.make_tensor_proto(np.array([2**40], dtype=np.int64)), id="int64"),
        pytest.param(lambda: tf.make_tensor_proto(np.array([2**63 + 1], dtype=np.uint64)), id="uint64"),
    ],
)
def test_tensors_round_trip_as_tensorflow_reads_them(predictions, proto) -> None:
    """The identity model returns what Shoal decoded: it must be what TF itself decodes."""
    sent = proto()
    response = predictions.Predict(predict_request("identity", {"x": sent}), timeout=10)
    received = response.outputs["x"]
    assert received.dtype == sent.dtype
    expected, got = tf.make_ndarray(sent), tf.make_ndarray(received)
    assert got.dtype == expected.dtype and got.shape == expected.shape
    np.testing.assert_array_equal(got, expected)


def test_metadata_describes_the_model_as_a_signature(predictions) -> None:
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = "iris"
    response = predictions.GetModelMetadata(request, timeout=10)
    assert response.model_spec.name == "iris" and response.model_spec.version.value == 2
    signatures = get_model_metadata_pb2.SignatureDefMap()
    assert response.metadata["signature_def"].Unpack(signatures)
    signature = signatures.signature_def["serving_default"]
    assert signature.method_name == "tensorflow/serving/predict"
    [(name, info)] = signature.inputs.items()
    assert name == "input-0" and info.name == "input-0"
    assert info.dtype == tf.float64.as_datatype_enum
    assert [d.size for d in info.tensor_shape.dim] == [-1, 4]
    outputs = {n: (i.dtype, [d.size for d in i.tensor_shape.dim]) for n, i in signature.outputs.items()}
    assert outputs["predict"] == (tf.int64.as_datatype_enum, [-1])
    assert outputs["predict_proba"] == (tf.float64.as_datatype_enum, [-1, 3])


def test_model_status_lists_versions_and_states(models) -> None:
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = "iris"
    response = models.GetModelStatus(request, timeout=10)
    assert [(s.version, s.state, s.status.error_code) for s in response.model_version_status] == [
        (1, Status.AVAILABLE, 0), (2, Status.AVAILABLE, 0)
    ]
    request.model_spec.version.value = 1
    [only] = models.GetModelStatus(request, timeout=10).model_version_status
    assert only.version == 1 and only.state == Status.AVAILABLE


def test_failed_version_has_ended_with_its_reason(models) -> None:
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = "broken"
    [status] = models.GetModelStatus(request, timeout=10).model_version_status
    assert status.state == Status.END
    assert status.status.error_code == grpc.StatusCode.UNAVAILABLE.value[0]
    assert "model.joblib" in status.status.error_message


def test_unknown_model_or_version_is_not_found(predictions, models) -> None:
    with pytest.raises(grpc.RpcError) as info:
        predictions.Predict(predict_request("nope", {"x": [1.0]}), timeout=10)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND and "nope" in info.value.details()
    with pytest.raises(grpc.RpcError) as info:
        predictions.Predict(predict_request("iris", {"input-0": iris_rows(1)}, version=9), timeout=10)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    metadata = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    metadata.model_spec.name = "nope"
    with pytest.raises(grpc.RpcError) as info:
        predictions.GetModelMetadata(metadata, timeout=10)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    status = get_model_status_pb2.GetModelStatusRequest()
    status.model_spec.name = "nope"
    with pytest.raises(grpc.RpcError) as info:
        models.GetModelStatus(status, timeout=10)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


def test_wrong_shape_is_invalid_argument_naming_the_shape(predictions) -> None:
    with pytest.raises(grpc.RpcError) as info:
        predictions.Predict(predict_request("iris", {"input-0": np.ones((2, 3))}), timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "[2, 3]" in info.value.details() and "[-1, 4]" in info.value.details()


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda r: setattr(r.model_spec, "signature_name", "classify"), "signature"),
        (lambda r: setattr(r.model_spec, "version_label", "stable"), "version labels"),
        (lambda r: r.output_filter.append("nope"), "nope"),
        (lambda r: r.inputs["input-0"].CopyFrom(
            tf.make_tensor_proto(np.ones((1, 4), dtype=np.complex64))), "DT_COMPLEX64"),
    ],
)
def test_bad_requests_are_invalid_argument(predictions, change, message) -> None:
    request = predict_request("iris", {"input-0": iris_rows(1)})
    change(request)
    with pytest.raises(grpc.RpcError) as info:
        predictions.Predict(request, timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in info.value.details()


def test_metadata_needs_the_signature_def_field(predictions) -> None:
    request = get_model_metadata_pb2.GetModelMetadataRequest()
    request.model_spec.name = "iris"
    with pytest.raises(grpc.RpcError) as info:
        predictions.GetModelMetadata(request, timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "signature_def" in info.value.details()


def test_model_failure_is_internal_and_counted(server: ShoalProcess, predictions) -> None:
    with pytest.raises(grpc.RpcError) as info:
        predictions.Predict(predict_request("boom", {"x": [1.0]}), timeout=10)
    assert info.value.code() == grpc.StatusCode.INTERNAL and "kaboom" in info.value.details()
    counted = [
        line for line in httpx.get(f"{server.url}/metrics").text.splitlines()
        if line.startswith("shoal_requests_total{") and 'protocol="tfs-grpc"' in line
    ]
    assert any('model="boom"' in line and 'outcome="500"' in line for line in counted)
    assert any('model="iris"' in line and 'outcome="success"' in line for line in counted)


def test_shoal_codec_shares_a_process_with_tensorflow_serving_api() -> None:
    """Both register ``tensorflow.*`` messages; Shoal's private pool keeps them apart."""
    from shoal.protocol import tfs_grpc
    from shoal.protocol.tfs_gen import predict_pb2 as shoal_predict_pb2

    rows = iris_rows(2)
    sent = predict_request("iris", {"input-0": rows, "flag": tf.make_tensor_proto([True])})
    parsed = shoal_predict_pb2.PredictRequest.FromString(sent.SerializeToString())
    request = tfs_grpc.decode_predict_request(parsed, ["input-0", "flag"])
    assert [t.name for t in request.inputs] == ["input-0", "flag"]
    np.testing.assert_array_equal(request.inputs[0].data, rows)
    assert request.inputs[1].data.tolist() == [True]
