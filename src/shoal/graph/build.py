"""From a validated ``graph.yaml`` to a ready :class:`GraphEndpoint`.

Model nodes must name plain models of the same repository (a folder without ``graph.yaml``):
they are looked up in the registry at request time, so a model's reload reaches the graph at
once and a model that is down makes the graph unready instead of failing its load. User
classes are imported and their ``load`` called here; bandit counts are read from the state
directory.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import LoadError, ShoalError
from ..model import Model
from ..serving.executor import Executor
from ..serving.registry import Registry
from . import combiners
from .bandits import make_policy
from .endpoint import GraphEndpoint
from ..expressions import Expression
from .metrics import GraphMetrics
from .nodes.base import GraphNode, Observer, call_user
from .nodes.ensemble import Ensemble
from .nodes.model import ModelCall
from .nodes.routing import Bandit, CustomRouter, Splitter, Switch
from .nodes.sequence import Sequence, SequenceStep
from .nodes.transformer import Transform
from .plugins import ClassLoader, Combiner, Router
from .spec import (
    BanditNode,
    EnsembleNode,
    GraphSpec,
    ModelNode,
    PythonClass,
    RemoteNode,
    RouterNode,
    SequenceNode,
    SplitterNode,
    SwitchNode,
    TransformerNode,
    read_graph,
)
from .state import BanditStore
from .wiring import check_wiring


@dataclass
class GraphEnvironment:
    """What graphs need from the server that loads them."""

    registry: Registry
    executor: Executor
    metrics: GraphMetrics
    #: Where bandit counts live (``<dir>/<graph>/<node>.json``); None keeps them in memory.
    state_dir: Path | None
    #: The repository's model names, and whether a name is a graph.
    model_names: Callable[[], list[str]]
    is_graph: Callable[[str], bool]


async def load_graph(name: str, folder: Path, env: GraphEnvironment) -> GraphEndpoint:
    spec = await env.executor.run(read_graph, folder)
    check_models(name, spec, env)
    builder = _Builder(name, folder, spec, env)
    endpoint = await env.executor.run(builder.build)
    for node, load in builder.loads:
        try:
            await call_user(env.executor, node, load)
        except ShoalError as exc:
            raise LoadError(f"node {node!r}: {exc}") from exc
    try:
        check_wiring(endpoint.nodes)  # user classes declare their tensors in load()
    except LoadError:
        await endpoint.close()
        raise
    return endpoint


def check_models(name: str, spec: GraphSpec, env: GraphEnvironment) -> None:
    known = set(env.model_names()) | set(env.registry.names())
    for node_name, node in spec.nodes.items():
        if not isinstance(node, ModelNode):
            continue
        if node.model == name:
            raise LoadError(f"node {node_name!r}: a graph cannot call itself")
        if node.model not in known:
            raise LoadError(f"node {node_name!r}: unknown model {node.model!r} (not in the repository)")
        if env.is_graph(node.model):
            raise LoadError(
                f"node {node_name!r}: {node.model!r} is a graph; a model node calls a model "
                "(put the other graph's nodes in this one)"
            )


class _Builder:
    def __init__(self, name: str, folder: Path, spec: GraphSpec, env: GraphEnvironment) -> None:
        self.name = name
        self.folder = folder
        self.spec = spec
        self.env = env
        self.classes = ClassLoader(name, folder)
        self.built: dict[str, GraphNode] = {}
        #: User ``load`` methods, called once the graph is built.
        self.loads: list[tuple[str, Callable[[], Any]]] = []

    def build(self) -> GraphEndpoint:
        root = self.node(self.spec.root)
        for name in self.spec.nodes:  # nodes no path reaches still load (and fail) here
            self.node(name)
        endpoint = GraphEndpoint(
            self.name, root, dict(self.built), self.env.metrics,
            inputs=[t.spec() for t in self.spec.inputs],
            outputs=[t.spec() for t in self.spec.outputs],
            timeout=self.spec.timeout,
        )
        endpoint.logger = self.spec.logger  # the repository hands it to the payload logger
        endpoint.spec = self.spec
        return endpoint

    def node(self, name: str) -> GraphNode:
        """Each node is built once; nodes several parents share are one object."""
        if name not in self.built:
            self.built[name] = self._make(name, self.spec.nodes[name])
        return self.built[name]

    def _make(self, name: str, spec: Any) -> GraphNode:
        observe = self.env.metrics.node_observer(self.name, name)
        env = self.env
        if isinstance(spec, ModelNode):
            return ModelCall(name, observe, env.registry, spec.model, spec.version, spec.outputs)
        if isinstance(spec, RemoteNode):
            return _remote(name, observe, spec)
        if isinstance(spec, TransformerNode):
            model = self._instance(name, spec, Model)
            child = self.node(spec.child) if spec.child else None
            return Transform(name, observe, model, child, env.executor)
        if isinstance(spec, SequenceNode):
            steps = [SequenceStep(self.node(s.node), s.input == "request", s.map)
                     for s in spec.steps]
            return Sequence(name, observe, steps)
        if isinstance(spec, EnsembleNode):
            members = [self.node(c) for c in spec.children]
            if isinstance(spec.combiner, str):
                combine = combiners.builtin(spec.combiner)
                keeps = spec.combiner in combiners.KEEPS_SIGNATURE
            else:
                plugin = self._instance(name, spec.combiner, Combiner)
                combine, keeps = combiners.custom(plugin, env.executor, name), False
            return Ensemble(name, observe, members, combine, keeps)
        branches = [self.node(ref) for ref in _refs(spec)]
        count = env.metrics.route_counter(self.name, name, [b.name for b in branches])
        if isinstance(spec, SwitchNode):
            index = {b.name: i for i, b in enumerate(branches)}
            cases = [(Expression(c.when), index[c.node]) for c in spec.cases]
            default = index[spec.default] if spec.default else None
            return Switch(name, observe, branches, count, cases, default)
        if isinstance(spec, SplitterNode):
            sticky = Expression(spec.sticky) if spec.sticky else None
            return Splitter(name, observe, branches, count, [b.weight for b in spec.branches],
                            sticky, np.random.default_rng())
        if isinstance(spec, BanditNode):
            path = None if env.state_dir is None else env.state_dir / self.name / f"{name}.json"
            try:
                store = BanditStore(list(spec.arms), path)
            except LoadError as exc:
                raise LoadError(f"node {name!r}: {exc}") from None
            return Bandit(name, observe, branches, count, spec.strategy,
                          make_policy(spec.strategy, spec.epsilon), store,
                          np.random.default_rng(spec.seed), env.executor)
        if isinstance(spec, RouterNode):
            plugin = self._instance(name, spec, Router)
            plugin.arms = list(spec.arms)
            return CustomRouter(name, observe, branches, count, plugin, env.executor)
        raise LoadError(f"node {name!r}: unsupported kind {type(spec).__name__}")

    def _instance(self, node: str, spec: PythonClass, base: type) -> Any:
        cls = self.classes.load(node, spec.path, spec.class_name, base)
        try:
            if base is Model:
                instance = cls(node, "1", self.folder, spec.parameters)
            else:
                instance = cls(spec.parameters)
        except Exception as exc:
            raise LoadError(
                f"node {node!r}: creating {spec.class_name} failed: {type(exc).__name__}: {exc}"
            ) from exc
        self.loads.append((node, instance.load))
        return instance


def _remote(name: str, observe: Observer, spec: RemoteNode) -> GraphNode:
    try:  # aiohttp is the triton extra's: a graph without remote nodes does without it
        from .nodes.remote import RemoteCall
    except ImportError as exc:
        raise LoadError(
            f"node {name!r}: remote nodes need {exc.name}: pip install 'shoal[triton]'"
        ) from None
    try:
        return RemoteCall(name, observe, spec.url, spec.protocol, spec.model, spec.version,
                          spec.timeout, spec.headers, spec.outputs)
    except LoadError as exc:
        raise LoadError(f"node {name!r}: {exc}") from None


def _refs(spec: Any) -> list[str]:
    if isinstance(spec, SwitchNode):
        refs = [c.node for c in spec.cases] + ([spec.default] if spec.default else [])
        return list(dict.fromkeys(refs))  # a branch named by several cases is one branch
    if isinstance(spec, SplitterNode):
        return [b.node for b in spec.branches]
    return list(spec.arms)
