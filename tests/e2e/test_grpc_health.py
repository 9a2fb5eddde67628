"""gRPC health checking and server reflection, with grpcio-health-checking's client and the
reflection calls grpcurl makes (``list``, ``describe SYMBOL``)."""

from __future__ import annotations

import queue
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from shoal.protocol.grpc_gen import grpc_service_pb2 as pb
from shoal.protocol.grpc_gen import grpc_service_pb2_grpc as pb_grpc

from .models import IDENTITY, SLOW, custom
from .process import ShoalProcess

Status = health_pb2.HealthCheckResponse
SERVICES = {
    "inference.GRPCInferenceService",
    "tensorflow.serving.PredictionService",
    "tensorflow.serving.ModelService",
    "grpc.health.v1.Health",
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
}


@pytest.fixture(scope="module")
def channel(server: ShoalProcess) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(server.grpc_target) as channel:
        yield channel


def check(channel: grpc.Channel, service: str) -> int:
    return health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(service=service), timeout=5).status


def code_of(channel: grpc.Channel, service: str) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as raised:
        check(channel, service)
    return raised.value.code()


class Watcher:
    """A ``Watch`` stream read by a thread: statuses in a queue, then how the stream ended."""

    def __init__(self, target: str, service: str) -> None:
        self.channel = grpc.insecure_channel(target)
        self.call = health_pb2_grpc.HealthStub(self.channel).Watch(
            health_pb2.HealthCheckRequest(service=service), timeout=60)
        self.statuses: queue.Queue[int] = queue.Queue()
        self.ended: grpc.StatusCode | None = None
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        try:
            for response in self.call:
                self.statuses.put(response.status)
        except grpc.RpcError as exc:
            self.ended = exc.code()
        else:
            self.ended = grpc.StatusCode.OK

    def next(self, timeout: float = 10.0) -> int:
        return self.statuses.get(timeout=timeout)

    def until(self, status: int, timeout: float = 10.0) -> list[int]:
        """Statuses received up to and including ``status``."""
        seen = []
        deadline = time.monotonic() + timeout
        while not seen or seen[-1] != status:
            seen.append(self.statuses.get(timeout=max(0.01, deadline - time.monotonic())))
        return seen

    def close(self) -> None:
        self.call.cancel()
        self.channel.close()


def test_overall_status_is_readiness(channel: grpc.Channel) -> None:
    assert check(channel, "") == Status.SERVING
    for service in ("inference.GRPCInferenceService", "tensorflow.serving.PredictionService",
                    "tensorflow.serving.ModelService"):
        assert check(channel, service) == Status.SERVING


def test_status_per_model_and_version(channel: grpc.Channel) -> None:
    assert check(channel, "iris") == Status.SERVING
    assert check(channel, "iris/1") == Status.SERVING and check(channel, "iris/2") == Status.SERVING
    assert check(channel, "broken") == Status.NOT_SERVING  # failed to load
    assert check(channel, "badconfig") == Status.NOT_SERVING  # its model.yaml does not parse
    assert check(channel, "broken/1") == Status.NOT_SERVING


@pytest.mark.parametrize("service", ["nope", "iris/7", "iris/", "/1", "../iris", "grpc.health.v1.Nope"])
def test_unknown_names_are_not_found(channel: grpc.Channel, service: str) -> None:
    assert code_of(channel, service) == grpc.StatusCode.NOT_FOUND


def test_malformed_request_is_invalid_argument(channel: grpc.Channel) -> None:
    call = channel.unary_unary("/grpc.health.v1.Health/Check")  # raw bytes both ways
    with pytest.raises(grpc.RpcError) as raised:
        call(b"\x0a\xff", timeout=5)  # field 1, length 255, then nothing
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_list_gives_every_service_and_model(channel: grpc.Channel) -> None:
    response = health_pb2_grpc.HealthStub(channel).List(health_pb2.HealthListRequest(), timeout=5)
    statuses = {name: s.status for name, s in response.statuses.items()}
    assert statuses[""] == statuses["inference.GRPCInferenceService"] == Status.SERVING
    assert statuses["iris"] == Status.SERVING and statuses["broken"] == Status.NOT_SERVING
    assert "iris/1" not in statuses


def test_watch_follows_unload_load_and_a_new_model(tmp_path: Path) -> None:
    custom(tmp_path / "identity", IDENTITY)
    server = ShoalProcess(tmp_path)
    try:
        server.wait_ready()
        identity, later = Watcher(server.grpc_target, "identity"), Watcher(server.grpc_target, "later")
        assert identity.next() == Status.SERVING
        assert later.next() == Status.SERVICE_UNKNOWN
        url = f"{server.url}/v2/repository/models"
        assert httpx.post(f"{url}/identity/unload").status_code == 200
        assert identity.next() == Status.NOT_SERVING  # the folder is there: known, not served
        assert check_once(server, "identity") == Status.NOT_SERVING
        assert httpx.post(f"{url}/identity/load").status_code == 200
        assert identity.next() == Status.SERVING
        custom(tmp_path / "later", IDENTITY)
        assert httpx.post(f"{url}/later/load").status_code == 200
        assert later.until(Status.SERVING)[-1] == Status.SERVING
        assert identity.statuses.empty()  # sent on a change only
        identity.close()
        later.close()
    finally:
        assert server.stop() == 0


def check_once(server: ShoalProcess, service: str) -> int:
    with grpc.insecure_channel(server.grpc_target) as channel:
        return check(channel, service)


def test_watch_sees_the_shutdown_and_does_not_hold_it_up(tmp_path: Path) -> None:
    """SIGTERM with a slow request in flight: the server drains; every watch gets NOT_SERVING
    and ends (UNAVAILABLE: clients retry), so the drain ends with the request, not after
    --drain-timeout."""
    custom(tmp_path / "slow", SLOW)
    server = ShoalProcess(tmp_path, "--drain-timeout", "20")
    try:
        server.wait_ready()
        overall, model = Watcher(server.grpc_target, ""), Watcher(server.grpc_target, "slow")
        unknown = Watcher(server.grpc_target, "nope")
        assert overall.next() == model.next() == Status.SERVING
        assert unknown.next() == Status.SERVICE_UNKNOWN
        result: dict[str, object] = {}

        def slow_request() -> None:
            request = pb.ModelInferRequest(
                model_name="slow", parameters={"sleep": pb.InferParameter(double_param=2.0)})
            request.inputs.add(name="x", datatype="FP64", shape=[1]).contents.fp64_contents.append(1)
            with grpc.insecure_channel(server.grpc_target) as channel:
                result["response"] = pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(
                    request, timeout=20)

        request = threading.Thread(target=slow_request)
        request.start()
        time.sleep(0.5)
        signalled = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        assert overall.next() == model.next() == Status.NOT_SERVING
        assert time.monotonic() - signalled < 1.0  # a poll interval, not the request's 2 s
        for watcher in (overall, model, unknown):
            watcher.thread.join(5)
            assert watcher.ended == grpc.StatusCode.UNAVAILABLE
        assert unknown.statuses.empty()
        request.join(10)
        assert list(result["response"].outputs[0].contents.fp64_contents) == [1.0]  # type: ignore[attr-defined]
        assert server.proc.wait(10) == 0
        assert time.monotonic() - signalled < 6.0  # not --drain-timeout 20
    finally:
        server.stop()


def test_not_serving_while_loading(tmp_path: Path) -> None:
    from .models import SLOW_LOAD

    custom(tmp_path / "slowload", SLOW_LOAD, "runtime: custom\nparameters: {load_seconds: 2}\n")
    server = ShoalProcess(tmp_path)
    try:
        watcher = Watcher(server.grpc_target, "")
        assert check_once(server, "") == Status.NOT_SERVING
        assert check_once(server, "slowload") == Status.NOT_SERVING
        assert watcher.until(Status.SERVING) == [Status.NOT_SERVING, Status.SERVING]
        assert check_once(server, "slowload") == Status.SERVING
        watcher.close()
    finally:
        assert server.stop() == 0


# Reflection, as grpcurl does it: one ServerReflectionInfo stream, requests answered in order.


def reflect(channel: grpc.Channel, *requests: reflection_pb2.ServerReflectionRequest,
            version: str = "v1alpha") -> list[reflection_pb2.ServerReflectionResponse]:
    if version == "v1alpha":
        call = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo
    else:  # the same messages under grpc.reflection.v1
        call = channel.stream_stream(
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
            request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
            response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
        )
    return list(call(iter(requests), timeout=10))


def client_pool(response: reflection_pb2.ServerReflectionResponse) -> descriptor_pool.DescriptorPool:
    """What grpcurl builds from a file_descriptor_response: every file, imports first."""
    files = {}
    for raw in response.file_descriptor_response.file_descriptor_proto:
        proto = descriptor_pb2.FileDescriptorProto.FromString(raw)
        files[proto.name] = proto
    pool = descriptor_pool.DescriptorPool()
    added: set[str] = set()

    def add(name: str) -> None:
        if name not in added:
            added.add(name)
            for dependency in files[name].dependency:  # KeyError: a dependency was not sent
                add(dependency)
            pool.Add(files[name])

    for name in files:
        add(name)
    return pool


@pytest.mark.parametrize("version", ["v1alpha", "v1"])
def test_reflection_lists_every_service(channel: grpc.Channel, version: str) -> None:
    [response] = reflect(channel, reflection_pb2.ServerReflectionRequest(list_services=""),
                         version=version)
    assert {s.name for s in response.list_services_response.service} == SERVICES


@pytest.mark.parametrize("version", ["v1alpha", "v1"])
def test_reflection_describes_every_service(channel: grpc.Channel, version: str) -> None:
    requests = [reflection_pb2.ServerReflectionRequest(file_containing_symbol=name)
                for name in sorted(SERVICES)]
    for name, response in zip(sorted(SERVICES), reflect(channel, *requests, version=version)):
        assert response.WhichOneof("message_response") == "file_descriptor_response", name
        service = client_pool(response).FindServiceByName(name)
        for method in service.methods:  # resolvable: what `grpcurl describe` prints
            assert method.input_type.fields is not None and method.output_type.full_name


def test_describe_inference_service_and_messages(channel: grpc.Channel) -> None:
    [service, message, by_file, missing] = reflect(
        channel,
        reflection_pb2.ServerReflectionRequest(file_containing_symbol="inference.GRPCInferenceService"),
        reflection_pb2.ServerReflectionRequest(file_containing_symbol="inference.ModelInferRequest"),
        reflection_pb2.ServerReflectionRequest(file_by_filename="tensorflow_serving/apis/predict.proto"),
        reflection_pb2.ServerReflectionRequest(file_containing_symbol="inference.Nope"),
    )
    methods = {m.name: m for m in client_pool(service).FindServiceByName(
        "inference.GRPCInferenceService").methods}
    assert {"ServerLive", "ServerReady", "ModelReady", "ModelInfer", "ModelStreamInfer",
            "RepositoryModelLoad"} <= set(methods)
    assert methods["ModelInfer"].input_type.full_name == "inference.ModelInferRequest"
    assert methods["ModelStreamInfer"].client_streaming and methods["ModelStreamInfer"].server_streaming
    fields = client_pool(message).FindMessageTypeByName("inference.ModelInferRequest").fields_by_name
    assert {"model_name", "inputs", "raw_input_contents"} <= set(fields)
    predict = client_pool(by_file).FindMessageTypeByName("tensorflow.serving.PredictRequest")
    assert predict.fields_by_name["inputs"].message_type.fields_by_name["value"].message_type.full_name \
        == "tensorflow.TensorProto"  # its imports came along
    assert missing.error_response.error_code == grpc.StatusCode.NOT_FOUND.value[0]
