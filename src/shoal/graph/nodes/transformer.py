"""A transformer: user ``preprocess`` before its child and/or ``postprocess`` after it.

The class is a ``shoal.Model`` subclass, as a KServe transformer is a ``kserve.Model``: what
Seldon calls TRANSFORMER (input) and OUTPUT_TRANSFORMER (output) in one node. Without a
child, the preprocessed request's tensors are the node's answer, so a transformer can also
be one step of a sequence.
"""

from __future__ import annotations

from ...model import Model
from ...serving.endpoint import conform_inputs
from ...serving.executor import Executor
from ...types import InferenceRequest, InferenceResponse, TensorSpec
from ..context import Call
from ..results import as_request, as_response, copy_tensors
from .base import GraphNode, Observer, call_user


class Transform(GraphNode):
    kind = "transformer"

    def __init__(
        self, name: str, observe: Observer, model: Model, child: GraphNode | None,
        executor: Executor,
    ) -> None:
        super().__init__(name, observe)
        self.model = model
        self.child = child
        self.executor = executor
        cls = type(model)
        self._pre = model.preprocess if cls.preprocess is not Model.preprocess else None
        self._post = model.postprocess if cls.postprocess is not Model.postprocess else None

    async def execute(self, call: Call, request: InferenceRequest) -> InferenceResponse:
        inputs = copy_tensors(request.inputs)
        if self.model.inputs:  # declared, as a model's are: checked (and cast) the same way
            inputs = conform_inputs(inputs, self.model.inputs, self.name, "transformer")
        current = InferenceRequest(
            inputs, id=call.request_id, parameters=request.parameters,
            client_gone=request.client_gone,
        )
        if self._pre is not None:
            result = await call_user(self.executor, self.name, self._pre, current)
            current = as_request(result, current, f"{type(self.model).__name__}.preprocess")
        if self.child is not None:
            response = await self.child.run(call, current)
        else:
            response = InferenceResponse(current.inputs)
        if self._post is not None:
            result = await call_user(self.executor, self.name, self._post, response)
            response = as_response(result, f"{type(self.model).__name__}.postprocess")
        return response

    def inputs(self) -> list[TensorSpec]:
        if self.model.inputs:
            return list(self.model.inputs)
        return self.child.inputs() if self._pre is None and self.child is not None else []

    def outputs(self) -> list[TensorSpec]:
        if self.model.outputs:
            return list(self.model.outputs)
        return self.child.outputs() if self._post is None and self.child is not None else []

    async def close(self) -> None:
        await call_user(self.executor, self.name, self.model.unload)
