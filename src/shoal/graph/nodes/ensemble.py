"""An ensemble: children run concurrently on the same request; a combiner merges them."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from ...types import InferenceRequest, InferenceResponse, TensorSpec
from ..context import Call
from .base import GraphNode, Observer

Combine = Callable[[list[InferenceResponse], list[str]], Awaitable[InferenceResponse]]


async def _all_or_none(calls: list[Awaitable[InferenceResponse]]) -> list[InferenceResponse]:
    """Every child's answer; when one fails, the others are cancelled instead of running on
    (holding batch slots and remote connections) for an answer nobody will read."""
    tasks = [asyncio.ensure_future(c) for c in calls]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for task in tasks:
            task.cancel()
        raise


class Ensemble(GraphNode):
    kind = "ensemble"

    def __init__(
        self, name: str, observe: Observer, members: list[GraphNode], combine: Combine,
        keeps_signature: bool,
    ) -> None:
        super().__init__(name, observe)
        self.members = members
        self.combine = combine
        self._names = [m.name for m in members]
        self._keeps_signature = keeps_signature

    async def execute(self, call: Call, request: InferenceRequest) -> InferenceResponse:
        if len(self.members) == 1:
            responses = [await self.members[0].run(call, request)]
        else:
            responses = await _all_or_none([m.run(call, request) for m in self.members])
        return await self.combine(responses, self._names)

    def inputs(self) -> list[TensorSpec]:
        return self.members[0].inputs()

    def outputs(self) -> list[TensorSpec]:
        return self.members[0].outputs() if self._keeps_signature else []

    def receivers(self) -> list[tuple[GraphNode, list[TensorSpec]]]:
        return [found for member in self.members for found in member.receivers()]
