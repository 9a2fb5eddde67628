"""Built-in ensemble combiners: mean, vote, concat, collect."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from shoal import InferenceResponse, Tensor
from shoal.errors import ModelFailure
from shoal.graph import combiners


def responses(*arrays: object, name: str = "y") -> list[InferenceResponse]:
    return [InferenceResponse([Tensor.from_numpy(name, np.asarray(a))]) for a in arrays]


def run(kind: str, items: list[InferenceResponse]) -> InferenceResponse:
    return asyncio.run(combiners.builtin(kind)(items, [f"m{i}" for i in range(len(items))]))


def test_mean() -> None:
    out = run("mean", responses([[0.2, 0.8]], [[0.4, 0.6]]))
    assert out.outputs[0].name == "y"
    np.testing.assert_allclose(out.outputs[0].data, [[0.3, 0.7]])


def test_vote_takes_the_majority_and_breaks_ties_by_order() -> None:
    out = run("vote", responses([1, 0, 2], [1, 2, 0], [0, 2, 1]))
    np.testing.assert_array_equal(out.outputs[0].data, [1, 2, 2])
    assert out.outputs[0].datatype == "INT64"
    text = run("vote", responses(np.array(["cat", "dog"]), np.array(["dog", "dog"])))
    assert list(text.outputs[0].data) == [b"cat", b"dog"]


def test_concat_puts_outputs_side_by_side() -> None:
    out = run("concat", responses([1, 2], [[10, 11], [20, 21]]))
    np.testing.assert_array_equal(out.outputs[0].data, [[1, 10, 11], [2, 20, 21]])


def test_collect_keeps_every_output_under_the_child_name() -> None:
    out = run("collect", responses([1], [2]))
    assert [t.name for t in out.outputs] == ["m0.y", "m1.y"]


def test_mismatches_are_model_failures() -> None:
    with pytest.raises(ModelFailure, match="different shapes"):
        run("mean", responses([1.0, 2.0], [1.0]))
    with pytest.raises(ModelFailure, match="different numbers of outputs"):
        run("mean", [InferenceResponse([]), *responses([1.0])])
    with pytest.raises(ModelFailure, match="numeric"):
        run("mean", responses(np.array(["a"]), np.array(["b"])))
    with pytest.raises(ModelFailure, match="numbers of rows"):
        run("concat", responses([1, 2], [1, 2, 3]))
