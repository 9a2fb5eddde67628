"""Per-model overload protection: how many requests may be in flight, and for how long."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Limits:
    #: Requests running or queued on one model version at once; beyond it, 503 / RESOURCE_EXHAUSTED.
    #: 0: no limit.
    max_inflight: int = 0
    #: Seconds a request may take once it reaches the model's endpoint; beyond it, 504 /
    #: DEADLINE_EXCEEDED. 0: no limit. A client may ask for a shorter or longer one per request.
    timeout: float = 0.0
