"""scikit-learn estimators and pipelines saved with joblib or pickle.

Loading a pickle runs code from the file, so only serve repositories you trust; Shoal refuses
artifacts that any user on the machine could have rewritten (world-writable file or folder).

Outputs are estimator methods: ``predict`` by default, ``predict_proba`` (or any method in
:data:`METHODS` the estimator has) when a request names it as an output or ``model.yaml``
sets ``parameters.method``.

Random forests and extra-trees (one output, trees run one after another) answer ``predict``
and ``predict_proba`` through :func:`forest_methods`: the forest validates the input once, as
scikit-learn does, then each tree's fitted ``tree_`` predicts and the results are summed in
the estimators' order, which is exactly what scikit-learn computes; what it skips is
scikit-learn's per-tree machinery around those calls (a joblib task, a config context and a
warnings filter copy, a fitted check and a feature count per tree), which costs several times
the trees' own work on a small batch. A load-time check on probe rows falls back to the
estimator's own methods if the two ever disagree.

Linear classifiers answer ``predict`` and ``decision_function`` through
:func:`linear_methods`, a matrix product; a small request for those runs on the event loop
(:meth:`SKLearnModel.runs_on_loop`), since the hand-off to a model thread costs more.
"""

from __future__ import annotations

from typing import Any, Callable

import joblib
import numpy as np

from ..datatypes import datatype_of
from ..errors import InvalidInput, LoadError
from ..model import Model
from ..types import InferenceRequest, Tensor, TensorSpec
from . import IMPORT_LOCK
from .tabular import features, tabular_inputs
from .trust import refuse_untrusted

ARTIFACTS = ("model.joblib", "model.pkl", "model.pickle")
METHODS = ("predict", "predict_proba", "predict_log_proba", "decision_function", "transform")
INPUT_NAME = "input-0"
#: The most input values (times the classes scored) a linear model's request may hold to be
#: answered on the event loop: about 20 µs of checks and product here, and bounded.
LOOP_VALUES = 1 << 14


class SKLearnModel(Model):
    platform = "sklearn"
    accepted_parameters = frozenset({"method"})

    def load(self) -> None:
        artifact = next((self.path / a for a in ARTIFACTS if (self.path / a).is_file()), None)
        if artifact is None:
            raise LoadError(f"no scikit-learn artifact ({', '.join(ARTIFACTS)}) in {self.path}")
        refuse_untrusted(artifact)
        try:
            with IMPORT_LOCK:  # unpickling imports the estimator's modules
                self.estimator = joblib.load(artifact)
        except Exception as exc:
            raise LoadError(f"cannot read {artifact.name}: {type(exc).__name__}: {exc}") from exc
        self.methods = [m for m in METHODS if callable(getattr(self.estimator, m, None))]
        if not self.methods:
            raise LoadError(f"{artifact.name} holds a {type(self.estimator).__name__}, not an estimator")
        self.default_methods = self._default_methods()
        #: Each method as called per request: the estimator's bound method, or a fast path.
        self.calls: dict[str, Callable[[Any], Any]] = {
            m: getattr(self.estimator, m) for m in self.methods
        }
        count = getattr(self.estimator, "n_features_in_", None)
        #: The methods that answer through the linear fast path: a matrix product, cheap
        #: enough on a small request to run on the event loop (``runs_on_loop``).
        self.loop_methods: frozenset[str] = frozenset()
        self._loop_width = 1
        if count:
            self.calls.update(forest_methods(self.estimator, int(count)))
            linear = linear_methods(self.estimator, int(count))
            self.calls.update(linear)
            self.loop_methods = frozenset(linear)
            coef = getattr(self.estimator, "coef_", None)
            self._loop_width = coef.shape[0] if linear and coef.ndim == 2 else 1
        self.inputs = tabular_inputs(
            self.inputs, INPUT_NAME, "FP64", int(count) if count else None, artifact.name,
            any_datatype=True,
        )
        self.outputs = [self._output_spec(m) for m in self.methods]

    def _default_methods(self) -> list[str]:
        wanted = self.parameters.get("method", "predict")
        wanted = [wanted] if isinstance(wanted, str) else list(wanted)
        missing = [m for m in wanted if m not in self.methods]
        if missing:
            raise LoadError(
                f"parameters.method asks for {missing}; this estimator offers {self.methods}"
            )
        return wanted

    def _output_spec(self, method: str) -> TensorSpec:
        classes = getattr(self.estimator, "classes_", None)
        if method == "predict":
            datatype = datatype_of(np.asarray(classes)) if classes is not None else "FP64"
            targets = getattr(self.estimator, "n_outputs_", 1)
            return TensorSpec(method, datatype, (-1,) if targets == 1 else (-1, targets))
        if method in ("predict_proba", "predict_log_proba") and classes is not None:
            return TensorSpec(method, "FP64", (-1, len(classes)))
        if method == "decision_function" and classes is not None and len(classes) == 2:
            return TensorSpec(method, "FP64", (-1,))
        return TensorSpec(method, "FP64", (-1, -1))

    def runs_on_loop(self, request: InferenceRequest) -> bool:
        """A request of at most ``LOOP_VALUES`` input values times classes, asking only for
        methods of the linear fast path: a product of a few microseconds, less than the hand-off
        to a model thread and back (measured on one core: +8 % requests/s for one-row gRPC,
        +10 % for batched REST)."""
        if not self.loop_methods:
            return False
        methods = request.requested_output_names or self.default_methods
        if not self.loop_methods.issuperset(methods):
            return False
        values = 0
        for tensor in request.inputs:
            values += tensor.data.size
        return values * self._loop_width <= LOOP_VALUES

    def predict(self, request: InferenceRequest) -> list[Tensor]:
        methods = request.requested_output_names or self.default_methods
        for method in methods:
            if method not in self.methods:
                raise InvalidInput(
                    f"model {self.name!r} has no output {method!r}; it offers {self.methods}"
                )
        matrix = features(request, self.inputs)
        calls = self.calls
        return [Tensor.from_numpy(m, calls[m](matrix)) for m in methods]


def forest_methods(estimator: Any, n_features: int) -> dict[str, Callable[[Any], Any]]:
    """``predict`` and ``predict_proba`` of a one-output random forest or extra-trees model
    whose trees would run one after another anyway (``n_jobs`` None or 1, or one usable CPU),
    summing the trees' predictions in scikit-learn's order; {} for anything else, or if the
    result differs from the estimator's own on probe rows by a single bit."""
    try:
        from sklearn.ensemble import (
            ExtraTreesClassifier,
            ExtraTreesRegressor,
            RandomForestClassifier,
            RandomForestRegressor,
        )
    except ImportError:  # pragma: no cover - scikit-learn without its ensemble module
        return {}
    kind = type(estimator)
    if kind not in (RandomForestClassifier, ExtraTreesClassifier, RandomForestRegressor,
                    ExtraTreesRegressor):
        return {}
    from ..serving.executor import usable_cpus

    trees = list(getattr(estimator, "estimators_", ()))
    if (
        not trees or getattr(estimator, "n_outputs_", None) != 1
        or not (estimator.n_jobs in (None, 1) or usable_cpus() == 1)
    ):
        return {}
    try:
        validate = estimator._validate_X_predict  # the forest's own input checks, run once
        predictors = [t.tree_.predict for t in trees]
    except AttributeError:  # a scikit-learn whose forests are built otherwise
        return {}
    count = float(len(trees))

    if kind in (RandomForestClassifier, ExtraTreesClassifier):
        classes = estimator.classes_
        width = int(estimator.n_classes_)

        def predict_proba(X: Any) -> np.ndarray:
            X = validate(X)
            total = np.zeros((X.shape[0], width), dtype=np.float64)
            for tree in predictors:
                total += tree(X)[:, :width]
            total /= count
            return total

        def predict(X: Any) -> np.ndarray:
            return classes.take(np.argmax(predict_proba(X), axis=1), axis=0)

        fast = {"predict": predict, "predict_proba": predict_proba}
    else:

        def predict(X: Any) -> np.ndarray:
            X = validate(X)
            total = np.zeros(X.shape[0], dtype=np.float64)
            for tree in predictors:
                total += tree(X)[:, 0]
            total /= count
            return total

        fast = {"predict": predict}
    rows = np.random.default_rng(0).standard_normal((16, n_features)) * 3
    try:
        for method, call in fast.items():
            if not np.array_equal(call(rows), getattr(estimator, method)(rows)):
                return {}
    except Exception:  # whatever the estimator makes of the probe, it keeps its own methods
        return {}
    return fast


def linear_methods(estimator: Any, n_features: int) -> dict[str, Callable[[Any], Any]]:
    """``predict`` and ``decision_function`` of a scikit-learn linear classifier
    (LogisticRegression, SGDClassifier, LinearSVC, ...) on a dense float64 matrix: the same
    arithmetic as scikit-learn (``X @ coef_.T + intercept_``, then the class by sign or
    argmax), without its per-call input machinery (array-API namespace lookups, dataframe
    checks, config reads), which costs several times the product itself on a one-row
    request. Any other input (a list, another dtype, a wrong width, NaN or inf) goes to the
    estimator's own method, so its checks and errors are unchanged. {} for other estimators,
    one fitted with feature names, or if the result differs from the estimator's own on probe
    rows by a single bit."""
    try:
        from sklearn.linear_model._base import LinearClassifierMixin
    except ImportError:  # pragma: no cover - a scikit-learn that moved these classes
        return {}
    kind = type(estimator)
    if not (
        isinstance(estimator, LinearClassifierMixin)
        and kind.predict is LinearClassifierMixin.predict
        and kind.decision_function is LinearClassifierMixin.decision_function
        and type(getattr(estimator, "classes_", None)) is np.ndarray
    ):
        return {}
    coef = getattr(estimator, "coef_", None)
    intercept = getattr(estimator, "intercept_", None)
    if (
        type(coef) is not np.ndarray or coef.dtype != np.float64 or coef.ndim not in (1, 2)
        or hasattr(estimator, "feature_names_in_")
        or (type(intercept) is not np.ndarray and not isinstance(intercept, float))
    ):
        return {}
    weights = coef.T if coef.ndim == 2 else coef

    def plain(X: Any) -> bool:  # what scikit-learn would take as it is, and accept
        return (
            type(X) is np.ndarray and X.dtype == np.float64 and X.ndim == 2
            and X.shape[1] == n_features and X.shape[0] > 0 and bool(np.isfinite(X).all())
        )

    classes = estimator.classes_
    own_scores, own_predict = estimator.decision_function, estimator.predict

    def decision_function(X: Any) -> np.ndarray:
        if not plain(X):
            return own_scores(X)
        scores = X @ weights + intercept
        return scores.reshape(-1) if scores.ndim > 1 and scores.shape[1] == 1 else scores

    def predict(X: Any) -> np.ndarray:
        if not plain(X):
            return own_predict(X)
        scores = X @ weights + intercept
        if scores.ndim > 1 and scores.shape[1] == 1:
            scores = scores.reshape(-1)
        if scores.ndim == 1:
            indices = (scores > 0).astype(np.intp)
        else:
            indices = scores.argmax(axis=1)
        return classes.take(indices, axis=0)

    fast = {"predict": predict, "decision_function": decision_function}
    rows = np.random.default_rng(0).standard_normal((16, n_features)) * 3
    try:
        for method, call in fast.items():
            for probe in (rows, rows[:1]):
                if not np.array_equal(call(probe), getattr(estimator, method)(probe)):
                    return {}
    except Exception:  # whatever the estimator makes of the probe, it keeps its own methods
        return {}
    return fast
