"""Prometheus metrics for requests and model lifecycle, and the standard process metrics.

Transports record every request once, through :class:`Metrics`, so REST and gRPC report the
same series. Label children are cached: looking them up per request would cost more than
the increment itself.

Under ``--http-workers N`` every server process writes its values to files in
``PROMETHEUS_MULTIPROC_DIR`` (prometheus-client's multiprocess mode, chosen when the module is
imported) and ``/metrics``, whichever process answers, adds them up: counters and histograms
sum, in-flight gauges sum over live processes, state and load-time gauges take the maximum.

prometheus-client's standard collectors are in ``/metrics`` too, read when it is scraped
(nothing on the request path): ``process_*`` (memory, CPU, file descriptors, start time; on
Linux), ``python_info`` and ``python_gc_*``. With one server process they are that process's,
unlabelled, as in any Python service. Under ``--http-workers`` a scrape reaches one process
chosen by the kernel, and multiprocess mode has no per-process collectors: answering with that
process's own values would make every series jump between processes (a CPU counter going
backwards, memory of one process or the other). Instead every scrape, whichever process
answers, has the series of every live server process, each labelled ``pid`` (the way
multiprocess gauges name their process): ``sum(process_resident_memory_bytes)`` is the
memory of all of them. The answering process reads the others' ``process_*`` from
``/proc/PID``, live; ``python_gc_*`` (which only a process itself can read) comes from a small
file each process rewrites at most every :data:`GC_PUBLISH_INTERVAL` seconds, from a thread
that does nothing while the counts do not change. Each process registers itself with that
file (``shoal_process_PID.json`` in the metrics folder, with its start time, so a reused pid
is not mistaken for it); a process that died drops out of the next scrape. ``python_info`` is
the same for all of them and stays unlabelled. Model worker processes (``--workers``) are not
included, in either mode.
"""

from __future__ import annotations

import gc
import glob
import json
import os
import threading
import time
from bisect import bisect_left
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
    multiprocess,
)
from prometheus_client.metrics_core import CounterMetricFamily, Metric

LATENCY_BUCKETS = (
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
STATES = ("LOADING", "READY", "UNAVAILABLE")
CONTENT_TYPE = CONTENT_TYPE_LATEST
#: The ``model`` label of requests for names that are not served, and the ``version`` label
#: of requests for versions that are not: made-up names must not each become a series.
UNKNOWN = "_unknown"
#: Under ``--http-workers``: how often (at most) a server process publishes its GC counts.
GC_PUBLISH_INTERVAL = 2.0
#: The file each server process registers itself with, in the multiprocess metrics folder.
PROCESS_FILE = "shoal_process_{pid}.json"


def _value_inc(child: Any) -> Callable[[float], None]:
    """The ``inc`` of a counter's or gauge's value (what ``child.inc(n)`` calls after its
    checks; a gauge's ``dec(n)`` is ``inc(-n)``); ``child.inc`` itself if it has none."""
    value = getattr(child, "_value", None)
    return child.inc if value is None else value.inc


def _ignore(amount: float) -> None:
    pass


class LabelCache:
    """Labelled children of metrics, made once: looking one up per request would cost more
    than the increment itself. The first label is the model, so a model's series can be
    dropped when it goes."""

    def __init__(self) -> None:
        self._children: dict[tuple[Any, tuple[str, ...]], Any] = {}

    def __call__(self, metric: Any, *labels: str) -> Any:
        key = (metric, labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def of(self, model: str) -> list[tuple[Any, tuple[str, ...]]]:
        """The (metric, labels) made for ``model``."""
        return [key for key in self._children if key[1][0] == model]

    def remove(self, metric: Any, labels: tuple[str, ...]) -> None:
        self._children.pop((metric, labels), None)
        try:
            metric.remove(*labels)
        except KeyError:
            pass


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "shoal_requests", "Inference requests by model, version, protocol and outcome.",
            ["model", "version", "protocol", "outcome"], registry=self.registry,
        )
        self.latency = Histogram(
            "shoal_request_duration_seconds", "Inference request latency, decode to encode.",
            ["model", "version", "protocol"], buckets=LATENCY_BUCKETS, registry=self.registry,
        )
        self.in_flight = Gauge(
            "shoal_requests_in_flight", "Inference requests being processed.",
            ["model"], registry=self.registry, multiprocess_mode="livesum",
        )
        self.load_duration = Gauge(
            "shoal_model_load_duration_seconds", "Seconds the last load of a model version took.",
            ["model", "version"], registry=self.registry, multiprocess_mode="livemax",
        )
        self.model_state = Gauge(
            "shoal_model_state", "1 for the state each model version is in, 0 for the others.",
            ["model", "version", "state"], registry=self.registry, multiprocess_mode="livemax",
        )
        self.batch_size = Histogram(
            "shoal_batch_size", "Rows per model execution under adaptive batching.",
            ["model", "version"], buckets=BATCH_BUCKETS, registry=self.registry,
        )
        self.batch_queue_delay = Histogram(
            "shoal_batch_queue_delay_seconds", "Time requests waited in a batching queue.",
            ["model", "version"], buckets=LATENCY_BUCKETS, registry=self.registry,
        )
        self.worker_restarts = Counter(
            "shoal_worker_restarts", "Model worker processes restarted after they died.",
            registry=self.registry,
        )
        self._child = LabelCache()
        #: The values each request adds to (see _counted), per model and per
        #: (model, version, protocol, outcome); dropped with the model's series.
        self._started: dict[str, Callable[[float], None]] = {}
        self._finished: dict[tuple[str, str, str, str], tuple[Any, ...]] = {}
        #: What ``/metrics`` adds to :attr:`registry`: kept apart, so that the code that
        #: reads the registry back (rollout statistics) does not read /proc with it.
        self.standard = CollectorRegistry()
        directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
        if directory:
            multiprocess.MultiProcessCollector(self.standard)
            ServerProcessCollector(directory, self.standard)
            _ProcessFile(directory).start()
        else:
            ProcessCollector(registry=self.standard)
            GCCollector(registry=self.standard)
        PlatformCollector(registry=self.standard)
        self._multiprocess = bool(directory)

    def request_started(self, model: str) -> None:
        started = self._started.get(model)
        if started is None:
            started = self._started[model] = _value_inc(self._child(self.in_flight, model))
        started(1)

    def request_finished(
        self, model: str, version: str, protocol: str, outcome: str, seconds: float
    ) -> None:
        key = (model, version, protocol, outcome)
        series = self._finished.get(key)
        if series is None:
            series = self._finished[key] = (
                _value_inc(self._child(self.in_flight, model)), *self._counted(*key)
            )
        in_flight, count, total, buckets, bounds = series
        in_flight(-1)
        count(1)
        total(seconds)
        buckets[bisect_left(bounds, seconds)](1)

    def request_counted(
        self, model: str, version: str, protocol: str, outcome: str, seconds: float
    ) -> None:
        """A request's outcome and latency (one that was never in flight: refused at once)."""
        count, total, buckets, bounds = self._counted(model, version, protocol, outcome)
        count(1)
        total(seconds)
        buckets[bisect_left(bounds, seconds)](1)

    def _counted(
        self, model: str, version: str, protocol: str, outcome: str
    ) -> tuple[Callable[[float], None], Callable[[float], None], list[Callable[[float], None]],
               list[float]]:
        """What a request's outcome and latency add to, as the metric objects' own values:
        the count, the latency sum, each latency bucket and the buckets' bounds. Adding to
        them directly is what ``Counter.inc`` and ``Histogram.observe`` do, without their
        checks (these children are plain, observable and never take exemplars), at a
        fraction of the cost per request."""
        latency = self._child(self.latency, model, version, protocol)
        count = self._child(self.requests, model, version, protocol, outcome)
        try:
            return (
                _value_inc(count), latency._sum.inc,
                [bucket.inc for bucket in latency._buckets], list(latency._upper_bounds),
            )
        except AttributeError:  # a prometheus_client built otherwise: its public methods
            return count.inc, latency.observe, [_ignore], [float("inf")]

    def model_state_changed(self, model: str, version: str, state: str) -> None:
        for candidate in STATES:
            self._child(self.model_state, model, version, candidate).set(
                1.0 if candidate == state else 0.0
            )

    def forget(self, model: str, version: str | None = None) -> None:
        """Drop the series of an unloaded model version (``version`` None: of the whole model,
        its in-flight gauge included), so a scrape lists what is served, not everything that
        ever was. Called once the version's requests have finished."""
        self._started.pop(model, None)
        for key in [k for k in self._finished if k[0] == model]:
            del self._finished[key]
        for metric, labels in self._child.of(model):
            if version is None or (metric is not self.in_flight and labels[1] == version):
                self._child.remove(metric, labels)

    def model_loaded(self, model: str, version: str, seconds: float) -> None:
        self._child(self.load_duration, model, version).set(seconds)

    def batch_observer(self, model: str, version: str) -> Callable[[int, list[float]], None]:
        sizes = self._child(self.batch_size, model, version)
        delays = self._child(self.batch_queue_delay, model, version)

        # Each request's wait, added to the histogram's own values (as in _counted).
        try:
            delay_sum, delay_buckets = delays._sum.inc, [b.inc for b in delays._buckets]
            bounds = list(delays._upper_bounds)
        except AttributeError:  # a prometheus_client built otherwise: its public method
            delay_sum, delay_buckets, bounds = delays.observe, [_ignore], [float("inf")]

        def observe(rows: int, waits: list[float]) -> None:
            sizes.observe(rows)
            for wait in waits:
                delay_sum(wait)
                delay_buckets[bisect_left(bounds, wait)](1)

        return observe

    def exposition(self) -> bytes:
        if self._multiprocess:  # the registry's values are in the files the collector reads
            return generate_latest(self.standard)
        return generate_latest(self.registry) + generate_latest(self.standard)


class ServerProcessCollector:
    """``process_*`` and ``python_gc_*`` of every live server process under
    ``--http-workers``, labelled ``pid`` (see the module's docstring)."""

    def __init__(self, directory: str, registry: CollectorRegistry | None = None) -> None:
        self.directory = directory
        self._collectors: dict[int, ProcessCollector] = {}
        if registry is not None:
            registry.register(self)

    def collect(self) -> Iterable[Metric]:
        families: dict[str, Metric] = {}
        collectors: dict[int, ProcessCollector] = {}
        for pid, gc_stats in sorted(self._live().items()):
            collector = self._collectors.get(pid)
            if collector is None:
                collector = ProcessCollector(pid=lambda pid=pid: pid, registry=None)
            collectors[pid] = collector
            for family in [*collector.collect(), *_gc_families(gc_stats)]:
                merged = families.get(family.name)
                if merged is None:
                    merged = families[family.name] = Metric(
                        family.name, family.documentation, family.type
                    )
                for sample in family.samples:
                    merged.add_sample(sample.name, {**sample.labels, "pid": str(pid)}, sample.value)
        self._collectors = collectors
        return list(families.values())

    def _live(self) -> dict[int, list[dict[str, int]]]:
        """pid -> GC stats of each registered server process that is alive."""
        found = {}
        for path in glob.glob(os.path.join(self.directory, PROCESS_FILE.format(pid="*"))):
            try:
                with open(path, "rb") as file:
                    record = json.load(file)
                pid = int(record["pid"])
            except (OSError, ValueError, KeyError, TypeError):
                continue
            if pid == os.getpid():
                found[pid] = gc.get_stats()  # its own: live
            elif _alive(pid, record.get("start")):
                found[pid] = record.get("gc", [])
            else:
                _remove(path)
        return found


class _ProcessFile:
    """This server process's entry in the multiprocess metrics folder: its pid, its start
    time and its GC counts, rewritten (atomically) when they change."""

    def __init__(self, directory: str) -> None:
        pid = os.getpid()
        self.path = os.path.join(directory, PROCESS_FILE.format(pid=pid))
        self.record: dict[str, Any] = {"pid": pid, "start": _start_ticks(pid), "gc": None}

    def start(self) -> None:
        self.publish()
        threading.Thread(target=self._run, name="shoal-gc-stats", daemon=True).start()

    def publish(self) -> None:
        stats = gc.get_stats()
        if stats == self.record["gc"]:
            return
        self.record["gc"] = stats
        partial = f"{self.path}.partial"
        with open(partial, "w") as file:
            json.dump(self.record, file)
        os.replace(partial, self.path)

    def _run(self) -> None:
        while True:
            time.sleep(GC_PUBLISH_INTERVAL)
            try:
                self.publish()
            except OSError:  # the folder is gone: the supervisor is stopping
                return


def _gc_families(stats: list[dict[str, int]]) -> list[Metric]:
    """What prometheus-client's GCCollector reports, from ``gc.get_stats()`` of a process."""
    families = [
        CounterMetricFamily("python_gc_objects_collected", "Objects collected during gc",
                            labels=["generation"]),
        CounterMetricFamily("python_gc_objects_uncollectable",
                            "Uncollectable objects found during GC", labels=["generation"]),
        CounterMetricFamily("python_gc_collections",
                            "Number of times this generation was collected", labels=["generation"]),
    ]
    for generation, stat in enumerate(stats):
        for family, key in zip(families, ("collected", "uncollectable", "collections")):
            family.add_metric([str(generation)], value=stat.get(key, 0))
    return families


def _start_ticks(pid: int) -> int | None:
    """When the process started (clock ticks after boot; Linux), None where unknown."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return int(stat.read().rsplit(b")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def _alive(pid: int, start: int | None) -> bool:
    if start is not None:
        return _start_ticks(pid) == start  # not a later process given the same pid
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # someone else's process: the pid is in use
    return True


def _remove(path: str) -> None:
    try:
        os.remove(path)
    except OSError:
        pass


def mark_process_dead(pid: int) -> None:
    """A server process died (under ``--http-workers``): its live gauges and its entry go."""
    multiprocess.mark_process_dead(pid)
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if directory:
        _remove(os.path.join(directory, PROCESS_FILE.format(pid=pid)))
