"""An autoscaled model's replicas: worker processes of its own, started and stopped on demand.

A :class:`ReplicaSet` runs one model version in as many worker processes as the autoscaler
asks for (:mod:`shoal.serving.autoscale`), each hosting this model only, so that stopping one
gives its memory (and its GPU) back. It

- dispatches each request to the least busy ready replica;
- **holds** a request that finds no replica ready while one is starting (Knative's
  activator): a model scaled to zero is woken by its first request, and the requests that
  arrive meanwhile wait for it, up to their own time limit, instead of failing;
- scales **down by draining**: a replica chosen to stop takes no new request and stops only
  once the requests it is running have finished;
- measures each replica's memory (RSS) when it has loaded, for the memory budget.

A replica that crashes is restarted like any worker (its requests fail with 503 saying so).
The model's metadata is read from the first replica and kept, so a model at zero replicas
still answers metadata requests.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import psutil

from ...errors import LoadError, ShoalError, Unavailable
from ...observe import logging as log
from ...types import InferenceRequest, InferenceResponse
from ..autoscale.config import ResolvedAutoscaling, ResourcesConfig
from ..autoscale.kpa import Decision, Kpa
from ..autoscale.meter import ConcurrencyMeter
from . import wire
from .pool import LoadSpec, WorkerPool, WorkerProcess

if TYPE_CHECKING:
    from ..autoscale.scaler import Autoscaler


@dataclass(eq=False)
class Replica:
    worker: WorkerProcess
    devices: list[str]
    state: str = "starting"  # starting | ready | draining
    rss: int = 0
    started: float = field(default_factory=time.monotonic)

    @property
    def serving(self) -> bool:
        return self.state == "ready" and self.worker.ready

    def measure(self) -> int:
        """The replica's resident memory now (0 once its process is gone)."""
        try:
            self.rss = psutil.Process(self.worker.pid).memory_info().rss
        except (psutil.Error, ValueError):
            self.rss = 0
        return self.rss


class ReplicaSet:
    def __init__(
        self, scaler: Autoscaler, pool: WorkerPool, spec: LoadSpec,
        settings: ResolvedAutoscaling, resources: ResourcesConfig,
    ) -> None:
        self.scaler = scaler
        self.pool = pool
        self.spec = spec
        self.key, self.name, self.version = spec[0], spec[1], spec[2]
        self.settings = settings
        self.resources = resources
        self.meter = ConcurrencyMeter()
        self.kpa = Kpa(settings, time.monotonic())
        self.replicas: list[Replica] = []
        self.decision: Decision | None = None
        #: The last scale event: (from, to, reason, wall time).
        self.last_scale: tuple[int, int, str, float] | None = None
        #: Why the set has fewer replicas than desired, when it has (memory, GPUs, a failed
        #: start); cleared once it has them.
        self.shortfall: str = ""
        #: Memory of one replica the last time one loaded (the memory budget's estimate).
        self.replica_memory = 0
        self.closed = False
        self._waking = False
        #: Counts failed wakes; the last one's error. A held request that saw a wake fail
        #: since it began waiting gets that error rather than waking the model again.
        self._wake_failures = 0
        self._wake_error: Exception | None = None
        self._target = -1
        self._waiters: list[asyncio.Future[None]] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        self._serial = 0
        self.metadata: tuple[str, list[Any], list[Any]] | None = None

    # -- counts --------------------------------------------------------------------------

    @property
    def ready(self) -> int:
        return sum(1 for r in self.replicas if r.serving)

    @property
    def live(self) -> int:
        """Replicas starting or serving (not draining): what a scale decision compares to."""
        return sum(1 for r in self.replicas if r.state != "draining")

    @property
    def scaled_to_zero(self) -> bool:
        return not self.replicas

    @property
    def draining(self) -> bool:
        return any(r.state == "draining" for r in self.replicas)

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self) -> tuple[str, list[Any], list[Any]]:
        """Load the first replica (its metadata becomes the model's); the scaler brings the
        count to ``min_replicas`` afterwards. Raises LoadError if it cannot load."""
        devices = self._devices()
        if devices is None or not await self._bring_up(self._begin(devices), "load"):
            raise LoadError(f"model {self.name!r}: {self.shortfall}")
        assert self.metadata is not None
        return self.metadata

    def stop_holding(self) -> None:
        """Explicit unload: requests held for a replica fail now (503), and no cold start is
        waited for; the unload takes precedence."""
        self.closed = True
        for task in list(self._tasks):
            task.cancel()
        self._fail_waiters(Unavailable(f"model {self.name!r} version {self.version} was unloaded"))

    async def close(self, wait: bool = True) -> None:
        """Unload: stop every replica (after its requests, with ``wait``) and wake nobody
        again."""
        self.stop_holding()
        await asyncio.gather(*(self._stop(r, "unload", wait) for r in list(self.replicas)),
                             return_exceptions=True)

    # -- requests ---------------------------------------------------------------------------

    async def infer(self, request: InferenceRequest) -> InferenceResponse:
        replica = self._pick()
        if replica is None:
            replica = await self._hold()
        packed = wire.pack_request(request)
        try:
            result = await replica.worker.call("infer", (self.key, packed))
        except BaseException:
            wire.discard(wire.shm_names(packed[0]))
            raise
        return wire.unpack_response(result)

    def _pick(self) -> Replica | None:
        serving = [r for r in self.replicas if r.serving]
        if not serving:
            return None
        return min(serving, key=lambda r: len(r.worker.pending))

    async def _hold(self) -> Replica:
        """No replica is serving: wait for one, as Knative's activator does, waking the model
        if nothing is on its way (a replica starting, or one restarting after a crash). The
        caller's time limit bounds the wait (the endpoint's timeout cancels it)."""
        held = time.monotonic()
        failures = self._wake_failures
        try:
            while True:
                replica = self._pick()
                if replica is not None:
                    return replica
                if self.closed:
                    raise Unavailable(f"model {self.name!r} version {self.version} was unloaded")
                if self._wake_failures != failures and self._wake_error is not None:
                    raise self._wake_error
                coming = any(r.state == "starting" or (r.state == "ready" and not r.worker.stopping)
                             for r in self.replicas)
                if not coming and not self._waking:
                    self._waking = True
                    self.spawn(self._wake())
                future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
                self._waiters.append(future)
                await future
        finally:
            self.scaler.metrics.held(self.name, time.monotonic() - held)

    async def _wake(self) -> None:
        """A request found no replica on its way: start one now (not at the next tick). When
        a GPU or memory is short only because replicas are still draining (this model's own
        last one, going to zero, say), wait for them instead of failing the request."""
        try:
            self.kpa.last_active = time.monotonic()
            began = time.perf_counter()
            while True:
                devices = self._devices()
                if devices is None:
                    if self.scaler.budget.draining():
                        await self.scaler.budget.released()
                        continue
                    self._wake_failed(Unavailable(
                        f"model {self.name!r} could not be woken: {self.shortfall}"))
                    return
                before = self.live
                replica = self._begin(devices)
                self._scaled(before, self.live, "request")
                if await self._bring_up(replica, "request"):
                    break
                if self.closed:
                    return
                if not self.scaler.budget.draining():
                    self._wake_failed(Unavailable(
                        f"model {self.name!r} could not be woken from zero replicas: "
                        f"{self.shortfall}"))
                    return
                await self.scaler.budget.released()
            seconds = time.perf_counter() - began
            self.scaler.metrics.cold_start(self.name, seconds)
            log.event("model_cold_start", model=self.name, version=self.version,
                      seconds=round(seconds, 4))
        finally:
            self._waking = False
            self._release_waiters()  # they look again: served, or waking anew

    def _wake_failed(self, error: Exception) -> None:
        self._wake_error = error
        self._wake_failures += 1
        self._fail_waiters(error)

    def _release_waiters(self) -> None:
        waiters, self._waiters = self._waiters, []
        for future in waiters:
            if not future.done():
                future.set_result(None)

    def _fail_waiters(self, error: Exception) -> None:
        waiters, self._waiters = self._waiters, []
        for future in waiters:
            if not future.done():
                future.set_exception(error)

    # -- scaling ------------------------------------------------------------------------------

    def apply(self, decision: Decision) -> None:
        """Bring the replicas to ``decision.desired``: start the missing ones, drain extras.
        A model at zero replicas is only ever woken by a request (:meth:`_hold`), never from
        here (its stable window may still remember traffic from before it was evicted), and
        it grows past one replica only once that one serves."""
        self.decision = decision
        if self.closed:
            return
        live = self.live
        # More replicas only once one serves: during a cold start, processes started beside
        # the first would only compete with it for the CPUs and delay the held requests.
        if decision.desired > live and self.ready > 0:
            started = 0
            for _ in range(decision.desired - live):
                devices = self._devices()
                if devices is None:
                    break
                self.spawn(self._bring_up(self._begin(devices), decision.reason))
                started += 1
            if decision.desired != self._target:  # a refused start is not logged every tick
                self._scaled(live, live + started, decision.reason)
        elif decision.desired < live:
            self.scale_down(live - decision.desired, decision.reason)
        self._target = decision.desired

    def scale_down(self, count: int, reason: str) -> None:
        before = self.live
        # Replicas still starting are called off first (newest first); then the least busy
        # serving ones drain.
        starting = sorted((r for r in self.replicas if r.state == "starting"),
                          key=lambda r: -r.started)
        serving = sorted((r for r in self.replicas if r.state == "ready"),
                         key=lambda r: (len(r.worker.pending), -r.started))
        chosen = (starting + serving)[:count]
        for replica in chosen:
            self._drain(replica, reason)
        if chosen:
            self._scaled(before, self.live, reason)

    async def drain_all(self, reason: str) -> None:
        """Scale to zero now (the memory budget's eviction); returns once memory is back."""
        before = self.live
        # Evicted, it stays at zero until a request wakes it: what it saw until now is
        # forgotten (the last tick's requests included), or it would come back by itself.
        self.kpa.rest()
        self.meter.take()
        replicas = [r for r in self.replicas if r.state != "draining"]
        stops = [task for r in replicas if (task := self._drain(r, reason)) is not None]
        self._scaled(before, 0, reason)
        await asyncio.gather(*stops, return_exceptions=True)

    def _drain(self, replica: Replica, reason: str) -> asyncio.Task[Any] | None:
        """Stop taking requests on ``replica`` and stop it once its requests are done. A
        replica still starting is called off: :meth:`_bring_up` stops it when its start
        returns (None: nothing to wait for here)."""
        was_starting = replica.state == "starting"
        replica.state = "draining"
        replica.worker.stopping = True  # a crash now is not restarted
        if was_starting:
            return None
        task = asyncio.ensure_future(self._stop(replica, reason))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(_log_failure)
        return task

    def _scaled(self, before: int, after: int, reason: str) -> None:
        if before == after:
            return
        self.last_scale = (before, after, reason, time.time())
        decision = self.decision
        log.event("model_scaled", model=self.name, version=self.version, replicas_from=before,
                  replicas_to=after, reason=reason,
                  stable_concurrency=round(decision.stable_concurrency, 3) if decision else None,
                  panic_concurrency=round(decision.panic_concurrency, 3) if decision else None)

    def _devices(self) -> list[str] | None:
        """GPUs for one more replica ([] for a CPU model); None, and ``shortfall`` says why,
        when every device it could use is taken."""
        devices = self.scaler.gpus.take(self.resources.gpus, self.resources.gpu_share)
        if devices is None:
            self._short(
                f"no free GPU: each replica needs {self.resources.gpus} of the devices "
                f"{','.join(self.scaler.gpus.devices)}, each shared by at most "
                f"{self.resources.gpu_share} replica(s), and they are taken"
            )
        return devices

    def _short(self, reason: str) -> None:
        """Record why the set has fewer replicas than it wants (logged once per reason)."""
        if reason != self.shortfall:
            log.event("model_scale_limited", logging.WARNING, model=self.name,
                      version=self.version, reason=reason)
        self.shortfall = reason

    def _begin(self, devices: list[str]) -> Replica:
        """A new replica, registered as starting (its process starts in :meth:`_bring_up`)."""
        self._serial += 1
        env = {}
        if self.resources.gpus:
            # nvidia-smi and NVML number devices in PCI order; CUDA's default order differs.
            env = {"CUDA_VISIBLE_DEVICES": ",".join(devices), "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}
        worker = WorkerProcess(self.pool, f"{self.name}/{self.version}#{self._serial}", env)
        worker.on_started = self._restarted
        replica = Replica(worker, devices)
        self.replicas.append(replica)
        return replica

    def _restarted(self, worker: WorkerProcess, lost: list[str]) -> None:
        """A replica's process came back after a crash: serve again, or, if the model could
        not be loaded again, replace the replica rather than keep one without its model."""
        replica = next((r for r in self.replicas if r.worker is worker), None)
        if replica is None or replica.state != "ready":
            return
        if self.key in lost:
            self._drain(replica, "reload failed after a crash")
        self._release_waiters()

    async def _bring_up(self, replica: Replica, reason: str) -> bool:
        """Start a registered replica: memory is admitted first; False (and ``shortfall``
        says why) when it cannot start."""
        worker = replica.worker
        try:
            reservation = await self.scaler.budget.admit(self)
            try:
                if self.closed or replica.state != "starting":  # called off meanwhile
                    await self._stop(replica, "called off")
                    return False
                await worker.start()
                result = await worker.call("load", self.spec)
                worker.models[self.key] = self.spec  # a restart after a crash reloads it
            finally:
                self.scaler.budget.release(reservation)
        except asyncio.CancelledError:
            await asyncio.shield(self._stop(replica, "cancelled"))
            raise
        except Exception as exc:  # ShoalError from the load, OSError from the process start
            if replica.state == "starting":  # not called off: a real failure
                self._short(str(exc) if isinstance(exc, ShoalError)
                            else f"{type(exc).__name__}: {exc}")
            await self._stop(replica, "failed start")
            return False
        if self.closed or replica.state != "starting":
            await self._stop(replica, "called off")
            return False
        if self.metadata is None:
            self.metadata = result
        replica.state = "ready"
        self.replica_memory = replica.measure()
        if self.decision is None or self.live >= self.decision.desired:
            self.shortfall = ""  # it has what it wants (else what keeps it short still holds)
        self._release_waiters()
        log.event("replica_started", model=self.name, version=self.version, pid=worker.pid,
                  gpus=",".join(replica.devices) or None, rss_bytes=replica.rss, reason=reason)
        self.spawn(self.scaler.budget.settle(self))  # off the cold start's clock
        return True

    async def _stop(self, replica: Replica, reason: str, wait: bool = True) -> None:
        """Stop a replica once its requests are done; its memory and GPUs come back, on every
        path (a cancelled stop included)."""
        replica.state = "draining"
        worker = replica.worker
        worker.stopping = True
        try:
            while wait and worker.pending:
                futures = [f for f, _ in worker.pending.values()]
                await asyncio.wait(futures)
            await worker.stop(self.scaler.drain_timeout)
        finally:
            if replica in self.replicas:
                self.replicas.remove(replica)
                self.scaler.gpus.give_back(replica.devices, self.resources.gpu_share)
                if worker.pid:
                    log.event("replica_stopped", model=self.name, version=self.version,
                              pid=worker.pid, reason=reason)
                self._release_waiters()  # held requests look again (and wake if need be)
                self.scaler.budget.freed()

    def spawn(self, work: Any) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(_log_failure)

    # -- reporting ---------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        decision = self.decision
        replicas = []
        for replica in self.replicas:
            state = replica.state
            if state == "ready" and not replica.worker.ready:
                state = "restarting"
            replicas.append({
                "pid": replica.worker.pid, "state": state,
                "in_flight": len(replica.worker.pending), "rss_bytes": replica.rss,
                "gpus": replica.devices,
            })
        row: dict[str, Any] = {
            "version": self.version,
            "autoscaling": self.settings.model_dump(),
            "desired": self.kpa.desired if decision is None else decision.desired,
            "ready": self.ready,
            "scaled_to_zero": self.scaled_to_zero,
            "panicking": bool(decision and decision.panicking),
            "concurrency": {
                "in_flight": self.meter.in_flight,
                "stable": round(decision.stable_concurrency, 3) if decision else 0.0,
                "panic": round(decision.panic_concurrency, 3) if decision else 0.0,
            },
            "replicas": replicas,
        }
        row["reason"] = self.shortfall or (decision.reason if decision else "load")
        if self.last_scale is not None:
            before, after, reason, at = self.last_scale
            row["last_scale"] = {"from": before, "to": after, "reason": reason,
                                 "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(at))}
        return row


def _log_failure(task: asyncio.Task[Any]) -> None:
    if task.cancelled():
        return
    exc = task.exception()
    if exc is not None:
        log.event("replica_task_failed", logging.ERROR, reason=f"{type(exc).__name__}: {exc}")
