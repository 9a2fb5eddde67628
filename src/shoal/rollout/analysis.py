"""Progressive delivery's judge: given a step's figures, advance, wait, promote or roll back.

As Flagger and Argo Rollouts do it: the canary's share steps up on a schedule while its
guards hold over the current step; a breach rolls back at once (not at the step's end), and
passing the last step below 100 %, or reaching 100 %, promotes.

- ``max_error_rate``: the canary's 5xx share of its requests in the step (a client's own
  4xx does not count against the canary);
- ``max_latency_ratio``: the canary's p99 over the stable variant's p99 in the step (judged
  only when both answered requests in it, at the step's end or once both have answered
  ``LATENCY_SAMPLES``: a p99 of ten requests is just their slowest);
- ``min_requests``: guards are judged once the canary has answered that many requests in
  the step, and the step does not advance before it has.
"""

from __future__ import annotations

from dataclasses import dataclass

from .spec import AnalysisSpec
from .window import variant_figures


@dataclass(frozen=True, slots=True)
class Verdict:
    action: str
    """``wait``, ``advance``, ``promote`` or ``rollback``."""
    detail: str = ""
    guard: str = ""
    """For a rollback: the guard that failed."""


WAIT = Verdict("wait")
#: Requests each variant needs in a step before a p99 is judged before the step's end.
LATENCY_SAMPLES = 100


def judge(analysis: AnalysisSpec, step: int, elapsed: float, delta: dict[str, float]) -> Verdict:
    canary = variant_figures(delta, "canary")
    stable = variant_figures(delta, "stable")
    answered = canary["requests"]
    if answered and answered >= analysis.min_requests:
        limit = analysis.max_error_rate
        if limit is not None and canary["error_rate"] > limit:
            return Verdict(
                "rollback",
                f"canary 5xx rate {canary['error_rate']:.3f} > max_error_rate {limit:g} "
                f"({canary['errors']} of {answered} requests)",
                "max_error_rate",
            )
        ratio_limit = analysis.max_latency_ratio
        ours, theirs = canary["p99_seconds"], stable["p99_seconds"]
        # A p99 of a few requests is their maximum (one cold start): latency is judged at
        # the step's end, or before once both variants have answered enough for a p99.
        judged = elapsed >= analysis.interval or min(answered, stable["requests"]) >= LATENCY_SAMPLES
        if ratio_limit is not None and ours is not None and theirs and judged:
            ratio = ours / theirs
            if ratio > ratio_limit:
                return Verdict(
                    "rollback",
                    f"canary p99 {ours * 1000:.2f} ms / stable p99 {theirs * 1000:.2f} ms = "
                    f"{ratio:.2f} > max_latency_ratio {ratio_limit:g}",
                    "max_latency_ratio",
                )
    if elapsed < analysis.interval:
        return WAIT
    if answered < analysis.min_requests:
        return Verdict("wait", f"step {step + 1} waits for min_requests: "
                               f"{answered} of {analysis.min_requests} canary requests")
    following = step + 1
    if following >= len(analysis.steps) or analysis.steps[following] >= 100.0:
        return Verdict("promote", f"every step passed ({answered} canary requests in the last)")
    return Verdict(
        "advance",
        f"step {following + 1}: {analysis.steps[following]:g}% "
        f"(step {step + 1} passed with {answered} canary requests)",
    )
