"""ModelRepository against a real folder, without a server."""

from __future__ import annotations

import asyncio
from pathlib import Path

import joblib
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression

from shoal.observe.metrics import Metrics
from shoal.repository.manager import ModelRepository
from shoal.serving.executor import Executor
from shoal.serving.registry import Registry


def test_model_yaml_metadata_wins_over_what_the_runtime_reads(tmp_path: Path) -> None:
    iris = load_iris()
    folder = tmp_path / "iris"
    folder.mkdir()
    joblib.dump(LogisticRegression(max_iter=500).fit(iris.data, iris.target), folder / "model.joblib")
    (folder / "model.yaml").write_text(
        "inputs: [{name: features, datatype: FP64, shape: [-1, 4]}]\n"
        "outputs: [{name: predict, datatype: INT64, shape: [-1]}]\n"
    )
    registry, executor = Registry(), Executor(2)
    repository = ModelRepository(tmp_path, registry, executor, Metrics())
    try:
        asyncio.run(repository.load("iris"))
        metadata = registry.get("iris", None).metadata()
    finally:
        executor.shutdown()
    assert metadata["inputs"] == [{"name": "features", "datatype": "FP64", "shape": [-1, 4]}]
    assert metadata["outputs"] == [{"name": "predict", "datatype": "INT64", "shape": [-1]}]
