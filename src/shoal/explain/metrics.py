"""Explanation metrics, in the server's Prometheus registry beside the request metrics.

- ``shoal_explanations_total{model, method, outcome}``: explanations answered; ``outcome`` is
  ``success`` or the HTTP status of the error (``400``, ``501``, ``504``, ...), as
  ``shoal_requests_total`` counts requests. ``method`` is the method that ran (``tree``,
  ``linear``, ``permutation``, ``kernel``, ``exact``), or the configured one (``auto``...) for
  an explanation that failed before one was chosen.
- ``shoal_explanation_duration_seconds{model, method}``: how long each took, end to end.

The server makes one :class:`ExplainMetrics` for its registry and passes it to every
:func:`shoal.explain.explain` call (``metrics=``).
"""

from __future__ import annotations


from prometheus_client import CollectorRegistry, Counter, Histogram

from ..observe.metrics import LabelCache

#: Explanations take from milliseconds (tree SHAP, one row) to minutes (kernel, many rows).
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


class ExplainMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.explanations = Counter(
            "shoal_explanations", "Explanations by model, method and outcome.",
            ["model", "method", "outcome"], registry=registry,
        )
        self.duration = Histogram(
            "shoal_explanation_duration_seconds", "Time taken to explain a request's rows.",
            ["model", "method"], buckets=DURATION_BUCKETS, registry=registry,
        )
        self._labels = LabelCache()

    def observed(self, model: str, method: str, outcome: str, seconds: float) -> None:
        """One explanation of ``model`` by ``method`` ended with ``outcome`` after ``seconds``."""
        self._labels(self.explanations, model, method, outcome).inc()
        self._labels(self.duration, model, method).observe(seconds)

    def forget(self, model: str) -> None:
        """Drop an unloaded model's series."""
        for metric, labels in self._labels.of(model):
            self._labels.remove(metric, labels)
