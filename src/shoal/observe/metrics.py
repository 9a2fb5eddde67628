"""Prometheus metrics for requests and model lifecycle.

Transports record every request once, through :class:`Metrics`, so REST and gRPC report the
same series. Label children are cached: looking them up per request would cost more than
the increment itself.

Under ``--http-workers N`` every server process writes its values to files in
``PROMETHEUS_MULTIPROC_DIR`` (prometheus-client's multiprocess mode, chosen when the module is
imported) and ``/metrics``, whichever process answers, adds them up: counters and histograms
sum, in-flight gauges sum over live processes, state and load-time gauges take the maximum.
"""

from __future__ import annotations

from typing import Any, Callable

import os

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import CONTENT_TYPE_LATEST, multiprocess

LATENCY_BUCKETS = (
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
STATES = ("LOADING", "READY", "UNAVAILABLE")
CONTENT_TYPE = CONTENT_TYPE_LATEST
#: The ``model`` label of requests for names that are not served, and the ``version`` label
#: of requests for versions that are not: made-up names must not each become a series.
UNKNOWN = "_unknown"


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
        #: (metric, label values) -> the labelled child, made once.
        self._children: dict[tuple[Any, tuple[str, ...]], Any] = {}

    def _child(self, metric: Any, *labels: str) -> Any:
        key = (metric, labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def request_started(self, model: str) -> None:
        self._child(self.in_flight, model).inc()

    def request_finished(
        self, model: str, version: str, protocol: str, outcome: str, seconds: float
    ) -> None:
        self._child(self.in_flight, model).dec()
        self.request_counted(model, version, protocol, outcome, seconds)

    def request_counted(
        self, model: str, version: str, protocol: str, outcome: str, seconds: float
    ) -> None:
        """A request's outcome and latency (one that was never in flight: refused at once)."""
        self._child(self.requests, model, version, protocol, outcome).inc()
        self._child(self.latency, model, version, protocol).observe(seconds)

    def model_state_changed(self, model: str, version: str, state: str) -> None:
        for candidate in STATES:
            self._child(self.model_state, model, version, candidate).set(
                1.0 if candidate == state else 0.0
            )

    def forget(self, model: str, version: str | None = None) -> None:
        """Drop the series of an unloaded model version (``version`` None: of the whole model,
        its in-flight gauge included), so a scrape lists what is served, not everything that
        ever was. Called once the version's requests have finished."""
        for metric, labels in [key for key in self._children if key[1][0] == model]:
            if version is None or (metric is not self.in_flight and labels[1] == version):
                del self._children[metric, labels]
                metric.remove(*labels)

    def model_loaded(self, model: str, version: str, seconds: float) -> None:
        self._child(self.load_duration, model, version).set(seconds)

    def batch_observer(self, model: str, version: str) -> Callable[[int, list[float]], None]:
        sizes = self._child(self.batch_size, model, version)
        delays = self._child(self.batch_queue_delay, model, version)

        def observe(rows: int, waits: list[float]) -> None:
            sizes.observe(rows)
            for wait in waits:
                delays.observe(wait)

        return observe

    def exposition(self) -> bytes:
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            combined = CollectorRegistry()
            multiprocess.MultiProcessCollector(combined)
            return generate_latest(combined)
        return generate_latest(self.registry)
