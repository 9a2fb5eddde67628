"""The node interface: ``await node.run(call, request) -> response``, timed and traced.

Every node appends its name to the call's path and reports its latency; an error leaving a
node names the innermost node it came from, so a client reads which part of the graph failed.
With OpenTelemetry tracing on, each execution is a ``shoal.node <name>`` span, current while the
node runs, so the spans of what it calls (models, other nodes, remote servers) nest in it.
"""

from __future__ import annotations

import copy
import inspect
import time
from collections.abc import Callable, Coroutine
from typing import Any

from ...errors import InvalidInput, ModelFailure, ShoalError
from ...observe import tracing
from ...serving.executor import Executor
from ...types import InferenceRequest, InferenceResponse, TensorSpec
from ..context import Call
from ..results import NodeInput

Observer = Callable[[float], None]


class GraphNode:
    kind = ""

    def __init__(self, name: str, observe: Observer) -> None:
        self.name = name
        self._observe = observe
        self._span_name = f"shoal.node {name}"
        self._traced_as = {tracing.NODE: name, tracing.NODE_KIND: self.kind}

    def run(self, call: Call, request: InferenceRequest) -> Coroutine[Any, Any, InferenceResponse]:
        """Execute this node (``await node.run(...)``). A plain method handing back the
        coroutine: tracing, when off, costs one check and no extra frame."""
        if tracing.TRACER is None:
            return self._run(call, request)
        return self._traced(call, request)

    async def _traced(self, call: Call, request: InferenceRequest) -> InferenceResponse:
        with tracing.active(self._span_name, self._traced_as):
            return await self._run(call, request)

    async def _run(self, call: Call, request: InferenceRequest) -> InferenceResponse:
        call.path.append(self.name)
        started = time.perf_counter()
        try:
            return await self.execute(call, request)
        except ShoalError as exc:
            if isinstance(exc, InvalidInput) and isinstance(request, NodeInput):
                exc = miswired(exc, request.producer)
            raise located(exc, self.name) from exc
        finally:
            self._observe(time.perf_counter() - started)

    async def execute(self, call: Call, request: InferenceRequest) -> InferenceResponse:
        raise NotImplementedError

    def inputs(self) -> list[TensorSpec]:
        """What this node takes, as far as it can tell (for the graph's metadata)."""
        return []

    def outputs(self) -> list[TensorSpec]:
        return []

    def receivers(self) -> list[tuple[GraphNode, list[TensorSpec]]]:
        """The nodes that check what this node is given, with what each declares it takes
        (for the wiring check at load): this node itself, unless it passes requests on."""
        taken = self.inputs()
        return [(self, taken)] if taken else []

    async def close(self) -> None:
        """Release connections; called when the graph is unloaded or replaced."""


def miswired(error: InvalidInput, producer: str) -> ShoalError:
    """A node refused what another node gave it: the graph's wiring is wrong, and the client
    did nothing wrong (500, naming both). An error from further down stays as it is."""
    if getattr(error, "graph_node", None) is not None:
        return error
    return ModelFailure(f"cannot take what node {producer!r} produced: {error.message}")


def located(error: ShoalError, node: str) -> ShoalError:
    """The same error, its message prefixed with the innermost node's name (once)."""
    if getattr(error, "graph_node", None) is not None:
        return error
    moved = copy.copy(error)
    moved.message = f"node {node!r}: {error.message}"
    moved.args = (moved.message,)
    moved.graph_node = node  # type: ignore[attr-defined]
    return moved


async def call_user(executor: Executor, node: str, fn: Callable[..., Any], *args: Any) -> Any:
    """User code: coroutines on the loop, plain functions on the worker threads."""
    try:
        if inspect.iscoroutinefunction(fn):
            return await fn(*args)
        return await executor.run(fn, *args)
    except ShoalError:
        raise
    except Exception as exc:
        raise ModelFailure(
            f"{fn.__qualname__} failed: {type(exc).__name__}: {exc}"
        ) from exc
