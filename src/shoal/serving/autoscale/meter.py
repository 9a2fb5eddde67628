"""A model's concurrency over time: what the scaler observes (Knative's queue-proxy measures
the same thing per pod).

The endpoint calls :meth:`ConcurrencyMeter.change` when a request starts and when it ends
(two clock reads per request, and only for autoscaled models); the scaler reads the
time-weighted average since its last look with :meth:`take`. A request counts from the moment
the model accepts it until it is answered: waiting in the batching queue, or held while a
replica starts, is concurrency the model has to serve.
"""

from __future__ import annotations

from time import monotonic


class ConcurrencyMeter:
    __slots__ = ("_active", "_area", "_since", "_window_start", "in_flight", "last_request")

    def __init__(self) -> None:
        now = monotonic()
        self.in_flight = 0
        self._area = 0.0
        self._since = now
        self._window_start = now
        self._active = False
        #: When a request last arrived (for least-recently-used eviction).
        self.last_request = now

    def change(self, delta: int) -> None:
        now = monotonic()
        self._area += self.in_flight * (now - self._since)
        self._since = now
        self.in_flight += delta
        if delta > 0:
            self._active = True
            self.last_request = now

    def take(self) -> tuple[float, bool]:
        """The average concurrency since the last call, and whether any request was in flight
        meanwhile."""
        now = monotonic()
        area = self._area + self.in_flight * (now - self._since)
        elapsed = now - self._window_start
        active = self._active or self.in_flight > 0
        self._area = 0.0
        self._since = self._window_start = now
        self._active = False
        return (area / elapsed if elapsed > 0 else float(self.in_flight)), active
