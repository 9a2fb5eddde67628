"""MLflow models: a folder with an ``MLmodel`` file, loaded with ``mlflow.pyfunc``.

Any flavor with a ``python_function`` entry is served (sklearn, a custom ``PythonModel``,
...). The V2 metadata comes from the model's signature:

* tensor-based (``TensorSpec``): one V2 tensor per spec, with its name, datatype and shape;
  an unnamed spec is the input ``input-0``. The model gets a numpy array (one unnamed spec)
  or a dict of name -> array (named specs), as MLflow's own scoring server gives it.
* column-based (``ColSpec``): one 1-D V2 input per column (shape ``[-1]``, one value per row),
  as MLServer's pandas codec does; the model gets a ``pandas.DataFrame`` with the columns in
  signature order. V1 rows of named values (``{"instances": [{"a": 1, "b": "x"}]}``) map onto
  it directly. Column types with no V2 datatype (datetime, arrays, objects, maps) fail the load.
* no signature: inputs are not checked; one input arrives as its array, several as a dict.

Outputs: a dict or DataFrame becomes one tensor per key or column; anything else (array,
Series, list) is one tensor named after the signature's single named output, else ``predict``.
Request parameters that the signature's ``params`` declare are passed as ``params``.

``python_model.pkl`` and most flavors' artifacts are (cloud)pickles: loading one runs code
from the folder, so only serve models you trust; like the scikit-learn runtime, Shoal refuses
a model folder that anyone on the machine could have rewritten.
"""

from __future__ import annotations

from typing import Any

import mlflow.pyfunc
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.types import DataType

from ..datatypes import datatype_of
from ..errors import InvalidInput, LoadError
from ..model import Model
from ..types import InferenceRequest, Tensor, TensorSpec
from . import IMPORT_LOCK
from .declared import check_declared
from .trust import refuse_untrusted

ARTIFACT = "MLmodel"
DEFAULT_INPUT = "input-0"
DEFAULT_OUTPUT = "predict"

COLUMN_DATATYPES = {
    DataType.boolean: "BOOL",
    DataType.integer: "INT32",
    DataType.long: "INT64",
    DataType.float: "FP32",
    DataType.double: "FP64",
    DataType.string: "BYTES",
    DataType.binary: "BYTES",
}


class MLflowModel(Model):
    platform = "mlflow"
    #: Nothing is read from model.yaml parameters (request parameters reach ``params``).
    accepted_parameters: frozenset[str] = frozenset()

    def load(self) -> None:
        if not (self.path / ARTIFACT).is_file():
            raise LoadError(f"no {ARTIFACT} file in {self.path}")
        if not (self.path / ARTIFACT).read_bytes().strip():  # MLflow: "'NoneType' ... 'copy'"
            raise LoadError(f"cannot load the MLflow model: its {ARTIFACT} file is empty")
        for artifact in sorted(p for p in self.path.rglob("*") if p.is_file()):
            refuse_untrusted(artifact)
        try:
            with IMPORT_LOCK:  # unpickling imports the model's modules
                self.pyfunc = mlflow.pyfunc.load_model(str(self.path))
        except Exception as exc:
            raise LoadError(f"cannot load the MLflow model: {type(exc).__name__}: {exc}") from exc
        metadata = self.pyfunc.metadata
        input_schema, output_schema = metadata.get_input_schema(), metadata.get_output_schema()
        self.columns = input_schema is not None and not input_schema.is_tensor_spec()
        self.named_tensors = (
            input_schema is not None and not self.columns and input_schema.has_input_names()
        )
        signature_inputs = _specs(input_schema, DEFAULT_INPUT)
        unnamed = input_schema is not None and not self.columns and not self.named_tensors
        check_declared(self.inputs, signature_inputs, "the MLflow signature", by_position=unnamed)
        self.inputs = self.inputs or signature_inputs
        self.outputs = self.outputs or _specs(output_schema, DEFAULT_OUTPUT)
        self.text_columns = {
            spec.name for spec, column in zip(signature_inputs, input_schema.inputs)
            if column.type == DataType.string
        } if self.columns else set()
        params = metadata.get_params_schema()
        self.param_names = {p.name for p in params.params} if params is not None else set()

    def predict(self, request: InferenceRequest) -> list[Tensor]:
        data = self._model_input(request)
        params = {k: v for k, v in request.parameters.items() if k in self.param_names}
        try:
            result = self.pyfunc.predict(data, params=params) if params else self.pyfunc.predict(data)
        except MlflowException as exc:
            if exc.error_code == "INVALID_PARAMETER_VALUE":  # the signature refused the input
                raise InvalidInput(f"model {self.name!r}: {exc.message}") from None
            raise
        return self._tensors(result)

    def _model_input(self, request: InferenceRequest) -> Any:
        if self.columns:
            try:
                return pd.DataFrame({
                    t.name: _text(t.data) if t.name in self.text_columns else t.data
                    for t in request.inputs
                })
            except ValueError as exc:
                raise InvalidInput(f"inputs do not form a table: {exc}") from None
        arrays = {t.name: _text(t.data) if t.datatype == "BYTES" else t.data for t in request.inputs}
        if len(arrays) == 1 and not self.named_tensors:
            return next(iter(arrays.values()))
        return arrays

    def _tensors(self, result: Any) -> list[Tensor]:
        if isinstance(result, pd.DataFrame):
            result = {str(column): result[column].to_numpy() for column in result.columns}
        if isinstance(result, dict):
            return [Tensor.from_numpy(str(k), _array(v)) for k, v in result.items()]
        named = [s.name for s in self.outputs]
        name = named[0] if len(named) == 1 else DEFAULT_OUTPUT
        return [Tensor.from_numpy(name, _array(result))]


def _specs(schema: Any, unnamed: str) -> list[TensorSpec]:
    """V2 tensors for an MLflow input or output schema (see the module docstring)."""
    if schema is None:
        return []
    specs = []
    for index, spec in enumerate(schema.inputs):
        name = spec.name or (unnamed if index == 0 else f"{unnamed}-{index}")
        if schema.is_tensor_spec():
            try:
                datatype = datatype_of(np.empty(0, dtype=spec.type))
            except InvalidInput:
                raise LoadError(f"tensor {name!r} has dtype {spec.type}, which has no V2 datatype") from None
            specs.append(TensorSpec(name, datatype, tuple(spec.shape)))
        elif isinstance(spec.type, DataType) and spec.type in COLUMN_DATATYPES:
            specs.append(TensorSpec(name, COLUMN_DATATYPES[spec.type], (-1,)))
        else:
            raise LoadError(
                f"column {name!r} has type {spec.type}, which has no V2 datatype; supported: "
                f"{', '.join(sorted(t.name for t in COLUMN_DATATYPES))}"
            )
    return specs


def _text(data: np.ndarray) -> np.ndarray:
    """BYTES elements as str where they are UTF-8 (text models expect str, as MLflow gives)."""
    out = np.empty(data.size, dtype=object)
    for index, value in enumerate(data.reshape(-1)):
        try:
            out[index] = value.decode("utf-8") if isinstance(value, bytes) else value
        except UnicodeDecodeError:
            out[index] = value
    return out.reshape(data.shape)


def _array(value: Any) -> np.ndarray:
    if isinstance(value, (pd.Series, pd.Index)):
        return value.to_numpy()
    return np.asarray(value)
