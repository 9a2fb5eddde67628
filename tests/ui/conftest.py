"""Shared fixtures of the dashboard tests (``test_api.py``: the JSON endpoints;
``test_browser.py``: the pages in a browser).

``ui_repository`` is one repository with every kind of thing the dashboard shows:

- ``iris``: scikit-learn iris, versions 1 and 2 (``version_policy: all``), adaptive batching
  (``max_batch_size: 8``) and a linear explainer with a background file;
- ``canary``: iris versions 1, 2 and 3 with a ``rollout:`` in its model.yaml (stable 1,
  canary 2 at 50 %, shadow 3);
- ``logged``: iris with a payload logger writing JSON lines under ``payload_dir``;
- ``boom``: a custom model whose every request fails (500), for error rates;
- ``broken``: a model that fails to load (UNAVAILABLE, with a reason);
- ``ab``: a graph: a switch (``parameters.route == 'bandit'``) in front of an epsilon-greedy
  bandit over iris 1 and 2, by default iris 2.

``ui_server`` serves it for the whole session (samples every ``SAMPLE_INTERVAL`` seconds).
Tests that change server state (unload, rollout changes) should start their own server with
``start_shoal`` (stopped at the end of the test) rather than change the shared one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from sklearn.datasets import load_iris

from e2e.models import BOOM, custom, sklearn_iris, write
from e2e.process import ShoalProcess

#: The dashboard's sample interval in these tests (seconds), through SHOAL_UI_SAMPLE_INTERVAL.
SAMPLE_INTERVAL = 0.5
FEATURES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]


def iris_rows(n: int = 1) -> np.ndarray:
    return load_iris().data[:n].astype(np.float64)


def iris_body(n: int = 1) -> dict[str, Any]:
    """A V2 JSON request for an iris model (one input, ``n`` rows)."""
    rows = iris_rows(n)
    return {"inputs": [{"name": "input-0", "datatype": "FP64", "shape": list(rows.shape),
                        "data": rows.reshape(-1).tolist()}]}


def build_ui_repository(root: Path, payload_dir: Path) -> Path:
    sklearn_iris(root / "iris" / "1", c=0.1)
    sklearn_iris(root / "iris" / "2")
    np.save(root / "iris" / "background.npy", load_iris().data[::10])
    write(root / "iris" / "model.yaml", yaml.safe_dump({
        "version_policy": "all", "max_batch_size": 8, "max_batch_delay_ms": 2,
        "explainer": {"method": "linear", "background": "background.npy",
                      "feature_names": FEATURES},
    }))
    for version, c in (("1", 0.05), ("2", 1.0), ("3", 20.0)):
        sklearn_iris(root / "canary" / version, c=c)
    write(root / "canary" / "model.yaml", yaml.safe_dump({
        "version_policy": "all",
        "rollout": {"stable": "1", "canary": {"variant": "2", "percent": 50},
                    "shadow": {"variant": "3"}},
    }))
    sklearn_iris(root / "logged" / "1")
    write(root / "logged" / "model.yaml",
          yaml.safe_dump({"logger": {"url": f"file://{payload_dir.resolve()}"}}))
    custom(root / "boom", BOOM)
    (root / "broken" / "1").mkdir(parents=True)
    (root / "broken" / "1" / "model.joblib").write_bytes(b"this is not a pickle")
    write(root / "ab" / "graph.yaml", yaml.safe_dump({"nodes": {
        "root": {"kind": "switch", "default": "new", "cases": [
            {"when": "parameters.route == 'bandit'", "node": "bandit"}]},
        "bandit": {"kind": "bandit", "strategy": "epsilon_greedy", "arms": ["old", "new"]},
        "old": {"kind": "model", "model": "iris", "version": "1"},
        "new": {"kind": "model", "model": "iris", "version": "2"},
    }}))
    return root


def build_many_models(root: Path, n: int = 50) -> Path:
    """``n`` iris models (``m00``, ``m01``, ...) sharing one trained artifact."""
    sklearn_iris(root / "m00" / "1")
    artifact = (root / "m00" / "1" / "model.joblib").read_bytes()
    for i in range(1, n):
        (root / f"m{i:02d}" / "1").mkdir(parents=True)
        (root / f"m{i:02d}" / "1" / "model.joblib").write_bytes(artifact)
    return root


@pytest.fixture(scope="session")
def payload_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where ``logged``'s payload records go (JSON lines)."""
    return tmp_path_factory.mktemp("payload")


@pytest.fixture(scope="session")
def ui_repository(tmp_path_factory: pytest.TempPathFactory, payload_dir: Path) -> Path:
    return build_ui_repository(tmp_path_factory.mktemp("ui-repository"), payload_dir)


def _start(repository: Path, *args: str, env: dict[str, str] | None = None,
           state_dir: Path | None = None, ready: bool = True) -> ShoalProcess:
    extra = ("--state-dir", str(state_dir)) if state_dir is not None else ()
    process = ShoalProcess(repository, *extra, *args,
                           env={"SHOAL_UI_SAMPLE_INTERVAL": str(SAMPLE_INTERVAL), **(env or {})})
    if ready:
        try:
            process.wait_ready()
            look(process)
        except BaseException:
            process.stop()
            raise
    return process


def look(process: ShoalProcess) -> None:
    """Open the dashboard once and wait for the series' baseline: sampling starts with the
    first look (and stops once nobody has looked for ten minutes)."""
    import time

    import httpx

    if httpx.get(f"{process.url}/ui/api/overview", timeout=10).status_code == 404:
        return  # --no-ui
    time.sleep(2.5 * SAMPLE_INTERVAL)


@pytest.fixture(scope="session")
def ui_server(ui_repository: Path, tmp_path_factory: pytest.TempPathFactory
              ) -> Iterator[ShoalProcess]:
    """The shared server over ``ui_repository`` (UI on, no admin token)."""
    process = _start(ui_repository, state_dir=tmp_path_factory.mktemp("ui-state"))
    try:
        yield process
    finally:
        process.stop()


StartShoal = Callable[..., ShoalProcess]


@pytest.fixture
def start_shoal(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StartShoal]:
    """``start_shoal(repository, *args, env=None, ready=True)``: a server of the test's own
    (its own state directory, ``SHOAL_UI_SAMPLE_INTERVAL`` set), stopped after the test."""
    started: list[ShoalProcess] = []

    def start(repository: Path, *args: str, env: dict[str, str] | None = None,
              ready: bool = True) -> ShoalProcess:
        process = _start(repository, *args, env=env, ready=ready,
                         state_dir=tmp_path_factory.mktemp("state"))
        started.append(process)
        return process

    try:
        yield start
    finally:
        for process in started:
            process.stop()
