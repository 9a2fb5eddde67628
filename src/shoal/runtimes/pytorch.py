"""PyTorch models: TorchScript (``model.pt``) and ``torch.export`` programs (``model.pt2``).

**Loading either format can run code from the file.** ``torch.jit.load`` unpickles the
archive's constants and runs its TorchScript; ``torch.export.load`` (PyTorch 2.13) reads
weights and constants with ``torch.load(weights_only=False)`` and ``pickle.loads``. So, as for
scikit-learn pickles, only serve repositories you trust: Shoal refuses a world-writable
artifact or folder.

Inputs reach ``forward`` positionally, in the declared order (``model.yaml`` ``inputs``, else
the order ``forward`` names them); a one-input model takes its input under any name. A
program states its inputs; a TorchScript module's are read from the layer each argument goes
into, where that tells (see torchscript.py). Declared inputs may not contradict either. What
``forward`` returns becomes named outputs: a dict by its keys, a tuple or list by the declared
output names (else ``output-0``, ``output-1``, ...), a tensor as the one output. A request
gets the outputs it names, else the declared ones, else all.

``parameters.device``: ``cpu`` (default), ``cuda`` or ``cuda:N``. Requests run under
``torch.inference_mode()``; inputs become tensors with ``torch.from_numpy`` (no copy, except of
read-only request buffers, which a model's in-place op must not write through).
"""

from __future__ import annotations

import logging
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import InvalidInput, LoadError, ModelFailure
from ..model import Model
from ..types import InferenceRequest, Tensor, TensorSpec
from . import IMPORT_LOCK, first_line
from .declared import check_declared
from .torch_device import torch_device
from .torchscript import DATATYPES, check_declared_scripted, infer_inputs
from .trust import refuse_untrusted

ARTIFACTS = ("model.pt", "model.pt2")


class PyTorchModel(Model):
    platform = "pytorch"
    accepted_parameters = frozenset({"device"})

    def load(self) -> None:
        artifact = next((self.path / a for a in ARTIFACTS if (self.path / a).is_file()), None)
        if artifact is None:
            raise LoadError(f"no PyTorch artifact ({', '.join(ARTIFACTS)}) in {self.path}")
        refuse_untrusted(artifact)
        self.device = self._device()
        if not zipfile.is_zipfile(artifact):  # checked first: torch logs a traceback for these
            raise LoadError(
                f"cannot read {artifact.name}: not a zip archive (truncated, corrupt, or not "
                "written by torch.jit.save / torch.export.save)"
            )
        try:
            with IMPORT_LOCK:  # both loaders import parts of torch lazily
                if artifact.suffix == ".pt2":
                    self._load_exported(artifact)
                else:
                    self._load_scripted(artifact)
        except LoadError:
            raise
        except Exception as exc:
            raise LoadError(f"cannot read {artifact.name}: {_first_line(exc)}{_hint(artifact)}") from exc
        if artifact.suffix == ".pt":  # outside the lock: this runs forward on zeros
            self._scripted_inputs(artifact.name)

    def _device(self) -> torch.device:
        return torch_device(str(self.parameters.get("device", "cpu")), "PyTorch models")

    def _load_scripted(self, artifact: Path) -> None:
        module = torch.jit.load(str(artifact), map_location=self.device)
        module.eval()
        self.module = module
        # Arguments with defaults keep them unless model.yaml declares them as inputs.
        self.argument_names = [
            a.name for a in module.forward.schema.arguments[1:] if not a.has_default_value()
        ]

    def _scripted_inputs(self, artifact: str) -> None:
        """Declared inputs are checked against the module; else read from it where it tells
        (see torchscript.py), so requests are checked and JSON numbers converted."""
        if self.inputs:
            check_declared_scripted(self.module, self.inputs, self.device, artifact)
        else:
            self.inputs = infer_inputs(self.module, self.argument_names, self.device)

    def _load_exported(self, artifact: Path) -> None:
        with _logged_errors("torch.export") as logged:
            try:
                program = torch.export.load(str(artifact))
            except RuntimeError:
                if not logged:
                    raise
                raise logged[0] from None  # the reason, not "check the warnings above"
        if self.device.type != "cpu":
            from torch.export.passes import move_to_device_pass

            program = move_to_device_pass(program, self.device)
        # An exported program runs in the mode it was exported in (export it after .eval()).
        self.module = program.module()
        self.argument_names = list(program.module_call_graph[0].signature.forward_arg_names)
        inputs, outputs = exported_specs(program)
        # model.yaml's inputs/outputs (set before load) win over what the program says, but
        # may not contradict it; inputs reach forward positionally.
        check_declared(self.inputs, inputs or [], artifact.name, by_position=True)
        if not self.inputs and inputs is not None:
            self.inputs = inputs
        if not self.outputs and outputs is not None:
            self.outputs = outputs

    def predict(self, request: InferenceRequest) -> list[Tensor]:
        arguments = [self._tensor(t) for t in self._ordered(request)]
        with torch.inference_mode():
            result = self.module(*arguments)
        wanted = request.requested_output_names or [s.name for s in self.outputs] or None
        return [
            Tensor.from_numpy(name, _numpy(value))
            for name, value in self._named(result)
            if wanted is None or name in wanted
        ]

    def _ordered(self, request: InferenceRequest) -> list[Tensor]:
        names = [s.name for s in self.inputs] or self.argument_names
        if not names or (len(request.inputs) == 1 and len(names) == 1):
            return request.inputs
        given = {t.name: t for t in request.inputs}
        unknown = sorted(set(given) - set(names))
        missing = [n for n in names if n not in given]
        if unknown or missing:
            raise InvalidInput(
                f"model {self.name!r} takes inputs {names} (in this order); the request "
                f"{'lacks ' + str(missing) if missing else 'has unknown ' + str(unknown)}"
            )
        return [given[n] for n in names]

    def _tensor(self, tensor: Tensor) -> torch.Tensor:
        data = tensor.data
        if tensor.datatype == "BYTES":
            raise InvalidInput(f"input {tensor.name!r} is BYTES; PyTorch models take numeric tensors")
        if not data.flags.writeable:  # a binary/gRPC request's buffer, shared with the body
            data = data.copy()
        result = torch.from_numpy(data)
        return result if self.device.type == "cpu" else result.to(self.device)

    def _named(self, result: Any) -> list[tuple[str, Any]]:
        if isinstance(result, dict):
            return [(str(k), v) for k, v in result.items()]
        values = list(result) if isinstance(result, (tuple, list)) else [result]
        declared = [s.name for s in self.outputs]
        if declared and len(declared) != len(values):
            raise ModelFailure(
                f"model {self.name!r} returned {len(values)} outputs but declares "
                f"{len(declared)} ({declared})"
            )
        names = declared or [f"output-{i}" for i in range(len(values))]
        return list(zip(names, values))

    def unload(self) -> None:
        self.module = None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()


def exported_specs(
    program: torch.export.ExportedProgram,
) -> tuple[list[TensorSpec] | None, list[TensorSpec] | None]:
    """Input and output metadata from an exported program's signature, where it is plain.

    Inputs: only when ``forward`` takes tensors as positional arguments (no keyword-only,
    nested or non-tensor arguments). Outputs: a tensor, a flat tuple/list, or a flat dict of
    tensors. Dimensions exported as dynamic (``torch.export.Dim``) are -1; others are the fixed
    sizes the program was specialised to. Anything else is left to ``model.yaml``.
    """
    signature = program.graph_signature
    names = program.module_call_graph[0].signature.forward_arg_names
    placeholders = {n.name: n for n in program.graph.nodes if n.op == "placeholder"}
    in_spec = program.call_spec.in_spec
    inputs = None
    if in_spec.type is tuple and in_spec.num_children == 2:  # (args, kwargs)
        args_spec, kwargs_spec = _children(in_spec)
        if kwargs_spec.num_leaves == 0 and (
            len(signature.user_inputs) == len(names) == args_spec.num_children == args_spec.num_leaves
        ):
            inputs = _specs(names, [placeholders[n].meta.get("val") for n in signature.user_inputs])
    out_spec = program.call_spec.out_spec
    output_node = next(n for n in program.graph.nodes if n.op == "output")
    values = [
        getattr(node, "meta", {}).get("val")
        for node, spec in zip(output_node.args[0], signature.output_specs)
        if spec.kind == torch.export.graph_signature.OutputKind.USER_OUTPUT
    ]
    outputs = None
    if out_spec.is_leaf():
        outputs = _specs(["output-0"], values)
    elif out_spec.num_children == out_spec.num_leaves == len(values):
        if out_spec.type is dict:
            outputs = _specs([str(k) for k in out_spec.context], values)
        elif out_spec.type in (tuple, list):
            outputs = _specs([f"output-{i}" for i in range(len(values))], values)
    return inputs, outputs


def _children(spec: Any) -> list[Any]:
    children = getattr(spec, "children", None)
    return list(children()) if callable(children) else list(spec.children_specs)


def _specs(names: list[str], values: list[Any]) -> list[TensorSpec] | None:
    if len(names) != len(values):
        return None
    specs = []
    for name, value in zip(names, values):
        if not isinstance(value, torch.Tensor) or value.dtype not in DATATYPES:
            return None
        shape = tuple(d if isinstance(d, int) else -1 for d in value.shape)
        specs.append(TensorSpec(name, DATATYPES[value.dtype], shape))
    return specs


def _numpy(value: Any) -> np.ndarray:
    if not isinstance(value, torch.Tensor):
        return np.asarray(value)
    value = value.detach()
    if value.dtype == torch.bfloat16:
        value = value.float()
    return value.cpu().numpy()


@contextmanager
def _logged_errors(logger_name: str) -> Iterator[list[BaseException]]:
    """Exceptions that ``logger_name`` logs meanwhile.

    ``torch.export.load`` logs why it could not read an archive (``PytorchStreamReader failed
    reading zip archive: invalid header``) and then raises a generic error that says to read
    the log; a failed load must carry the reason itself. Loads hold ``IMPORT_LOCK``, so no
    other thread's records land here.
    """
    caught: list[BaseException] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.exc_info and record.exc_info[1] is not None:
                caught.append(record.exc_info[1])

    handler = Collect(logging.WARNING)
    logger = logging.getLogger(logger_name)
    logger.addHandler(handler)
    try:
        yield caught
    finally:
        logger.removeHandler(handler)


def _first_line(exc: BaseException) -> str:
    # PyTorch's archive errors append a long generic paragraph after the first sentence.
    return first_line(exc).split(". This is an internal miniz error")[0]


def _hint(artifact: Path) -> str:
    """Name the usual mistake: a ``torch.save``'d module where TorchScript was expected."""
    if artifact.suffix != ".pt":
        return ""
    with zipfile.ZipFile(artifact) as archive:
        names = archive.namelist()
    if any(n.endswith("data.pkl") for n in names) and not any(n.endswith("constants.pkl") for n in names):
        return (
            " (this looks like torch.save output, a pickle of Python objects: save a TorchScript "
            "module with torch.jit.script(model).save('model.pt'), or a torch.export program "
            "with torch.export.save(program, 'model.pt2'))"
        )
    return ""
