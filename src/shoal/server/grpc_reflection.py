"""gRPC server reflection on Shoal's gRPC port, so ``grpcurl list`` / ``describe`` work.

The service is ``grpcio-reflection``'s, served under both names clients ask for:
``grpc.reflection.v1.ServerReflection`` (what current grpcurl, grpcui and Postman try first)
and ``grpc.reflection.v1alpha.ServerReflection`` (what older ones use). The two protocols
have the same messages; the package ships only the v1alpha one, so the v1 name is served by
the same servicer, and its file descriptor is derived from the v1alpha one.

Shoal's generated protos live in private descriptor pools (the TF Serving ones so that
tensorflow-serving-api can share the process), where the package's default pool cannot see
them: reflection gets a pool of its own, holding every served file and its dependencies.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from google.protobuf.descriptor import FileDescriptor, ServiceDescriptor
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_reflection.v1alpha._async import ReflectionServicer

from .grpc_parsing import add_parsed_service

V1ALPHA = "grpc.reflection.v1alpha"
V1 = "grpc.reflection.v1"
V1_FILE = "grpc/reflection/v1/reflection.proto"


def add_to_server(server: grpc.aio.Server, services: Iterable[ServiceDescriptor]) -> list[str]:
    """Serve reflection for ``services`` (and for itself); returns every service name listed."""
    services = list(services)
    alpha = reflection_pb2.DESCRIPTOR.services_by_name["ServerReflection"]
    pool = _pool([s.file for s in services] + [alpha.file])
    pool.Add(_v1_file())
    names = sorted({s.full_name for s in services} | {alpha.full_name, f"{V1}.ServerReflection"})
    servicer = ReflectionServicer(names, pool=pool)
    add_parsed_service(server, reflection_pb2_grpc.add_ServerReflectionServicer_to_server, servicer)
    add_parsed_service(server, _add_v1, servicer)
    return names


def _pool(files: Iterable[FileDescriptor]) -> descriptor_pool.DescriptorPool:
    """A pool with ``files`` and everything they import, each file added after its imports."""
    pool = descriptor_pool.DescriptorPool()
    added: set[str] = set()

    def add(file: FileDescriptor) -> None:
        if file.name in added:
            return
        added.add(file.name)
        for dependency in file.dependencies:
            add(dependency)
        proto = descriptor_pb2.FileDescriptorProto()
        file.CopyToProto(proto)
        pool.Add(proto)

    for file in files:
        add(file)
    return pool


def _v1_file() -> descriptor_pb2.FileDescriptorProto:
    """``grpc/reflection/v1/reflection.proto``: the v1alpha file under the v1 package."""
    proto = descriptor_pb2.FileDescriptorProto()
    reflection_pb2.DESCRIPTOR.CopyToProto(proto)
    proto.name, proto.package = V1_FILE, V1
    proto.ClearField("options")
    old, new = f".{V1ALPHA}.", f".{V1}."
    for message in proto.message_type:
        for message_field in message.field:
            if message_field.HasField("type_name"):
                message_field.type_name = message_field.type_name.replace(old, new)
    for service in proto.service:
        for method in service.method:
            method.input_type = method.input_type.replace(old, new)
            method.output_type = method.output_type.replace(old, new)
    return proto


def _add_v1(servicer: ReflectionServicer, server: Any) -> None:
    """What a generated ``add_..._to_server`` for the v1 service would do."""
    handlers = {
        "ServerReflectionInfo": grpc.stream_stream_rpc_method_handler(
            servicer.ServerReflectionInfo,
            request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
            response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
        )
    }
    service = f"{V1}.ServerReflection"
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, handlers),))
    server.add_registered_method_handlers(service, handlers)
