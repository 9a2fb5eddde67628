"""The protocol-neutral request and response that every transport decodes into.

Plain slotted dataclasses over numpy: codecs fill them from the wire without validation
frameworks in between, and models read ``tensor.data`` as an ``ndarray`` directly.
BYTES tensors hold an object array of ``bytes`` elements in the tensor's shape.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from .datatypes import datatype_of
from .errors import InvalidInput

Parameters = dict[str, Any]


@dataclass(slots=True)
class Tensor:
    name: str
    datatype: str
    shape: tuple[int, ...]
    data: np.ndarray
    parameters: Parameters = field(default_factory=dict)

    @classmethod
    def from_numpy(cls, name: str, array: Any, parameters: Parameters | None = None) -> Tensor:
        """Wrap any array-like; str elements become UTF-8 BYTES."""
        given = array
        array = np.asarray(array)
        if array.dtype.kind == "S" and not isinstance(given, np.ndarray):
            # numpy's fixed-width bytes dtype drops trailing NUL bytes: keep the originals.
            array = np.array(given, dtype=object)
        if array.dtype.kind == "U":
            array = np.vectorize(lambda s: s.encode("utf-8"), otypes=[object])(array)
        elif array.dtype.kind == "S":
            array = array.astype(object)
        return cls(name, datatype_of(array), tuple(array.shape), array, parameters or {})

    def as_strings(self) -> list[str]:
        """BYTES elements decoded as UTF-8, flattened, for text models."""
        return [
            v.decode("utf-8") if isinstance(v, (bytes, bytearray)) else str(v)
            for v in self.data.reshape(-1)
        ]


@dataclass(slots=True)
class RequestedOutput:
    name: str
    parameters: Parameters = field(default_factory=dict)


@dataclass(slots=True)
class InferenceRequest:
    inputs: list[Tensor]
    id: str | None = None
    parameters: Parameters = field(default_factory=dict)
    outputs: list[RequestedOutput] | None = None
    model_name: str = ""
    model_version: str | None = None
    #: Set by a transport that can tell when the client has gone away; a request waiting in a
    #: batching queue whose client is gone is dropped before it reaches the model.
    client_gone: Callable[[], bool] | None = field(default=None, repr=False, compare=False)

    def input(self, name: str) -> Tensor:
        for tensor in self.inputs:
            if tensor.name == name:
                return tensor
        raise InvalidInput(f"request has no input named {name!r}")

    def as_numpy(self, name: str | None = None) -> np.ndarray:
        """The named input's array, or the only input's when the request has one."""
        if name is not None:
            return self.input(name).data
        if len(self.inputs) != 1:
            raise InvalidInput(f"expected exactly one input, got {len(self.inputs)}")
        return self.inputs[0].data

    @property
    def requested_output_names(self) -> list[str] | None:
        return None if self.outputs is None else [o.name for o in self.outputs]


@dataclass(slots=True)
class InferenceResponse:
    outputs: list[Tensor]
    model_name: str = ""
    model_version: str | None = None
    id: str | None = None
    parameters: Parameters = field(default_factory=dict)

    def output(self, name: str) -> Tensor:
        for tensor in self.outputs:
            if tensor.name == name:
                return tensor
        raise KeyError(name)


@dataclass(slots=True)
class TensorSpec:
    """What a model declares about one input or output; -1 marks a variable dimension."""

    name: str
    datatype: str
    shape: tuple[int, ...]

    def accepts(self, shape: tuple[int, ...]) -> bool:
        """Whether ``shape`` is one this spec allows: the same rank, and each size as declared
        where the spec fixes it."""
        declared = self.shape
        if len(shape) != len(declared):
            return False
        for got, want in zip(shape, declared):  # a loop, not all(...): once per request
            if want != -1 and got != want:
                return False
        return True

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}
