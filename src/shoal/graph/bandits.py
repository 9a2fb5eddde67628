"""Multi-armed bandit policies over per-arm counts: epsilon-greedy, Thompson sampling, UCB1.

Each arm keeps ``pulls`` (feedback received) and ``rewards`` (their sum, each in [0, 1]).
Thompson sampling reads them as a Beta-Bernoulli posterior: Beta(1 + rewards, 1 + pulls -
rewards), so a fractional reward counts as that fraction of a success, as in Seldon's
routers (which turn a batch's mean reward into successes and failures).
"""

from __future__ import annotations

from typing import Protocol

import numpy as np


class Policy(Protocol):
    def choose(self, pulls: np.ndarray, rewards: np.ndarray, rng: np.random.Generator) -> int: ...


def _untried(pulls: np.ndarray, rng: np.random.Generator) -> int | None:
    untried = np.flatnonzero(pulls == 0)
    return int(rng.choice(untried)) if untried.size else None


def _best(scores: np.ndarray, rng: np.random.Generator) -> int:
    """The highest score, ties broken at random (never always the first arm)."""
    best = np.flatnonzero(scores == scores.max())
    return int(best[0]) if best.size == 1 else int(rng.choice(best))


class EpsilonGreedy:
    """With probability epsilon an arm at random, otherwise the best mean reward so far."""

    def __init__(self, epsilon: float) -> None:
        self.epsilon = epsilon

    def choose(self, pulls: np.ndarray, rewards: np.ndarray, rng: np.random.Generator) -> int:
        if rng.random() < self.epsilon:
            return int(rng.integers(len(pulls)))
        untried = _untried(pulls, rng)
        if untried is not None:
            return untried
        return _best(rewards / pulls, rng)


class ThompsonSampling:
    """Draw each arm's success rate from its Beta posterior; take the highest draw."""

    def choose(self, pulls: np.ndarray, rewards: np.ndarray, rng: np.random.Generator) -> int:
        return int(np.argmax(rng.beta(1.0 + rewards, 1.0 + pulls - rewards)))


class UCB1:
    """Mean reward plus sqrt(2 ln N / n): optimism for the arms tried least."""

    def choose(self, pulls: np.ndarray, rewards: np.ndarray, rng: np.random.Generator) -> int:
        untried = _untried(pulls, rng)
        if untried is not None:
            return untried
        bonus = np.sqrt(2.0 * np.log(pulls.sum()) / pulls)
        return _best(rewards / pulls + bonus, rng)


def make_policy(strategy: str, epsilon: float = 0.1) -> Policy:
    if strategy == "epsilon_greedy":
        return EpsilonGreedy(epsilon)
    if strategy == "thompson":
        return ThompsonSampling()
    if strategy == "ucb1":
        return UCB1()
    raise ValueError(f"unknown bandit strategy {strategy!r}")
