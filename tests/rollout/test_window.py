"""A window's figures from two counter snapshots; quantiles as Prometheus computes them."""

from __future__ import annotations

import math

import pytest
from prometheus_client import CollectorRegistry

from shoal.rollout.metrics import RolloutMetrics
from shoal.rollout.window import quantile, shadow_figures, variant_figures, window

INF = math.inf


@pytest.fixture(autouse=True)
def _single_process(monkeypatch: pytest.MonkeyPatch) -> None:
    # RolloutMetrics.snapshot() reads the multiprocess files when this is set.
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)


# -- window ----------------------------------------------------------------------------------------


def test_window_subtracts_the_baseline() -> None:
    current = {"requests|canary|success": 15.0, "requests|stable|success": 100.0}
    baseline = {"requests|canary|success": 5.0, "requests|stable|success": 40.0}
    assert window(current, baseline) == {"requests|canary|success": 10.0, "requests|stable|success": 60.0}


def test_window_counts_a_key_new_since_the_baseline_from_zero() -> None:
    assert window({"requests|canary|500": 3.0}, {}) == {"requests|canary|500": 3.0}
    assert window({"requests|canary|500": 3.0}, {"requests|canary|success": 9.0}) == {
        "requests|canary|500": 3.0
    }


def test_window_ignores_keys_only_in_the_baseline() -> None:
    assert window({}, {"requests|canary|success": 9.0}) == {}


def test_window_treats_a_counter_below_its_baseline_as_restarted() -> None:
    current = {"requests|canary|success": 4.0, "requests|stable|success": 50.0}
    baseline = {"requests|canary|success": 90.0, "requests|stable|success": 50.0}
    # Every count is from zero then: never half restarted, half subtracted.
    assert window(current, baseline) == {"requests|canary|success": 4.0, "requests|stable|success": 50.0}


def test_window_does_not_change_its_arguments() -> None:
    current, baseline = {"a": 2.0}, {"a": 1.0}
    window(current, baseline)
    assert current == {"a": 2.0} and baseline == {"a": 1.0}


# -- variant_figures --------------------------------------------------------------------------------


def test_variant_figures_tell_5xx_from_4xx_and_leave_out_cancelled() -> None:
    delta = {
        "requests|canary|success": 80.0,
        "requests|canary|500": 6.0,
        "requests|canary|503": 4.0,
        "requests|canary|400": 7.0,
        "requests|canary|404": 3.0,
        "requests|canary|cancelled": 50.0,
        "requests|stable|500": 99.0,  # another role: not counted
        "requests|canaryx|500": 99.0,  # not the canary either
    }
    figures = variant_figures(delta, "canary")
    assert figures["requests"] == 100  # 80 + 10 + 10, cancelled left out
    assert figures["errors"] == 10
    assert figures["client_errors"] == 10
    assert figures["error_rate"] == pytest.approx(0.1)
    assert figures["p50_seconds"] is None and figures["p99_seconds"] is None


def test_variant_figures_of_an_idle_variant() -> None:
    figures = variant_figures({}, "stable")
    assert figures == {"requests": 0, "errors": 0, "client_errors": 0, "error_rate": 0.0,
                       "p50_seconds": None, "p99_seconds": None}


def test_variant_figures_with_only_cancelled_requests_have_no_error_rate() -> None:
    figures = variant_figures({"requests|canary|cancelled": 5.0}, "canary")
    assert figures["requests"] == 0
    assert figures["error_rate"] == 0.0


def test_variant_figures_read_the_role_histogram() -> None:
    delta = {
        "bucket|canary|0.1": 10.0, "bucket|canary|0.5": 30.0, "bucket|canary|1.0": 40.0,
        "bucket|canary|+Inf": 40.0,
        "bucket|stable|0.1": 1000.0, "bucket|stable|+Inf": 1000.0,
    }
    figures = variant_figures(delta, "canary")
    assert figures["p50_seconds"] == pytest.approx(0.3)
    assert figures["p99_seconds"] == pytest.approx(0.98)


def test_variant_figures_sort_bucket_bounds_numerically() -> None:
    # Dict order (and string order: "10.0" < "5.0") must not matter.
    delta = {"bucket|canary|+Inf": 4.0, "bucket|canary|10.0": 4.0, "bucket|canary|5.0": 2.0}
    assert variant_figures(delta, "canary")["p50_seconds"] == pytest.approx(5.0)


def test_figures_from_real_counters_match_a_hand_count() -> None:
    metrics = RolloutMetrics(CollectorRegistry())
    for _ in range(10):
        metrics.answered("iris", "canary", "success", 0.003)  # in (0.002, 0.005]
    for _ in range(9):
        metrics.answered("iris", "canary", "success", 0.2)  # in (0.1, 0.25]
    metrics.answered("iris", "canary", "503", 0.2)
    metrics.answered("iris", "stable", "success", 9.0)  # another role
    figures = variant_figures(metrics.snapshot()["iris"], "canary")
    assert figures["requests"] == 20
    assert figures["errors"] == 1
    assert figures["error_rate"] == pytest.approx(0.05)
    # rank 10: the whole of (0.002, 0.005], nothing below it -> 0.002 + 0.003 * 10/10
    assert figures["p50_seconds"] == pytest.approx(0.005)
    # rank 19.8: (0.1, 0.25], 10 below it and 10 in it -> 0.1 + 0.15 * 9.8/10
    assert figures["p99_seconds"] == pytest.approx(0.247)


# -- shadow_figures -----------------------------------------------------------------------------------


def test_shadow_figures_give_agreement_and_mean_difference_per_output() -> None:
    delta = {
        "shadow_skipped": 3.0,
        "shadow|label|compared": 10.0, "shadow|label|agreed": 7.0, "shadow|label|mismatches": 1.0,
        "shadow|score|compared": 4.0, "shadow|score|abs_difference": 1.0,
        "shadow|empty|mismatches": 2.0,
        "requests|shadow|success": 10.0,
    }
    figures = shadow_figures(delta)
    assert figures["skipped"] == 3
    assert figures["outputs"] == {
        "empty": {"compared": 0, "mismatches": 2, "agreement": None},
        "label": {"compared": 10, "mismatches": 1, "agreement": pytest.approx(0.7)},
        "score": {"compared": 4, "mismatches": 0, "mean_abs_difference": pytest.approx(0.25)},
    }


def test_shadow_figures_leave_out_outputs_with_nothing_in_the_window() -> None:
    delta = window(
        {"shadow|old|compared": 5.0, "shadow|old|agreed": 5.0, "shadow|new|compared": 2.0},
        {"shadow|old|compared": 5.0, "shadow|old|agreed": 5.0},
    )
    assert shadow_figures(delta)["outputs"] == {"new": {"compared": 2, "mismatches": 0, "agreement": 0.0}}


def test_shadow_figures_of_nothing() -> None:
    assert shadow_figures({}) == {"skipped": 0, "outputs": {}}


# -- quantile: against Prometheus's histogram_quantile, worked by hand ----------------------------------


BUCKETS = [(0.1, 10.0), (0.5, 30.0), (1.0, 40.0), (INF, 40.0)]


@pytest.mark.parametrize(
    ("q", "expected"),
    [
        # rank 20 -> (0.1, 0.5]: 10 below, 20 in it -> 0.1 + 0.4 * 10/20
        (0.5, 0.3),
        # rank 39.6 -> (0.5, 1.0]: 30 below, 10 in it -> 0.5 + 0.5 * 9.6/10
        (0.99, 0.98),
        # rank 10 -> the first bucket, whose lower bound is 0 -> 0.1 * 10/10
        (0.25, 0.1),
        # rank 4 -> 0.1 * 4/10
        (0.1, 0.04),
        # rank 40 -> (0.5, 1.0] in full
        (1.0, 1.0),
    ],
)
def test_quantile_interpolates_as_histogram_quantile(q: float, expected: float) -> None:
    assert quantile(BUCKETS, q) == pytest.approx(expected)


def test_quantile_in_the_inf_bucket_is_the_largest_finite_bound() -> None:
    buckets = [(0.1, 5.0), (0.5, 8.0), (INF, 10.0)]
    assert quantile(buckets, 0.99) == pytest.approx(0.5)  # rank 9.9 > 8
    assert quantile(buckets, 0.9) == pytest.approx(0.5)  # rank 9 > 8
    assert quantile(buckets, 0.8) == pytest.approx(0.5)  # rank 8: the end of (0.1, 0.5]
    assert quantile(buckets, 0.5) == pytest.approx(0.1)  # rank 5: the end of the first


def test_quantile_with_every_observation_beyond_the_finite_buckets() -> None:
    assert quantile([(0.1, 0.0), (1.0, 0.0), (INF, 7.0)], 0.5) == pytest.approx(1.0)


def test_quantile_skips_empty_buckets_below_the_rank() -> None:
    # rank 5 -> (0.2, 0.4]: 0 below, 10 in it -> 0.2 + 0.2 * 5/10
    assert quantile([(0.1, 0.0), (0.2, 0.0), (0.4, 10.0), (INF, 10.0)], 0.5) == pytest.approx(0.3)


def test_quantile_of_a_single_bucket() -> None:
    assert quantile([(0.2, 4.0), (INF, 4.0)], 0.5) == pytest.approx(0.1)


@pytest.mark.parametrize(
    "buckets", [[], [(0.1, 0.0), (INF, 0.0)], [(INF, 0.0)]],
)
def test_quantile_of_an_empty_window_is_none(buckets: list[tuple[float, float]]) -> None:
    assert quantile(buckets, 0.5) is None
    assert quantile(buckets, 0.99) is None
