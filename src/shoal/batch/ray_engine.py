"""The Ray engine: the job's shards spread over the actors of a Ray cluster.

Ray Data runs the job: its items are the work units (a chunk of a Parquet or ``.npy`` file,
a whole CSV or JSON lines file, whose chunks are only found by reading it), and
``map_batches`` hands them to a pool of ``num_actors`` actors. Each actor loads the model
once, with the code ``shoal serve`` and the local engine use, and runs the local engine's
pipeline on each unit it gets: it reads the unit's rows from the input (fsspec: the same
``s3://`` URL on every machine), scores them, and writes the unit's shards atomically under
their usual names. So the Ray engine writes exactly the files the local engine writes, and a
job can be resumed by either.

The driver (this process) keeps the manifest: it records each shard as its actor's result
streams back, and stops the job when there are too many bad rows. On a cluster of several
machines, inputs, the output folder and the model must be reachable under the same path or
URL from every machine (object storage, or a shared file system), and Shoal installed there.
"""

from __future__ import annotations

import asyncio
import logging
import pickle
import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import deps
from .pipeline import FileTask, Layout, Pipeline, Report, RowsDone, ShardDone

#: Seconds the actors may take to start and load the model.
ACTORS_START_S = 600


@dataclass(frozen=True)
class ActorSpec:
    """What an actor needs to load the model and write shards (picklable)."""

    model: str
    model_name: str | None
    layout: Layout
    request_timeout: float
    concurrency: int | None
    allowed_errors: int | None = None
    """Bad rows the job may still have (``max_errors`` less those recorded earlier): an actor
    that sees more stops its unit there, its unfinished shard left unwritten, as the local
    engine does. None: no limit."""


class ShardActor:
    """One Ray actor: the model loaded once; a unit of work per call."""

    def __init__(self, spec: ActorSpec) -> None:
        from . import loading
        from .engine import in_flight

        self.spec = spec
        self.loop = asyncio.new_event_loop()
        threads = in_flight(None, spec.concurrency, 0, loading.is_remote(spec.model))
        self.loaded = self.loop.run_until_complete(
            loading.load(spec.model, spec.model_name, 0, spec.request_timeout, threads)
        )
        #: Bad rows this actor has seen (in every unit it ran).
        self.failed = 0

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import ray

        from .engine import in_flight
        from .scoring import Scorer

        node = ray.get_runtime_context().get_node_id()
        results = []
        for blob in batch["task"]:
            task: FileTask = pickle.loads(blob)
            events: list[Any] = []
            loaded = self.loaded
            scorer = Scorer(loaded.endpoint, loaded.name, self.spec.layout.outputs, loaded.row_wise,
                            loaded.remote)
            pipeline = Pipeline(self.spec.layout, scorer, loaded.inputs, self._collector(events),
                                in_flight(loaded, self.spec.concurrency, 0))
            try:
                self.loop.run_until_complete(pipeline.run([task]))
            except _TooManyErrors:
                pass  # the shard being written is not; the driver fails the job with the row
            results.append(pickle.dumps(_merged(events)))
        return {"result": np.array(results, dtype=object),
                "node": np.array([node] * len(results), dtype=object)}


    def _collector(self, events: list[Any]) -> Report:
        allowed = self.spec.allowed_errors

        def collect(event: Any) -> None:
            events.append(event)
            if isinstance(event, RowsDone) and event.failed:
                self.failed += event.failed
                if allowed is not None and self.failed > allowed:
                    raise _TooManyErrors()

        return collect


class _TooManyErrors(Exception):
    """An actor saw more bad rows than the job allows: its pipeline stops there."""


def _merged(events: list[Any]) -> list[Any]:
    """The actor's reports, with each shard's row reports added up into one."""
    merged: list[Any] = []
    rows: dict[str, RowsDone] = {}
    for event in events:
        if isinstance(event, RowsDone):
            total = rows.get(event.shard)
            if total is None:
                rows[event.shard] = total = RowsDone(0, 0, 0, [], event.text, event.shard)
                merged.append(total)
            total.ok += event.ok
            total.failed += event.failed
            total.bytes_read += event.bytes_read
            total.errors.extend(event.errors)
        else:
            merged.append(event)
    return merged


def work_units(tasks: list[FileTask], chunk_rows: int) -> list[FileTask]:
    """A unit per pending chunk of a file whose rows are known, one per other file."""
    units = []
    for task in tasks:
        rows = task.file.rows
        if rows is None:
            units.append(task)
            continue
        chunks = max(1, -(-rows // chunk_rows))
        every = set(range(chunks))
        for chunk in sorted(every - task.done):
            units.append(FileTask(task.file, every - {chunk}))
    return units


#: Names of the threads Ray Data starts to run and read one execution: its scheduling loop
#: and the prefetching workers behind ``iter_rows``. A stopped iteration only signals them.
_ITERATION_THREADS = ("StreamingExecutor", "iter_threaded")
ITERATION_THREADS_JOIN_S = 30.0


def _join_iteration_threads(before: set[threading.Thread]) -> None:
    """Wait (up to :data:`ITERATION_THREADS_JOIN_S` in all) for the threads Ray Data started
    for this run to end. One that was fetching a block when the iteration stopped finishes
    that fetch: run after ``ray.shutdown()``, the fetch would start Ray again."""
    deadline = time.monotonic() + ITERATION_THREADS_JOIN_S
    for thread in threading.enumerate():
        if thread not in before and thread.name.startswith(_ITERATION_THREADS):
            thread.join(max(0.0, deadline - time.monotonic()))


class RayEngine:
    def __init__(self, job: Any, layout: Layout, allowed_errors: int | None = None) -> None:
        self.job = job
        self.layout = layout
        self.allowed_errors = allowed_errors
        self._stop = threading.Event()
        #: The Ray nodes whose actors scored shards.
        self.nodes: set[str] = set()
        #: Shards (and their error parts) this run recorded.
        self.recorded: set[str] = set()

    async def run(self, tasks: list[FileTask], report: Report) -> None:
        worker = asyncio.get_running_loop().run_in_executor(None, self._run, tasks, report)
        try:
            await asyncio.shield(worker)
        except asyncio.CancelledError:
            self._stop.set()
            await worker  # stops at the next result; shuts Ray down if it started it
            raise

    def _run(self, tasks: list[FileTask], report: Report) -> None:
        ray = deps.ray()
        job = self.job
        units = work_units(tasks, self.layout.chunk_rows)
        if not units:
            return
        completed = False
        rows: Any = None
        threads_before = set(threading.enumerate())
        started = not ray.is_initialized()
        if started:
            if job.address:
                ray.init(address=job.address, log_to_driver=False, logging_level=logging.WARNING)
            else:
                ray.init(log_to_driver=False, logging_level=logging.WARNING, include_dashboard=False)
        try:
            context = ray.data.DataContext.get_current()
            context.enable_progress_bars = False
            context.execution_options.preserve_order = False
            # Every actor up (its model loaded) before the first unit goes out, so that the
            # first one ready does not take them all; a cluster without room for them fails.
            context.wait_for_min_actors_s = ACTORS_START_S
            spec = ActorSpec(job.model, job.model_name, self.layout, job.request_timeout,
                             job.concurrency, self.allowed_errors)
            items = [{"task": pickle.dumps(unit)} for unit in units]
            dataset = ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
                ShardActor, fn_constructor_kwargs={"spec": spec}, batch_size=1,
                compute=ray.data.ActorPoolStrategy(size=min(job.num_actors, len(items)),
                                                   max_tasks_in_flight_per_actor=1),
                num_cpus=job.actor_cpus,
            )
            rows = iter(dataset.iter_rows())
            for row in rows:
                self.nodes.add(str(row["node"]))
                for event in pickle.loads(row["result"]):
                    report(event)
                    if isinstance(event, ShardDone):
                        self.recorded.update(n for n in (event.record.file, event.record.errors) if n)
                if self._stop.is_set():
                    return
            completed = True
        finally:
            if rows is not None:
                # Shut Ray Data's executor down now, while Ray is still up. Left to the garbage
                # collector (a failure or a stop leaves the iteration unfinished), its shutdown
                # would run later and call into Ray: any Ray call after ``ray.shutdown()``
                # starts Ray again in this process (connected to the cluster, or a new local
                # one), which outlives the job.
                rows.close()
            if started:
                _join_iteration_threads(threads_before)
                ray.shutdown()
            if not completed:
                self._delete_unrecorded(units)

    def _delete_unrecorded(self, units: list[FileTask]) -> None:
        """After a failure: delete the shards actors wrote that the driver did not record (a
        unit's shards after the bad row too many, or results still streaming in), so the
        output holds only what its manifest lists. (Where this process did not start Ray, an
        actor still running may write one after this; the next run writes it again.)"""
        from . import storage
        from .manifest import shard_files

        output = storage.locate(self.layout.output, self.layout.storage_options)
        done: dict[str, set[int]] = {}
        relative: dict[str, str] = {}
        for unit in units:
            relative[unit.file.url] = unit.file.relative
            done.setdefault(unit.file.url, set(unit.done))
            done[unit.file.url] &= set(unit.done)  # a chunk unit leaves out the other chunks
        for url, chunks in done.items():
            for name, chunk in shard_files(output, relative[url]):
                if chunk not in chunks and name not in self.recorded:
                    storage.delete(output.child(name))
