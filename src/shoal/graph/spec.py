"""``graph.yaml``: the declarative spec of an inference graph, and its validation.

A graph is a repository folder holding ``graph.yaml`` instead of a model artifact. Every node
is named under ``nodes``; nodes refer to each other by name, and execution starts at
``root``. Validation happens at load time and every message names the node at fault, so a
broken graph fails to load (listed in the repository index with the reason) while every other
model keeps serving.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ..errors import LoadError
from ..observe.payload.config import LoggerConfig
from ..repository.config import TensorConfig
from ..expressions import Expression, ExpressionError

GRAPH_FILE = "graph.yaml"
NODE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$")
#: Splitter weights are percentages, as in KServe's Splitter.
WEIGHT_TOTAL = 100.0


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class ModelNode(_Strict):
    """A model of this repository, called in-process."""

    kind: Literal["model"]
    model: str
    version: str | None = None
    outputs: list[str] | None = None
    """Outputs to ask the model for (e.g. ``[predict_proba]``); default: the model's own."""


class RemoteNode(_Strict):
    """A model served elsewhere (another Shoal, Triton, MLServer, TF Serving, KServe)."""

    kind: Literal["remote"]
    url: str
    """``http(s)://host:port`` for REST protocols, ``host:port`` for ``v2-grpc``."""
    protocol: Literal["v2-rest", "v2-grpc", "v1"] = "v2-rest"
    model: str
    version: str | None = None
    timeout: float = Field(default=30.0, gt=0)
    headers: dict[str, str] = Field(default_factory=dict)
    outputs: list[str] | None = None


class PythonClass(_Strict):
    """A class in a Python file of the graph folder."""

    path: str
    class_name: str = Field(alias="class")
    parameters: dict[str, Any] = Field(default_factory=dict)


class TransformerNode(PythonClass):
    """``preprocess`` before the child and/or ``postprocess`` after it (a ``shoal.Model``)."""

    kind: Literal["transformer"]
    child: str | None = None


class Step(_Strict):
    node: str
    input: Literal["previous", "request"] = "previous"
    """What the step receives: the previous step's outputs, or the graph's request."""
    map: dict[str, str] | None = None
    """Tensor renames ``{from: to}``; with a map, only the mapped tensors are passed on."""


class SequenceNode(_Strict):
    kind: Literal["sequence"]
    steps: list[Step] = Field(min_length=1)
    """Node names, or ``{node, map, input}`` for a step that needs more."""

    @field_validator("steps", mode="before")
    @classmethod
    def _shorthand(cls, steps: Any) -> Any:
        if isinstance(steps, list):
            return [{"node": s} if isinstance(s, str) else s for s in steps]
        return steps


class EnsembleNode(_Strict):
    """Children run concurrently on the same input; a combiner merges their answers."""

    kind: Literal["ensemble"]
    children: list[str] = Field(min_length=1)
    combiner: Literal["mean", "vote", "concat", "collect"] | PythonClass = "collect"


class Case(_Strict):
    when: str
    node: str


class SwitchNode(_Strict):
    kind: Literal["switch"]
    cases: list[Case] = Field(min_length=1)
    default: str | None = None


class Branch(_Strict):
    node: str
    weight: float = Field(ge=0)


class SplitterNode(_Strict):
    kind: Literal["splitter"]
    branches: list[Branch] = Field(min_length=1)
    sticky: str | None = None
    """A JMESPath key (``headers."x-user-id"``): one key always takes the same branch."""


class BanditNode(_Strict):
    kind: Literal["bandit"]
    strategy: Literal["epsilon_greedy", "thompson", "ucb1"]
    arms: list[str]
    epsilon: float = Field(default=0.1, ge=0, le=1)
    seed: int | None = None


class RouterNode(PythonClass):
    """A custom router class (Seldon's ROUTER): ``route`` picks an arm, ``feedback`` learns."""

    kind: Literal["router"]
    arms: list[str] = Field(min_length=1)


Node = Annotated[
    ModelNode | RemoteNode | TransformerNode | SequenceNode | EnsembleNode | SwitchNode | SplitterNode | BanditNode | RouterNode,
    Field(discriminator="kind"),
]


class GraphSpec(_Strict):
    root: str = "root"
    nodes: dict[str, Node] = Field(min_length=1)
    inputs: list[TensorConfig] = Field(default_factory=list)
    outputs: list[TensorConfig] = Field(default_factory=list)
    timeout: float | None = Field(default=None, ge=0)
    """Seconds a request may take through the whole graph; 504 beyond it."""
    logger: LoggerConfig | bool | None = None
    """Payload logging of the graph's requests and responses, as in ``model.yaml``."""


def children(node: Any) -> list[str]:
    """The names a node refers to, in the order the node knows them."""
    if isinstance(node, TransformerNode):
        return [node.child] if node.child else []
    if isinstance(node, SequenceNode):
        return [s.node for s in node.steps]
    if isinstance(node, EnsembleNode):
        return list(node.children)
    if isinstance(node, SwitchNode):
        return [c.node for c in node.cases] + ([node.default] if node.default else [])
    if isinstance(node, SplitterNode):
        return [b.node for b in node.branches]
    if isinstance(node, (BanditNode, RouterNode)):
        return list(node.arms)
    return []


def read_graph(folder: Path) -> GraphSpec:
    import yaml  # only when a graph is read

    path = folder / GRAPH_FILE
    try:
        raw = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise LoadError(f"{GRAPH_FILE} is not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise LoadError(f"{GRAPH_FILE} must be a mapping with 'nodes'")
    return parse_graph(raw)


def parse_graph(raw: dict[str, Any]) -> GraphSpec:
    try:
        spec = GraphSpec.model_validate(raw)
    except ValidationError as exc:
        raise LoadError(f"{GRAPH_FILE} is invalid: " + "; ".join(_describe(e) for e in exc.errors()))
    validate(spec)
    return spec


def _describe(error: Any) -> str:
    loc = [str(p) for p in error["loc"]]
    if len(loc) >= 2 and loc[0] == "nodes":
        # loc is ("nodes", name, kind-tag, field...): the tag repeats what 'kind' says.
        rest = loc[3:] if len(loc) > 2 else []
        where = f"node {loc[1]!r}" + (f": {'.'.join(rest)}" if rest else "")
        return f"{where}: {error['msg']}"
    return f"{'.'.join(loc) or GRAPH_FILE}: {error['msg']}"


def validate(spec: GraphSpec) -> None:
    """The checks a schema cannot express, each naming its node."""
    for name, node in spec.nodes.items():
        if not NODE_NAME.fullmatch(name):
            raise LoadError(
                f"node {name!r}: invalid name; use letters, digits, '_', '-' and '.'"
            )
        for ref in children(node):
            if ref not in spec.nodes:
                raise LoadError(f"node {name!r}: unknown node {ref!r}")
        _check_node(name, node)
    if spec.root not in spec.nodes:
        raise LoadError(f"root node {spec.root!r} is not among the nodes {sorted(spec.nodes)}")
    _check_cycles(spec)


def _check_node(name: str, node: Any) -> None:
    if isinstance(node, SplitterNode):
        total = sum(b.weight for b in node.branches)
        if not math.isclose(total, WEIGHT_TOTAL, rel_tol=0, abs_tol=1e-6):
            raise LoadError(
                f"node {name!r}: branch weights add up to {total:g}, not {WEIGHT_TOTAL:g} "
                "(they are percentages)"
            )
        _distinct(name, [b.node for b in node.branches], "branch")
        _expression(name, "sticky key", node.sticky)
    elif isinstance(node, EnsembleNode):
        _distinct(name, node.children, "child")
    elif isinstance(node, BanditNode):
        if len(node.arms) < 2:
            raise LoadError(f"node {name!r}: a bandit needs at least two arms, got {len(node.arms)}")
        _distinct(name, node.arms, "arm")
    elif isinstance(node, RouterNode):
        _distinct(name, node.arms, "arm")
    elif isinstance(node, SwitchNode):
        for index, case in enumerate(node.cases):
            _expression(name, f"case {index + 1} condition", case.when)


def _distinct(name: str, refs: list[str], what: str) -> None:
    seen = set()
    for ref in refs:
        if ref in seen:
            raise LoadError(f"node {name!r}: {what} {ref!r} is listed twice")
        seen.add(ref)


def _expression(name: str, what: str, source: str | None) -> None:
    if source is None:
        return
    try:
        Expression(source)
    except ExpressionError as exc:
        raise LoadError(f"node {name!r}: {what} {exc}") from None


def _check_cycles(spec: GraphSpec) -> None:
    """Depth-first search; a node met again on the current path closes a cycle."""
    done: set[str] = set()

    def visit(name: str, path: list[str]) -> None:
        if name in path:
            cycle = " -> ".join(path[path.index(name):] + [name])
            raise LoadError(f"node {name!r}: the graph has a cycle: {cycle}")
        if name in done:
            return
        for ref in children(spec.nodes[name]):
            visit(ref, path + [name])
        done.add(name)

    for name in [spec.root, *spec.nodes]:  # from the root first: messages follow the flow
        visit(name, [])
