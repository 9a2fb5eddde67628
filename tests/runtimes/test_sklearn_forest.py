"""The forests' fast ``predict`` / ``predict_proba``: the estimator's own answers, bit for
bit, its own input checks, and the forests it must leave to scikit-learn."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.ensemble import (
    ExtraTreesClassifier,
    ExtraTreesRegressor,
    RandomForestClassifier,
    RandomForestRegressor,
)

from shoal.runtimes.sklearn import forest_methods

RNG = np.random.default_rng(11)
X = RNG.standard_normal((200, 5))
THREE = np.digitize(X[:, 0] + X[:, 1], [-0.5, 0.5])
Y = X @ np.arange(1.0, 6.0) + RNG.standard_normal(200)


@pytest.mark.parametrize(
    "estimator",
    [
        RandomForestClassifier(n_estimators=30, random_state=0).fit(X, THREE),
        RandomForestClassifier(n_estimators=30, random_state=0).fit(X, np.array(["x", "y", "z"])[THREE]),
        ExtraTreesClassifier(n_estimators=30, random_state=0).fit(X, THREE),
        RandomForestRegressor(n_estimators=30, random_state=0).fit(X, Y),
        ExtraTreesRegressor(n_estimators=30, random_state=0).fit(X, Y),
    ],
    ids=["rf-classifier", "string-classes", "et-classifier", "rf-regressor", "et-regressor"],
)
def test_same_answers_as_the_estimator(estimator: object) -> None:
    fast = forest_methods(estimator, 5)
    assert "predict" in fast
    probes = RNG.standard_normal((500, 5)) * 2
    for rows in (probes[:1], probes[:32], probes, X, X.astype(np.float32), X[:3].tolist()):
        for method, call in fast.items():
            ours, theirs = call(rows), getattr(estimator, method)(rows)
            assert ours.dtype == theirs.dtype
            assert np.array_equal(ours, theirs)


def test_bad_input_gets_the_forests_own_errors() -> None:
    forest = RandomForestClassifier(n_estimators=5, random_state=0).fit(X, THREE)
    predict = forest_methods(forest, 5)["predict"]
    for bad, message in ((X[:1, :3], "features"), (np.full((1, 5), np.inf), "infinity"),
                         (X[0], "2D array")):
        with pytest.raises(ValueError, match=message):
            forest.predict(bad)
        with pytest.raises(ValueError, match=message):
            predict(bad)
    nan = np.full((1, 5), np.nan)  # forests take missing values: the same answer for them
    assert np.array_equal(predict(nan), forest.predict(nan))


def test_forests_it_leaves_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    two_outputs = RandomForestRegressor(n_estimators=5, random_state=0).fit(X, np.c_[Y, Y])
    assert forest_methods(two_outputs, 5) == {}
    parallel = RandomForestClassifier(n_estimators=5, n_jobs=2, random_state=0).fit(X, THREE)
    monkeypatch.setattr("shoal.serving.executor.usable_cpus", lambda: 2)
    assert forest_methods(parallel, 5) == {}
    monkeypatch.setattr("shoal.serving.executor.usable_cpus", lambda: 1)
    assert "predict_proba" in forest_methods(parallel, 5)  # one CPU: trees run in turn anyway


def test_a_disagreeing_fast_path_is_not_used(monkeypatch: pytest.MonkeyPatch) -> None:
    forest = RandomForestClassifier(n_estimators=5, random_state=0).fit(X, THREE)
    original = forest.predict_proba
    monkeypatch.setattr(forest, "predict_proba", lambda rows: original(rows) + 1e-16)
    assert forest_methods(forest, 5) == {}
