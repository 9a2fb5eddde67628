"""The SHAP methods, and what each explains.

=============  =====================================  =========================================
method         runs                                   explains (sum(attributions) + base_value)
=============  =====================================  =========================================
tree           ``shap.TreeExplainer`` on the model's   the trees' raw output, exactly:
               trees, in the server process            scikit-learn forests and single trees:
                                                       ``predict_proba`` (classifiers) or
                                                       ``predict``; scikit-learn gradient
                                                       boosting: ``decision_function`` (log-odds)
                                                       or ``predict``; XGBoost, LightGBM,
                                                       CatBoost: ``predict_raw`` (the margin,
                                                       log-odds for classifiers), or
                                                       ``predict`` for a regression whose
                                                       prediction is its margin
linear         ``shap.LinearExplainer`` on the         ``decision_function`` (log-odds) of a
               coefficients (scikit-learn              linear classifier, ``predict`` of a
               ``linear_model``, linear SVMs)          linear regression, exactly
permutation    ``shap.PermutationExplainer``,          the output it is given (``output``, else
               calling the model through its endpoint  ``predict_proba`` if the model has it,
                                                       else the model's default output); exact
                                                       additivity, sampled attributions
kernel         ``shap.KernelExplainer``, through the   as permutation (a weighted regression;
               endpoint                                slower, for comparison with Kernel SHAP)
exact          ``shap.ExactExplainer``, through the    as permutation, exactly: 2^features
               endpoint                                coalitions (at most 14 features)
=============  =====================================  =========================================

Tree SHAP without background data is the path-dependent algorithm (the trees' own cover
statistics; base value: the trees' expected output); with a background (a file, or rows
sampled from requests when ``model.yaml`` asks for ``{rows: N}``) it is the interventional one
(base value: the mean raw output over the background). Linear SHAP's base value is the output
at the background's mean. The model-agnostic methods' base value is the mean output over the
background.

Everything here is synchronous and runs on a worker thread; shap is imported on first use.
"""

from __future__ import annotations

import importlib
import threading
import warnings
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from .errors import ExplainerUnavailable

#: Exact SHAP costs 2^features model evaluations per row and background row.
EXACT_MAX_FEATURES = 14
#: Background rows the model-agnostic, tree and linear methods use at most (sampled).
BACKGROUND_CAP = 100

_import_lock = threading.Lock()
_shap: Any = None


def imported() -> bool:
    """Whether :func:`import_shap` has succeeded (so calling it again costs nothing)."""
    return _shap is not None


def import_shap() -> Any:
    """shap, imported once (seconds: call it off the event loop)."""
    global _shap
    if _shap is not None:
        return _shap
    with _import_lock:
        try:
            with warnings.catch_warnings():  # shap's own deprecation noise, once per process
                warnings.simplefilter("ignore")
                _shap = importlib.import_module("shap")
            return _shap
        except ImportError:
            raise ExplainerUnavailable.missing("shap") from None


_warm = False
_warm_lock = threading.Lock()


def warm_up() -> None:
    """Import shap and compile (numba) what the model-agnostic methods run, once per process:
    seconds the first time, which explain() does not count against an explanation's timeout.
    numba's on-disk cache is turned on for shap's compiled functions where it can be, so
    the next process compiles less."""
    global _warm
    with _warm_lock:
        if _warm:
            return
        shap = import_shap()
        _cache_compiled(shap)
        background, row = np.zeros((2, 2)), np.ones((1, 2))
        for predict in (lambda z: z.sum(axis=1), lambda z: np.asarray(z, dtype=np.float64)):
            explainer = shap.explainers.Permutation(predict, shap.maskers.Independent(background), seed=0)
            explainer(row, max_evals=10, silent=True)
        _warm = True


def _cache_compiled(shap: Any) -> None:
    import sys

    try:
        from numba.core.registry import CPUDispatcher
    except ImportError:  # pragma: no cover - shap requires numba
        return
    for name, module in list(sys.modules.items()):
        if not name.startswith("shap.") or module is None:
            continue
        for value in list(vars(module).values()):
            if isinstance(value, CPUDispatcher) and type(getattr(value, "_cache", None)).__name__ == "NullCache":
                try:
                    value.enable_caching()
                except Exception:  # no writable cache folder: compile each time
                    pass


# -- what a model is -------------------------------------------------------------------------

_SKLEARN_FORESTS = {
    "RandomForestClassifier", "RandomForestRegressor", "ExtraTreesClassifier",
    "ExtraTreesRegressor", "DecisionTreeClassifier", "DecisionTreeRegressor",
    "ExtraTreeClassifier", "ExtraTreeRegressor",
}
_SKLEARN_BOOSTING = {
    "GradientBoostingClassifier", "GradientBoostingRegressor",
    "HistGradientBoostingClassifier", "HistGradientBoostingRegressor",
}
#: XGBoost objectives whose prediction is the margin itself.
_XGBOOST_IDENTITY = {"reg:squarederror", "reg:absoluteerror", "reg:pseudohubererror", "reg:quantileerror"}
_LIGHTGBM_IDENTITY = {"regression", "regression_l2", "l2", "mse", "mean_squared_error", "rmse",
                      "regression_l1", "l1", "mae", "huber", "fair", "quantile", "mape"}


@dataclass(frozen=True)
class Estimator:
    """A model object tree or linear SHAP can read, and the output its SHAP values add up to."""

    kind: str  # "tree" or "linear"
    obj: Any
    output: str  # the shoal output name whose values the explanation adds up to
    description: str


def find_estimator(model: Any) -> Estimator | None:
    """The tree ensemble or linear model inside a shoal runtime's model, if it has one here."""
    platform = getattr(model, "platform", "")
    if platform == "sklearn":
        return _sklearn(getattr(model, "estimator", None))
    if platform == "xgboost" and hasattr(model, "booster"):
        objective = str(getattr(model, "objective", ""))
        output = "predict" if objective in _XGBOOST_IDENTITY else "predict_raw"
        return Estimator("tree", model.booster, output, f"XGBoost ({objective})")
    if platform == "lightgbm" and hasattr(model, "booster"):
        objective = str(getattr(model, "objective", ""))
        output = "predict" if objective in _LIGHTGBM_IDENTITY else "predict_raw"
        return Estimator("tree", model.booster, output, f"LightGBM ({objective})")
    if platform == "catboost" and hasattr(model, "model") and hasattr(model, "prediction_types"):
        if model.model.get_cat_feature_indices() or model.model.get_text_feature_indices():
            return None  # string features: explained through the endpoint
        raw = model.prediction_types.get("predict") == "RawFormulaVal"
        return Estimator("tree", model.model, "predict" if raw else "predict_raw", "CatBoost")
    return None


def _sklearn(estimator: Any) -> Estimator | None:
    if estimator is None:
        return None
    cls = type(estimator)
    name, module = cls.__name__, cls.__module__
    classifier = hasattr(estimator, "classes_")
    if module.startswith(("sklearn.ensemble", "sklearn.tree")):
        if name in _SKLEARN_FORESTS:
            return Estimator("tree", estimator, "predict_proba" if classifier else "predict", name)
        if name in _SKLEARN_BOOSTING:
            return Estimator("tree", estimator, "decision_function" if classifier else "predict", name)
        return None
    if module.startswith(("sklearn.linear_model", "sklearn.svm")) and hasattr(estimator, "coef_"):
        if not hasattr(estimator, "intercept_") or (module.startswith("sklearn.svm") and "Linear" not in name):
            return None
        return Estimator("linear", estimator, "decision_function" if classifier else "predict", name)
    return None


# -- running them ----------------------------------------------------------------------------


@dataclass
class Result:
    values: np.ndarray  # [rows, features] or [rows, features, outputs]
    base_values: np.ndarray  # [rows] or [rows, outputs]


def _result(values: Any, base: Any, rows: int) -> Result:
    values = np.asarray(values, dtype=np.float64)
    base = np.asarray(base, dtype=np.float64)
    per_row = values.shape[2:]  # () or (outputs,)
    if base.shape != (rows, *per_row):
        base = np.broadcast_to(base.reshape(per_row) if base.size == int(np.prod(per_row)) else base,
                               (rows, *per_row)).copy()
    return Result(values, base)


def tree_explainer(estimator: Any, background: np.ndarray | None) -> Any:
    shap = import_shap()
    if background is None:
        return shap.TreeExplainer(estimator, feature_perturbation="tree_path_dependent")
    return shap.TreeExplainer(estimator, data=background, feature_perturbation="interventional")


def run_tree(explainer: Any, x: np.ndarray, dtype: Any) -> Result:
    explanation = explainer(x.astype(dtype, copy=False), check_additivity=False)
    return _result(explanation.values, explanation.base_values, len(x))


def linear_explainer(estimator: Any, background: np.ndarray) -> Any:
    shap = import_shap()
    return shap.LinearExplainer(estimator, shap.maskers.Independent(background, max_samples=len(background)))


def run_linear(explainer: Any, x: np.ndarray) -> Result:
    explanation = explainer(x)
    return _result(explanation.values, explanation.base_values, len(x))


def run_agnostic(
    method: str, predict: Callable[[np.ndarray], np.ndarray], x: np.ndarray,
    background: np.ndarray, max_evals: int,
) -> Result:
    """Permutation, kernel or exact SHAP of ``predict`` (which calls the model's endpoint)."""
    shap = import_shap()
    if method == "kernel":
        explainer = shap.KernelExplainer(predict, background)
        values = explainer.shap_values(x, nsamples=max_evals, silent=True)
        return _result(values, explainer.expected_value, len(x))
    masker = shap.maskers.Independent(background, max_samples=len(background))
    if method == "exact":
        explainer = shap.explainers.Exact(predict, masker)
        explanation = explainer(x, max_evals=2 ** x.shape[1], silent=True)
    else:
        explainer = shap.explainers.Permutation(predict, masker, seed=0)
        explanation = explainer(x, max_evals=max_evals, silent=True)
    return _result(explanation.values, explanation.base_values, len(x))


def cap_rows(background: np.ndarray, cap: int = BACKGROUND_CAP) -> np.ndarray:
    """At most ``cap`` rows, sampled without replacement (the same sample every time)."""
    if len(background) <= cap:
        return background
    chosen = np.random.default_rng(0).choice(len(background), cap, replace=False)
    return background[np.sort(chosen)]
