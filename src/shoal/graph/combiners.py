"""Built-in combiners for ensembles: ``mean``, ``vote``, ``concat``, ``collect``.

``mean``, ``vote`` and ``concat`` work position by position: the children answer with the same
number of outputs, and the i-th outputs are merged (named after the first child's). ``collect``
keeps every output, renamed ``<child>.<output>`` (KServe's ensemble merges the same way).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from ..errors import ModelFailure
from ..serving.executor import Executor
from ..types import InferenceResponse, Tensor
from .nodes.base import call_user
from .nodes.ensemble import Combine
from .plugins import Combiner
from .results import as_response

Merge = Callable[[list[np.ndarray]], np.ndarray]


def _positional(merge: Merge, what: str, same_shape: bool) -> Callable[..., InferenceResponse]:
    def combine(responses: list[InferenceResponse], names: list[str]) -> InferenceResponse:
        counts = {len(r.outputs) for r in responses}
        if len(counts) != 1:
            raise ModelFailure(
                f"{what}: the children answered with different numbers of outputs "
                f"({dict(zip(names, (len(r.outputs) for r in responses)))})"
            )
        merged = []
        for position, first in enumerate(responses[0].outputs):
            arrays = [r.outputs[position].data for r in responses]
            if same_shape and len({a.shape for a in arrays}) != 1:
                raise ModelFailure(
                    f"{what}: output {first.name!r} has different shapes across children "
                    f"({dict(zip(names, (list(a.shape) for a in arrays)))})"
                )
            merged.append(Tensor.from_numpy(first.name, merge(arrays)))
        return InferenceResponse(merged)

    return combine


def _mean(arrays: list[np.ndarray]) -> np.ndarray:
    if any(a.dtype.kind not in "biuf" for a in arrays):
        raise ModelFailure("mean: outputs must be numeric")
    return np.mean(np.stack(arrays), axis=0)


def _vote(arrays: list[np.ndarray]) -> np.ndarray:
    """Majority per element; a tie goes to the earliest child among the tied."""
    stack = np.stack(arrays)
    counts = np.stack([(stack == stack[i]).sum(axis=0) for i in range(len(arrays))])
    winner = np.argmax(counts, axis=0)
    return np.take_along_axis(stack, winner[np.newaxis], axis=0)[0]


def _concat(arrays: list[np.ndarray]) -> np.ndarray:
    """Side by side: each output as (rows, columns), joined along the columns."""
    rows = {a.shape[0] if a.ndim else 1 for a in arrays}
    if len(rows) != 1:
        raise ModelFailure(f"concat: outputs have different numbers of rows ({sorted(rows)})")
    count = rows.pop()
    return np.concatenate([a.reshape(count, -1) for a in arrays], axis=1)


def _collect(responses: list[InferenceResponse], names: list[str]) -> InferenceResponse:
    return InferenceResponse([
        Tensor(f"{name}.{t.name}", t.datatype, t.shape, t.data, t.parameters)
        for name, response in zip(names, responses)
        for t in response.outputs
    ])


BUILTINS: dict[str, Callable[..., InferenceResponse]] = {
    "mean": _positional(_mean, "mean", same_shape=True),
    "vote": _positional(_vote, "vote", same_shape=True),
    "concat": _positional(_concat, "concat", same_shape=False),
    "collect": _collect,
}

#: Combiners whose answer has the children's signature (the graph's metadata says so).
KEEPS_SIGNATURE = {"mean", "vote"}


def builtin(name: str) -> Combine:
    merge = BUILTINS[name]

    async def combine(responses: list[InferenceResponse], names: list[str]) -> InferenceResponse:
        return merge(responses, names)

    return combine


def custom(plugin: Combiner, executor: Executor, node: str) -> Combine:
    async def combine(responses: list[InferenceResponse], names: list[str]) -> InferenceResponse:
        result: Any = await call_user(executor, node, plugin.combine, responses)
        return as_response(result, f"{type(plugin).__name__}.combine")

    return combine
