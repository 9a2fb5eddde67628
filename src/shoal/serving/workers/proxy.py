"""The :class:`shoal.Model` that stands in, in the server, for a model living in workers.

The server wraps it in an ordinary :class:`~shoal.serving.endpoint.ModelEndpoint`, so
validation, batching, limits and metrics happen before anything crosses to a worker; its
one stage, an async ``predict``, sends the (possibly merged) request to a worker that runs the
real model's ``preprocess`` / ``predict`` / ``postprocess``.
"""

from __future__ import annotations

import itertools
from pathlib import Path

from ...model import Model
from ...repository.config import ModelConfig
from ...types import InferenceRequest, InferenceResponse
from .pool import WorkerPool

_generation = itertools.count()


class ProcessModel(Model):
    def __init__(self, pool: WorkerPool, key: str, name: str, version: str) -> None:
        super().__init__(name, version)
        self.pool = pool
        self.key = key

    async def predict(self, request: InferenceRequest) -> InferenceResponse:
        return await self.pool.infer(self.key, request)

    async def unload(self) -> None:
        await self.pool.unload(self.key)


async def load_in_workers(
    pool: WorkerPool, name: str, version: str, version_dir: Path, model_dir: Path,
    config: ModelConfig, workers: int,
) -> ProcessModel:
    # Each load gets its own key: during a reload the old and new instances coexist.
    key = f"{name}/{version}/{next(_generation)}"
    spec = (key, name, version, str(version_dir), str(model_dir),
            config.model_dump(by_alias=True, exclude_none=True))
    platform, inputs, outputs = await pool.load(spec, workers)
    model = ProcessModel(pool, key, name, version)
    model.platform, model.inputs, model.outputs = platform, inputs, outputs
    return model
