"""Bandit policies: the convergence targets, simulated against the policy objects.

Three Bernoulli arms with true rewards 0.2, 0.5 and 0.8, 5,000 requests each run: Thompson
sampling must send at least 90% of the last 1,000 to the best arm, epsilon-greedy (0.1) at
least 85%. Several seeds, so a pass is not one lucky draw.
"""

from __future__ import annotations

import numpy as np
import pytest

from shoal.graph.bandits import (
    UCB1,
    EpsilonGreedy,
    Policy,
    ThompsonSampling,
    make_policy,
)
from shoal.graph.state import BanditStore

TRUE_REWARDS = np.array([0.2, 0.5, 0.8])
REQUESTS = 5_000
LAST = 1_000


def simulate(policy: Policy, seed: int, store: BanditStore | None = None) -> float:
    """Share of the last 1,000 requests sent to the best arm."""
    rng = np.random.default_rng(seed)
    world = np.random.default_rng(seed + 1000)
    store = store or BanditStore(["a", "b", "c"])
    best = 0
    for step in range(REQUESTS):
        pulls, rewards = store.counts()
        arm = policy.choose(pulls, rewards, rng)
        store.update(arm, float(world.random() < TRUE_REWARDS[arm]))
        if step >= REQUESTS - LAST and arm == 2:
            best += 1
    return best / LAST


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_thompson_sampling_converges(seed: int) -> None:
    assert simulate(ThompsonSampling(), seed) >= 0.90


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_epsilon_greedy_converges(seed: int) -> None:
    assert simulate(EpsilonGreedy(0.1), seed) >= 0.85


def test_ucb1_prefers_the_best_arm() -> None:
    assert simulate(UCB1(), 4) >= 0.90


def test_convergence_through_the_persisted_store(tmp_path) -> None:
    store = BanditStore(["a", "b", "c"], tmp_path / "router.json")
    assert simulate(ThompsonSampling(), 5, store) >= 0.90
    reloaded = BanditStore(["a", "b", "c"], tmp_path / "router.json")
    assert reloaded.counts()[0].sum() == REQUESTS


def test_untried_arms_go_first() -> None:
    rng = np.random.default_rng(0)
    pulls, rewards = np.array([3.0, 0.0, 2.0]), np.array([3.0, 0.0, 2.0])
    assert UCB1().choose(pulls, rewards, rng) == 1
    assert EpsilonGreedy(0.0).choose(pulls, rewards, rng) == 1


def test_epsilon_zero_is_greedy_and_epsilon_one_explores() -> None:
    rng = np.random.default_rng(0)
    pulls, rewards = np.array([10.0, 10.0]), np.array([9.0, 1.0])
    assert {EpsilonGreedy(0.0).choose(pulls, rewards, rng) for _ in range(50)} == {0}
    assert {EpsilonGreedy(1.0).choose(pulls, rewards, rng) for _ in range(200)} == {0, 1}


def test_ties_are_broken_at_random() -> None:
    rng = np.random.default_rng(0)
    pulls, rewards = np.array([4.0, 4.0]), np.array([2.0, 2.0])
    assert {EpsilonGreedy(0.0).choose(pulls, rewards, rng) for _ in range(100)} == {0, 1}


def test_make_policy() -> None:
    assert isinstance(make_policy("thompson"), ThompsonSampling)
    assert make_policy("epsilon_greedy", 0.3).epsilon == 0.3  # type: ignore[attr-defined]
    with pytest.raises(ValueError):
        make_policy("softmax")
