"""A sequence: each step's outputs feed the next step (renamed by its ``map`` if given)."""

from __future__ import annotations

from dataclasses import dataclass

from ...types import InferenceRequest, InferenceResponse, TensorSpec
from ..context import Call
from ..results import NodeInput, passed_on, renamed
from .base import GraphNode, Observer


@dataclass(frozen=True, slots=True)
class SequenceStep:
    node: GraphNode
    from_request: bool
    mapping: dict[str, str] | None


class Sequence(GraphNode):
    kind = "sequence"

    def __init__(self, name: str, observe: Observer, steps: list[SequenceStep]) -> None:
        super().__init__(name, observe)
        self.steps = steps

    async def execute(self, call: Call, request: InferenceRequest) -> InferenceResponse:
        response: InferenceResponse | None = None
        for index, step in enumerate(self.steps):
            fed = response is not None and not step.from_request  # by the previous step
            tensors = response.outputs if fed else request.inputs  # type: ignore[union-attr]
            if step.mapping is not None:
                tensors = renamed(tensors, step.mapping, f"step {index + 1} ({step.node.name})")
            current = (
                NodeInput(tensors, id=request.id, parameters=request.parameters,
                          client_gone=request.client_gone, producer=self.steps[index - 1].node.name)
                if fed else passed_on(request, tensors, request.id)  # the client's, or a node's
            )
            response = await step.node.run(call, current)
        assert response is not None  # a sequence has at least one step
        return response

    def inputs(self) -> list[TensorSpec]:
        first = self.steps[0]
        return [] if first.mapping is not None else first.node.inputs()

    def outputs(self) -> list[TensorSpec]:
        return self.steps[-1].node.outputs()

    def receivers(self) -> list[tuple[GraphNode, list[TensorSpec]]]:
        first = self.steps[0]
        return [] if first.mapping is not None else first.node.receivers()
