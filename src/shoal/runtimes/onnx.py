"""ONNX models (``model.onnx``) run by onnxruntime.

The graph describes itself: input and output names, element types and shapes (symbolic or
unknown dimensions become -1) come from the session, so a bare ``model.onnx`` needs no
``model.yaml``. A request gets the outputs it names (default: every tensor output, or those
``model.yaml`` declares); only those are fetched from ``session.run``. onnxruntime's inference
builds still execute the whole graph whatever the fetch list (microsoft/onnxruntime#16483), so
a graph whose optional outputs are costly is better exported without them.

``model.yaml`` parameters:

- ``providers``: execution providers in order of preference, each a name or a one-key
  mapping ``{name: {option: value}}``; default ``[CPUExecutionProvider]``. A provider that is
  not installed, or that onnxruntime could not start (e.g. CUDA libraries missing), fails the
  load instead of silently running on the CPU.
- ``intra_op_threads`` / ``inter_op_threads``: onnxruntime's thread pools (0: its default).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import onnxruntime as ort

from ..errors import InvalidInput, LoadError
from ..model import Model
from ..types import InferenceRequest, Tensor, TensorSpec
from . import first_line
from .declared import check_declared

ARTIFACT = "model.onnx"
DEFAULT_PROVIDERS = ["CPUExecutionProvider"]

#: onnxruntime's element type names -> V2 datatypes. Types missing here (bfloat16, float8,
#: sequences, maps) have no V2 datatype.
DATATYPES: dict[str, str] = {
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(float16)": "FP16",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(bool)": "BOOL",
    "tensor(string)": "BYTES",
}

Provider = str | tuple[str, dict[str, Any]]


class ONNXModel(Model):
    platform = "onnx"
    accepted_parameters = frozenset({"providers", "intra_op_threads", "inter_op_threads"})

    def load(self) -> None:
        artifact = self.path / ARTIFACT
        if not artifact.is_file():
            raise LoadError(f"no {ARTIFACT} in {self.path}")
        providers = self._providers()
        try:
            self.session = ort.InferenceSession(
                str(artifact), sess_options=self._options(), providers=providers
            )
        except Exception as exc:
            raise LoadError(f"cannot read {ARTIFACT}: {first_line(exc)}") from exc
        started = self.session.get_providers()
        missing = [p for p in (_provider_name(p) for p in providers) if p not in started]
        if missing:
            raise LoadError(
                f"onnxruntime could not start {missing} for {ARTIFACT} (it runs on {started}); "
                "check the GPU driver and the CUDA/cuDNN/TensorRT libraries"
            )
        self.tensor_outputs = {
            o.name: TensorSpec(o.name, DATATYPES[o.type], _shape(o.shape))
            for o in self.session.get_outputs()
            if o.type in DATATYPES
        }
        graph_inputs = self._graph_inputs()
        self.inputs = self._declared(self.inputs, graph_inputs, "inputs")
        check_declared(self.inputs, _known_ranks(graph_inputs, self.inputs), ARTIFACT)
        self.outputs = self._declared(self.outputs, list(self.tensor_outputs.values()), "outputs")

    def _options(self) -> ort.SessionOptions:
        options = ort.SessionOptions()
        for key, attribute in (
            ("intra_op_threads", "intra_op_num_threads"),
            ("inter_op_threads", "inter_op_num_threads"),
        ):
            value = self.parameters.get(key, 0)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise LoadError(f"parameters.{key} must be a whole number >= 0, not {value!r}")
            setattr(options, attribute, value)
        return options

    def _providers(self) -> list[Provider]:
        wanted = self.parameters.get("providers", DEFAULT_PROVIDERS)
        if isinstance(wanted, (str, dict)):
            wanted = [wanted]
        if not isinstance(wanted, list) or not wanted:
            raise LoadError("parameters.providers must be a non-empty list of provider names")
        providers: list[Provider] = []
        for entry in wanted:
            if isinstance(entry, dict) and len(entry) == 1:
                name, options = next(iter(entry.items()))
                providers.append((name, dict(options or {})))
            elif isinstance(entry, str):
                providers.append(entry)
            else:
                raise LoadError(
                    f"parameters.providers: {entry!r} is neither a provider name nor "
                    "{name: {options}}"
                )
        available = ort.get_available_providers()
        absent = [p for p in map(_provider_name, providers) if p not in available]
        if absent:
            raise LoadError(
                f"execution provider(s) {absent} are not available in this onnxruntime build; "
                f"available: {available} (CUDA and TensorRT need the onnxruntime-gpu package)"
            )
        return providers

    def _graph_inputs(self) -> list[TensorSpec]:
        specs = []
        for node in self.session.get_inputs():
            if node.type not in DATATYPES:
                raise LoadError(
                    f"{ARTIFACT} input {node.name!r} has type {node.type}, which no V2 datatype carries"
                )
            specs.append(TensorSpec(node.name, DATATYPES[node.type], _shape(node.shape)))
        return specs

    def _declared(
        self, declared: list[TensorSpec], graph: list[TensorSpec], kind: str
    ) -> list[TensorSpec]:
        """``model.yaml`` may restate the graph's tensors (e.g. to fix a shape), not rename them."""
        if not declared:
            return graph
        names = {s.name for s in graph}
        unknown = [s.name for s in declared if s.name not in names]
        if unknown:
            raise LoadError(
                f"model.yaml {kind} {unknown} are not in {ARTIFACT}, whose {kind} are {sorted(names)}"
            )
        if kind == "inputs" and len(declared) != len(graph):
            missing = sorted(names - {s.name for s in declared})
            raise LoadError(f"model.yaml inputs leave out the graph's inputs {missing}")
        return declared

    def predict(self, request: InferenceRequest) -> list[Tensor]:
        names = request.requested_output_names or [s.name for s in self.outputs]
        for name in names:
            if name not in self.tensor_outputs:
                raise InvalidInput(
                    f"model {self.name!r} has no tensor output {name!r}; it offers "
                    f"{sorted(self.tensor_outputs)}"
                )
        feeds = {t.name: _feed(t) for t in request.inputs}
        results = self.session.run(names, feeds)
        return [_tensor(name, value) for name, value in zip(names, results)]

    def unload(self) -> None:
        self.session = None


def _known_ranks(graph: list[TensorSpec], declared: list[TensorSpec]) -> list[TensorSpec]:
    """onnxruntime reports an input of unknown rank as a scalar (``[]``), the case model.yaml
    is there for: of those, only the datatype is checked against a declaration."""
    shapes = {spec.name: spec.shape for spec in declared}
    return [
        replace(spec, shape=shapes[spec.name]) if not spec.shape and spec.name in shapes else spec
        for spec in graph
    ]


def _provider_name(provider: Provider) -> str:
    return provider if isinstance(provider, str) else provider[0]


def _shape(dims: list[Any] | None) -> tuple[int, ...]:
    """Symbolic (``"batch"``) and unknown (``None``) dimensions are -1."""
    return tuple(d if isinstance(d, int) and d >= 0 else -1 for d in dims or ())


def _feed(tensor: Tensor) -> np.ndarray:
    """onnxruntime wants ``str`` elements for string tensors; V2 BYTES carries ``bytes``."""
    if tensor.datatype != "BYTES":
        return tensor.data
    try:
        return np.array(
            [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in tensor.data.reshape(-1)],
            dtype=object,
        ).reshape(tensor.data.shape)
    except UnicodeDecodeError:
        raise InvalidInput(f"input {tensor.name!r}: ONNX string tensors must be UTF-8") from None


def _tensor(name: str, value: np.ndarray) -> Tensor:
    if value.dtype == object:  # string outputs come back as str elements
        flat = [v.encode("utf-8") if isinstance(v, str) else v for v in value.reshape(-1)]
        value = np.array(flat, dtype=object).reshape(value.shape)
        return Tensor(name, "BYTES", tuple(value.shape), value)
    return Tensor.from_numpy(name, value)
