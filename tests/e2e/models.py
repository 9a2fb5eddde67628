"""Builders for the models the end-to-end tests serve (trained here, never downloaded)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import joblib
import numpy as np
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip())


def sklearn_iris(folder: Path, c: float = 1.0) -> LogisticRegression:
    iris = load_iris()
    model = LogisticRegression(max_iter=500, C=c).fit(iris.data, iris.target)
    folder.mkdir(parents=True, exist_ok=True)
    joblib.dump(model, folder / "model.joblib")
    return model


def custom(folder: Path, source: str, config: str = "runtime: custom\n") -> None:
    write(folder / "model.py", source)
    write(folder / "model.yaml", config)


IDENTITY = """
    from shoal import Model, Tensor

    class Identity(Model):
        def predict(self, request):
            return [Tensor.from_numpy(t.name, t.data) if t.datatype != "BYTES"
                    else Tensor(t.name, "BYTES", t.shape, t.data) for t in request.inputs]
"""

SLOW = """
    import time
    from shoal import Model

    class Slow(Model):
        def predict(self, request):
            time.sleep(float(request.parameters.get("sleep", 1.0)))
            return request.as_numpy()
"""

BOOM = """
    from shoal import Model

    class Boom(Model):
        def predict(self, request):
            raise ValueError("kaboom")
"""

SLOW_LOAD = """
    import time
    from shoal import Model

    class SlowLoad(Model):
        def load(self):
            time.sleep(float(self.parameters.get("load_seconds", 2)))

        def predict(self, request):
            return request.as_numpy()
"""

ASYNC_STAGES = """
    import asyncio
    import numpy as np
    from shoal import Model

    class Stages(Model):
        async def preprocess(self, request):
            await asyncio.sleep(0)
            request.inputs[0].data = request.inputs[0].data + 1
            return request

        def predict(self, request):
            return {"y": request.as_numpy() * 2}

        async def postprocess(self, response):
            response.parameters["post"] = True
            return response
"""


def build_repository(root: Path) -> Path:
    """The shared repository: healthy models of every kind plus two that fail to load."""
    sklearn_iris(root / "iris" / "1", c=0.1)
    sklearn_iris(root / "iris" / "2")
    write(root / "iris" / "model.yaml", "version_policy: all\n")
    custom(root / "identity", IDENTITY)
    custom(root / "slow", SLOW)
    custom(root / "boom", BOOM)
    custom(root / "stages", ASYNC_STAGES)
    (root / "broken").mkdir()
    (root / "broken" / "model.joblib").write_bytes(b"this is not a pickle")
    write(root / "badconfig" / "model.yaml", "runtime: [unclosed\n")
    return root


def iris_rows(n: int = 2) -> np.ndarray:
    return load_iris().data[:n].astype(np.float64)
