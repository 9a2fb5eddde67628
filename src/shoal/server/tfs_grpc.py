"""TensorFlow Serving's gRPC API on Shoal's gRPC port, for every model Shoal serves.

``tensorflow.serving.PredictionService`` (Predict, GetModelMetadata) and
``tensorflow.serving.ModelService`` (GetModelStatus), next to the V2 service, so clients
built on ``tensorflow-serving-api`` work unchanged. Inference goes through the data plane
like every other protocol (metrics label ``tfs-grpc``); errors become the status codes from
:mod:`shoal.errors`.
"""

from __future__ import annotations

from typing import Any

import grpc

from ..graph.context import HEADERS as REQUEST_HEADERS
from ..graph.context import VARIANT_PARAMETER
from ..protocol import tfs_grpc
from ..protocol.tfs_gen import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2,
    prediction_service_pb2_grpc,
)
from ..serving.dataplane import DataPlane
from ..serving.endpoint import Endpoint
from .grpc import _guard
from .grpc_parsing import add_parsed_service

PROTOCOL = "tfs-grpc"
#: The services added by :func:`add_to_server` (for health checking and reflection).
SERVICES = (
    prediction_service_pb2.DESCRIPTOR.services_by_name["PredictionService"],
    model_service_pb2.DESCRIPTOR.services_by_name["ModelService"],
)


class PredictionServicer(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, dataplane: DataPlane, max_message_size: int) -> None:
        self.dataplane = dataplane
        #: Bounds what a few typed values may be padded to (TensorFlow's fill rule).
        self.max_message_size = max_message_size

    async def Predict(
        self, request: predict_pb2.PredictRequest, context: Any
    ) -> predict_pb2.PredictResponse:
        REQUEST_HEADERS.set(context.invocation_metadata)  # read only by graph conditions
        return await _guard(context, lambda: self._predict(request, context))

    async def _predict(
        self, request: predict_pb2.PredictRequest, context: Any
    ) -> predict_pb2.PredictResponse:
        deadline = context.time_remaining()
        spec = request.model_spec

        def decode(endpoint: Endpoint) -> Any:
            # A map has no order; a model with several inputs gets them in its declared order.
            names: list[str] = []
            if len(request.inputs) > 1:
                names = [spec["name"] for spec in endpoint.metadata()["inputs"]]
            return tfs_grpc.decode_predict_request(request, names, self.max_message_size)

        def encode(_: Any, response: Any) -> predict_pb2.PredictResponse:
            variant = response.parameters.get(VARIANT_PARAMETER)
            if isinstance(variant, str):  # TF Serving's response has no parameters: metadata
                context.set_trailing_metadata(((VARIANT_PARAMETER, variant),))
            return tfs_grpc.encode_predict_response(response)

        return await self.dataplane.infer(
            tfs_grpc.model_name(spec),
            tfs_grpc.requested_version(spec),
            PROTOCOL,
            decode,
            encode,
            deadline=deadline if deadline is None else max(deadline, 1e-6),
        )

    async def GetModelMetadata(
        self, request: get_model_metadata_pb2.GetModelMetadataRequest, context: Any
    ) -> get_model_metadata_pb2.GetModelMetadataResponse:
        async def call() -> get_model_metadata_pb2.GetModelMetadataResponse:
            spec = request.model_spec
            tfs_grpc.check_metadata_fields(request.metadata_field)
            endpoint = self.dataplane.registry.get(
                tfs_grpc.model_name(spec), tfs_grpc.requested_version(spec)
            )
            return tfs_grpc.encode_metadata_response(endpoint.metadata(), endpoint.version)

        return await _guard(context, call)


class ModelServicer(model_service_pb2_grpc.ModelServiceServicer):
    def __init__(self, dataplane: DataPlane) -> None:
        self.dataplane = dataplane

    async def GetModelStatus(
        self, request: get_model_status_pb2.GetModelStatusRequest, context: Any
    ) -> get_model_status_pb2.GetModelStatusResponse:
        async def call() -> get_model_status_pb2.GetModelStatusResponse:
            spec = request.model_spec
            name, version = tfs_grpc.model_name(spec), tfs_grpc.requested_version(spec)
            registry = self.dataplane.registry
            # entry() raises NOT_FOUND for an unknown model or version.
            entries = [registry.entry(name, version)] if version else registry.entries(name)
            if not entries:
                registry.entry(name)
            return tfs_grpc.encode_status_response(entries)

        return await _guard(context, call)


def add_to_server(dataplane: DataPlane, server: grpc.aio.Server, max_message_size: int) -> None:
    add_parsed_service(
        server, prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server,
        PredictionServicer(dataplane, max_message_size),
    )
    add_parsed_service(
        server, model_service_pb2_grpc.add_ModelServiceServicer_to_server, ModelServicer(dataplane)
    )
