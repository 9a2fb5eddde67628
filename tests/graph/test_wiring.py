"""The load-time check of what one node produces against what the next takes."""

from __future__ import annotations

import pytest

from shoal.graph.wiring import mismatches
from shoal.types import TensorSpec


def spec(name: str, datatype: str, *shape: int) -> TensorSpec:
    return TensorSpec(name, datatype, shape)


@pytest.mark.parametrize("produced,taken", [
    ([spec("x", "FP32", -1, 4)], [spec("input-0", "FP64", -1, 4)]),  # one to one: any name
    ([spec("x", "INT32", -1, 4)], [spec("x", "FP64", -1, -1)]),
    ([spec("x", "FP64", 8, 4)], [spec("x", "FP64", -1, 4)]),
    ([spec("a", "FP64", -1), spec("b", "INT64", -1)], [spec("b", "INT64", -1), spec("a", "FP64", -1)]),
    ([], [spec("x", "FP32", -1, 4)]),  # undeclared: left to request time
])
def test_what_fits(produced: list[TensorSpec], taken: list[TensorSpec]) -> None:
    assert mismatches(produced, taken) == []


@pytest.mark.parametrize("produced,taken,problem", [
    ([spec("x", "FP64", -1, 4)], [spec("i", "FP32", -1, 4)], "'x' is FP64, 'i' takes FP32"),
    ([spec("x", "INT64", -1, 4)], [spec("i", "FP64", -1, 4)], "'x' is INT64, 'i' takes FP64"),
    ([spec("x", "FP64", -1, 3)], [spec("i", "FP64", -1, 4)], "'x' has shape [-1, 3], 'i' takes [-1, 4]"),
    ([spec("x", "FP64", -1)], [spec("i", "FP64", -1, 4)], "'x' has shape [-1], 'i' takes [-1, 4]"),
    ([spec("a", "FP64", -1), spec("b", "FP64", -1)], [spec("a", "FP64", -1)],
     "it produces ['a', 'b'], the other takes ['a']"),
])
def test_what_does_not(produced: list[TensorSpec], taken: list[TensorSpec], problem: str) -> None:
    assert any(problem in found for found in mismatches(produced, taken))
