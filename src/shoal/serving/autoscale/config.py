"""``autoscaling:`` and ``resources:`` in ``model.yaml``: how many replicas, and what each takes.

Example::

    autoscaling:
      min_replicas: 0          # 0 allows scale to zero
      max_replicas: 4
      target_concurrency: 2    # in-flight requests per replica the scaler aims at
      stable_window: 60s
      panic_window: 6s
      panic_threshold: 2.0
      scale_to_zero_after: 300s
    resources: {gpus: 1, gpu_share: 1}

The names and meanings follow Knative's pod autoscaler (KPA): ``min-scale``, ``max-scale``,
``target``, ``window``, ``panic-window-percentage``, ``panic-threshold-percentage`` and
``scale-to-zero-pod-retention-period`` (``docs/autoscaling.md`` maps each one).
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def parse_duration(value: Any) -> float:
    """Seconds from ``60``, ``60s``, ``1.5m``, ``500ms`` or ``1h`` (Knative writes ``60s``)."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a duration like 60s, 5m or 500ms")
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        match = _DURATION.match(str(value))
        if match is None:
            raise ValueError(f"{value!r} is not a duration like 60s, 5m or 500ms")
        seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    if seconds < 0:
        raise ValueError("a duration cannot be negative")
    return seconds


#: Knative's defaults: a 60 s stable window, a panic window of 10 % of it (6 s), panic at 200 %.
DEFAULTS: dict[str, Any] = {
    "min_replicas": 1,
    "max_replicas": 1,
    "target_concurrency": 1.0,
    "stable_window": 60.0,
    "panic_window": 6.0,
    "panic_threshold": 2.0,
    "scale_to_zero_after": 300.0,
}


class AutoscalingConfig(BaseModel):
    """Per-model autoscaling; a field left out takes the server's default (a flag)."""

    model_config = ConfigDict(extra="forbid")

    min_replicas: int | None = Field(default=None, ge=0)
    max_replicas: int | None = Field(default=None, ge=1)
    target_concurrency: float | None = Field(default=None, gt=0)
    stable_window: float | None = None
    panic_window: float | None = None
    panic_threshold: float | None = Field(default=None, ge=1.0)
    scale_to_zero_after: float | None = None

    @field_validator("stable_window", "panic_window", "scale_to_zero_after", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> float | None:
        return None if value is None else parse_duration(value)

    @model_validator(mode="after")
    def _consistent(self) -> AutoscalingConfig:
        if (self.min_replicas is not None and self.max_replicas is not None
                and self.min_replicas > self.max_replicas):
            raise ValueError(
                f"min_replicas ({self.min_replicas}) is above max_replicas ({self.max_replicas})"
            )
        if (self.stable_window is not None and self.panic_window is not None
                and self.panic_window > self.stable_window):
            raise ValueError(
                f"panic_window ({self.panic_window:g}s) is longer than stable_window "
                f"({self.stable_window:g}s)"
            )
        for name in ("stable_window", "panic_window"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be at least 1s, not {value:g}s")
        return self

    def resolved(self, defaults: dict[str, Any] | None = None) -> ResolvedAutoscaling:
        """Every field filled: this model's value, else the server's, else Knative's."""
        values = dict(DEFAULTS)
        values.update({k: v for k, v in (defaults or {}).items() if v is not None})
        values.update(self.model_dump(exclude_none=True))
        if values["min_replicas"] > values["max_replicas"]:
            # One of them came from the server's defaults (the model's own pair is checked at
            # validation): the model's own value wins, the default moves to meet it.
            if self.max_replicas is not None:
                values["min_replicas"] = values["max_replicas"]
            else:
                values["max_replicas"] = values["min_replicas"]
        values["panic_window"] = min(values["panic_window"], values["stable_window"])
        return ResolvedAutoscaling(**values)


class ResolvedAutoscaling(BaseModel):
    """The settings the scaler runs with (every field known)."""

    model_config = ConfigDict(frozen=True)

    min_replicas: int
    max_replicas: int
    target_concurrency: float
    stable_window: float
    panic_window: float
    panic_threshold: float
    scale_to_zero_after: float


class ResourcesConfig(BaseModel):
    """What one replica of the model takes (GPUs here; Kubernetes rendering adds CPU and
    memory requests from the same block)."""

    model_config = ConfigDict(extra="forbid")

    gpus: int = Field(default=0, ge=0)
    """Devices each replica gets to itself (``CUDA_VISIBLE_DEVICES`` in its process)."""
    gpu_share: int = Field(default=1, ge=1)
    """Replicas (of any model) that may share one device; 1: a device per replica."""
    cpu: str | float | None = None
    """CPU request for Kubernetes (``"2"``, ``"500m"``); not enforced on one machine."""
    memory: str | None = None
    """Memory request for Kubernetes (``"4Gi"``); on one machine see ``--memory-budget``."""
