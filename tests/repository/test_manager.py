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


GRAPH = "root: call\nnodes: {call: {kind: model, model: iris}}\n"


def iris_folder(folder: Path) -> None:
    iris = load_iris()
    folder.mkdir(parents=True, exist_ok=True)
    joblib.dump(LogisticRegression(max_iter=500).fit(iris.data, iris.target), folder / "model.joblib")


def loaded_index(root: Path) -> tuple[ModelRepository, dict[str, dict[str, str]]]:
    registry, executor = Registry(), Executor(2)
    repository = ModelRepository(root, registry, executor, Metrics())
    try:
        asyncio.run(repository.load_all())
    finally:
        executor.shutdown()
    return repository, {row["name"]: row for row in repository.index()}


def test_graph_yaml_beside_a_model_artifact_needs_runtime(tmp_path: Path) -> None:
    iris_folder(tmp_path / "iris")
    for name in ("both", "graph", "model"):
        iris_folder(tmp_path / name)
        (tmp_path / name / "graph.yaml").write_text(GRAPH)
    (tmp_path / "graph" / "model.yaml").write_text("runtime: graph\n")
    (tmp_path / "model" / "model.yaml").write_text("runtime: sklearn\n")
    repository, index = loaded_index(tmp_path)
    assert index["both"]["state"] == "UNAVAILABLE"
    assert index["both"]["reason"] == (
        "both/ holds both graph.yaml and model artifacts (model.joblib): add runtime: graph to "
        "model.yaml to serve the graph, or runtime: sklearn to serve the model"
    )
    assert index["graph"]["state"] == index["model"]["state"] == "READY"
    assert repository.is_graph("graph") and not repository.is_graph("model")
    assert repository.registry.get("model", None).metadata()["platform"] == "sklearn"


def test_what_a_graph_folder_would_ignore_fails_its_load(tmp_path: Path) -> None:
    iris_folder(tmp_path / "iris")
    cases = {
        "settings": ("version_policy: all\n", "model.yaml beside graph.yaml sets version_policy, which a graph does not take"),
        "broken": ("runtime: [graph\n", "model.yaml is not valid YAML"),
        "yml": (None, "has both graph.yml and graph.yaml; Shoal reads only graph.yaml"),
    }
    for name, (config, _) in cases.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "graph.yaml").write_text(GRAPH)
        if config is not None:
            (tmp_path / name / "model.yaml").write_text(config)
    (tmp_path / "yml" / "graph.yml").write_text(GRAPH)
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "graph.yaml").write_text(GRAPH)  # no model.yaml: a graph, as before
    repository, index = loaded_index(tmp_path)
    for name, (_, reason) in cases.items():
        assert not repository.is_graph(name)  # listing code asks: it must not raise
        assert index[name]["state"] == "UNAVAILABLE" and reason in index[name]["reason"], index[name]
    assert repository.is_graph("plain") and index["plain"]["state"] == "READY"


def test_load_failures_reach_the_index_with_their_reason(tmp_path: Path) -> None:
    iris_folder(tmp_path / "typo")
    (tmp_path / "typo" / "model.yaml").write_text("parameters: {methd: predict_proba}\n")
    iris_folder(tmp_path / "yml")
    (tmp_path / "yml" / "model.yml").write_text("parameters: {method: predict_proba}\n")
    iris_folder(tmp_path / "wide")
    (tmp_path / "wide" / "model.yaml").write_text("inputs: [{name: x, datatype: FP64, shape: [-1, 5]}]\n")
    iris_folder(tmp_path / "named" / "v1")
    _, index = loaded_index(tmp_path)
    reasons = {name: (row["state"], row["reason"]) for name, row in index.items()}
    assert reasons["typo"] == ("UNAVAILABLE", "unknown parameters in model.yaml for runtime 'sklearn': "
                               "'methd' (did you mean 'method'?); it accepts: method")
    assert reasons["yml"] == ("UNAVAILABLE", "yml/ has model.yml, but Shoal reads model.yaml: rename it to model.yaml")
    assert "give 5 feature columns, but model.joblib takes 4" in reasons["wide"][1]
    assert "sub-folder(s) v1/ look like versions" in reasons["named"][1]
