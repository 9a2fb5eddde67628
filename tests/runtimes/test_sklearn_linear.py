"""The linear classifiers' fast ``predict`` / ``decision_function``: the estimator's own
answers, bit for bit, and the estimator's own checks for anything but a plain float64 matrix."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression, RidgeClassifier, SGDClassifier
from sklearn.svm import LinearSVC

from shoal.runtimes.sklearn import linear_methods

RNG = np.random.default_rng(7)
X = RNG.standard_normal((120, 6))
TWO = (X[:, 0] > 0).astype(int)
THREE = np.digitize(X[:, 1], [-0.5, 0.5])


@pytest.mark.parametrize(
    "estimator",
    [
        LogisticRegression().fit(X, TWO),
        LogisticRegression().fit(X, THREE),
        LogisticRegression().fit(X, np.array(["a", "b", "c"])[THREE]),
        LogisticRegression(fit_intercept=False).fit(X, THREE),
        SGDClassifier(random_state=0).fit(X, THREE),
        LinearSVC().fit(X, TWO),
    ],
    ids=["binary", "multiclass", "string-classes", "no-intercept", "sgd", "linear-svc"],
)
def test_same_answers_as_the_estimator(estimator: object) -> None:
    fast = linear_methods(estimator, 6)
    assert sorted(fast) == ["decision_function", "predict"]
    for rows in (X[:1], X[:32], X):
        for method, call in fast.items():
            ours, theirs = call(rows), getattr(estimator, method)(rows)
            assert ours.dtype == theirs.dtype
            assert np.array_equal(ours, theirs)


def test_other_inputs_get_the_estimators_own_checks() -> None:
    estimator = LogisticRegression().fit(X, THREE)
    predict = linear_methods(estimator, 6)["predict"]
    assert np.array_equal(predict(X[:3].astype(np.float32)), estimator.predict(X[:3].astype(np.float32)))
    assert np.array_equal(predict(X[:2].tolist()), estimator.predict(X[:2]))
    for bad, message in ((X[:1, :4], "features"), (np.full((1, 6), np.nan), "NaN"),
                         (X[0], "2D array"), (np.empty((0, 6)), "0 sample")):
        with pytest.raises(ValueError, match=message):
            predict(bad)


def test_estimators_it_leaves_alone() -> None:
    # predict overridden (RidgeClassifier), fitted with feature names (sklearn warns about
    # arrays without them), and a sparsified model.
    assert linear_methods(RidgeClassifier().fit(X, TWO), 6) == {}
    named = LogisticRegression().fit(pd.DataFrame(X, columns=list("abcdef")), TWO)
    assert linear_methods(named, 6) == {}
    sparse = LogisticRegression().fit(X, TWO).sparsify()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert linear_methods(sparse, 6) == {}
