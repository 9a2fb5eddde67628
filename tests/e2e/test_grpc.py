"""V2 gRPC end to end with grpcio and Shoal's generated stubs."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import numpy as np
import pytest

from shoal.protocol.grpc_gen import grpc_service_pb2 as pb
from shoal.protocol.grpc_gen import grpc_service_pb2_grpc as pb_grpc

from .models import iris_rows
from .process import ShoalProcess


@pytest.fixture(scope="module")
def stub(server: ShoalProcess) -> Iterator[pb_grpc.GRPCInferenceServiceStub]:
    with grpc.insecure_channel(server.grpc_target) as channel:
        yield pb_grpc.GRPCInferenceServiceStub(channel)


def iris_request(raw: bool, **fields: object) -> pb.ModelInferRequest:
    rows = iris_rows(2)
    request = pb.ModelInferRequest(**{"model_name": "iris", **fields})
    tensor = request.inputs.add(name="input-0", datatype="FP64", shape=[2, 4])
    if raw:
        request.raw_input_contents.append(rows.tobytes())
    else:
        tensor.contents.fp64_contents.extend(rows.reshape(-1).tolist())
    return request


def test_health_and_metadata_rpcs(stub: pb_grpc.GRPCInferenceServiceStub) -> None:
    assert stub.ServerLive(pb.ServerLiveRequest()).live
    assert stub.ServerReady(pb.ServerReadyRequest()).ready
    assert stub.ModelReady(pb.ModelReadyRequest(name="iris", version="1")).ready
    meta = stub.ServerMetadata(pb.ServerMetadataRequest())
    assert meta.name == "shoal" and "binary_tensor_data" in meta.extensions
    model = stub.ModelMetadata(pb.ModelMetadataRequest(name="iris"))
    assert list(model.versions) == ["1", "2"]
    assert model.inputs[0].name == "input-0" and list(model.inputs[0].shape) == [-1, 4]


def test_typed_contents_get_typed_response(stub: pb_grpc.GRPCInferenceServiceStub) -> None:
    response = stub.ModelInfer(iris_request(raw=False, id="abc"))
    assert response.model_version == "2" and response.id == "abc"
    assert not response.raw_output_contents
    assert list(response.outputs[0].contents.int64_contents) == [0, 0]


def test_raw_contents_get_raw_response(stub: pb_grpc.GRPCInferenceServiceStub) -> None:
    request = iris_request(raw=True, model_version="1")
    request.outputs.add(name="predict_proba")
    response = stub.ModelInfer(request)
    assert response.model_version == "1"
    [output] = response.outputs
    proba = np.frombuffer(response.raw_output_contents[0], dtype="<f8").reshape(tuple(output.shape))
    assert proba.shape == (2, 3) and np.allclose(proba.sum(axis=1), 1)


def test_parameters_round_trip(stub: pb_grpc.GRPCInferenceServiceStub) -> None:
    request = pb.ModelInferRequest(model_name="stages")
    tensor = request.inputs.add(name="x", datatype="FP64", shape=[1])
    tensor.contents.fp64_contents.append(1.0)
    response = stub.ModelInfer(request)
    assert response.parameters["post"].bool_param is True
    assert list(response.outputs[0].contents.fp64_contents) == [4.0]


def test_bytes_and_fp16(stub: pb_grpc.GRPCInferenceServiceStub) -> None:
    request = pb.ModelInferRequest(model_name="identity")
    request.inputs.add(name="s", datatype="BYTES", shape=[2]).contents.bytes_contents.extend([b"a", b"\xff"])
    response = stub.ModelInfer(request)
    assert list(response.outputs[0].contents.bytes_contents) == [b"a", b"\xff"]
    half = np.array([1.5, -2.0], dtype="<f2")
    request = pb.ModelInferRequest(model_name="identity", raw_input_contents=[half.tobytes()])
    request.inputs.add(name="h", datatype="FP16", shape=[2])
    response = stub.ModelInfer(request)
    assert np.array_equal(np.frombuffer(response.raw_output_contents[0], "<f2"), half)


def expect_code(call, code: grpc.StatusCode, fragment: str) -> None:
    with pytest.raises(grpc.RpcError) as info:
        call()
    assert info.value.code() == code, info.value.details()
    assert fragment in info.value.details()


def test_error_codes(stub: pb_grpc.GRPCInferenceServiceStub) -> None:
    bad_shape = iris_request(raw=True)
    bad_shape.inputs[0].shape[:] = [2, 5]
    expect_code(lambda: stub.ModelInfer(bad_shape), grpc.StatusCode.INVALID_ARGUMENT, "do not match shape")
    mixed = iris_request(raw=True)
    mixed.inputs[0].contents.fp64_contents.append(1.0)
    expect_code(lambda: stub.ModelInfer(mixed), grpc.StatusCode.INVALID_ARGUMENT, "raw_input_contents")
    extra_raw = iris_request(raw=True)
    extra_raw.raw_input_contents.append(b"")
    expect_code(lambda: stub.ModelInfer(extra_raw), grpc.StatusCode.INVALID_ARGUMENT, "raw_input_contents")
    unknown = pb.ModelInferRequest(model_name="nosuch")
    expect_code(lambda: stub.ModelInfer(unknown), grpc.StatusCode.NOT_FOUND, "nosuch")
    expect_code(lambda: stub.ModelInfer(iris_request(raw=True, model_version="7")),
                grpc.StatusCode.NOT_FOUND, "no version")
    expect_code(lambda: stub.ModelMetadata(pb.ModelMetadataRequest(name="nosuch")),
                grpc.StatusCode.NOT_FOUND, "nosuch")
    broken = iris_request(raw=True, model_name="broken")
    expect_code(lambda: stub.ModelInfer(broken), grpc.StatusCode.UNAVAILABLE, "unavailable")
    boom = pb.ModelInferRequest(model_name="boom")
    boom.inputs.add(name="x", datatype="FP64", shape=[1]).contents.fp64_contents.append(1)
    expect_code(lambda: stub.ModelInfer(boom), grpc.StatusCode.INTERNAL, "kaboom")
    bad_type = pb.ModelInferRequest(model_name="identity")
    bad_type.inputs.add(name="x", datatype="COMPLEX", shape=[1])
    expect_code(lambda: stub.ModelInfer(bad_type), grpc.StatusCode.INVALID_ARGUMENT, "unknown datatype")
    for name in ("..", "a/b", "x\0"):
        expect_code(lambda: stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name=name)),
                    grpc.StatusCode.INVALID_ARGUMENT, "invalid model name")
    assert stub.ServerLive(pb.ServerLiveRequest()).live


def test_message_over_limit_is_resource_exhausted(stub: pb_grpc.GRPCInferenceServiceStub) -> None:
    request = pb.ModelInferRequest(model_name="identity", raw_input_contents=[b"\0" * 2_000_000])
    request.inputs.add(name="x", datatype="UINT8", shape=[2_000_000])
    expect_code(lambda: stub.ModelInfer(request), grpc.StatusCode.RESOURCE_EXHAUSTED, "")


def test_repository_index(stub: pb_grpc.GRPCInferenceServiceStub) -> None:
    index = stub.RepositoryIndex(pb.RepositoryIndexRequest())
    rows = {(m.name, m.version): m for m in index.models}
    assert rows[("iris", "2")].state == "READY"
    assert rows[("broken", "1")].state == "UNAVAILABLE" and rows[("broken", "1")].reason
    ready = stub.RepositoryIndex(pb.RepositoryIndexRequest(ready=True))
    assert "broken" not in {m.name for m in ready.models}


def test_stream_infer(stub: pb_grpc.GRPCInferenceServiceStub) -> None:
    requests = [iris_request(raw=True, id="a"), pb.ModelInferRequest(model_name="nosuch")]
    answers = list(stub.ModelStreamInfer(iter(requests)))
    assert answers[0].infer_response.id == "a" and not answers[0].error_message
    assert "nosuch" in answers[1].error_message


@pytest.mark.parametrize("method", [
    "/inference.GRPCInferenceService/ModelInfer",
    "/inference.GRPCInferenceService/ModelMetadata",
    "/tensorflow.serving.PredictionService/Predict",
    "/tensorflow.serving.ModelService/GetModelStatus",
])
def test_corrupted_protobuf_is_invalid_argument(server: ShoalProcess, method: str) -> None:
    """gRPC's own deserializer answered UNKNOWN, which reads like a server fault."""
    with grpc.insecure_channel(server.grpc_target) as channel:
        call = channel.unary_unary(method, request_serializer=None, response_deserializer=None)
        with pytest.raises(grpc.RpcError) as info:
            call(b"\xff\xff\xff\xff\x0f not protobuf", timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "malformed request" in info.value.details()


def test_corrupted_protobuf_in_a_stream_is_invalid_argument(server: ShoalProcess) -> None:
    with grpc.insecure_channel(server.grpc_target) as channel:
        stream = channel.stream_stream("/inference.GRPCInferenceService/ModelStreamInfer",
                                       request_serializer=None, response_deserializer=None)
        with pytest.raises(grpc.RpcError) as info:
            list(stream(iter([b"\xff\xff\xff\xff\x0f not protobuf"]), timeout=10))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
