"""TensorFlow models: a SavedModel folder (``saved_model.pb``) or a Keras ``model.keras`` file.

A SavedModel is served through one of its signatures (``parameters.signature``, default
``serving_default``): the signature names the inputs and outputs and gives their dtypes and
shapes (``None`` dimensions are -1). A ``.keras`` model is loaded with Keras' safe mode (no
deserialised Python lambdas), its inputs and outputs read from the model. Either is traced once,
at load, into a concrete function that takes the inputs positionally; requests call that, so
they skip Keras' eager dispatch and the per-call argument checks of a ``tf.function``.

A signature computes all its outputs; a request gets the ones it names (default: all).
Wrong inputs that TensorFlow itself rejects (``InvalidArgumentError``) are 400s, as in TF
Serving.

``parameters.device``: ``cpu`` (default), ``gpu`` or ``gpu:N``: the device the model is
loaded on and runs on. GPUs are set to allocate memory as they need it rather than all at
once, so TensorFlow shares them with other models in the process.

TensorFlow's C++ log level defaults to errors only here (``TF_CPP_MIN_LOG_LEVEL=2``, unless
you set it); a few lines it prints while being imported cannot be turned off.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # read once, when TensorFlow is imported

import numpy as np
import tensorflow as tf

from ..datatypes import datatype_of
from ..errors import InvalidInput, LoadError, ShoalError
from ..model import Model
from ..types import InferenceRequest, Tensor, TensorSpec
from . import IMPORT_LOCK, first_line
from .declared import check_declared

SAVED_MODEL = "saved_model.pb"
KERAS = "model.keras"
DEFAULT_SIGNATURE = "serving_default"

for _gpu in tf.config.list_physical_devices("GPU"):
    try:
        tf.config.experimental.set_memory_growth(_gpu, True)
    except (RuntimeError, ValueError):  # the GPU is already initialised
        pass

class TensorFlowModel(Model):
    platform = "tensorflow"
    accepted_parameters = frozenset({"device", "signature"})

    def load(self) -> None:
        if (self.path / SAVED_MODEL).is_file():
            artifact, reader = SAVED_MODEL, self._load_saved_model
        elif (self.path / KERAS).is_file():
            artifact, reader = KERAS, self._load_keras
        else:
            raise LoadError(f"no TensorFlow artifact ({SAVED_MODEL} or {KERAS}) in {self.path}")
        self.device = self._device()
        problem = _damaged(self.path / artifact)
        if problem:
            raise LoadError(f"cannot read {artifact}: {problem}")
        try:
            with IMPORT_LOCK, tf.device(self.device):  # loading imports parts of TF and Keras
                inputs, outputs = reader()
        except ShoalError:
            raise
        except Exception as exc:
            raise LoadError(f"cannot read {artifact}: {first_line(exc)}") from exc
        # model.yaml's inputs/outputs (set before load) may restate the model's tensors, not
        # rename them; declared outputs are the default ones. A tensor of unknown rank has no
        # V2 shape: its metadata comes from model.yaml or is left out (inputs: all or none,
        # as requests are checked against all declared inputs).
        _check_declared(self.inputs, self.input_names, "inputs", exact=True)
        _check_declared(self.outputs, self.output_names, "outputs", exact=False)
        check_declared(self.inputs, self._stated(inputs), artifact)
        if not self.inputs and None not in inputs:
            self.inputs = inputs
        self.default_outputs = [s.name for s in self.outputs] or self.output_names
        if not self.outputs:
            self.outputs = [s for s in outputs if s is not None]

    def _stated(self, inputs: list[TensorSpec | None]) -> list[TensorSpec]:
        """The model's inputs as far as it states them: of an input of unknown rank, only
        the datatype (shown with the declared shape, so only the datatype is compared)."""
        declared = {s.name: s.shape for s in self.inputs}
        return [
            spec or TensorSpec(name, datatype, declared.get(name, ()))
            for spec, name, datatype in zip(inputs, self.input_names, self.input_datatypes)
        ]

    def _device(self) -> str:
        wanted = str(self.parameters.get("device", "cpu")).lower()
        kind, _, index = wanted.partition(":")
        if kind not in ("cpu", "gpu") or (index and not index.isdigit()):
            raise LoadError(f"parameters.device {wanted!r}: use cpu, gpu or gpu:N")
        if kind == "gpu":
            gpus = tf.config.list_physical_devices("GPU")
            if int(index or 0) >= len(gpus):
                raise LoadError(
                    f"parameters.device is {wanted!r} but TensorFlow sees {len(gpus)} GPU(s) "
                    f"(tensorflow {tf.__version__}, built with CUDA: {tf.test.is_built_with_cuda()})"
                )
        return f"/{kind.upper()}:{index or 0}"

    def _load_saved_model(self) -> tuple[list[TensorSpec | None], list[TensorSpec | None]]:
        # Keep the loaded object: its signatures read variables that it owns.
        self.saved_model = tf.saved_model.load(str(self.path))
        signatures = self.saved_model.signatures
        name = str(self.parameters.get("signature", DEFAULT_SIGNATURE))
        if name not in signatures:
            raise LoadError(
                f"the SavedModel has no signature {name!r}; it has {sorted(signatures)} "
                "(choose one with parameters.signature)"
            )
        function = signatures[name]
        # Signatures take and return keyword maps: sorted names give stable metadata.
        keywords = function.structured_input_signature[1]
        returned = function.structured_outputs
        names = sorted(keywords)

        def signature(*tensors: tf.Tensor) -> dict[str, tf.Tensor]:
            return function(**dict(zip(names, tensors)))

        self._run = _concrete(signature, [keywords[n] for n in names])
        self.input_names, self.output_names = names, sorted(returned)
        self.input_datatypes = [_datatype(n, keywords[n].dtype, "input") for n in names]
        inputs = [_spec(n, keywords[n].dtype, keywords[n].shape, "input") for n in names]
        outputs = [_spec(n, returned[n].dtype, returned[n].shape, "output") for n in sorted(returned)]
        return inputs, outputs

    def _load_keras(self) -> tuple[list[TensorSpec | None], list[TensorSpec | None]]:
        import keras

        if keras.backend.backend() != "tensorflow":
            raise LoadError(
                f"{KERAS} needs Keras' TensorFlow backend here; KERAS_BACKEND is "
                f"{keras.backend.backend()!r}"
            )
        model = keras.models.load_model(str(self.path / KERAS), compile=False, safe_mode=True)
        flat = list(model.inputs or [])
        if not flat:
            raise LoadError(f"{KERAS} holds a model without defined inputs (a subclassed model?)")
        try:
            structure: Any = model.input  # a functional model's own nesting (dict, list, ...)
        except AttributeError:  # Sequential: a list of its inputs
            structure = flat if len(flat) > 1 else flat[0]
        names = [t.name for t in flat]
        declared = list(getattr(model, "output_names", None) or [])

        def call(*tensors: tf.Tensor) -> dict[str, tf.Tensor]:
            result = model(keras.tree.pack_sequence_as(structure, list(tensors)), training=False)
            return _as_dict(result, declared)

        self._run = _concrete(
            call, [tf.TensorSpec(t.shape, t.dtype, name=n) for t, n in zip(flat, names)]
        )
        returned = self._run.structured_outputs
        self.keras_model = model
        self.input_names, self.output_names = names, list(returned)
        dtypes = [tf.as_dtype(t.dtype) for t in flat]
        self.input_datatypes = [_datatype(n, d, "input") for d, n in zip(dtypes, names)]
        inputs = [_spec(n, d, t.shape, "input") for t, d, n in zip(flat, dtypes, names)]
        outputs = [_spec(n, t.dtype, t.shape, "output") for n, t in returned.items()]
        return inputs, outputs

    def predict(self, request: InferenceRequest) -> list[Tensor]:
        wanted = request.requested_output_names
        for name in wanted or ():
            if name not in self.output_names:
                raise InvalidInput(
                    f"model {self.name!r} has no output {name!r}; it offers {self.output_names}"
                )
        arrays = self._ordered(request)
        try:
            with tf.device(self.device):
                result = self._run(*[tf.constant(a) for a in arrays])
        except tf.errors.InvalidArgumentError as exc:
            raise InvalidInput(f"model {self.name!r} rejected the input: {first_line(exc)}") from None
        return [Tensor.from_numpy(n, result[n].numpy()) for n in wanted or self.default_outputs]

    def _ordered(self, request: InferenceRequest) -> list[np.ndarray]:
        """Arrays in the model's input order; a one-input model takes any name."""
        if len(self.input_names) == 1 and len(request.inputs) == 1:
            return [request.inputs[0].data]
        given = {t.name: t.data for t in request.inputs}
        if set(given) != set(self.input_names):
            raise InvalidInput(
                f"model {self.name!r} takes inputs {self.input_names}; the request has {sorted(given)}"
            )
        return [given[n] for n in self.input_names]

    def unload(self) -> None:
        self._run = None  # type: ignore[assignment]
        self.saved_model = self.keras_model = None


def _concrete(call: Callable[..., dict[str, tf.Tensor]], specs: list[tf.TensorSpec]) -> Any:
    """``call`` traced once for ``specs``: the concrete function requests run.

    A ``tf.function`` binds and checks its arguments in Python on every call before it finds
    the graph it already traced, and a signature maps keyword arguments first; the concrete
    function takes the tensors as they are. Measured for a one-row MLP: about 90 µs less per
    call than through a Keras model's ``tf.function``, 15 µs less than through the signature.
    """
    return tf.function(call, input_signature=specs).get_concrete_function()


def _check_declared(declared: list[TensorSpec], names: list[str], kind: str, exact: bool) -> None:
    given = {s.name for s in declared}
    if declared and (given - set(names) or (exact and given != set(names))):
        raise LoadError(f"model.yaml {kind} {sorted(given)} do not match the model's {kind} {names}")


def _as_dict(result: Any, names: list[str]) -> dict[str, tf.Tensor]:
    """A Keras model's outputs by name: a dict's keys, else the output layers' names."""
    if isinstance(result, dict):
        return {str(k): v for k, v in result.items()}
    values = list(result) if isinstance(result, (list, tuple)) else [result]
    if len(names) != len(values):
        names = [f"output-{i}" for i in range(len(values))]
    return dict(zip(names, values))


def _datatype(name: str, dtype: tf.DType, kind: str) -> str:
    if dtype == tf.string:
        return "BYTES"
    try:
        return datatype_of(np.empty(0, dtype.as_numpy_dtype))
    except (InvalidInput, TypeError):
        raise LoadError(f"{kind} {name!r} is {dtype.name}, which no V2 datatype carries") from None


def _spec(name: str, dtype: tf.DType, shape: Any, kind: str) -> TensorSpec | None:
    """The V2 metadata of one signature tensor; None when its rank is unknown."""
    datatype = _datatype(name, dtype, kind)
    shape = tf.TensorShape(shape)
    if shape.rank is None:
        return None
    return TensorSpec(name, datatype, tuple(-1 if d is None else int(d) for d in shape.as_list()))


def _damaged(artifact: Path) -> str:
    """Damage that TensorFlow and Keras report confusingly ("0 MetaGraphs", "File not found")."""
    if artifact.stat().st_size == 0:
        return "the file is empty"
    if artifact.suffix == ".keras" and not zipfile.is_zipfile(artifact):
        return "not a zip archive (truncated or corrupt)"
    return ""
