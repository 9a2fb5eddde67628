"""A model of this repository, called in-process through its endpoint (no HTTP hop).

The model is looked up in the registry on every request, so a reload of the model is picked
up at once and a graph never holds on to a retired instance.
"""

from __future__ import annotations

from ...errors import ShoalError
from ...serving.registry import Registry
from ...types import InferenceRequest, InferenceResponse, RequestedOutput, TensorSpec
from ..context import Call, without_routing
from ..results import copy_tensors
from .base import GraphNode, Observer


class ModelCall(GraphNode):
    kind = "model"

    def __init__(
        self, name: str, observe: Observer, registry: Registry, model: str,
        version: str | None, outputs: list[str] | None,
    ) -> None:
        super().__init__(name, observe)
        self.registry = registry
        self.model = model
        self.version = version
        self.requested = [RequestedOutput(o) for o in outputs] if outputs else None

    async def execute(self, call: Call, request: InferenceRequest) -> InferenceResponse:
        endpoint = self.registry.get(self.model, self.version)
        child = InferenceRequest(
            copy_tensors(request.inputs), id=call.request_id,
            parameters=without_routing(request.parameters), outputs=self.requested,
            model_name=self.model, model_version=endpoint.version, client_gone=call.client_gone,
        )
        response = await endpoint.infer(child, call.client_timeout, call.remaining())
        response.parameters = without_routing(response.parameters)
        return response

    def unready_reason(self) -> str | None:
        try:
            endpoint = self.registry.get(self.model, self.version)
        except ShoalError as exc:
            return str(exc)
        return endpoint.unready_reason()  # a rollout is ready while its stable variant is

    def _signature(self, key: str) -> list[TensorSpec]:
        try:
            metadata = self.registry.get(self.model, self.version).metadata()
        except ShoalError:
            return []
        specs = [TensorSpec(t["name"], t["datatype"], tuple(t["shape"])) for t in metadata[key]]
        if key == "outputs" and self.requested is not None:
            wanted = {o.name for o in self.requested}
            specs = [s for s in specs if s.name in wanted]
        return specs

    def inputs(self) -> list[TensorSpec]:
        return self._signature("inputs")

    def outputs(self) -> list[TensorSpec]:
        return self._signature("outputs")
