"""Loads and unloads the models of a repository folder into the registry.

A (re)load brings the new version up before the old one goes: requests keep being answered
by the old instance until the new one is ready, so a reload never fails a request. A reload
that fails leaves the versions that were serving serving (a version it meant to retire too).
A model that fails to load is recorded with its reason and does not affect the others.

A repository fetched from object storage or an archive (``source``, see ``sources.py``) is a
local folder like any other; a load fetches the model's folder again first, and a fetch that
fails leaves what was serving serving.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import sys
import time
from pathlib import Path
from typing import Any

from ..errors import LoadError, ModelNotFound, ShoalError
from ..model import Model
from ..graph.metrics import GraphMetrics
from ..llm.metrics import LLMMetrics
from ..observe.payload import PayloadLogger
from ..observe import logging as log
from ..observe.metrics import Metrics
from ..runtimes import GRAPH_RUNTIME, create_model, declare_metadata, model_artifacts
from ..serving.batcher import BatchSettings
from ..serving.endpoint import ModelEndpoint, ModelState
from ..serving.executor import Executor
from ..serving.limits import Limits
from ..serving.registry import Registry, VersionEntry
from ..serving.workers.pool import WorkerPool
from ..serving.autoscale.config import AutoscalingConfig, ResolvedAutoscaling
from ..serving.autoscale.scaler import Autoscaler
from ..serving.workers.proxy import (
    ProcessModel,
    ReplicatedModel,
    load_in_workers,
    load_replicated,
)
from .config import ModelConfig, read_config
from .layout import check_model_name, model_names, version_dirs
from .sources import RepositorySource


class ModelRepository:
    def __init__(
        self,
        root: Path,
        registry: Registry,
        executor: Executor,
        metrics: Metrics,
        batching: BatchSettings = BatchSettings(0),
        limits: Limits = Limits(),
        workers: int = 0,
        pool: WorkerPool | None = None,
        state_dir: Path | None = None,
        payload: PayloadLogger | None = None,
        autoscaler: Autoscaler | None = None,
        source: RepositorySource | None = None,
    ) -> None:
        self.root = root.resolve()
        #: Where the folder is fetched from (object storage, an archive); None: it is local.
        self.source = source
        #: Starts and stops the replicas of autoscaled models (and of GPU models).
        self.autoscaler = autoscaler
        #: Payload logging: told what each model's or graph's ``logger:`` says at its load.
        self.payload = payload
        self.default_workers = workers
        self.pool = pool
        self.default_batching = batching
        self.default_limits = limits
        self.registry = registry
        self.executor = executor
        self.metrics = metrics
        self._locks: dict[str, asyncio.Lock] = {}
        self._configs: dict[str, ModelConfig] = {}
        #: Models whose explainer takes its background from the requests they answer.
        self.sampled: dict[str, Any] = {}
        #: Where graphs keep bandit state and rollouts their records.
        self.state_dir = (state_dir or self.root / ".shoal-state").resolve()
        #: The graphs' metrics exist from the start (a scrape lists them); the graph machinery
        #: itself (``shoal.graph.build``) is imported when a graph is first loaded.
        self._graph_metrics = GraphMetrics(metrics.registry)
        self._graphs: Any = None
        #: Generation metrics: each loaded generation model's engine reports to them.
        self.llm_metrics = LLMMetrics(metrics.registry)

    @property
    def graphs(self) -> Any:
        """The graphs' shared environment (``shoal.graph.build.GraphEnvironment``), made on
        first use: a repository without graphs never imports the graph machinery."""
        if self._graphs is None:
            from ..graph.build import GraphEnvironment

            self._graphs = GraphEnvironment(
                self.registry, self.executor, self._graph_metrics, self.state_dir, self.names,
                self.is_graph,
            )
        return self._graphs

    def names(self) -> list[str]:
        return model_names(self.root)

    def is_graph(self, name: str) -> bool:
        """Whether ``name`` is served as a graph. Never raises: listings call it."""
        return serves_graph(self.root / name)

    async def load_all(self) -> None:
        names = self.names()
        graphs = [name for name in names if self.is_graph(name)]
        models = [name for name in names if name not in graphs]
        # Every version the startup load will bring up is LOADING from the start: a request
        # meanwhile gets 503 "loading" (for a graph too, though graphs load last), never
        # 404, and one without a version names the newest version, not the first loaded.
        # Recorded before the first await (a few small files read, once, at startup), so no
        # request finds the repository empty.
        pending = self._versions_to_load(models)
        for name in graphs:
            pending[name] = ["1"]
        for name, versions in pending.items():
            for version in versions:
                if not any(e.version == version for e in self.registry.entries(name)):
                    self._record(name, VersionEntry(version, ModelState.LOADING))
        # Graphs load after plain models, so the models they call are there to check.
        await asyncio.gather(*(self._load_reporting(name) for name in models))
        await asyncio.gather(*(self._load_reporting(name) for name in graphs))

    def _versions_to_load(self, names: list[str]) -> dict[str, list[str]]:
        """The versions each model's policy selects (none for a model whose model.yaml is
        broken: its load reports that at once)."""
        versions = {}
        for name in names:
            folder = self.root / name
            try:
                config = read_config(folder)
            except LoadError:
                continue
            versions[name] = [str(v) for v in config.select_versions(list(version_dirs(folder)))]
        return versions

    async def _load_reporting(self, name: str) -> None:
        try:
            await self.load(name, refetch=False)  # fetched just before the startup load
        except ShoalError:
            pass  # recorded in the registry and logged by load()

    def _model_dir(self, name: str) -> Path:
        check_model_name(name)
        model_dir = self.root / name
        if not model_dir.is_dir() or model_dir.resolve().parent != self.root:
            raise ModelNotFound(f"model {name!r} is not in the repository {self.root}")
        return model_dir

    async def load(self, name: str, *, refetch: bool = True) -> list[str]:
        """Load (or reload) a model's versions per its policy; returns the versions now ready.

        A repository fetched from a store fetches the model's folder again first (unless
        ``refetch`` is False: the startup load, just after the whole repository was fetched),
        and holds the folder while it is read, so that no fetch swaps it meanwhile. A fetch that
        fails leaves what was serving serving, and raises with the store's reason."""
        if self.source is None:
            return await self._load(name)
        if refetch:
            await self._refetch(name)
        async with self.source.reading():
            return await self._load(name)

    async def refresh(self) -> None:
        """Fetch the whole repository again from its store (nothing for a local folder): what
        ``--watch`` does before each look at the folder."""
        if self.source is not None:
            await asyncio.to_thread(self.source.fetch)

    async def _refetch(self, name: str) -> None:
        assert self.source is not None
        check_model_name(name)
        try:
            await asyncio.to_thread(self.source.fetch_model, name)
        except ShoalError as exc:
            serving = [e.version for e in self.registry.entries(name)
                       if e.state is ModelState.READY]
            if serving:
                log.event("model_reload_failed", logging.ERROR, model=name, versions=serving,
                          reason=str(exc), serving="previous instance")
            else:
                log.event("model_load_failed", logging.ERROR, model=name, reason=str(exc))
            raise

    async def _load(self, name: str) -> list[str]:
        model_dir = self._model_dir(name)
        async with self._locks.setdefault(name, asyncio.Lock()):
            if self.is_graph(name):
                await self._load_graph(name, model_dir)
                return ["1"]
            dirs = version_dirs(model_dir)
            try:
                config = read_config(model_dir)
                if self.payload is not None:
                    self.payload.configure(name, config.logger)
            except LoadError as exc:
                serving = {e.version for e in self.registry.entries(name)
                           if e.state is ModelState.READY}
                for version in map(str, dirs):
                    if version in serving:  # a broken model.yaml leaves it serving
                        log.event("model_reload_failed", logging.ERROR, model=name,
                                  version=version, reason=str(exc), serving="previous instance")
                    else:
                        self._failed(name, version, exc)
                raise
            self._configs[name] = config
            explainer = config.explainer
            if explainer is not None and not isinstance(explainer.background, str):
                # Its explanations compare against requests it answered: the data plane
                # samples them (only for such models, so no other model pays for it).
                self.sampled[name] = explainer
            elif self.sampled.pop(name, None) is not None:
                from ..explain import forget

                forget(name)  # sampled for a background it no longer uses
            wanted = [str(v) for v in config.select_versions(list(dirs))]
            errors = []
            for version in wanted:
                try:
                    await self._load_version(name, version, dirs[int(version)], model_dir, config)
                except LoadError as exc:
                    errors.append(exc)
            kept = []
            for entry in self.registry.entries(name):
                if entry.version in wanted:
                    continue
                if errors and entry.state is ModelState.READY:
                    # As Triton: a load that fails leaves what was serving serving (a new
                    # version folder with a broken artifact must not take the model down).
                    kept.append(entry.version)
                    continue
                await self._retire(name, entry)
            if errors:
                if kept:
                    log.event("model_versions_kept", logging.WARNING, model=name,
                              versions=kept, reason="the new versions did not load")
                raise LoadError(f"model {name!r}: " + "; ".join(str(e) for e in errors))
            return wanted

    async def _load_version(
        self, name: str, version: str, version_dir: Path, model_dir: Path, config: ModelConfig
    ) -> None:
        previous = next((e for e in self.registry.entries(name) if e.version == version), None)
        if previous is None or previous.state is not ModelState.READY:
            self._record(name, VersionEntry(version, ModelState.LOADING))
        started = time.perf_counter()
        workers = self.default_workers if config.workers is None else config.workers
        try:
            scaling = self._autoscaling(name, config)
            if scaling is not None:
                assert self.autoscaler is not None
                workers = 1  # its first replica; the autoscaler starts the others
                model: Model = await load_replicated(
                    self.autoscaler, name, version, version_dir, model_dir, config, scaling
                )
            elif workers:
                if self.pool is None:
                    raise LoadError("this server runs models in-process only (no worker pool)")
                model = await load_in_workers(
                    self.pool, name, version, version_dir, model_dir, config, workers
                )
            else:
                model = await self.executor.run(
                    create_model, name, version, version_dir, model_dir, config
                )
                await self._call(model.load)
                declare_metadata(model, config)
                if getattr(model, "engine", None) is not None:  # generation (shoal.llm)
                    model.engine.observer = self.llm_metrics.observer(name, version)
        except Exception as exc:
            error = exc if isinstance(exc, LoadError) else LoadError(f"{type(exc).__name__}: {exc}")
            if previous is not None and previous.state is ModelState.READY:
                log.event("model_reload_failed", logging.ERROR, model=name, version=version,
                          reason=str(error), serving="previous instance")
            else:
                self._failed(name, version, error)
            raise error from exc
        seconds = time.perf_counter() - started
        # A model that schedules concurrent requests itself (the generation engine of a
        # text-generation model) gets no adaptive batcher in front of it.
        batching = BatchSettings(0) if getattr(model, "batches_itself", False) else self._batching(config)
        observer = self.metrics.batch_observer(name, version) if batching.enabled else None
        endpoint = ModelEndpoint(model, self.executor, batching, observer, self._limits(config))
        if isinstance(model, ReplicatedModel):
            endpoint.meter = model.replicas.meter  # what the autoscaler observes
        self._record(name, VersionEntry(version, ModelState.READY, "", endpoint))
        self.metrics.model_loaded(name, version, seconds)
        log.event("model_loaded", model=name, version=version, runtime=model.platform,
                  workers=workers, seconds=round(seconds, 4))
        if previous is not None and previous.endpoint is not None:
            await self._release(previous)

    def _autoscaling(self, name: str, config: ModelConfig) -> ResolvedAutoscaling | None:
        """How the model's replicas scale; None: it is not autoscaled (in the server process
        or the shared worker pool). A model with GPUs always runs in replicas of its own (a
        fixed count, ``workers`` or 1, unless it is autoscaled), so each gets its devices."""
        setting = config.autoscaling
        gpus = config.resources.gpus if config.resources is not None else 0
        scaler = self.autoscaler
        # --autoscale covers models whose model.yaml says nothing about it: one that sets
        # workers: keeps that fixed count.
        on = isinstance(setting, AutoscalingConfig) or setting is True or (
            setting is None and config.workers is None
            and scaler is not None and scaler.enabled_by_default)
        if not on and not gpus:
            return None
        if scaler is None:
            raise LoadError(f"model {name!r} is autoscaled or uses GPUs, which needs a "
                            "server's autoscaler (shoal serve)")
        if on and config.workers is not None:
            raise LoadError(
                f"model {name!r}: model.yaml sets both workers ({config.workers}) and "
                "autoscaling; autoscaling's min_replicas and max_replicas decide its worker "
                "processes: drop workers"
            )
        try:
            if on:
                block = setting if isinstance(setting, AutoscalingConfig) else AutoscalingConfig()
                return block.resolved(scaler.defaults)
            count = config.workers or 1
            return AutoscalingConfig(min_replicas=count, max_replicas=count).resolved()
        except ValueError as exc:
            raise LoadError(f"model {name!r}: autoscaling: {exc}") from None

    def replicas(self, name: str, version: str | None = None) -> dict[str, Any]:
        """``GET /v2/models/{m}/replicas``: per loaded version, its replicas now, how many the
        autoscaler wants and why (a model that is not autoscaled says where it runs)."""
        entries = [self.registry.entry(name, version)] if version else self.registry.entries(name)
        if not entries:
            raise ModelNotFound(f"model {name!r} is not served here")
        rows = []
        for entry in entries:
            endpoint = entry.endpoint
            model = endpoint.model if isinstance(endpoint, ModelEndpoint) else None
            if isinstance(model, ReplicatedModel):
                rows.append({"state": entry.state.value, **model.replicas.status()})
                continue
            if isinstance(model, ProcessModel):
                where = f"{len(self.pool.placements.get(model.key, [])) if self.pool else 0} " \
                        "shared worker process(es)"
            elif _is_graph_endpoint(endpoint):
                where = "the server process (a graph)"
            else:
                where = "the server process"
            rows.append({"version": entry.version, "state": entry.state.value,
                         "autoscaling": None, "reason": f"not autoscaled: runs in {where}"})
        return {"name": name, "versions": rows}

    def loaded_config(self, name: str) -> ModelConfig:
        """The ``model.yaml`` a model was last loaded with (the defaults if it has none)."""
        return self._configs.get(name) or ModelConfig()
    async def _load_graph(self, name: str, folder: Path) -> None:
        """A graph folder: one version, ``1``; a failed reload keeps the previous graph."""
        previous = next(iter(self.registry.entries(name)), None)
        if previous is None or previous.state is not ModelState.READY:
            self._record(name, VersionEntry("1", ModelState.LOADING))
        started = time.perf_counter()
        try:
            from ..graph.build import load_graph

            endpoint = await load_graph(name, folder, self.graphs)
        except Exception as exc:
            error = exc if isinstance(exc, LoadError) else LoadError(f"{type(exc).__name__}: {exc}")
            if previous is not None and previous.state is ModelState.READY:
                log.event("model_reload_failed", logging.ERROR, model=name, version="1",
                          reason=str(error), serving="previous instance")
            else:
                self._failed(name, "1", error)
            raise error from exc
        if self.payload is not None:
            try:
                self.payload.configure(name, endpoint.logger, graph=True)
            except LoadError as exc:
                await endpoint.close()
                self._failed(name, "1", exc)
                raise
        seconds = time.perf_counter() - started
        for entry in self.registry.entries(name):
            if entry.version != "1":
                await self._retire(name, entry)
        self._record(name, VersionEntry("1", ModelState.READY, "", endpoint))
        self.metrics.model_loaded(name, "1", seconds)
        log.event("model_loaded", model=name, version="1", runtime="graph",
                  nodes=len(endpoint.nodes), seconds=round(seconds, 4))
        if previous is not None and previous.endpoint is not None and previous.version == "1":
            await self._release(previous)

    def _batching(self, config: ModelConfig) -> BatchSettings:
        default = self.default_batching
        size = default.max_batch_size if config.max_batch_size is None else config.max_batch_size
        delay = (
            default.max_batch_delay
            if config.max_batch_delay_ms is None
            else config.max_batch_delay_ms / 1000
        )
        return BatchSettings(size, delay)

    def _limits(self, config: ModelConfig) -> Limits:
        default = self.default_limits
        return Limits(
            default.max_inflight if config.max_inflight is None else config.max_inflight,
            default.timeout if config.timeout is None else config.timeout,
        )

    async def unload(self, name: str) -> None:
        check_model_name(name)
        if not self.registry.entries(name):
            raise ModelNotFound(f"model {name!r} is not loaded")
        async with self._locks.setdefault(name, asyncio.Lock()):
            for entry in self.registry.entries(name):
                await self._retire(name, entry)
            self.sampled.pop(name, None)
            if self.payload is not None:
                self.payload.forget(name)
            from ..explain import forget

            forget(name)  # the requests sampled for its explanations, if any

    async def _retire(self, name: str, entry: VersionEntry) -> None:
        self.registry.remove(name, entry.version)
        await self._release(entry)
        # Its requests have finished: its series go (a scrape lists what is served).
        gone = not self.registry.entries(name)
        self.metrics.forget(name, None if gone else entry.version)
        self.llm_metrics.forget(name, None if gone else entry.version)
        if _is_graph_endpoint(entry.endpoint) and gone:
            self.graphs.metrics.forget(name)
        log.event("model_unloaded", model=name, version=entry.version)

    async def _release(self, entry: VersionEntry) -> None:
        if isinstance(entry.endpoint, ModelEndpoint):
            entry.endpoint.state = ModelState.UNLOADING
            if isinstance(entry.endpoint.model, ReplicatedModel):
                # Requests held for a replica that is still starting fail now (503): the
                # unload is not kept waiting for a cold start.
                entry.endpoint.model.replicas.stop_holding()
            await entry.endpoint.drained()
            try:
                await self._call(entry.endpoint.model.unload)
            except Exception as exc:
                log.event("model_unload_failed", logging.ERROR, model=entry.endpoint.name,
                          version=entry.version, reason=f"{type(exc).__name__}: {exc}")
        elif _is_graph_endpoint(entry.endpoint):
            await entry.endpoint.close()

    async def _call(self, fn: Any) -> Any:
        if inspect.iscoroutinefunction(fn):
            return await fn()
        return await self.executor.run(fn)

    def _record(self, name: str, entry: VersionEntry) -> None:
        self.registry.set(name, entry)
        self.metrics.model_state_changed(name, entry.version, entry.state.value)

    def _failed(self, name: str, version: str, error: Exception) -> None:
        self._record(name, VersionEntry(version, ModelState.UNAVAILABLE, str(error)))
        log.event("model_load_failed", logging.ERROR, model=name, version=version, reason=str(error))

    def index(self, ready_only: bool = False) -> list[dict[str, str]]:
        """Triton's repository index: every model folder, with each loaded version's state."""
        rows: list[dict[str, str]] = []
        for name in sorted(set(self.names()) | set(self.registry.names())):
            entries = self.registry.entries(name)
            if not entries and not ready_only:
                rows.append({"name": name, "state": "UNAVAILABLE", "reason": "unloaded"})
            for entry in entries:
                state, reason = entry.state.value, entry.reason
                # A graph is loaded but not ready while a model it calls is down.
                if state == "READY" and entry.endpoint is not None:
                    why = entry.endpoint.unready_reason()
                    if why is not None:
                        state, reason = "UNAVAILABLE", why
                    elif isinstance(entry.endpoint, ModelEndpoint):
                        # "scaled to zero", a program restarting: the model says.
                        say = getattr(entry.endpoint.model, "state_reason", None)
                        reason = (say() if callable(say) else None) or reason
                if ready_only and state != "READY":
                    continue
                row = {"name": name, "version": entry.version, "state": state}
                if reason:
                    row["reason"] = reason
                rows.append(row)
        return rows


#: A graph's file (``shoal.graph.spec.GRAPH_FILE``, not imported here: graph specs are read
#: only when a graph loads).
GRAPH_FILE = "graph.yaml"


def _is_graph_endpoint(endpoint: Any) -> bool:
    """``isinstance(endpoint, GraphEndpoint)``; without importing ``shoal.graph.endpoint``: if
    it was never imported, no graph endpoint exists."""
    module = sys.modules.get("shoal.graph.endpoint")
    return module is not None and isinstance(endpoint, module.GraphEndpoint)


def serves_graph(folder: Path) -> bool:
    """A folder with graph.yaml is a graph when model.yaml says ``runtime: graph`` (and nothing
    else), or when there is no model.yaml and no model artifact beside it.

    Any other folder with graph.yaml loads as a model, and that load says what is wrong: both
    a graph and a model artifact without ``runtime:`` to choose, a model.yaml a graph would
    ignore, or a model.yaml that does not parse.
    """
    try:
        if not (folder / GRAPH_FILE).is_file():
            return False
        config = read_config(folder)
        settings = config.model_dump(exclude_defaults=True)
        if config.runtime is not None:
            return config.runtime == GRAPH_RUNTIME and set(settings) == {"runtime"}
        return not settings and not model_artifacts([folder, *version_dirs(folder).values()])
    except (LoadError, OSError):  # the model load reads the folder again and says why
        return False
