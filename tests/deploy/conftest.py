"""A small repository with what a deployment has to carry: autoscaling, a rollout with a
canary and a shadow, GPUs, a process-runtime model, a model with worker processes and a graph."""

from __future__ import annotations

from pathlib import Path

import pytest

FRAUD = """\
version_policy: all
max_inflight: 32
timeout: 5
autoscaling:
  min_replicas: 0
  max_replicas: 4
  target_concurrency: 2
  stable_window: 60s
  panic_window: 6s
  panic_threshold: 2.0
  scale_to_zero_after: 300s
resources: {cpu: 500m, memory: 1Gi}
rollout:
  stable: "2"
  canary: {variant: "3", percent: 10}
  shadow: {variant: "4", percent: 50}
"""


def write(path: Path, text: str = "") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def build_repository(root: Path, fraud: str = FRAUD) -> Path:
    """Only folders and settings: rendering never loads a model, so the artifacts are empty."""
    for version in (1, 2, 3, 4):
        write(root / "fraud" / str(version) / "model.joblib")
    write(root / "fraud" / "model.yaml", fraud)
    write(root / "fraud" / "background.npy")  # a file beside the versions (explainer data)
    write(root / "gpu" / "1" / "model.onnx")
    write(root / "gpu" / "model.yaml", "resources: {gpus: 1, memory: 4Gi}\nmax_inflight: 8\n")
    write(root / "scorer" / "1" / "model.joblib")
    write(root / "scorer" / "2" / "model.joblib")
    write(root / "scorer" / "model.yaml", "workers: 2\nresources: {cpu: 250m}\n")
    write(root / "java-model" / "model.jar")
    write(root / "java-model" / "model.yaml",
          'command: ["java", "-jar", "model.jar"]\nresources: {cpu: 1, memory: 512Mi}\n')
    write(root / "pipeline" / "graph.yaml",
          "nodes:\n  root: {kind: model, model: scorer}\n")
    return root


@pytest.fixture(scope="session")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_repository(tmp_path_factory.mktemp("repo") / "models")
