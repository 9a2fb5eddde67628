"""The batch extras, imported when a job needs them: a missing one is an error naming the
``pip install`` line that fixes it, not an ImportError from deep inside a reader."""

from __future__ import annotations

from types import ModuleType

from ..errors import ShoalError


class MissingExtra(ShoalError):
    """An optional dependency of batch prediction is not installed."""


def pyarrow() -> ModuleType:
    """``pyarrow`` with its submodules the batch package uses (csv, json, parquet, compute)."""
    try:
        import pyarrow as pa
        import pyarrow.compute
        import pyarrow.csv
        import pyarrow.json
        import pyarrow.parquet
    except ImportError as exc:
        raise MissingExtra(
            f"batch prediction needs pyarrow ({exc.name} is missing): pip install 'shoal[batch]'"
        ) from None
    return pa


def fsspec() -> ModuleType:
    try:
        import fsspec as module
    except ImportError:
        raise MissingExtra(
            "batch prediction needs fsspec for its inputs and outputs: pip install 'shoal[batch]'"
        ) from None
    return module


def ray() -> ModuleType:
    """``ray`` with Ray Data, for ``--engine ray``."""
    try:
        import ray as module
        import ray.data
    except ImportError as exc:
        raise MissingExtra(
            f"--engine ray needs Ray Data ({exc.name} is missing): pip install 'shoal[ray]'"
        ) from None
    return module
