"""The :class:`shoal.Model` that stands in, in the server, for a model living in workers.

The server wraps it in an ordinary :class:`~shoal.serving.endpoint.ModelEndpoint`, so
validation, batching, limits and metrics happen before anything crosses to a worker; its
one stage, an async ``predict``, sends the (possibly merged) request to a worker that runs the
real model's ``preprocess`` / ``predict`` / ``postprocess``.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import TYPE_CHECKING

from ...model import Model
from ...repository.config import ModelConfig
from ...types import InferenceRequest, InferenceResponse
from ..autoscale.config import ResolvedAutoscaling, ResourcesConfig
from .pool import LoadSpec, WorkerPool

if TYPE_CHECKING:
    from ..autoscale.scaler import Autoscaler
    from .replicas import ReplicaSet

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


def load_spec(
    name: str, version: str, version_dir: Path, model_dir: Path, config: ModelConfig
) -> LoadSpec:
    """What a worker process needs to load a model: a key of its own (during a reload the
    old and new instances coexist) and exactly the model.yaml settings the user set."""
    key = f"{name}/{version}/{next(_generation)}"
    return (key, name, version, str(version_dir), str(model_dir),
            config.model_dump(by_alias=True, exclude_unset=True))


async def load_in_workers(
    pool: WorkerPool, name: str, version: str, version_dir: Path, model_dir: Path,
    config: ModelConfig, workers: int,
) -> ProcessModel:
    spec = load_spec(name, version, version_dir, model_dir, config)
    key = spec[0]
    platform, inputs, outputs = await pool.load(spec, workers)
    model = ProcessModel(pool, key, name, version)
    model.platform, model.inputs, model.outputs = platform, inputs, outputs
    return model


class ReplicatedModel(Model):
    """Stands in for an autoscaled model: its requests go to its own replicas (worker
    processes the autoscaler starts and stops, down to none), see ``replicas.ReplicaSet``."""

    def __init__(self, scaler: Autoscaler, replicas: ReplicaSet, name: str, version: str) -> None:
        super().__init__(name, version)
        self.scaler = scaler
        self.replicas = replicas

    async def predict(self, request: InferenceRequest) -> InferenceResponse:
        return await self.replicas.infer(request)

    async def unload(self) -> None:
        await self.scaler.remove(self.replicas)

    def state_reason(self) -> str | None:
        """What the repository index says of the model while it is ready but has no replica."""
        return "scaled to zero" if self.replicas.scaled_to_zero else None


async def load_replicated(
    scaler: Autoscaler, name: str, version: str, version_dir: Path, model_dir: Path,
    config: ModelConfig, settings: ResolvedAutoscaling,
) -> ReplicatedModel:
    spec = load_spec(name, version, version_dir, model_dir, config)
    replicas = await scaler.start_set(spec, settings, config.resources or ResourcesConfig())
    model = ReplicatedModel(scaler, replicas, name, version)
    assert replicas.metadata is not None
    model.platform, model.inputs, model.outputs = replicas.metadata
    return model
