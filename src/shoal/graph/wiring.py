"""Whether what each node produces fits what the next one takes, checked when a graph loads.

Where both sides declare metadata (a model's inputs and outputs, a transformer's ``inputs`` and
``outputs``), a sequence step's outputs, and what a transformer hands its child, must match
what the receiving nodes take (a splitter's every branch, an ensemble's every child):
the same tensor names (any name when one tensor feeds a one-input node), datatypes that
convert without changing any value (FP32 into FP64, never FP64 into FP32), and shapes that
agree wherever both fix a size. Behind a splitter, a mismatch with one branch would fail only
the requests routed there, at request time, looking like the client's fault; here it fails
the load, naming both nodes. What a node does not declare is not checked here; at request
time, input that one node gives another and that does not fit is a 500 naming both.
"""

from __future__ import annotations

from ..errors import LoadError
from ..serving.endpoint import converts_every_value
from ..types import TensorSpec
from .nodes.base import GraphNode
from .nodes.sequence import Sequence
from .nodes.transformer import Transform


def check_wiring(nodes: dict[str, GraphNode]) -> None:
    for node in nodes.values():
        if isinstance(node, Transform) and node.child is not None:
            _check_edge(node, node.handed_on(), node.child)
        if not isinstance(node, Sequence):
            continue
        for previous, step in zip(node.steps, node.steps[1:]):
            if step.from_request:
                continue
            produced = previous.node.outputs()
            if step.mapping is not None:
                produced = _renamed(produced, step.mapping)
            _check_edge(previous.node, produced, step.node)


def _check_edge(producer: GraphNode, produced: list[TensorSpec], consumer: GraphNode) -> None:
    for receiver, taken in consumer.receivers():
        problems = mismatches(produced, taken)
        if problems:
            raise LoadError(
                f"node {receiver.name!r} ({receiver.kind}) cannot take what node "
                f"{producer.name!r} ({producer.kind}) produces: " + "; ".join(problems)
            )


def mismatches(produced: list[TensorSpec], taken: list[TensorSpec]) -> list[str]:
    """Why tensors declared as ``produced`` would not pass a check against ``taken``."""
    if not produced or not taken:
        return []  # one side declares nothing: checked at request time
    if len(produced) == 1 and len(taken) == 1:
        pairs = [(produced[0], taken[0])]
    else:
        given, wanted = {s.name: s for s in produced}, {s.name: s for s in taken}
        if set(given) != set(wanted):
            return [f"it produces {sorted(given)}, the other takes {sorted(wanted)}"]
        pairs = [(given[name], wanted[name]) for name in wanted]
    problems = []
    for out, into in pairs:
        if not converts_every_value(out.datatype, into.datatype):
            problems.append(
                f"{out.name!r} is {out.datatype}, {into.name!r} takes {into.datatype} (not every "
                f"{out.datatype} value converts to {into.datatype})"
            )
        if len(out.shape) != len(into.shape) or any(
            a != b and -1 not in (a, b) for a, b in zip(out.shape, into.shape)
        ):
            problems.append(
                f"{out.name!r} has shape {list(out.shape)}, {into.name!r} takes {list(into.shape)}"
            )
    return problems


def _renamed(specs: list[TensorSpec], mapping: dict[str, str]) -> list[TensorSpec]:
    by_name = {s.name: s for s in specs}
    if not specs or any(source not in by_name for source in mapping):
        return []  # the producer does not declare them all: checked at request time
    return [TensorSpec(target, by_name[s].datatype, by_name[s].shape) for s, target in mapping.items()]
