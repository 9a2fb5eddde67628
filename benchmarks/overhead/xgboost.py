"""The XGBoost case: a binary XGBClassifier, 100 trees of depth 6 on 10 features, saved as
``model.json``; one FP32 row.

The direct call is what Shoal runs for ``predict``: ``Booster.inplace_predict`` with one
thread (Shoal's default ``nthread``); ``XGBClassifier.predict`` adds its own Python checks,
and XGBoost's default thread count costs far more than the model on one row.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import xgboost

from . import Case

FEATURES = 10


def build(folder: Path) -> Case:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2000, FEATURES)).astype(np.float32)
    y = (x[:, 0] + x[:, 1] * x[:, 2] > 0).astype(int)
    xgboost.XGBClassifier(n_estimators=100, max_depth=6).fit(x, y).save_model(folder / "model.json")
    booster = xgboost.Booster(model_file=str(folder / "model.json"))
    booster.set_param({"nthread": 1})
    row = x[:1]
    body = {"inputs": [{"name": "input-0", "datatype": "FP32", "shape": [1, FEATURES],
                        "data": row.reshape(-1).tolist()}]}
    return Case("xgboost", body, lambda: booster.inplace_predict(row, validate_features=False))
