"""What the dashboard's JSON endpoints answer, assembled from the server's own objects.

Everything here reads: the registry, the repository's configurations, the rollout records,
the payload logger's recent records, the metrics' time series. Nothing changes state; the
pages change it through the existing control routes (which need the admin token when the
server has one).
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson

from .. import __version__
from ..errors import ModelNotFound, ShoalError
from ..graph.endpoint import GraphEndpoint

if TYPE_CHECKING:  # graph specs are imported when a graph page is drawn, not at startup
    from ..graph.spec import GraphSpec
from ..repository.layout import check_model_name
from ..rollout.manager import RolloutManager
from ..server.auth import AdminToken
from ..serving.dataplane import DataPlane
from ..serving.endpoint import ModelState
from ..serving.registry import VersionEntry, version_key
from .series import SeriesRecorder, counter_samples

READY = ModelState.READY.value
UNAVAILABLE = ModelState.UNAVAILABLE.value
GRAPH_RUNTIME = "graph"
ROUTES_METRIC = "shoal_graph_routes"
#: Payload record data larger than this (JSON bytes) is left out of the model page.
MAX_SHOWN_BYTES = 64 * 1024


@dataclass(slots=True)
class ServerInfo:
    """What the overview says about the server process itself."""

    started: float = field(default_factory=time.time)
    http_workers: int = 1


class Dashboard:
    def __init__(
        self, dataplane: DataPlane, rollouts: RolloutManager | None, admin: AdminToken,
        series: SeriesRecorder, info: ServerInfo,
    ) -> None:
        self.dataplane = dataplane
        self.registry = dataplane.registry
        self.repository = dataplane.repository
        self.rollouts = rollouts
        self.admin = admin
        self.series = series
        self.info = info

    # -- the overview ------------------------------------------------------------------------

    def overview(self, since: float | None = None) -> dict[str, Any]:
        now = time.time()
        records = self._rollout_records()
        routes = self.dataplane.payload.routes if self.dataplane.payload is not None else {}
        models = []
        in_repository = self._repository_names()
        for name in sorted(in_repository | set(self.registry.names())):
            entries = self.registry.entries(name)
            kind = self._kind(name, entries)
            state, reason = model_state(entries, name in in_repository)
            route = routes.get(name)
            models.append({
                "name": name,
                "kind": kind,
                "state": state,
                "reason": reason,
                "versions": ready_versions(entries),
                "runtime": self._runtime(name, kind, entries),
                "replicas": self._replicas(name, kind),
                "rollout": rollout_summary(records.get(name)),
                "payload_sink": route.sink if route is not None else None,
                "series": self.series.series(name, since),
            })
        return {
            "server": {
                "name": "shoal",
                "version": __version__,
                "started": round(self.info.started, 3),
                "uptime_s": round(now - self.info.started, 3),
                "pid": os.getpid(),
                "http_workers": self.info.http_workers,
                "admin_token": self.admin.enabled,
                "sample_interval_s": self.series.interval,
            },
            "models": models,
        }

    # -- one model ---------------------------------------------------------------------------

    async def model(self, name: str, since: float | None = None,
                    authorization: str | None = None) -> dict[str, Any]:
        check_model_name(name)
        entries = self.registry.entries(name)
        in_repository = name in self._repository_names()
        if not entries and not in_repository:
            raise ModelNotFound(f"model {name!r} is not served here")
        kind = self._kind(name, entries)
        state, reason = model_state(entries, in_repository)
        try:
            metadata: dict[str, Any] | None = self.dataplane.model_metadata(name)
        except ShoalError:
            metadata = None
        try:
            statistics = self.dataplane.model_statistics(name)["model_stats"]
        except ShoalError:
            statistics = []
        rollout = None
        if self.rollouts is not None and entries:
            try:
                rollout = await self.rollouts.status(name)
            except ShoalError:
                rollout = None
        payload = None
        route = (self.dataplane.payload.routes.get(name)
                 if self.dataplane.payload is not None else None)
        if route is not None:
            payload = {"sink": route.sink, "recent": None, "needs_token": False}
            if self._may_read_payloads(authorization):
                payload["recent"] = [shown(e) for e in route.recent_events()]
            else:  # requests and responses are the users' data: as guarded as control routes
                payload["needs_token"] = True
        config = self.repository.loaded_config(name)
        return {
            "name": name,
            "kind": kind,
            "state": state,
            "reason": reason,
            "versions": [version_row(e) for e in entries],
            "runtime": self._runtime(name, kind, entries),
            "replicas": self._replicas(name, kind),
            "autoscaling": self._autoscaling(name, kind),
            "metadata": metadata,
            "config": self._config(name, kind, entries),
            "statistics": statistics,
            "series": self.series.series(name, since),
            "rollout": rollout,
            "explainer": kind == "model" and config.explainer is not None,
            "payload": payload,
        }

    # -- one graph ---------------------------------------------------------------------------

    def _may_read_payloads(self, authorization: str | None) -> bool:
        try:
            self.admin.check(authorization)
        except ShoalError:
            return False
        return True

    async def graph(self, name: str, since: float | None = None) -> dict[str, Any]:
        check_model_name(name)
        entries = self.registry.entries(name)
        in_repository = name in self._repository_names()
        if (not entries and not in_repository) or self._kind(name, entries) != "graph":
            raise ModelNotFound(f"{name!r} is not a graph served here")
        state, reason = model_state(entries, in_repository)
        spec: GraphSpec | None = None
        endpoint = loaded_graph(entries)
        if endpoint is not None and endpoint.spec is not None:
            spec = endpoint.spec  # what is served, not what the folder says now
        elif in_repository:
            from ..graph.spec import read_graph

            try:
                spec = await asyncio.to_thread(read_graph, self.repository.root / name)
            except Exception as exc:  # noqa: BLE001 (a broken graph.yaml: its reason is shown)
                if not reason:
                    reason = str(exc)
        routers: dict[str, Any] = {}
        if endpoint is not None:
            routers = await endpoint.router_state()
            counts = await self._route_counts(name)
            for router, state_of in routers.items():
                branches = state_of.get("branches", [])
                found = counts.get(router, {})
                state_of["counts"] = {b: found.get(b, 0.0) for b in branches}
        nodes, edges = graph_structure(spec) if spec is not None else ([], [])
        return {
            "name": name,
            "state": state,
            "reason": reason,
            "root": spec.root if spec is not None else None,
            "nodes": nodes,
            "edges": edges,
            "routers": {"name": name, "routers": routers},
            "series": self.series.series(name, since),
        }

    async def _route_counts(self, graph: str) -> dict[str, dict[str, float]]:
        """Routing node -> branch -> requests it sent there (under ``--http-workers``, of
        every server process)."""
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            samples = await asyncio.to_thread(counter_samples, ROUTES_METRIC)
        else:
            samples = [(s.labels, s.value)
                       for family in self.repository.graphs.metrics.routes.collect()
                       for s in family.samples if s.name == f"{ROUTES_METRIC}_total"]
        counts: dict[str, dict[str, float]] = {}
        for labels, value in samples:
            if labels.get("graph") == graph:
                node = counts.setdefault(labels.get("node", ""), {})
                branch = labels.get("branch", "")
                node[branch] = node.get(branch, 0.0) + value
        return counts

    # -- helpers -----------------------------------------------------------------------------

    def _repository_names(self) -> set[str]:
        try:
            return set(self.repository.names())
        except OSError:
            return set()

    def _kind(self, name: str, entries: list[VersionEntry]) -> str:
        for entry in entries:
            if entry.endpoint is not None:
                return "graph" if isinstance(entry.endpoint, GraphEndpoint) else "model"
        return "graph" if self.repository.is_graph(name) else "model"

    def _runtime(self, name: str, kind: str, entries: list[VersionEntry]) -> str:
        if kind == "graph":
            return GRAPH_RUNTIME
        for entry in reversed(entries):  # the newest loaded version says
            model = getattr(entry.endpoint, "model", None)
            platform = getattr(model, "platform", None)
            if isinstance(platform, str) and platform:
                return platform
        configured = self.repository.loaded_config(name).runtime
        return configured or ""

    def _replicas(self, name: str, kind: str) -> int:
        """Worker processes the model runs in: an autoscaled model's ready replicas now."""
        if kind == "graph":
            return 0
        scaler = self.repository.autoscaler
        sets = scaler.by_model(name) if scaler is not None else []
        if sets:
            return sum(s.ready for s in sets)
        workers = self.repository.loaded_config(name).workers
        return self.repository.default_workers if workers is None else workers

    def _autoscaling(self, name: str, kind: str) -> list[dict[str, Any]] | None:
        """The autoscaled versions' replica status (``GET /v2/models/{m}/replicas``), None for
        a model that is not autoscaled."""
        if kind == "graph":
            return None
        try:
            rows = self.repository.replicas(name)["versions"]
        except ShoalError:
            return None
        scaled = [row for row in rows if row.get("autoscaling") is not None]
        return scaled or None

    def _config(self, name: str, kind: str, entries: list[VersionEntry]) -> dict[str, Any]:
        """The effective settings: model.yaml's, else the server's defaults."""
        if kind == "graph":
            endpoint = loaded_graph(entries)
            return {"max_batch_size": 0, "max_batch_delay_ms": 0.0, "max_inflight": 0,
                    "timeout": endpoint.timeout if endpoint is not None else 0.0,
                    "workers": 0}
        config = self.repository.loaded_config(name)
        batching = self.repository.default_batching
        limits = self.repository.default_limits
        return {
            "max_batch_size": (batching.max_batch_size if config.max_batch_size is None
                               else config.max_batch_size),
            "max_batch_delay_ms": (batching.max_batch_delay * 1000
                                   if config.max_batch_delay_ms is None
                                   else config.max_batch_delay_ms),
            "max_inflight": (limits.max_inflight if config.max_inflight is None
                             else config.max_inflight),
            "timeout": limits.timeout if config.timeout is None else config.timeout,
            "workers": self._replicas(name, kind),
        }

    def _rollout_records(self) -> dict[str, Any]:
        """Model -> its rollout record, as this process knows them (refreshed first if any
        process changed one)."""
        if self.rollouts is None:
            return {}
        self.rollouts.rollout_for("")  # refreshes the records when the store moved
        return dict(getattr(self.rollouts, "_records", {}))


def shown(event: dict[str, Any]) -> dict[str, Any]:
    """A payload record as the model page shows it: one whose data is larger than
    :data:`MAX_SHOWN_BYTES` (an image, a big batch) without it, and how large it was."""
    for key in ("data", "data_base64"):
        if key in event:
            size = len(orjson.dumps(event[key], option=orjson.OPT_SERIALIZE_NUMPY))
            if size > MAX_SHOWN_BYTES:
                event = {**event, key: None, "omitted_bytes": size}
    return event


def model_state(entries: list[VersionEntry], in_repository: bool) -> tuple[str, str]:
    """A name's state and, when it is not ready, why: READY while any version serves."""
    if not entries:
        return UNAVAILABLE, "unloaded" if in_repository else "not in the repository"
    unready = ""
    for entry in reversed(entries):  # newest first
        if entry.state is ModelState.READY and entry.endpoint is not None:
            why = entry.endpoint.unready_reason()
            if why is None:
                return READY, ""
            unready = unready or why
    if unready:  # loaded, but not ready: a graph whose model is down
        return UNAVAILABLE, unready
    for wanted in (ModelState.LOADING, ModelState.UNLOADING):
        if any(e.state is wanted for e in entries):
            return wanted.value, ""
    newest = entries[-1]
    return newest.state.value, newest.reason


def version_row(entry: VersionEntry) -> dict[str, str]:
    state, reason = entry.state.value, entry.reason
    if entry.state is ModelState.READY and entry.endpoint is not None:
        why = entry.endpoint.unready_reason()
        if why is not None:
            state, reason = UNAVAILABLE, why
    return {"version": entry.version, "state": state, "reason": reason}


def ready_versions(entries: list[VersionEntry]) -> list[str]:
    return sorted((e.version for e in entries if e.state is ModelState.READY), key=version_key)


def loaded_graph(entries: list[VersionEntry]) -> GraphEndpoint | None:
    for entry in reversed(entries):
        if entry.state is ModelState.READY and isinstance(entry.endpoint, GraphEndpoint):
            return entry.endpoint
    return None


def rollout_summary(record: Any) -> dict[str, Any] | None:
    if record is None or record.state == "none":
        return None
    spec = record.spec
    return {
        "state": record.state,
        "stable": spec.stable,
        "canary": spec.canary.variant if spec.canary is not None else None,
        "canary_percent": record.percent,
        "shadow": spec.shadow.variant if spec.shadow is not None else None,
    }


def graph_structure(spec: GraphSpec) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The nodes (name, kind, what each calls) and the edges between them, with the label of
    each branch: a switch's condition, a splitter's weight, a sequence's step."""
    nodes, edges = [], []
    for name, node in spec.nodes.items():
        nodes.append({"name": name, "kind": node.kind, "target": _target(node)})
        for target, label in _edges(node):
            edges.append({"from": name, "to": target, "label": label})
    return nodes, edges


def _target(node: Any) -> str | None:
    from ..graph.spec import (
        EnsembleNode,
        ModelNode,
        RemoteNode,
        RouterNode,
        TransformerNode,
    )

    if isinstance(node, ModelNode):
        return node.model + (f":{node.version}" if node.version else "")
    if isinstance(node, RemoteNode):
        version = f"/versions/{node.version}" if node.version else ""
        return f"{node.url} ({node.protocol}) {node.model}{version}"
    if isinstance(node, (TransformerNode, RouterNode)):
        return f"{node.path}:{node.class_name}"
    if isinstance(node, EnsembleNode) and not isinstance(node.combiner, str):
        return f"{node.combiner.path}:{node.combiner.class_name}"
    return None


def _edges(node: Any) -> list[tuple[str, str | None]]:
    from ..graph.spec import (
        BanditNode,
        EnsembleNode,
        RouterNode,
        SequenceNode,
        SplitterNode,
        SwitchNode,
        TransformerNode,
    )

    if isinstance(node, SwitchNode):
        return ([(case.node, case.when) for case in node.cases]
                + ([(node.default, "default")] if node.default else []))
    if isinstance(node, SplitterNode):
        return [(branch.node, f"{branch.weight:g}%") for branch in node.branches]
    if isinstance(node, SequenceNode):
        return [(step.node, f"step {i}") for i, step in enumerate(node.steps, 1)]
    if isinstance(node, TransformerNode):
        return [(node.child, None)] if node.child else []
    if isinstance(node, EnsembleNode):
        return [(child, None) for child in node.children]
    if isinstance(node, (BanditNode, RouterNode)):
        return [(arm, None) for arm in node.arms]
    return []
