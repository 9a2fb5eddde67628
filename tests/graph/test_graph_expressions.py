"""JMESPath conditions over a request's parameters, headers and tensor values."""

from __future__ import annotations

import numpy as np
import pytest

from shoal import InferenceRequest, Tensor
from shoal.errors import InvalidInput
from shoal.expressions import Expression, ExpressionError


def request(**parameters: object) -> InferenceRequest:
    return InferenceRequest(
        [Tensor.from_numpy("x", np.array([[1.0, 7.0]])), Tensor.from_numpy("text", np.array(["hi"]))],
        parameters=dict(parameters),
    )


def no_headers() -> dict[str, str]:
    raise AssertionError("headers were built for an expression that does not read them")


def test_parameters() -> None:
    assert Expression("parameters.tier == 'gold'").holds(request(tier="gold"), no_headers)
    assert not Expression("parameters.tier == 'gold'").holds(request(tier="free"), no_headers)
    assert not Expression("parameters.tier").holds(request(), no_headers)


def test_headers_are_built_only_when_read() -> None:
    headers = lambda: {"x-group": "beta"}
    assert Expression('headers."x-group" == \'beta\'').holds(request(), headers)


def test_tensor_values_and_text() -> None:
    assert Expression("max(inputs.x[0]) > `5`").holds(request(), no_headers)
    assert not Expression("inputs.x[0][0] > `5`").holds(request(), no_headers)
    assert Expression("inputs.text[0] == 'hi'").holds(request(), no_headers)


def test_truthiness_follows_jmespath() -> None:
    for value, expected in [(0, True), ("", False), ([], False), ({}, False), (False, False), ("a", True)]:
        assert Expression("parameters.v").holds(request(v=value), no_headers) is expected


def test_a_bad_expression_does_not_compile() -> None:
    with pytest.raises(ExpressionError, match="not a valid JMESPath"):
        Expression("parameters.x ==")


def test_a_type_error_at_request_time_is_a_400() -> None:
    with pytest.raises(InvalidInput, match="failed on this request"):
        Expression("max(parameters.tier)").evaluate(request(tier="gold"), no_headers)
