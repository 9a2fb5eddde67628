"""The linear classifiers' fast ``predict`` / ``decision_function``: the estimator's own
answers, bit for bit, and the estimator's own checks for anything but a plain float64 matrix;
small requests for those methods answered on the event loop (``runs_on_loop``)."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
import joblib
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression, RidgeClassifier, SGDClassifier
from sklearn.svm import LinearSVC

from shoal import InferenceRequest, RequestedOutput, Tensor
from shoal.runtimes.sklearn import LOOP_VALUES, SKLearnModel, linear_methods

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


def served(estimator: object, tmp_path, **parameters) -> SKLearnModel:
    joblib.dump(estimator, tmp_path / "model.joblib")
    model = SKLearnModel("m", "1", tmp_path, parameters)
    model.load()
    return model


def rows(count: int, width: int = 6) -> InferenceRequest:
    return InferenceRequest([Tensor.from_numpy("input-0", np.ones((count, width)))])


def test_small_requests_for_the_fast_methods_run_on_the_loop(tmp_path) -> None:
    binary = served(LogisticRegression().fit(X, TWO), tmp_path)
    assert binary.runs_on_loop(rows(1))
    most = LOOP_VALUES // 6
    assert binary.runs_on_loop(rows(most)) and not binary.runs_on_loop(rows(most + 1))
    scores = rows(1)
    scores.outputs = [RequestedOutput("decision_function")]
    assert binary.runs_on_loop(scores)
    # predict_proba is the estimator's own method (its checks cost more than a hand-off).
    proba = rows(1)
    proba.outputs = [RequestedOutput("predict")] + [RequestedOutput("predict_proba")]
    assert not binary.runs_on_loop(proba)
    assert not served(LogisticRegression().fit(X, TWO), tmp_path,
                      method="predict_proba").runs_on_loop(rows(1))


def test_the_classes_scored_count_toward_the_bound(tmp_path) -> None:
    three = served(LogisticRegression().fit(X, THREE), tmp_path)  # three rows of weights
    most = LOOP_VALUES // (6 * 3)
    assert three.runs_on_loop(rows(most)) and not three.runs_on_loop(rows(most + 1))


def test_models_without_the_fast_path_never_run_on_the_loop(tmp_path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    assert not served(RidgeClassifier().fit(X, TWO), tmp_path / "a").runs_on_loop(rows(1))
    assert not served(RandomForestClassifier(n_estimators=2).fit(X, TWO),
                      tmp_path / "b").runs_on_loop(rows(1))


def test_answers_on_the_loop_are_the_estimators(tmp_path) -> None:
    import asyncio

    from shoal.serving.endpoint import ModelEndpoint
    from shoal.serving.executor import Executor

    estimator = LogisticRegression().fit(X, THREE)
    executor = Executor(threads=1)
    try:
        endpoint = ModelEndpoint(served(estimator, tmp_path), executor)
        for count in (1, 7):
            request = InferenceRequest([Tensor.from_numpy("input-0", X[:count].copy())])
            assert endpoint.model.runs_on_loop(request)
            response = asyncio.run(endpoint.infer(request))
            assert np.array_equal(response.outputs[0].data, estimator.predict(X[:count]))
    finally:
        executor.shutdown()
