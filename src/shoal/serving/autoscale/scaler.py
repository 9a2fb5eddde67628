"""The autoscaler: every tick, each autoscaled model's concurrency in, a replica count out.

It only decides (:mod:`.kpa`); the model's :class:`~shoal.serving.workers.replicas.ReplicaSet`
starts and drains the replicas. It also owns what replicas share: the GPU allocator
(:mod:`.gpus`) and the memory budget (:mod:`.budget`), and the autoscaling metrics:

- ``shoal_model_replicas{model,state}``: ``desired`` and ``ready`` replicas;
- ``shoal_autoscaler_panic{model}``: 1 while the model is in panic mode;
- ``shoal_cold_start_seconds{model}``: from a request finding the model at zero replicas to
  its first replica being ready;
- ``shoal_replica_wait_seconds_total{model}``: time requests spent held, waiting for a replica.

The tick loop runs only while at least one autoscaled model is loaded: a server without one
pays nothing.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from ...observe import logging as log
from ..workers.pool import LoadSpec, WorkerPool
from ..workers.replicas import ReplicaSet
from .budget import MemoryBudget
from .config import ResolvedAutoscaling, ResourcesConfig
from .gpus import GpuAllocator

#: Seconds between two decisions (Knative ticks every 2 s; a shorter tick reacts sooner to a
#: burst and costs a few microseconds per model).
TICK = 0.5
COLD_START_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0)


class AutoscaleMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.replicas = Gauge(
            "shoal_model_replicas", "Replicas of an autoscaled model: desired and ready.",
            ["model", "state"], registry=registry, multiprocess_mode="livesum",
        )
        self.panic = Gauge(
            "shoal_autoscaler_panic", "1 while the autoscaler is in panic mode for the model.",
            ["model"], registry=registry, multiprocess_mode="livemax",
        )
        self.cold_starts = Histogram(
            "shoal_cold_start_seconds",
            "Seconds from a request finding the model at zero replicas to a replica ready.",
            ["model"], buckets=COLD_START_BUCKETS, registry=registry,
        )
        self.waits = Counter(
            "shoal_replica_wait_seconds", "Seconds requests were held waiting for a replica.",
            ["model"], registry=registry,
        )

    def cold_start(self, model: str, seconds: float) -> None:
        self.cold_starts.labels(model).observe(seconds)

    def held(self, model: str, seconds: float) -> None:
        self.waits.labels(model).inc(seconds)

    def publish(self, model: str, desired: int, ready: int, panicking: bool) -> None:
        self.replicas.labels(model, "desired").set(desired)
        self.replicas.labels(model, "ready").set(ready)
        self.panic.labels(model).set(1 if panicking else 0)

    def forget(self, model: str) -> None:
        for metric, labels in ((self.replicas, (model, "desired")),
                               (self.replicas, (model, "ready")), (self.panic, (model,)),
                               (self.cold_starts, (model,)), (self.waits, (model,))):
            try:
                metric.remove(*labels)
            except KeyError:
                pass


class Autoscaler:
    def __init__(
        self, registry: CollectorRegistry, pool: WorkerPool, defaults: dict[str, Any],
        enabled_by_default: bool = False, memory_budget: int | None = None,
        gpus: GpuAllocator | None = None, drain_timeout: float = 30.0,
    ) -> None:
        self.pool = pool
        #: Server-wide defaults for ``autoscaling:`` fields a model.yaml leaves out (flags).
        self.defaults = defaults
        #: ``--autoscale``: every model without ``autoscaling: false`` is autoscaled.
        self.enabled_by_default = enabled_by_default
        self.metrics = AutoscaleMetrics(registry)
        self.budget = MemoryBudget(memory_budget)
        self.gpus = gpus if gpus is not None else GpuAllocator([])
        self.drain_timeout = drain_timeout
        self.sets: dict[str, ReplicaSet] = {}
        self._loop: asyncio.Task[None] | None = None

    async def start_set(
        self, spec: LoadSpec, settings: ResolvedAutoscaling, resources: ResourcesConfig
    ) -> ReplicaSet:
        """A model version's replicas, its first one loaded (LoadError if it cannot be)."""
        self.gpus.check(spec[1], resources.gpus)
        replicas = ReplicaSet(self, self.pool, spec, settings, resources)
        self.budget.sets.append(replicas)  # its memory counts from the first replica on
        try:
            await replicas.start()
        except BaseException:
            await self.remove(replicas)
            raise
        self.sets[replicas.key] = replicas  # scaled from now on, not before it has loaded
        if self._loop is None or self._loop.done():
            self._loop = asyncio.create_task(self._run())
        return replicas

    async def remove(self, replicas: ReplicaSet) -> None:
        await replicas.close()
        self.sets.pop(replicas.key, None)
        if replicas in self.budget.sets:
            self.budget.sets.remove(replicas)
        if not any(s.name == replicas.name for s in self.sets.values()):
            self.metrics.forget(replicas.name)

    def by_model(self, name: str) -> list[ReplicaSet]:
        return [s for s in self.sets.values() if s.name == name]

    async def _run(self) -> None:
        while self.sets:
            await asyncio.sleep(TICK)
            try:
                self.tick(time.monotonic())
            except Exception as exc:  # a bug here must not stop scaling for every model
                log.event("autoscaler_failed", logging.ERROR,
                          reason=f"{type(exc).__name__}: {exc}")

    def tick(self, now: float) -> None:
        totals: dict[str, list[int]] = {}
        for replicas in list(self.sets.values()):
            concurrency, active = replicas.meter.take()
            replicas.kpa.observe(now, concurrency, active)
            decision = replicas.kpa.decide(now, replicas.ready)
            replicas.apply(decision)
            total = totals.setdefault(replicas.name, [0, 0, 0])
            total[0] += decision.desired
            total[1] += replicas.ready
            total[2] |= decision.panicking
        for name, (desired, ready, panicking) in totals.items():
            self.metrics.publish(name, desired, ready, bool(panicking))

    async def close(self, timeout: float) -> None:
        """Server shutdown, after the drain: stop every replica within ``timeout``."""
        if self._loop is not None:
            self._loop.cancel()
        self.drain_timeout = timeout
        await asyncio.gather(*(s.close(wait=False) for s in list(self.sets.values())),
                             return_exceptions=True)
        self.sets.clear()
