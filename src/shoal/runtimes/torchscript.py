"""What a TorchScript module's ``forward`` takes: TorchScript keeps no input shapes or dtypes.

Without them a V1 request's JSON numbers reach an FP32 module as FP64 and fail inside
TorchScript (500), and a wrong width is the module's RuntimeError instead of a 400. So, when
``model.yaml`` declares no inputs, Shoal reads them from the module where it can tell:

- A tensor argument whose only use is to be passed, unchanged, into one layer (directly, or
  through the ``forward`` of the submodules that hold it) takes what that layer takes:
  ``nn.Linear``: ``[-1, in_features]``; ``nn.Conv1d/2d/3d``: ``[-1, in_channels, -1, ...]``
  (a batch of 1-D, 2-D or 3-D maps of any size), both in the layer's weight dtype;
  ``nn.Embedding``: ``INT64`` indices, ``[-1]`` or ``[-1, -1]``, whichever of the two alone
  the module accepts.
- Anything else (an argument first reshaped, cast or used twice, a layer of another kind)
  has no rank Shoal could know: then no input is declared, and checking is left to
  ``model.yaml``, as before.

Every inference is run once on zeros of that shape before it is used (sizes the module leaves
open are tried at a few values), and dropped if the module refuses it: a wrong guess must
never turn valid requests into 400s. Declared inputs are checked by the same probe.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import torch

from ..errors import LoadError
from ..types import TensorSpec
from . import first_line

#: Layer (``original_name``) -> rank of its batched input; Embedding's rank is not fixed.
LAYER_RANKS = {"Linear": 2, "Conv1d": 3, "Conv2d": 4, "Conv3d": 5, "Embedding": None}
#: Sizes tried for the dimensions an input leaves open (-1), batch excepted (always 1).
PROBE_SIZES = (28, 32, 64, 224)
#: A probe tensor larger than this is not tried (a 3-D conv at 224 would be 11M values/channel).
MAX_PROBE_ELEMENTS = 1 << 24
#: How deep the search follows an argument through nested submodules' forwards.
MAX_DEPTH = 16

#: torch dtypes with a V2 datatype (bfloat16 has none: the pytorch runtime sends such
#: outputs as FP32).
DATATYPES: dict[torch.dtype, str] = {
    torch.float32: "FP32",
    torch.float64: "FP64",
    torch.float16: "FP16",
    torch.int8: "INT8",
    torch.int16: "INT16",
    torch.int32: "INT32",
    torch.int64: "INT64",
    torch.uint8: "UINT8",
    torch.bool: "BOOL",
}
DTYPES = {datatype: dtype for dtype, datatype in DATATYPES.items()}


def infer_inputs(module: Any, names: list[str], device: torch.device) -> list[TensorSpec]:
    """The inputs of ``forward``'s required arguments ``names``, verified by a probe; ``[]``
    when any of them cannot be told (inputs are declared all together or not at all)."""
    arguments = {a.name: a for a in module.forward.schema.arguments[1:]}
    positions = {a.name: i + 1 for i, a in enumerate(module.forward.schema.arguments[1:])}
    choices: list[list[TensorSpec]] = []
    for name in names:
        if str(arguments[name].type) != "Tensor":
            return []
        layer = _entry_layer(module, positions[name], 0)
        candidates = _layer_inputs(name, layer) if layer is not None else []
        if not candidates:
            return []
        choices.append(candidates)
    runs = [list(specs) for specs in itertools.product(*choices)]
    accepted = [specs for specs in runs if probe(module, specs, device) is None]
    return accepted[0] if len(accepted) == 1 else []


def check_declared_scripted(
    module: Any, declared: list[TensorSpec], device: torch.device, artifact: str
) -> None:
    """Declared inputs must be ones ``forward`` takes: as many as its arguments, and numeric,
    and forward must run on zeros of their shapes. Where a declared size is -1 beyond the
    batch, a failing probe may only mean the sizes tried were wrong: that is not held
    against the declaration."""
    arguments = module.forward.schema.arguments[1:]
    required = sum(1 for a in arguments if not a.has_default_value())
    if not required <= len(declared) <= len(arguments):
        raise LoadError(
            f"model.yaml declares {len(declared)} inputs, but {artifact}'s forward takes "
            f"{required if required == len(arguments) else f'{required} to {len(arguments)}'} "
            f"({', '.join(a.name for a in arguments)})"
        )
    for spec in declared:
        if spec.datatype not in DTYPES:
            raise LoadError(
                f"model.yaml input {spec.name!r} is {spec.datatype}; PyTorch models take "
                "numeric tensors"
            )
    error = probe(module, declared, device)
    if error is not None and not any(d < 0 for spec in declared for d in spec.shape[1:]):
        shapes = ", ".join(f"{s.name} {s.datatype} {[1, *s.shape[1:]]}" for s in declared)
        raise LoadError(
            f"model.yaml inputs do not fit {artifact}: forward on zeros ({shapes}) fails: "
            f"{first_line(error)}"
        )


def probe(module: Any, specs: list[TensorSpec], device: torch.device) -> Exception | None:
    """Run ``forward`` once on zeros of ``specs`` (batch 1, open sizes at each of
    PROBE_SIZES in turn); None when one run succeeds, else the first run's error."""
    first: Exception | None = None
    open_dims = any(d < 0 for spec in specs for d in spec.shape[1:])
    for size in PROBE_SIZES if open_dims else PROBE_SIZES[:1]:
        shapes = [(1, *(size if d < 0 else d for d in spec.shape[1:])) if spec.shape else ()
                  for spec in specs]
        if any(math.prod(shape) > MAX_PROBE_ELEMENTS for shape in shapes):
            continue
        try:
            tensors = [
                torch.zeros(shape, dtype=DTYPES[spec.datatype], device=device)
                for spec, shape in zip(specs, shapes)
            ]
            with torch.inference_mode():
                module(*tensors)
            return None
        except Exception as exc:  # whatever forward raises: the probe failed
            first = first or exc
    return first or RuntimeError("every probe shape was too large to try")


def _entry_layer(module: Any, index: int, depth: int) -> Any | None:
    """The layer that graph input ``index`` of ``module.forward`` goes into, unchanged and
    nowhere else; None if it does anything else first."""
    if getattr(module, "original_name", None) in LAYER_RANKS:
        return module if index == 1 else None
    if depth >= MAX_DEPTH:
        return None
    try:
        graph = module.forward.graph
    except (AttributeError, RuntimeError):
        return None
    inputs = list(graph.inputs())
    if index >= len(inputs):
        return None
    uses = inputs[index].uses()
    if len(uses) != 1:
        return None
    call = uses[0].user
    if call.kind() != "prim::CallMethod" or call.s("name") != "forward":
        return None
    arguments = list(call.inputs())
    owner = arguments[0].node()
    if owner.kind() != "prim::GetAttr" or owner.input().debugName() != inputs[0].debugName():
        return None
    try:
        submodule = getattr(module, owner.s("name"))
    except AttributeError:
        return None
    return _entry_layer(submodule, uses[0].offset, depth + 1)


def _layer_inputs(name: str, layer: Any) -> list[TensorSpec]:
    """What ``layer`` takes as a batched input, one candidate per possible rank."""
    kind = layer.original_name
    weight = getattr(layer, "weight", None)
    if not isinstance(weight, torch.Tensor):
        return []
    if kind == "Embedding":
        return [TensorSpec(name, "INT64", (-1,)), TensorSpec(name, "INT64", (-1, -1))]
    datatype = DATATYPES.get(weight.dtype)
    if datatype is None or not weight.dtype.is_floating_point:
        return []
    rank = LAYER_RANKS[kind]
    if kind == "Linear":
        return [TensorSpec(name, datatype, (-1, int(weight.shape[1])))]
    channels = int(weight.shape[1]) * int(getattr(layer, "groups", 1))
    return [TensorSpec(name, datatype, (-1, channels, *([-1] * (rank - 2))))]
