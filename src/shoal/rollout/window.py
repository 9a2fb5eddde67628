"""A rollout window's figures, from two counter snapshots: what the status shows and what the
analysis guards judge. Pure functions, no I/O."""

from __future__ import annotations

import math
from typing import Any


def window(current: dict[str, float], baseline: dict[str, float]) -> dict[str, float]:
    """Counts since ``baseline``. Any counter below its baseline means the counters
    restarted (a server restart): then every count is from zero, never a mix of the two."""
    if any(value < baseline.get(key, 0.0) for key, value in current.items()):
        return dict(current)
    return {key: value - baseline.get(key, 0.0) for key, value in current.items()}


def variant_figures(delta: dict[str, float], role: str) -> dict[str, Any]:
    outcomes = {
        key.split("|", 2)[2]: value
        for key, value in delta.items() if key.startswith(f"requests|{role}|")
    }
    answered = sum(v for k, v in outcomes.items() if k != "cancelled")
    server_errors = sum(v for k, v in outcomes.items() if k.isdigit() and int(k) >= 500)
    client_errors = sum(v for k, v in outcomes.items() if k.isdigit() and 400 <= int(k) < 500)
    buckets = sorted(
        (float(key.split("|", 2)[2]), value)
        for key, value in delta.items() if key.startswith(f"bucket|{role}|")
    )
    return {
        "requests": int(answered),
        "errors": int(server_errors),
        "client_errors": int(client_errors),
        "error_rate": server_errors / answered if answered else 0.0,
        "p50_seconds": quantile(buckets, 0.5),
        "p99_seconds": quantile(buckets, 0.99),
    }


def shadow_figures(delta: dict[str, float]) -> dict[str, Any]:
    outputs: dict[str, dict[str, float]] = {}
    for key, value in delta.items():
        if key.startswith("shadow|"):
            _, output, field = key.split("|", 2)
            outputs.setdefault(output, {})[field] = value
    figures = {}
    for output, counts in sorted(outputs.items()):
        if not any(counts.values()):
            continue  # nothing about it in this window (only in earlier ones)
        compared = counts.get("compared", 0.0)
        entry: dict[str, Any] = {"compared": int(compared), "mismatches": int(counts.get("mismatches", 0.0))}
        if "abs_difference" in counts:
            entry["mean_abs_difference"] = counts["abs_difference"] / compared if compared else None
        else:
            entry["agreement"] = counts.get("agreed", 0.0) / compared if compared else None
        figures[output] = entry
    return {"skipped": int(delta.get("shadow_skipped", 0.0)), "outputs": figures}


def quantile(buckets: list[tuple[float, float]], q: float) -> float | None:
    """The ``q`` quantile from cumulative histogram buckets ``[(upper bound, count)]``,
    interpolated inside its bucket as Prometheus's ``histogram_quantile`` does; None when
    the window has no requests."""
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    lower, below = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if math.isinf(bound):
                return lower  # beyond the largest finite bucket: its bound is all we know
            if count == below:
                return bound
            return lower + (bound - lower) * (rank - below) / (count - below)
        lower, below = bound, count
    return lower
