"""The LightGBM case: a binary model, 100 trees of 31 leaves on 10 features, saved as
``model.txt``; one FP64 row.

The direct call is what Shoal runs for ``predict``: ``Booster.predict`` with one thread
(Shoal's default ``num_threads``).
"""

from __future__ import annotations

from pathlib import Path

import lightgbm
import numpy as np

from . import Case

FEATURES = 10


def build(folder: Path) -> Case:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2000, FEATURES))
    y = (x[:, 0] + x[:, 1] * x[:, 2] > 0).astype(int)
    params = {"objective": "binary", "num_leaves": 31, "verbose": -1}
    lightgbm.train(params, lightgbm.Dataset(x, y), 100).save_model(folder / "model.txt")
    booster = lightgbm.Booster(model_file=str(folder / "model.txt"))
    row = x[:1]
    body = {"inputs": [{"name": "input-0", "datatype": "FP64", "shape": [1, FEATURES],
                        "data": row.reshape(-1).tolist()}]}
    return Case("lightgbm", body, lambda: booster.predict(row, num_threads=1))
