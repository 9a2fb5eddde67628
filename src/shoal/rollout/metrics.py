"""Rollout series in ``/metrics``, and the same counters read back as one flat snapshot.

The counters are the single source of every rollout figure: ``/metrics``, the status route
and the analysis guards all read them. Under ``--http-workers`` they are read through
prometheus-client's multiprocess collector, so every process sees the totals of all.

A snapshot is a flat ``{key: value}`` of one model's cumulative counters
(``requests|canary|500``, ``bucket|stable|0.005``, ``shadow|label|agreed``...); a window's
figures are a snapshot minus the one taken when the window began.
"""

from __future__ import annotations

import os

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, multiprocess

from ..observe.metrics import LATENCY_BUCKETS, LabelCache
from .record import STATES

ROLES = ("stable", "canary", "shadow")


class RolloutMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.requests = Counter(
            "shoal_rollout_requests", "Requests each rollout variant answered, by outcome.",
            ["model", "variant", "outcome"], registry=registry,
        )
        self.latency = Histogram(
            "shoal_rollout_request_duration_seconds", "Latency of each rollout variant.",
            ["model", "variant"], buckets=LATENCY_BUCKETS, registry=registry,
        )
        self.canary_percent = Gauge(
            "shoal_rollout_canary_percent", "Share of a model's traffic its canary gets now.",
            ["model"], registry=registry, multiprocess_mode="livemax",
        )
        self.state = Gauge(
            "shoal_rollout_state", "1 for the state each model's rollout is in, 0 for the others.",
            ["model", "state"], registry=registry, multiprocess_mode="livemax",
        )
        self.shadow_skipped = Counter(
            "shoal_rollout_shadow_skipped", "Requests not mirrored: the shadow queue was full.",
            ["model"], registry=registry,
        )
        self.shadow_compared = Counter(
            "shoal_rollout_shadow_compared_values",
            "Output values compared between the primary and the shadow.",
            ["model", "output"], registry=registry,
        )
        self.shadow_agreed = Counter(
            "shoal_rollout_shadow_agreed_values",
            "Compared values that were equal (labels, integers, strings, booleans).",
            ["model", "output"], registry=registry,
        )
        self.shadow_abs_difference = Counter(
            "shoal_rollout_shadow_abs_difference",
            "Sum of |primary - shadow| over compared floating-point values.",
            ["model", "output"], registry=registry,
        )
        self.shadow_mismatches = Counter(
            "shoal_rollout_shadow_mismatches",
            "Answers whose output was missing from the shadow's or had another shape.",
            ["model", "output"], registry=registry,
        )
        self.rollbacks = Counter(
            "shoal_rollout_rollbacks", "Rollbacks, by the guard that failed (manual: by a user).",
            ["model", "guard"], registry=registry,
        )
        self.child = LabelCache()

    def answered(self, model: str, role: str, outcome: str, seconds: float) -> None:
        self.child(self.requests, model, role, outcome).inc()
        self.child(self.latency, model, role).observe(seconds)

    def show_state(self, model: str, state: str, percent: float) -> None:
        for candidate in STATES[1:]:
            self.child(self.state, model, candidate).set(1.0 if candidate == state else 0.0)
        self.child(self.canary_percent, model).set(percent)

    def forget(self, model: str) -> None:
        """Drop a deleted rollout's gauges (its counters stay: they are history)."""
        multiprocess_mode = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
        for metric, labels in self.child.of(model):
            if metric in (self.state, self.canary_percent):
                # In multiprocess mode a removed gauge keeps its file's value: zero it.
                self.child(metric, *labels).set(0.0)
                if not multiprocess_mode:
                    self.child.remove(metric, labels)

    def snapshot(self) -> dict[str, dict[str, float]]:
        """Model -> its flat cumulative counters, across every server process. Blocking
        (under ``--http-workers`` it reads every process's files): off the event loop."""
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            source = CollectorRegistry()
            multiprocess.MultiProcessCollector(source)
            families = source.collect()
        else:
            families = self.registry.collect()
        models: dict[str, dict[str, float]] = {}
        for family in families:
            if not family.name.startswith("shoal_rollout_"):
                continue
            for sample in family.samples:
                key = _key(sample.name, sample.labels)
                if key is not None:
                    flat = models.setdefault(sample.labels["model"], {})
                    flat[key] = flat.get(key, 0.0) + sample.value
        return models


def _key(name: str, labels: dict[str, str]) -> str | None:
    if name == "shoal_rollout_requests_total":
        return f"requests|{labels['variant']}|{labels['outcome']}"
    if name == "shoal_rollout_request_duration_seconds_bucket":
        return f"bucket|{labels['variant']}|{labels['le']}"
    if name == "shoal_rollout_shadow_skipped_total":
        return "shadow_skipped"
    for suffix in ("compared", "agreed", "abs_difference", "mismatches"):
        if name in (f"shoal_rollout_shadow_{suffix}_values_total", f"shoal_rollout_shadow_{suffix}_total"):
            return f"shadow|{labels['output']}|{suffix}"
    return None
