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
from ..results import NodeInput, as_request, as_response, copy_tensors, passed_on
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
        current = passed_on(request, inputs, call.request_id)
        if self._pre is not None:
            result = await call_user(self.executor, self.name, self._pre, current)
            current = as_request(result, current, f"{type(self.model).__name__}.preprocess")
            current = NodeInput(current.inputs, id=current.id, parameters=current.parameters,
                                outputs=current.outputs, client_gone=current.client_gone,
                                producer=self.name)
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

    def receivers(self) -> list[tuple[GraphNode, list[TensorSpec]]]:
        if self.model.inputs:
            return [(self, list(self.model.inputs))]
        return self.child.receivers() if self._pre is None and self.child is not None else []

    def outputs(self) -> list[TensorSpec]:
        """The node's answer: what ``postprocess`` produces (declared ``outputs``), else the
        child's answer, else (no child) what ``preprocess`` produces (declared ``outputs``)."""
        if self._post is None and self.child is not None:
            return self.child.outputs()
        return list(self.model.outputs)

    def handed_on(self) -> list[TensorSpec]:
        """What this transformer gives its child, where it says: the declared ``outputs`` of
        a transformer whose only stage is ``preprocess``."""
        if self.child is None or self._pre is None or self._post is not None:
            return []
        return list(self.model.outputs)

    async def close(self) -> None:
        await call_user(self.executor, self.name, self.model.unload)
