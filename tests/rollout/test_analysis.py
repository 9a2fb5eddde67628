"""Progressive delivery's judge: wait, advance, promote or roll back from a step's figures."""

from __future__ import annotations

from typing import Any

import pytest

from shoal.rollout.analysis import WAIT, judge
from shoal.rollout.spec import AnalysisSpec

INTERVAL = 60.0


def analysis(**fields: Any) -> AnalysisSpec:
    values: dict[str, Any] = {"steps": [5, 25, 50, 100], "interval": INTERVAL, "min_requests": 10}
    values.update(fields)
    return AnalysisSpec(**values)


def requests(role: str, outcome: str, count: int) -> dict[str, float]:
    return {f"requests|{role}|{outcome}": float(count)}


def latencies(role: str, seconds: float, count: int) -> dict[str, float]:
    """``count`` observations all in the bucket that ends at ``seconds``."""
    return {f"bucket|{role}|{seconds}": float(count), f"bucket|{role}|+Inf": float(count)}


def delta(*parts: dict[str, float]) -> dict[str, float]:
    merged: dict[str, float] = {}
    for part in parts:
        merged.update(part)
    return merged


HEALTHY = delta(requests("canary", "success", 20), requests("stable", "success", 200))


# -- rollback --------------------------------------------------------------------------------------


def test_an_error_rate_above_the_limit_rolls_back_at_once() -> None:
    figures = delta(requests("canary", "success", 16), requests("canary", "500", 4))
    verdict = judge(analysis(max_error_rate=0.1), 0, 1.0, figures)  # long before the interval
    assert verdict.action == "rollback"
    assert verdict.guard == "max_error_rate"
    assert "0.200 > max_error_rate 0.1" in verdict.detail
    assert "4 of 20 requests" in verdict.detail


def test_the_error_rate_is_not_judged_before_min_requests() -> None:
    figures = requests("canary", "500", 9)  # every one failed, but 9 < 10
    assert judge(analysis(max_error_rate=0.1), 0, 1.0, figures) == WAIT
    verdict = judge(analysis(max_error_rate=0.1), 0, INTERVAL, figures)
    assert verdict.action == "wait"
    assert "9 of 10 canary requests" in verdict.detail
    # The tenth request makes it judged.
    assert judge(analysis(max_error_rate=0.1), 0, 1.0, requests("canary", "500", 10)).action == "rollback"


def test_an_error_rate_at_the_limit_holds() -> None:
    figures = delta(requests("canary", "success", 18), requests("canary", "503", 2))
    assert judge(analysis(max_error_rate=0.1), 0, 1.0, figures) == WAIT


def test_client_errors_and_cancelled_requests_do_not_count_against_the_canary() -> None:
    figures = delta(requests("canary", "success", 10), requests("canary", "400", 30),
                    requests("canary", "404", 30), requests("canary", "cancelled", 30))
    assert judge(analysis(max_error_rate=0.01), 0, 1.0, figures) == WAIT


def test_cancelled_requests_do_not_count_toward_min_requests() -> None:
    figures = delta(requests("canary", "success", 9), requests("canary", "cancelled", 50))
    verdict = judge(analysis(), 0, INTERVAL, figures)
    assert verdict.action == "wait"
    assert "9 of 10" in verdict.detail


def test_stable_errors_do_not_roll_back_the_canary() -> None:
    figures = delta(requests("canary", "success", 20), requests("stable", "500", 200))
    assert judge(analysis(max_error_rate=0.0), 0, 1.0, figures) == WAIT


def test_without_max_error_rate_errors_are_not_judged() -> None:
    figures = requests("canary", "500", 50)
    assert judge(analysis(), 0, 1.0, figures) == WAIT


def test_a_latency_ratio_above_the_limit_rolls_back_at_the_steps_end() -> None:
    figures = delta(HEALTHY, latencies("canary", 1.0, 20), latencies("stable", 0.1, 200))
    verdict = judge(analysis(max_latency_ratio=2.0), 0, INTERVAL, figures)
    assert verdict.action == "rollback"
    assert verdict.guard == "max_latency_ratio"
    # p99 of each: 0.99 of its only bucket (lower bound 0)
    assert "canary p99 990.00 ms / stable p99 99.00 ms = 10.00 > max_latency_ratio 2" in verdict.detail


def test_a_few_slow_requests_are_not_judged_before_the_steps_end() -> None:
    """A p99 of 20 requests is their slowest (one cold start): not enough to roll back."""
    figures = delta(HEALTHY, latencies("canary", 1.0, 20), latencies("stable", 0.1, 200))
    assert judge(analysis(max_latency_ratio=2.0), 0, 1.0, figures) == WAIT


def test_a_latency_ratio_is_judged_early_once_both_have_enough_requests() -> None:
    figures = delta(requests("canary", "success", 100), requests("stable", "success", 200),
                    latencies("canary", 1.0, 100), latencies("stable", 0.1, 200))
    verdict = judge(analysis(max_latency_ratio=2.0), 0, 1.0, figures)
    assert verdict.action == "rollback" and verdict.guard == "max_latency_ratio"


def test_a_latency_ratio_within_the_limit_holds() -> None:
    figures = delta(HEALTHY, latencies("canary", 0.15, 20), latencies("stable", 0.1, 200))
    assert judge(analysis(max_latency_ratio=2.0), 0, 1.0, figures) == WAIT


def test_the_latency_ratio_needs_stable_requests_in_the_step() -> None:
    figures = delta(requests("canary", "success", 20), latencies("canary", 10.0, 20))
    assert judge(analysis(max_latency_ratio=1.1), 0, 1.0, figures) == WAIT


def test_the_latency_ratio_is_not_judged_before_min_requests() -> None:
    figures = delta(requests("canary", "success", 5), requests("stable", "success", 200),
                    latencies("canary", 10.0, 5), latencies("stable", 0.1, 200))
    assert judge(analysis(max_latency_ratio=1.1), 0, 1.0, figures) == WAIT


def test_the_error_rate_guard_is_named_before_the_latency_guard() -> None:
    figures = delta(requests("canary", "500", 20), requests("stable", "success", 200),
                    latencies("canary", 10.0, 20), latencies("stable", 0.1, 200))
    verdict = judge(analysis(max_error_rate=0.1, max_latency_ratio=1.1), 0, 1.0, figures)
    assert verdict.guard == "max_error_rate"


def test_a_breach_rolls_back_even_after_the_interval() -> None:
    figures = requests("canary", "500", 20)
    assert judge(analysis(max_error_rate=0.5), 3, 10 * INTERVAL, figures).action == "rollback"


# -- wait ------------------------------------------------------------------------------------------


def test_a_healthy_step_waits_for_its_interval() -> None:
    assert judge(analysis(max_error_rate=0.1), 0, 0.0, HEALTHY) == WAIT
    assert judge(analysis(max_error_rate=0.1), 0, INTERVAL - 0.001, HEALTHY) == WAIT


def test_after_the_interval_a_step_waits_for_min_requests() -> None:
    verdict = judge(analysis(min_requests=50), 1, INTERVAL * 3, HEALTHY)
    assert verdict.action == "wait"
    assert verdict.detail == "step 2 waits for min_requests: 20 of 50 canary requests"


def test_a_step_with_no_requests_waits() -> None:
    verdict = judge(analysis(max_error_rate=0.0), 0, INTERVAL, {})
    assert verdict.action == "wait"
    assert "0 of 10" in verdict.detail


# -- advance and promote ---------------------------------------------------------------------------


def test_a_healthy_step_advances_after_its_interval() -> None:
    verdict = judge(analysis(max_error_rate=0.1, max_latency_ratio=2.0), 0, INTERVAL, HEALTHY)
    assert verdict.action == "advance"
    assert verdict.guard == ""
    assert verdict.detail == "step 2: 25% (step 1 passed with 20 canary requests)"
    assert judge(analysis(), 1, INTERVAL + 5, HEALTHY).detail.startswith("step 3: 50%")


def test_min_requests_zero_advances_with_no_requests() -> None:
    assert judge(analysis(min_requests=0, max_error_rate=0.0), 0, INTERVAL, {}).action == "advance"


def test_passing_the_step_before_100_promotes() -> None:
    verdict = judge(analysis(), 2, INTERVAL, HEALTHY)  # steps[3] is 100
    assert verdict.action == "promote"
    assert "every step passed (20 canary requests in the last)" == verdict.detail


def test_passing_the_last_step_below_100_promotes() -> None:
    spec = analysis(steps=[10, 30, 60])
    assert judge(spec, 1, INTERVAL, HEALTHY).action == "advance"
    assert judge(spec, 2, INTERVAL, HEALTHY).action == "promote"


def test_a_single_step_promotes_once_it_passes() -> None:
    spec = analysis(steps=[20])
    assert judge(spec, 0, INTERVAL - 1, HEALTHY) == WAIT
    assert judge(spec, 0, INTERVAL, HEALTHY).action == "promote"


@pytest.mark.parametrize("step", [0, 1, 2])
def test_a_promotion_still_needs_min_requests(step: int) -> None:
    spec = analysis(steps=[10, 30, 60], min_requests=100)
    assert judge(spec, step, INTERVAL, HEALTHY).action == "wait"
