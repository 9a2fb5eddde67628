"""Nodes that send each request down one of their branches: switch, splitter, bandit, router.

Every decision is recorded in the call's routing (node -> branch name), which the response
carries and feedback echoes. A client may pin a decision (the ``routing`` request parameter,
or Seldon's ``meta.routing``): the node then takes that branch without choosing.
"""

from __future__ import annotations

import asyncio
import bisect
import math
from collections.abc import Callable
from typing import Any

import numpy as np

from ...errors import InvalidInput, ModelFailure
from ...serving.executor import Executor
from ...types import InferenceRequest, InferenceResponse, TensorSpec
from ..bandits import Policy
from ..context import Call
from ...expressions import Expression, unit_hash
from ..plugins import Router
from ..results import copy_tensors
from ..state import BanditStore
from .base import GraphNode, Observer, call_user


class RoutingNode(GraphNode):
    #: Whether feedback changes how this node routes.
    learns = False

    def __init__(
        self, name: str, observe: Observer, branches: list[GraphNode],
        count: Callable[[int], None],
    ) -> None:
        super().__init__(name, observe)
        self.branches = branches
        self.branch_names = [b.name for b in branches]
        self._index = {b.name: i for i, b in enumerate(branches)}
        self._count = count

    async def execute(self, call: Call, request: InferenceRequest) -> InferenceResponse:
        pinned = call.pinned.get(self.name)
        index = self.index_of(pinned) if pinned is not None else await self.choose(call, request)
        call.routing[self.name] = self.branch_names[index]
        self._count(index)
        return await self.branches[index].run(call, request)

    async def choose(self, call: Call, request: InferenceRequest) -> int:
        raise NotImplementedError

    def index_of(self, branch: str) -> int:
        try:
            return self._index[branch]
        except KeyError:
            raise InvalidInput(
                f"router {self.name!r} has no branch {branch!r}; its branches: {self.branch_names}"
            ) from None

    def check_reward(self, reward: float) -> None:
        """Refuse a reward this node cannot learn from, before any router is updated."""

    async def learn(self, index: int, reward: float, truth: Any) -> None:
        """Feedback for a request this node sent down branch ``index``."""

    async def state(self) -> dict[str, Any]:
        return {"kind": self.kind, "branches": self.branch_names}

    def inputs(self) -> list[TensorSpec]:
        return self.branches[0].inputs()

    def outputs(self) -> list[TensorSpec]:
        return self.branches[0].outputs()

    def receivers(self) -> list[tuple[GraphNode, list[TensorSpec]]]:
        return [found for branch in self.branches for found in branch.receivers()]


class Switch(RoutingNode):
    """The first case whose condition holds; else the default; else a 400."""

    kind = "switch"

    def __init__(
        self, name: str, observe: Observer, branches: list[GraphNode],
        count: Callable[[int], None], cases: list[tuple[Expression, int]], default: int | None,
    ) -> None:
        super().__init__(name, observe, branches, count)
        self.cases = cases
        self.default = default

    async def choose(self, call: Call, request: InferenceRequest) -> int:
        for condition, index in self.cases:
            if condition.holds(request, call.headers):
                return index
        if self.default is None:
            conditions = "; ".join(c.source for c, _ in self.cases)
            raise InvalidInput(
                f"no case of switch {self.name!r} matched the request and it has no default "
                f"(conditions: {conditions})"
            )
        return self.default


class Splitter(RoutingNode):
    """Weighted random choice; with a sticky key, one key always lands on the same branch."""

    kind = "splitter"

    def __init__(
        self, name: str, observe: Observer, branches: list[GraphNode],
        count: Callable[[int], None], weights: list[float], sticky: Expression | None,
        rng: np.random.Generator,
    ) -> None:
        super().__init__(name, observe, branches, count)
        total = sum(weights)
        self._bounds = list(np.cumsum(weights) / total)
        self._bounds[-1] = 1.0
        self.weights = weights
        self.sticky = sticky
        self.rng = rng

    async def choose(self, call: Call, request: InferenceRequest) -> int:
        point = None
        if self.sticky is not None:
            key = self.sticky.evaluate(request, call.headers)
            if key is not None:
                point = unit_hash(key)
        if point is None:
            point = self.rng.random()
        return min(bisect.bisect_right(self._bounds, point), len(self._bounds) - 1)

    async def state(self) -> dict[str, Any]:
        return {**await super().state(), "weights": dict(zip(self.branch_names, self.weights))}


class Bandit(RoutingNode):
    """Chooses by a bandit policy over persisted counts; learns from feedback."""

    kind = "bandit"
    learns = True

    def __init__(
        self, name: str, observe: Observer, branches: list[GraphNode],
        count: Callable[[int], None], strategy: str, policy: Policy, store: BanditStore,
        rng: np.random.Generator, executor: Executor,
    ) -> None:
        super().__init__(name, observe, branches, count)
        self.strategy = strategy
        self.policy = policy
        self.store = store
        self.rng = rng
        self.executor = executor
        #: The background reload of the counts, held so it is not garbage-collected.
        self._reloading: asyncio.Task[None] | None = None

    async def choose(self, call: Call, request: InferenceRequest) -> int:
        if self.store.due():  # another process's feedback: picked up in the background
            self._reloading = asyncio.ensure_future(self.executor.run(self.store.reload))
        pulls, rewards = self.store.counts()
        return self.policy.choose(pulls, rewards, self.rng)

    def check_reward(self, reward: float) -> None:
        if not 0.0 <= reward <= 1.0:
            raise InvalidInput(
                f"bandit {self.name!r} learns from rewards between 0 and 1, got {reward:g}"
            )

    async def learn(self, index: int, reward: float, truth: Any) -> None:
        await self.executor.run(self.store.update, index, reward)

    async def state(self) -> dict[str, Any]:
        arms = await self.executor.run(self.store.snapshot)
        return {**await super().state(), "strategy": self.strategy, "arms": arms}


class CustomRouter(RoutingNode):
    """A user's :class:`~shoal.graph.Router`: ``route`` picks, ``feedback`` learns."""

    kind = "router"
    learns = True

    def __init__(
        self, name: str, observe: Observer, branches: list[GraphNode],
        count: Callable[[int], None], plugin: Router, executor: Executor,
    ) -> None:
        super().__init__(name, observe, branches, count)
        self.plugin = plugin
        self.executor = executor

    async def choose(self, call: Call, request: InferenceRequest) -> int:
        copy = InferenceRequest(
            copy_tensors(request.inputs), id=call.request_id, parameters=request.parameters
        )
        choice = await call_user(self.executor, self.name, self.plugin.route, copy)
        if isinstance(choice, str) and choice in self._index:
            return self._index[choice]
        integer = isinstance(choice, (int, np.integer)) and not isinstance(choice, bool)
        if integer and 0 <= choice < len(self.branches):
            return int(choice)
        raise ModelFailure(
            f"router {self.name!r}: route() returned {choice!r}; expected an arm index "
            f"(0 to {len(self.branches) - 1}) or one of {self.branch_names}"
        )

    def check_reward(self, reward: float) -> None:
        if not math.isfinite(reward):
            raise InvalidInput("reward must be a finite number")

    async def learn(self, index: int, reward: float, truth: Any) -> None:
        await call_user(
            self.executor, self.name, self.plugin.feedback, self.branch_names[index], reward, truth
        )
