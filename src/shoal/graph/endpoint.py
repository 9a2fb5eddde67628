"""A graph served under its folder's name, like any model: the ``Endpoint`` interface.

``infer`` runs the root node and returns its answer with the routing decisions taken (the
``routing`` response parameter, ``router=arm,...``) and the request id (the request's own,
or a new one). Readiness follows the nodes: the graph is ready while every model it calls
has a ready version. ``feedback`` updates the routers a past request went through, found by
its routing or, for the last requests this process answered, by its id (once per id).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from ..errors import DeadlineExceeded, InvalidInput, ShoalError, Unavailable
from ..observe import logging as log
from ..serving.endpoint import (
    ModelEndpoint,
    ModelState,
    conform_inputs,
    requested_outputs,
)
from ..serving.batcher import batch_rows
from ..serving.stats import ModelStats
from ..types import InferenceRequest, InferenceResponse, TensorSpec
from .context import (
    HEADERS,
    ROUTING_PARAMETER,
    Call,
    error_context,
    format_routing,
    new_request_id,
    parse_routing,
)
from .metrics import GraphMetrics
from .nodes.base import GraphNode
from .nodes.model import ModelCall
from .nodes.routing import RoutingNode

#: How many recent requests' routings a graph remembers for feedback by request id.
REMEMBERED_REQUESTS = 50_000
PLATFORM = "graph"


@dataclass(frozen=True, slots=True)
class FeedbackResult:
    updated: dict[str, str]
    """The learning routers updated, each with the branch it learned about."""
    duplicate: bool = False
    """The request id already had its feedback: nothing was updated this time."""


class GraphEndpoint:
    def __init__(
        self,
        name: str,
        root: GraphNode,
        nodes: dict[str, GraphNode],
        metrics: GraphMetrics,
        inputs: list[TensorSpec] | None = None,
        outputs: list[TensorSpec] | None = None,
        timeout: float | None = None,
        version: str = "1",
    ) -> None:
        self.name = name
        self.version = version
        self.root = root
        self.nodes = nodes
        self.metrics = metrics
        self.timeout = timeout or 0.0
        #: graph.yaml's ``logger:`` block (payload logging), read by the repository.
        self.logger: Any = None
        #: The GraphSpec it was built from (the dashboard draws it).
        self.spec: Any = None
        self.state = ModelState.READY
        #: Requests answered and failed (Triton's statistics extension); the models a graph
        #: calls count their own executions.
        self.stats = ModelStats()
        #: A graph batches nothing itself; its models batch as configured.
        self.batching = None
        self.routers = {n: node for n, node in nodes.items() if isinstance(node, RoutingNode)}
        self._models = [node for node in nodes.values() if isinstance(node, ModelCall)]
        self._declared_inputs = inputs or []
        self._declared_outputs = outputs or []
        #: Whether any router learns: only then are requests remembered for feedback by id.
        self._learns = any(router.learns for router in self.routers.values())
        #: Request id -> the routing it took (maybe none), for the last REMEMBERED_REQUESTS.
        self._recent: OrderedDict[str, dict[str, str]] = OrderedDict()
        #: The ids in ``_recent`` whose feedback was taken (forgotten with them): feedback by
        #: id counts once, so a client may retry it safely.
        self._rewarded: set[str] = set()
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    # -- readiness and metadata ------------------------------------------------------------

    @property
    def ready(self) -> bool:
        return self.state is ModelState.READY and self.unready_reason() is None

    def unready_reason(self) -> str | None:
        if self.state is not ModelState.READY:
            return f"graph is {self.state.value.lower()}"
        for node in self._models:
            reason = node.unready_reason()
            if reason is not None:
                return f"node {node.name!r}: {reason}"
        return None

    @property
    def inputs(self) -> list[TensorSpec]:
        return list(self._declared_inputs) or self.root.inputs()

    @property
    def outputs(self) -> list[TensorSpec]:
        return list(self._declared_outputs) or self.root.outputs()

    def metadata(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "versions": [self.version],
            "platform": PLATFORM,
            "inputs": [s.to_dict() for s in self.inputs],
            "outputs": [s.to_dict() for s in self.outputs],
        }

    # -- inference -------------------------------------------------------------------------

    async def infer(
        self,
        request: InferenceRequest,
        timeout: float | None = None,
        deadline: float | None = None,
    ) -> InferenceResponse:
        """``timeout`` (a client's own limit) replaces the graph's; ``deadline`` caps it."""
        if self.state is not ModelState.READY:
            raise Unavailable(f"graph {self.name!r} is {self.state.value.lower()}")
        started = time.perf_counter_ns()
        call = Call(
            self.name, request.id or new_request_id(), client_timeout=timeout,
            client_gone=request.client_gone, header_source=HEADERS.get(),
        )
        limit = timeout or self.timeout
        if deadline is not None:
            limit = min(limit, deadline) if limit else deadline
        if limit:
            call.deadline_at = time.monotonic() + limit
        status = 200
        self._in_flight += 1
        self._idle.clear()
        try:
            pinned = request.parameters.get(ROUTING_PARAMETER)
            if pinned is not None:
                call.pinned = self._pinned(pinned)
            if self._declared_inputs:
                request.inputs = conform_inputs(
                    request.inputs, self._declared_inputs, self.name, "graph"
                )
            if limit:
                try:
                    response = await asyncio.wait_for(self.root.run(call, request), limit)
                except asyncio.TimeoutError:
                    raise DeadlineExceeded(
                        f"graph {self.name!r} did not answer within {limit:g} s"
                    ) from None
            else:
                response = await self.root.run(call, request)
            response = self._finish(request, response, call)
            ended = time.perf_counter_ns()
            self.stats.succeeded(started, ended)
            # One execution of the whole graph: Triton's inference_count counts its rows.
            self.stats.executed(batch_rows(request) or 1, 1, 0, 0, ended - started, 0)
            return response
        except ShoalError as exc:
            self.stats.failed(started, time.perf_counter_ns())
            status = exc.http_status
            # The data plane's request_failed line carries these: which way the request went.
            exc.log_fields = {"id": call.request_id, "path": call.path,  # type: ignore[attr-defined]
                              "routing": call.routing}
            # And so does the answer: the routing taken, and the id to look it up by.
            exc.context.update(error_context(call.routing, call.request_id))
            raise
        except asyncio.CancelledError:
            status = 499  # the client went away: neither a success nor a failure
            raise
        except Exception:
            self.stats.failed(started, time.perf_counter_ns())
            status = 500
            raise
        finally:
            self._in_flight -= 1
            if not self._in_flight:
                self._idle.set()
            if status == 200 and log.logger.isEnabledFor(logging.DEBUG):
                log.event("graph_request", logging.DEBUG, graph=self.name, id=call.request_id,
                          path=call.path, routing=call.routing,
                          seconds=round((time.perf_counter_ns() - started) / 1e9, 6))

    def _finish(
        self, request: InferenceRequest, response: InferenceResponse, call: Call
    ) -> InferenceResponse:
        if request.outputs is not None:
            response.outputs = requested_outputs(response, request, f"graph {self.name!r}")
        response.model_name = self.name
        response.model_version = self.version
        response.id = call.request_id
        if call.routing:
            response.parameters = {
                **response.parameters, ROUTING_PARAMETER: format_routing(call.routing)
            }
        if self._learns:
            self._remember(call.request_id, call.routing)
        return response

    def _remember(self, request_id: str, routing: dict[str, str]) -> None:
        """Every answered request, routed or not: feedback for one that took no learning
        router is then known to have nothing to update (not an unknown id)."""
        self._recent[request_id] = routing
        self._rewarded.discard(request_id)  # a new request under a reused id: a new feedback
        if len(self._recent) > REMEMBERED_REQUESTS:
            forgotten, _ = self._recent.popitem(last=False)
            self._rewarded.discard(forgotten)

    def _pinned(self, value: Any) -> dict[str, str]:
        """The routes a client pinned: ``router=branch`` names, or Seldon's ``{router: index}``
        (passed on by a rollout, which cannot know which graph will serve)."""
        if isinstance(value, dict) and value and all(
            isinstance(v, int) and not isinstance(v, bool) for v in value.values()
        ):
            return self.routing_names(value)
        return self._check_routing(parse_routing(value))

    def _check_routing(self, routing: dict[str, str]) -> dict[str, str]:
        for node, branch in routing.items():
            router = self.routers.get(node)
            if router is None:
                raise InvalidInput(
                    f"graph {self.name!r} has no routing node {node!r}; its routing nodes: "
                    f"{sorted(self.routers)}"
                )
            router.index_of(branch)
        return routing

    # -- feedback --------------------------------------------------------------------------

    async def feedback(
        self,
        reward: float,
        routing: dict[str, str] | None = None,
        request_id: str | None = None,
        truth: Any = None,
    ) -> FeedbackResult:
        """Update the learning routers on a request's path; returns them with their arms.

        Everything is checked before anything changes: a bad request updates nothing. A graph
        without learning routers has nothing to update on any path: every feedback is taken,
        as for a plain model. Feedback for a remembered id counts once; a second one (a client
        retrying after a timeout) is a duplicate that changes nothing. Feedback by routing
        alone cannot be told apart from another request's.
        """
        if isinstance(reward, bool) or not isinstance(reward, (int, float)) or not math.isfinite(reward):
            raise InvalidInput("'reward' must be a finite number")
        if routing:
            self._check_routing(routing)
        if not self._learns:
            return FeedbackResult({})
        remembered = self._recent.get(request_id) if request_id is not None else None
        if not routing:  # absent, or naming no node
            if request_id is None:
                raise InvalidInput("feedback needs the request's 'id' or the 'routing' it took")
            if remembered is None:
                raise InvalidInput(
                    f"graph {self.name!r} has no routing for request id {request_id!r}: this "
                    f"process remembers its last {REMEMBERED_REQUESTS} requests; send the "
                    "response's 'routing' instead"
                )
            routing = remembered
        plan = self._learning_plan(routing, float(reward))
        once = request_id if remembered is not None else None  # an id this process can count
        if once is not None:
            if once in self._rewarded:
                return FeedbackResult({}, duplicate=True)
            self._rewarded.add(once)  # before the first await: a concurrent retry sees it
        try:
            for router, index in plan:
                await router.learn(index, float(reward), truth)
                self.metrics.feedback_received(self.name, router.name,
                                               router.branch_names[index], float(reward))
        except BaseException:
            if once is not None:
                self._rewarded.discard(once)  # not (all) recorded: a retry must count
            raise
        return FeedbackResult({router.name: router.branch_names[index] for router, index in plan})

    def _learning_plan(self, routing: dict[str, str], reward: float) -> list[tuple[RoutingNode, int]]:
        """The learning routers of a (checked) routing and their branch indices, once each
        has accepted the reward."""
        plan = []
        for node, branch in routing.items():
            router = self.routers[node]
            if router.learns:
                router.check_reward(reward)
                plan.append((router, router.index_of(branch)))
        return plan

    async def router_state(self) -> dict[str, Any]:
        return {name: await router.state() for name, router in self.routers.items()}

    def routing_indices(self, routing: dict[str, str]) -> dict[str, int]:
        """Seldon's ``meta.routing``: node -> branch index."""
        return {node: self.routers[node].index_of(branch) for node, branch in routing.items()
                if node in self.routers}

    def routing_names(self, indices: dict[str, int]) -> dict[str, str]:
        routing = {}
        for node, index in indices.items():
            router = self.routers.get(node)
            if router is None:
                raise InvalidInput(f"graph {self.name!r} has no routing node {node!r}")
            if not 0 <= index < len(router.branch_names):
                raise InvalidInput(
                    f"routing node {node!r} has no branch {index} (it has "
                    f"{len(router.branch_names)})"
                )
            routing[node] = router.branch_names[index]
        return routing

    # -- lifecycle -------------------------------------------------------------------------

    async def close(self) -> None:
        """Stop taking requests, let running ones finish, release connections and classes."""
        self.state = ModelState.UNLOADING
        await self._idle.wait()
        for node in self.nodes.values():
            try:
                await node.close()
            except Exception as exc:  # one node's cleanup must not stop the others'
                log.event("graph_node_close_failed", logging.ERROR, graph=self.name,
                          node=node.name, reason=f"{type(exc).__name__}: {exc}")


def declared_inputs(endpoint: Any) -> list[TensorSpec]:
    """The inputs an endpoint declares, for codecs that name tensors after them (V1, Seldon)."""
    if isinstance(endpoint, ModelEndpoint):
        return endpoint.model.inputs
    return list(getattr(endpoint, "inputs", []))
