"""How many replicas a model needs: Knative's pod autoscaler (KPA), as a pure calculation.

Every tick the scaler hands in the model's average concurrency (in-flight requests,
time-weighted) over the last tick. The KPA keeps two windows of those samples:

- the **stable window** (``stable_window``, 60 s by default): desired = ceil(average / target);
- the **panic window** (``panic_window``, 6 s): the same over a short window. When it asks for
  ``panic_threshold`` times the replicas that are ready (200 % by default) the model *panics*:
  it scales up to what the panic window asks and never scales down while panicking. Panic ends
  once the panic window has stayed below the threshold for a whole stable window.

A model allowed to scale to zero (``min_replicas: 0``) drops to zero only after it has seen no
request at all for ``scale_to_zero_after``; until then it keeps one replica (Knative keeps the
last pod for its scale-to-zero grace and retention periods).

Scaling down is limited to halving the ready replicas once per 2 s (Knative's
max-scale-down-rate of 2 per 2 s tick), so a short lull does not throw away capacity a
returning load needs.

No clocks are read here: times are passed in, so tests drive it with made-up time.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

from .config import ResolvedAutoscaling

#: Knative's max-scale-down-rate: at most halve the replicas in one step...
MAX_SCALE_DOWN_RATE = 2.0
#: ... and one step per Knative tick (2 s), however often decisions are made.
SCALE_DOWN_INTERVAL = 2.0


@dataclass(slots=True)
class Decision:
    desired: int
    panicking: bool
    stable_concurrency: float
    panic_concurrency: float
    reason: str


class Kpa:
    def __init__(self, settings: ResolvedAutoscaling, now: float) -> None:
        self.settings = settings
        #: (time, average concurrency over the tick that ended then)
        self._samples: deque[tuple[float, float]] = deque()
        self._panic_since: float | None = None
        self._last_over: float = -math.inf
        self._max_panic = 0
        self.last_active = now
        self._scaled_down = -math.inf
        self.desired = max(settings.min_replicas, 1)  # a model loads with one replica

    def rest(self) -> None:
        """Forget the load seen so far and count the model as long idle: after an eviction
        (memory budget) the model stays at zero replicas until a request wakes it, instead
        of coming back because its stable window still remembers earlier traffic."""
        self._samples.clear()
        self._panic_since = None
        self._max_panic = 0
        self.last_active = -math.inf

    def observe(self, now: float, concurrency: float, active: bool) -> None:
        """One tick's average concurrency; ``active``: a request was in flight during it."""
        self._samples.append((now, concurrency))
        horizon = now - self.settings.stable_window
        while self._samples and self._samples[0][0] <= horizon:
            self._samples.popleft()
        if active:
            self.last_active = now

    def _average(self, now: float, window: float) -> float:
        values = [c for t, c in self._samples if t > now - window]
        return sum(values) / len(values) if values else 0.0

    def decide(self, now: float, ready: int) -> Decision:
        s = self.settings
        stable = self._average(now, s.stable_window)
        panic = self._average(now, s.panic_window)
        want_stable = math.ceil(stable / s.target_concurrency - 1e-9)
        want_panic = math.ceil(panic / s.target_concurrency - 1e-9)
        basis = max(ready, 1)
        over = want_panic / basis >= s.panic_threshold and want_panic > ready
        if over:
            self._last_over = now
            if self._panic_since is None:
                self._panic_since = now
                self._max_panic = ready
        elif self._panic_since is not None and now - self._last_over >= s.stable_window:
            self._panic_since = None
            self._max_panic = 0
        reason = "load"
        if self._panic_since is not None:
            desired = max(want_stable, want_panic, self._max_panic, ready)
            self._max_panic = desired
            reason = "panic"
        else:
            desired = want_stable
            if desired < ready:
                if now - self._scaled_down < SCALE_DOWN_INTERVAL:
                    desired = max(desired, min(self.desired, ready))  # no second step yet
                else:
                    desired = max(desired, math.floor(ready / MAX_SCALE_DOWN_RATE))
                    self._scaled_down = now
        idle_for = now - self.last_active
        if desired == 0:
            if s.min_replicas == 0 and idle_for >= s.scale_to_zero_after:
                reason = "idle"
            else:
                desired = 1
        desired = max(s.min_replicas, min(s.max_replicas, desired))
        self.desired = desired
        return Decision(desired, self._panic_since is not None, stable, panic, reason)
