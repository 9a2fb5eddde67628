"""The CatBoost case: a binary CatBoostClassifier, 100 trees of depth 6 on 10 features, saved
as ``model.cbm``; one FP32 row.

The direct call is what Shoal runs for ``predict``: ``predict(prediction_type="Class")`` with
one thread (Shoal's default ``thread_count``).
"""

from __future__ import annotations

from pathlib import Path

import catboost
import numpy as np

from . import Case

FEATURES = 10


def build(folder: Path) -> Case:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2000, FEATURES)).astype(np.float32)
    y = (x[:, 0] + x[:, 1] * x[:, 2] > 0).astype(int)
    estimator = catboost.CatBoostClassifier(iterations=100, depth=6, verbose=False, allow_writing_files=False, thread_count=1)
    estimator.fit(x, y).save_model(str(folder / "model.cbm"))
    model = catboost.CatBoost()
    model.load_model(str(folder / "model.cbm"))
    row = x[:1]
    body = {"inputs": [{"name": "input-0", "datatype": "FP32", "shape": [1, FEATURES],
                        "data": row.reshape(-1).tolist()}]}
    return Case("catboost", body, lambda: model.predict(row, prediction_type="Class", thread_count=1))
