"""One model's rollout as stored and shared: the spec, where it stands, and its history."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from .spec import RolloutSpec, parse_spec

PROGRESSING = "progressing"
PAUSED = "paused"
PROMOTED = "promoted"
ROLLED_BACK = "rolled_back"
NONE = "none"
STATES = (NONE, PROGRESSING, PAUSED, PROMOTED, ROLLED_BACK)
#: Events kept per rollout (set, steps, pauses, promotion, rollback).
HISTORY = 50


@dataclass(slots=True)
class RolloutRecord:
    model: str
    spec: RolloutSpec
    """With ``stable`` always filled in (pinned when the rollout was set)."""
    state: str = PROGRESSING
    percent: float = 0.0
    """The canary's share of traffic now."""
    step: int = 0
    """Index of the analysis step in progress."""
    since: float = 0.0
    """Wall-clock time of the last change; the statistics window starts there."""
    baseline: dict[str, float] = field(default_factory=dict)
    """Cumulative counters at ``since`` (subtracted to give the window's figures)."""
    epoch: str = ""
    """Which counters ``baseline`` was read from (they restart with the server)."""
    reason: str = ""
    origin: dict[str, Any] | None = None
    """The ``model.yaml`` rollout this record started from, if it did."""
    revision: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    previous: str | None = None
    """After a promotion: the stable variant before it (a rollback goes back to it)."""

    def changed(
        self, event: str, now: float, detail: str = "", baseline: dict[str, float] | None = None,
        **fields: Any,
    ) -> RolloutRecord:
        """A copy with ``fields`` replaced and ``event`` in the history. With a ``baseline``
        (the counters now) the statistics window restarts; without one it goes on (a
        rollback keeps the figures that explain it)."""
        entry: dict[str, Any] = {"at": now, "event": event}
        if detail:
            entry["detail"] = detail
        window = {} if baseline is None else {"since": now, "baseline": baseline}
        return dataclasses.replace(
            self, **fields, **window, reason=detail or event, revision=self.revision + 1,
            history=[*self.history, entry][-HISTORY:],
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.model, "spec": self.spec.to_json(), "state": self.state,
            "percent": self.percent, "step": self.step, "since": self.since,
            "baseline": self.baseline, "epoch": self.epoch, "reason": self.reason,
            "origin": self.origin, "revision": self.revision, "history": self.history,
            "previous": self.previous,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RolloutRecord:
        return cls(
            model=str(data["model"]), spec=parse_spec(data["spec"]), state=str(data["state"]),
            percent=float(data["percent"]), step=int(data["step"]), since=float(data["since"]),
            baseline={str(k): float(v) for k, v in dict(data.get("baseline") or {}).items()},
            epoch=str(data.get("epoch", "")), reason=str(data.get("reason", "")),
            origin=data.get("origin"), revision=int(data.get("revision", 0)),
            history=list(data.get("history") or []),
            previous=data.get("previous"),
        )
