"""The MLflow runtime: signatures to V2 metadata, inputs to what pyfunc expects, outputs back."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import mlflow.pyfunc
import mlflow.sklearn
import numpy as np
import pandas as pd
import pytest
from mlflow.models import ModelSignature, infer_signature
from mlflow.types.schema import Array, ColSpec, ParamSchema, ParamSpec, Schema
from mlflow.types.schema import TensorSpec as MLflowTensor
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression

from shoal.errors import InvalidInput, LoadError
from shoal.repository.config import ModelConfig
from shoal.runtimes import create_model
from shoal.runtimes.mlflow import MLflowModel
from shoal.types import InferenceRequest, Tensor, TensorSpec

# MLflow nudges towards input examples while saving: not this suite's subject.
pytestmark = pytest.mark.filterwarnings("ignore:.*input example was not provided:UserWarning")


class Doubler(mlflow.pyfunc.PythonModel):
    def predict(self, context, model_input, params=None):
        x = model_input["x"]
        return {"doubled": x * 2, "sum": x.sum(axis=1)}


class Echo(mlflow.pyfunc.PythonModel):
    def predict(self, context, model_input, params=None):
        return model_input.assign(k=(params or {}).get("k", 0))


class Upper(mlflow.pyfunc.PythonModel):
    def predict(self, context, model_input, params=None):
        return [text.upper() for text in model_input.iloc[:, 0]]


class Lengths(mlflow.pyfunc.PythonModel):
    def predict(self, context, model_input, params=None):
        if isinstance(model_input, dict):
            return [len(v) for v in model_input.values()]
        return [len(str(v)) for v in model_input.reshape(-1)]


DOUBLER_SIGNATURE = ModelSignature(
    inputs=Schema([MLflowTensor(np.dtype(np.float32), (-1, 4), "x")]),
    outputs=Schema([MLflowTensor(np.dtype(np.float32), (-1, 4), "doubled"),
                    MLflowTensor(np.dtype(np.float32), (-1,), "sum")]),
)
ECHO_SIGNATURE = ModelSignature(
    inputs=Schema([ColSpec("double", "a"), ColSpec("string", "s")]),
    outputs=Schema([ColSpec("double", "a"), ColSpec("string", "s"), ColSpec("long", "k")]),
    params=ParamSchema([ParamSpec("k", "long", 1)]),
)


def save_pyfunc(folder: Path, python_model: object, signature: ModelSignature | None = None) -> Path:
    mlflow.pyfunc.save_model(str(folder), python_model=python_model, signature=signature,
                             pip_requirements=[])
    return folder


def loaded(folder: Path) -> MLflowModel:
    model = create_model("m", "1", folder, folder, ModelConfig())  # detected from MLmodel
    assert isinstance(model, MLflowModel)
    model.load()
    return model


@pytest.fixture(scope="module")
def iris() -> tuple[pd.DataFrame, LogisticRegression]:
    data = load_iris(as_frame=True).data
    data.columns = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
    return data, LogisticRegression(max_iter=500).fit(data.to_numpy(), load_iris().target)


def test_named_tensors(tmp_path: Path) -> None:
    model = loaded(save_pyfunc(tmp_path / "m", Doubler(), DOUBLER_SIGNATURE))
    assert model.inputs == [TensorSpec("x", "FP32", (-1, 4))]
    assert model.outputs == [TensorSpec("doubled", "FP32", (-1, 4)), TensorSpec("sum", "FP32", (-1,))]
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    outputs = {t.name: t for t in model.predict(InferenceRequest([Tensor.from_numpy("x", x)]))}
    assert outputs["doubled"].data.tolist() == (x * 2).tolist()
    assert outputs["sum"].datatype == "FP32" and outputs["sum"].data.tolist() == [6.0, 22.0]


def test_columns_become_one_input_each_and_params_pass(tmp_path: Path) -> None:
    model = loaded(save_pyfunc(tmp_path / "m", Echo(), ECHO_SIGNATURE))
    assert model.inputs == [TensorSpec("a", "FP64", (-1,)), TensorSpec("s", "BYTES", (-1,))]
    assert [s.name for s in model.outputs] == ["a", "s", "k"]
    strings = np.array([b"x", "h\u00e9".encode()], dtype=object)
    request = InferenceRequest(
        [Tensor.from_numpy("a", np.array([1.0, 2.0])), Tensor("s", "BYTES", (2,), strings)],
        parameters={"k": 7, "binary_data_output": True},  # only declared params reach the model
    )
    outputs = {t.name: t for t in model.predict(request)}
    assert outputs["a"].data.tolist() == [1.0, 2.0]
    assert outputs["s"].datatype == "BYTES" and outputs["s"].data.tolist() == ["x", "h\u00e9"]
    assert outputs["k"].data.tolist() == [7, 7]


def test_an_unnamed_text_column(tmp_path: Path) -> None:
    model = loaded(save_pyfunc(tmp_path / "m", Upper(), infer_signature(["a"], ["A"])))
    assert model.inputs == [TensorSpec("input-0", "BYTES", (-1,))]
    assert model.outputs == [TensorSpec("predict", "BYTES", (-1,))]
    words = np.array([b"x", "\u00e9".encode()], dtype=object)
    (output,) = model.predict(InferenceRequest([Tensor("input-0", "BYTES", (2,), words)]))
    assert output.name == "predict" and output.as_strings() == ["X", "\u00c9"]


def test_input_the_signature_refuses_is_invalid_input(tmp_path: Path) -> None:
    model = loaded(save_pyfunc(tmp_path / "m", Echo(), ECHO_SIGNATURE))
    words = np.array([b"q", b"r"], dtype=object)
    request = InferenceRequest([Tensor("a", "BYTES", (2,), words), Tensor("s", "BYTES", (2,), words)])
    with pytest.raises(InvalidInput, match="column a"):
        model.predict(request)


def test_sklearn_flavor_with_a_tensor_signature(tmp_path: Path, iris) -> None:
    data, estimator = iris
    rows = data.to_numpy()
    mlflow.sklearn.save_model(estimator, str(tmp_path / "m"), serialization_format="cloudpickle",
                              signature=infer_signature(rows, estimator.predict(rows)),
                              pip_requirements=[])
    model = loaded(tmp_path / "m")
    assert model.inputs == [TensorSpec("input-0", "FP64", (-1, 4))]
    assert model.outputs == [TensorSpec("predict", "INT64", (-1,))]
    (output,) = model.predict(InferenceRequest([Tensor.from_numpy("input-0", rows[:5])]))
    assert output.name == "predict" and output.data.tolist() == estimator.predict(rows[:5]).tolist()


def test_sklearn_flavor_with_a_column_signature(tmp_path: Path, iris) -> None:
    data, estimator = iris
    columns_model = LogisticRegression(max_iter=500).fit(data, load_iris().target)
    mlflow.sklearn.save_model(columns_model, str(tmp_path / "m"), serialization_format="cloudpickle",
                              signature=infer_signature(data, columns_model.predict(data)),
                              pip_requirements=[])
    model = loaded(tmp_path / "m")
    assert [(s.name, s.datatype, s.shape) for s in model.inputs] == [
        (name, "FP64", (-1,)) for name in data.columns
    ]
    request = InferenceRequest([Tensor.from_numpy(c, data[c].to_numpy()[:3]) for c in data.columns])
    (output,) = model.predict(request)
    assert output.data.tolist() == columns_model.predict(data[:3]).tolist()


def test_without_a_signature(tmp_path: Path) -> None:
    model = loaded(save_pyfunc(tmp_path / "m", Lengths()))
    assert model.inputs == [] and model.outputs == []
    words = np.array([b"ab", b"cde"], dtype=object)
    (one,) = model.predict(InferenceRequest([Tensor("w", "BYTES", (2,), words)]))
    assert one.name == "predict" and one.data.tolist() == [2, 3]
    (two,) = model.predict(InferenceRequest([Tensor.from_numpy("a", [1, 2]), Tensor.from_numpy("b", [3])]))
    assert two.data.tolist() == [2, 1]  # several inputs arrive as a dict


def test_model_from_code_needs_no_pickle(tmp_path: Path) -> None:
    code = tmp_path / "doubler.py"
    code.write_text(textwrap.dedent("""
        import mlflow
        from mlflow.pyfunc import PythonModel

        class Doubler(PythonModel):
            def predict(self, context, model_input, params=None):
                return model_input * 2

        mlflow.models.set_model(Doubler())
    """))
    signature = ModelSignature(inputs=Schema([MLflowTensor(np.dtype(np.float64), (-1, 2))]))
    model = loaded(save_pyfunc(tmp_path / "m", str(code), signature))
    assert not list((tmp_path / "m").glob("*.pkl"))
    (output,) = model.predict(InferenceRequest([Tensor.from_numpy("input-0", np.ones((1, 2)))]))
    assert output.data.tolist() == [[2.0, 2.0]]


def test_column_types_without_a_v2_datatype_fail_the_load(tmp_path: Path) -> None:
    signature = ModelSignature(inputs=Schema([ColSpec(Array("double"), "v")]))
    with pytest.raises(LoadError, match=r"column 'v' has type Array\(double\)"):
        loaded(save_pyfunc(tmp_path / "m", Echo(), signature))


@pytest.mark.parametrize(
    ("content", "fragment"),
    [("flavors: [unclosed\n", "ParserError"),
     ("hello: 1\n", 'does not have the "python_function" flavor'),
     ("\n", "its MLmodel file is empty")],
)
def test_corrupt_mlmodel_fails_the_load(tmp_path: Path, content: str, fragment: str) -> None:
    folder = save_pyfunc(tmp_path / "m", Echo(), ECHO_SIGNATURE)
    (folder / "MLmodel").write_text(content)
    with pytest.raises(LoadError, match="cannot load the MLflow model") as info:
        loaded(folder)
    assert fragment in str(info.value)


def test_world_writable_pickle_is_refused(tmp_path: Path) -> None:
    folder = save_pyfunc(tmp_path / "m", Echo(), ECHO_SIGNATURE)
    os.chmod(folder / "python_model.pkl", 0o666)
    with pytest.raises(LoadError, match="refusing to unpickle python_model.pkl"):
        loaded(folder)


def test_missing_mlmodel(tmp_path: Path) -> None:
    with pytest.raises(LoadError, match="no MLmodel file"):
        MLflowModel("m", "1", tmp_path).load()


def declared_load(folder: Path, inputs: list[TensorSpec]) -> MLflowModel:
    model = MLflowModel("m", "1", folder)
    model.inputs = inputs  # as model.yaml declares them
    model.load()
    return model


@pytest.mark.parametrize(
    ("declared", "fragment"),
    [
        ([TensorSpec("x", "FP32", (-1, 5))], r"input 'x' has shape \[-1, 5\], but the model takes \[-1, 4\]"),
        ([TensorSpec("x", "FP64", (-1, 4))], "input 'x' is FP64, but the model takes FP32"),
        ([TensorSpec("features", "FP32", (-1, 4))],
         r"inputs \['features'\] are not inputs of the MLflow signature, whose inputs are \['x'\]"),
    ],
)
def test_declared_inputs_that_contradict_the_signature_fail_the_load(tmp_path: Path, declared, fragment) -> None:
    folder = save_pyfunc(tmp_path / "m", Doubler(), DOUBLER_SIGNATURE)
    with pytest.raises(LoadError, match=fragment):
        declared_load(folder, declared)
    pinned = [TensorSpec("x", "FP32", (2, 4))]
    assert declared_load(folder, pinned).inputs == pinned


def test_declared_columns_and_unnamed_tensors_are_checked_too(tmp_path: Path) -> None:
    columns = save_pyfunc(tmp_path / "echo", Echo(), ECHO_SIGNATURE)
    with pytest.raises(LoadError, match="input 's' is FP32, but the model takes BYTES"):
        declared_load(columns, [TensorSpec("a", "FP64", (-1,)), TensorSpec("s", "FP32", (-1,))])
    unnamed = ModelSignature(inputs=Schema([MLflowTensor(np.dtype(np.float64), (-1, 2))]))
    folder = save_pyfunc(tmp_path / "unnamed", Lengths(), unnamed)
    assert declared_load(folder, [TensorSpec("rows", "FP64", (-1, 2))]).inputs[0].name == "rows"
    with pytest.raises(LoadError, match=r"'rows' has shape \[-1, 3\], but the model takes \[-1, 2\]"):
        declared_load(folder, [TensorSpec("rows", "FP64", (-1, 3))])

