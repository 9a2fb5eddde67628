"""The MLflow case: a scikit-learn classifier saved as an MLflow model (sklearn flavor).

Its signature is tensor-based, ``[-1, 4]`` FP64, so the request carries one row under
``input-0``. The direct call is ``mlflow.pyfunc`` on the same folder, which runs MLflow's own
schema enforcement too: the difference is only what Shoal adds around ``pyfunc.predict``.
"""

from __future__ import annotations

from pathlib import Path

import mlflow.pyfunc
import mlflow.sklearn
from mlflow.models import infer_signature
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression

from . import Case


def build(folder: Path) -> Case:
    iris = load_iris()
    estimator = LogisticRegression(max_iter=500).fit(iris.data, iris.target)
    # cloudpickle: MLflow's default, skops, is not a dependency of shoal[mlflow].
    mlflow.sklearn.save_model(
        estimator, str(folder), serialization_format="cloudpickle",
        signature=infer_signature(iris.data, estimator.predict(iris.data)), pip_requirements=[],
    )
    row = iris.data[:1]
    body = {"inputs": [{"name": "input-0", "datatype": "FP64", "shape": [1, 4],
                        "data": row.reshape(-1).tolist()}]}
    model = mlflow.pyfunc.load_model(str(folder))
    return Case(runtime="mlflow", body=body, direct=lambda: model.predict(row))
