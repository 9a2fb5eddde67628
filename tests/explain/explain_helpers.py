"""Helpers of the explanation tests: real repository folders loaded by ModelRepository, real
models, no HTTP server."""

from __future__ import annotations

import textwrap
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import numpy as np

from shoal import InferenceRequest, Tensor
from shoal.observe.metrics import Metrics
from shoal.repository.manager import ModelRepository
from shoal.serving.executor import Executor
from shoal.serving.registry import Registry
from shoal.serving.workers.pool import WorkerPool

FEATURES = 5


def data(rows: int = 300, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Income-style rows: the label depends on features 0 and 1 only; 2..4 are noise."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, FEATURES))
    return x, (x[:, 0] + 0.5 * x[:, 1] > 0).astype(np.int64)


def request(x: Any, name: str = "input-0", **parameters: Any) -> InferenceRequest:
    return InferenceRequest([Tensor.from_numpy(name, np.asarray(x))], parameters=parameters)


def custom(folder: Path, source: str, config: str = "runtime: custom\n") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.py").write_text(textwrap.dedent(source).lstrip())
    (folder / "model.yaml").write_text(config)


class Served:
    """A loaded repository: ``endpoint(name)`` for each model."""

    def __init__(self, repository: ModelRepository, registry: Registry) -> None:
        self.repository = repository
        self.registry = registry

    def endpoint(self, name: str) -> Any:
        return self.registry.get(name, None)

    def config(self, name: str) -> Any:
        return self.repository.loaded_config(name).explainer

    def state(self, name: str) -> dict[str, str]:
        return next(row for row in self.repository.index() if row["name"] == name)


@asynccontextmanager
async def serving(root: Path, workers: bool = False) -> AsyncIterator[Served]:
    """``workers``: with a worker pool, for models whose model.yaml says ``workers: N``."""
    registry, executor = Registry(), Executor(4)
    pool = WorkerPool("warning") if workers else None
    repository = ModelRepository(root, registry, executor, Metrics(), pool=pool, state_dir=root / ".state")
    try:
        await repository.load_all()
        yield Served(repository, registry)
    finally:
        if pool is not None:
            await pool.close(timeout=5)
        executor.shutdown()


Run = Callable[[Callable[[Served], Awaitable[Any]]], Any]
