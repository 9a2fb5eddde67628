"""Background rows: what the explainers compare a row against.

Three sources, in the order :func:`shoal.explain.explain` tries them:

- a file in the model's folder (``explainer.background: background.npy``): ``.npy`` (a 2-D
  numeric array, read without pickle), ``.csv`` (numbers, with or without a header row of
  feature names) or ``.parquet`` (numeric columns; needs pyarrow). Read once per model and
  kept while the file does not change.
- rows sampled from the requests the model has answered: the server calls
  :func:`observe` after each successful inference, which keeps a uniform sample (reservoir
  sampling) of up to ``explainer.background.rows`` rows per model (:data:`DEFAULT_SAMPLED_ROWS`
  when not configured). Nothing is kept for a model whose background is a file.
- the explain request's own rows, when it has at least :data:`MIN_REQUEST_ROWS` of them.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InvalidInput
from ..types import InferenceRequest, Tensor
from .config import ExplainerConfig

#: Rows kept per model by :func:`observe` when ``model.yaml`` does not say ``{rows: N}``.
DEFAULT_SAMPLED_ROWS = 100
#: From this many rows, an explain request serves as its own background.
MIN_REQUEST_ROWS = 10


@dataclass
class BackgroundFile:
    path: Path
    mtime_ns: int
    data: np.ndarray  # FP64 [rows, columns]
    columns: list[str] | None  # the header's names (csv, parquet)


def read_background(path: Path) -> BackgroundFile:
    """The file's rows as an FP64 matrix; InvalidInput naming the file for anything wrong."""
    suffix = path.suffix.lower()
    try:
        mtime = path.stat().st_mtime_ns
    except OSError as exc:
        raise InvalidInput(f"explainer.background {path.name}: cannot read it: {exc.strerror}") from None
    columns: list[str] | None = None
    try:
        if suffix == ".npy":
            data = np.load(path, allow_pickle=False)
        elif suffix == ".csv":
            data, columns = _read_csv(path)
        elif suffix == ".parquet":
            data, columns = _read_parquet(path)
        else:
            raise InvalidInput(f"explainer.background {path.name}: not a .npy, .csv or .parquet file")
    except InvalidInput:
        raise
    except Exception as exc:
        raise InvalidInput(
            f"explainer.background {path.name} cannot be read: {type(exc).__name__}: {exc}"
        ) from None
    data = np.asarray(data)
    if data.ndim == 1:
        data = data.reshape(-1, 1)
    if data.ndim != 2 or not data.shape[0]:
        raise InvalidInput(
            f"explainer.background {path.name} must hold a [rows, features] table with at least "
            f"one row, not shape {list(data.shape)}"
        )
    if data.dtype.kind not in "biuf":
        raise InvalidInput(f"explainer.background {path.name} must hold numbers, not {data.dtype}")
    data = data.astype(np.float64)
    if not np.isfinite(data).all():
        raise InvalidInput(f"explainer.background {path.name} holds NaN or infinite values")
    return BackgroundFile(path, mtime, data, columns)


def _read_csv(path: Path) -> tuple[np.ndarray, list[str] | None]:
    import pandas as pd  # a dependency of shap

    table = pd.read_csv(path, header=None, dtype=str, skip_blank_lines=True)
    first = table.iloc[0].tolist()
    columns = None
    if not all(_is_number(cell) for cell in first):
        columns = [str(c).strip() for c in first]
        table = table.iloc[1:]
    try:
        return table.to_numpy().astype(np.float64), columns
    except ValueError:
        # The offending cell is not quoted: it could be anything the file holds.
        raise InvalidInput(f"explainer.background {path.name} must hold numbers only") from None


def _read_parquet(path: Path) -> tuple[np.ndarray, list[str] | None]:
    import pandas as pd

    try:
        table = pd.read_parquet(path)
    except ImportError:
        raise InvalidInput(
            f"explainer.background {path.name}: reading Parquet needs pyarrow "
            "(pip install pyarrow), or save the background as .npy or .csv"
        ) from None
    wrong = [str(c) for c, kind in table.dtypes.items() if kind.kind not in "biuf"]
    if wrong:
        raise InvalidInput(f"explainer.background {path.name}: column {wrong[0]!r} is not numeric")
    return table.to_numpy(dtype=np.float64), [str(c) for c in table.columns]


def _is_number(cell: Any) -> bool:
    try:
        float(cell)
    except (TypeError, ValueError):
        return False
    return True


@dataclass
class Reservoir:
    """A uniform sample of the rows of the requests one model answered (Vitter's algorithm
    R): per input, an array of up to ``size`` rows."""

    size: int
    signature: tuple[Any, ...] = ()
    rows: dict[str, np.ndarray] = field(default_factory=dict)
    filled: int = 0
    seen: int = 0

    def add(self, inputs: list[Tensor]) -> None:
        if not inputs or any(t.datatype == "BYTES" or not t.shape for t in inputs):
            return
        count = inputs[0].shape[0]
        if not count or any(t.shape[0] != count for t in inputs):
            return
        signature = tuple(sorted((t.name, t.data.dtype.str, t.shape[1:]) for t in inputs))
        if signature != self.signature:  # a new model, or new inputs: start again
            self.signature = signature
            self.rows = {t.name: np.empty((self.size, *t.shape[1:]), t.data.dtype) for t in inputs}
            self.filled = self.seen = 0
        if count == 1 and self.filled == self.size:  # the common case, kept cheap
            self.seen += 1
            slot = random.randrange(self.seen)
            if slot < self.size:
                for t in inputs:
                    self.rows[t.name][slot] = t.data[0]
            return
        indices = np.arange(self.seen, self.seen + count)
        slots = np.where(
            indices < self.size, indices, np.random.randint(0, indices + 1, dtype=np.int64)
        )
        keep = slots < self.size
        for t in inputs:
            self.rows[t.name][slots[keep]] = t.data[keep]
        self.seen += count
        self.filled = min(self.size, self.seen)

    def sample(self) -> dict[str, np.ndarray]:
        """The rows kept, per input (copies)."""
        return {name: rows[: self.filled].copy() for name, rows in self.rows.items()}


_reservoirs: dict[str, Reservoir] = {}


def observe(model: str, request: InferenceRequest, config: ExplainerConfig | None = None) -> None:
    """Keep a sample of ``request``'s rows as background for explaining ``model`` later.

    The server calls this after each successful inference of a model (or graph) that may be
    explained, with the model's ``explainer`` config (``repository.loaded_config(name)
    .explainer``; None for a graph or a model without one). Never with the explainer's own
    model calls (explain() calls the endpoint directly, not through the server's data plane).
    Costs a few microseconds; does nothing for a model whose background is a file, or for
    BYTES inputs. Call it on the event loop (it takes no lock).
    """
    if config is not None and isinstance(config.background, str):
        return
    size = (config.sampled_rows if config is not None else None) or DEFAULT_SAMPLED_ROWS
    reservoir = _reservoirs.get(model)
    if reservoir is None or reservoir.size != size:
        reservoir = _reservoirs[model] = Reservoir(size)
    try:
        reservoir.add(request.inputs)
    except (ValueError, TypeError):  # a row of another shape than the first ones: skip it
        reservoir.signature = ()


def sampled(model: str) -> dict[str, np.ndarray]:
    """The rows :func:`observe` kept for ``model``, per input name (empty: none yet)."""
    reservoir = _reservoirs.get(model)
    return reservoir.sample() if reservoir is not None and reservoir.filled else {}


def forget(model: str) -> None:
    """Drop the rows kept for ``model`` (unloaded)."""
    _reservoirs.pop(model, None)
