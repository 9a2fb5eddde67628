"""The KPA decision, driven with made-up time (no clocks, no processes)."""

from __future__ import annotations

from shoal.serving.autoscale.config import AutoscalingConfig
from shoal.serving.autoscale.kpa import Kpa


def kpa(**fields: object) -> Kpa:
    settings = AutoscalingConfig(**{
        "min_replicas": 0, "max_replicas": 8, "target_concurrency": 2,
        "stable_window": "60s", "panic_window": "6s", "scale_to_zero_after": "300s",
        **fields,
    }).resolved()
    return Kpa(settings, now=0.0)


def run(k: Kpa, start: float, seconds: float, concurrency: float, ready: int) -> tuple[int, bool]:
    """Feed one sample per second; returns the last (desired, panicking)."""
    t = start
    decision = None
    while t < start + seconds:
        t += 1.0
        k.observe(t, concurrency, concurrency > 0)
        decision = k.decide(t, ready)
    assert decision is not None
    return decision.desired, decision.panicking


def test_steady_load_asks_for_concurrency_over_target() -> None:
    k = kpa()
    assert run(k, 0, 120, concurrency=6.0, ready=3) == (3, False)
    assert run(k, 120, 120, concurrency=7.0, ready=3) == (4, False)  # ceil(7 / 2)


def test_max_and_min_replicas_bound_the_answer() -> None:
    assert run(kpa(max_replicas=4), 0, 120, 100.0, ready=4)[0] == 4
    assert run(kpa(min_replicas=2), 0, 120, 0.5, ready=2)[0] == 2


def test_a_burst_panics_within_the_panic_window_and_scales_up_at_once() -> None:
    k = kpa()
    run(k, 0, 120, concurrency=2.0, ready=1)  # steady: one replica
    # 16 in flight against one replica: the 6 s panic window sees it at once, the 60 s stable
    # window barely does.
    k.observe(121, 16.0, True)
    decision = k.decide(121, ready=1)
    assert decision.panicking
    assert decision.desired >= 3
    assert decision.stable_concurrency < 3  # the stable window alone would not have scaled


def test_no_scale_down_while_panicking_and_panic_ends_after_a_stable_window() -> None:
    k = kpa()
    run(k, 0, 10, concurrency=16.0, ready=1)
    desired, panicking = run(k, 10, 5, concurrency=16.0, ready=8)
    assert panicking and desired == 8
    # The load drops: still panicking (and not scaling down) until a stable window has passed
    # without the panic condition.
    desired, panicking = run(k, 15, 30, concurrency=1.0, ready=8)
    assert panicking and desired == 8
    desired, panicking = run(k, 45, 40, concurrency=1.0, ready=8)
    assert not panicking
    assert desired < 8


def test_scale_down_at_most_halves_per_decision() -> None:
    k = kpa(stable_window="10s", panic_window="1s")
    run(k, 0, 20, concurrency=0.5, ready=8)
    k.observe(21, 0.5, True)
    assert k.decide(21, ready=8).desired == 4


def test_scale_to_zero_only_after_the_idle_time() -> None:
    k = kpa(stable_window="10s", panic_window="1s", scale_to_zero_after="30s")
    run(k, 0, 5, concurrency=1.0, ready=1)
    desired, _ = run(k, 5, 20, concurrency=0.0, ready=1)
    assert desired == 1  # idle for 20 s < 30 s: keeps its last replica
    k.observe(36, 0.0, False)
    decision = k.decide(36, ready=1)
    assert (decision.desired, decision.reason) == (0, "idle")


def test_a_model_that_may_not_scale_to_zero_keeps_one_replica() -> None:
    k = kpa(min_replicas=1, scale_to_zero_after="1s", stable_window="10s", panic_window="1s")
    assert run(k, 0, 100, concurrency=0.0, ready=1)[0] == 1


def test_scale_down_takes_one_halving_step_per_two_seconds() -> None:
    k = kpa(stable_window="10s", panic_window="1s")
    for t in range(1, 21):  # a long quiet spell (but not idle): one in flight on average
        k.observe(t * 0.5, 1.0, True)
    assert k.decide(10.0, ready=8).desired == 4
    k.observe(10.5, 1.0, True)
    assert k.decide(10.5, ready=4).desired == 4  # 0.5 s later: no second step yet
    k.observe(12.0, 1.0, True)
    assert k.decide(12.0, ready=4).desired == 2
