"""Conditions and keys over a request, written in JMESPath (never ``eval``).

A switch case's ``when`` and a splitter's ``sticky`` key are JMESPath expressions evaluated
on a JSON view of the request::

    {"parameters": {...},          # the request's parameters
     "headers": {"x-user": "..."}, # request headers (REST) or metadata (gRPC), lower-case keys
     "inputs": {"x": [[...]]}}     # input tensors as nested lists, by name

Turning tensors into lists costs time, so ``inputs`` (and ``headers``) are only built for
expressions that mention them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import hashlib

import orjson

from .errors import InvalidInput
from .types import InferenceRequest


class ExpressionError(ValueError):
    """An expression that does not parse; the message says where."""


class Expression:
    def __init__(self, source: str) -> None:
        # jmespath is imported by the first expression (a graph or rollout that has one), not
        # by every server start.
        import jmespath
        from jmespath.exceptions import JMESPathError

        self._errors = JMESPathError
        try:
            self._compiled = jmespath.compile(source)
        except JMESPathError as exc:
            detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise ExpressionError(f"{source!r} is not a valid JMESPath expression: {detail}") from None
        self.source = source
        fields = set(_root_fields(self._compiled.parsed))
        self.uses_inputs = "inputs" in fields
        self.uses_headers = "headers" in fields

    def evaluate(self, request: InferenceRequest, headers: Callable[[], dict[str, str]]) -> Any:
        view: dict[str, Any] = {"parameters": request.parameters}
        if self.uses_headers:
            view["headers"] = headers()
        if self.uses_inputs:
            view["inputs"] = {t.name: _jsonable(t.data) for t in request.inputs}
        try:
            return self._compiled.search(view)
        except self._errors as exc:  # a function applied to the wrong type, at request time
            raise InvalidInput(f"expression {self.source!r} failed on this request: {exc}") from None

    def holds(self, request: InferenceRequest, headers: Callable[[], dict[str, str]]) -> bool:
        """JMESPath truthiness: false, null, empty strings, lists and objects are false."""
        value = self.evaluate(request, headers)
        return not (value is None or value is False or value == "" or value == [] or value == {})


def _jsonable(data: Any) -> Any:
    return _text(data.tolist()) if data.dtype.kind == "O" else data.tolist()


def _text(value: Any) -> Any:
    """BYTES elements as text, so ``inputs.text[0] == 'hello'`` compares strings."""
    if isinstance(value, list):
        return [_text(v) for v in value]
    if isinstance(value, (bytes, bytearray)):
        return value.decode("utf-8", errors="replace")
    return value


def _root_fields(node: dict[str, Any]) -> list[str]:
    """Every field name in the parsed tree: a cheap over-approximation of what is read."""
    found = []
    if node.get("type") == "field":
        found.append(node["value"])
    for child in node.get("children", ()):
        if isinstance(child, dict):
            found.extend(_root_fields(child))
    return found


def unit_hash(key: Any) -> float:
    """A key's fixed point in [0, 1): the same in every process and after restarts (sticky
    splits)."""
    digest = hashlib.blake2b(orjson.dumps(key, option=orjson.OPT_SORT_KEYS), digest_size=8)
    return int.from_bytes(digest.digest(), "big") / 2.0**64
