"""The ONNX runtime on graphs built here with onnx's helper API."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from shoal.errors import InvalidInput, LoadError
from shoal.runtimes.onnx import ONNXModel
from shoal.serving.endpoint import conform_inputs
from shoal.types import InferenceRequest, RequestedOutput, Tensor, TensorSpec

RNG = np.random.default_rng(0)
W = RNG.normal(size=(3, 2)).astype(np.float32)


def save(graph: onnx.GraphProto, folder: Path) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    folder.mkdir(parents=True, exist_ok=True)
    onnx.save(model, folder / "model.onnx")
    return folder


def two_in_two_out(folder: Path) -> Path:
    """sum = a @ W + b and prod = 2a, with a symbolic batch dimension, and a fixed-shape
    third output."""
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["a", "W"], ["aw"]),
            helper.make_node("Add", ["aw", "b"], ["sum"]),
            helper.make_node("Mul", ["a", "two"], ["prod"]),
            helper.make_node("Shape", ["a"], ["dims"]),
        ],
        "two",
        [
            helper.make_tensor_value_info("a", TensorProto.FLOAT, ["batch", 3]),
            helper.make_tensor_value_info("b", TensorProto.FLOAT, ["batch", 2]),
        ],
        [
            helper.make_tensor_value_info("sum", TensorProto.FLOAT, ["batch", 2]),
            helper.make_tensor_value_info("prod", TensorProto.FLOAT, ["batch", 3]),
            helper.make_tensor_value_info("dims", TensorProto.INT64, [2]),
        ],
        [
            numpy_helper.from_array(W, "W"),
            numpy_helper.from_array(np.array(2.0, np.float32), "two"),
        ],
    )
    return save(graph, folder)


def strings(folder: Path) -> Path:
    graph = helper.make_graph(
        [helper.make_node("Identity", ["text"], ["same"])],
        "strings",
        [helper.make_tensor_value_info("text", TensorProto.STRING, [None])],
        [helper.make_tensor_value_info("same", TensorProto.STRING, [None])],
    )
    return save(graph, folder)


def load(folder: Path, **parameters: object) -> ONNXModel:
    model = ONNXModel("m", "1", folder, parameters)
    model.load()
    return model


def infer(model: ONNXModel, outputs: list[str] | None = None, **inputs: np.ndarray) -> dict:
    tensors = [Tensor.from_numpy(name, value) for name, value in inputs.items()]
    request = InferenceRequest(
        conform_inputs(tensors, model.inputs, model.name),
        outputs=None if outputs is None else [RequestedOutput(n) for n in outputs],
    )
    return {t.name: t.data for t in model.predict(request)}


def test_metadata_from_the_graph(tmp_path: Path) -> None:
    model = load(two_in_two_out(tmp_path))
    assert model.inputs == [TensorSpec("a", "FP32", (-1, 3)), TensorSpec("b", "FP32", (-1, 2))]
    assert model.outputs == [
        TensorSpec("sum", "FP32", (-1, 2)),
        TensorSpec("prod", "FP32", (-1, 3)),
        TensorSpec("dims", "INT64", (2,)),
    ]


def test_many_inputs_and_requested_outputs_only(tmp_path: Path) -> None:
    model = load(two_in_two_out(tmp_path))
    a, b = RNG.normal(size=(4, 3)).astype(np.float32), RNG.normal(size=(4, 2)).astype(np.float32)
    assert list(infer(model, a=a, b=b)) == ["sum", "prod", "dims"]
    result = infer(model, ["prod", "sum"], a=a, b=b)
    assert list(result) == ["prod", "sum"]
    assert np.allclose(result["sum"], a @ W + b, atol=1e-6)
    assert np.array_equal(result["prod"], 2 * a)
    direct = ort.InferenceSession(str(tmp_path / "model.onnx")).run(["sum"], {"a": a, "b": b})[0]
    assert np.array_equal(infer(model, ["sum"], a=a, b=b)["sum"], direct)


def test_unknown_requested_output_is_invalid_input(tmp_path: Path) -> None:
    model = load(two_in_two_out(tmp_path))
    a, b = np.ones((1, 3), np.float32), np.ones((1, 2), np.float32)
    with pytest.raises(InvalidInput, match="no tensor output 'nope'"):
        infer(model, ["nope"], a=a, b=b)


def test_declared_outputs_are_the_default(tmp_path: Path) -> None:
    model = ONNXModel("m", "1", two_in_two_out(tmp_path))
    model.outputs = [TensorSpec("sum", "FP32", (-1, 2))]  # as model.yaml would declare them
    model.load()
    result = infer(model, a=np.ones((1, 3), np.float32), b=np.ones((1, 2), np.float32))
    assert list(result) == ["sum"]


def test_model_yaml_cannot_rename_graph_tensors(tmp_path: Path) -> None:
    model = ONNXModel("m", "1", two_in_two_out(tmp_path))
    model.inputs = [TensorSpec("x", "FP32", (-1, 3)), TensorSpec("b", "FP32", (-1, 2))]
    with pytest.raises(LoadError, match=r"inputs \['x'\] are not in model.onnx"):
        model.load()


def test_strings_travel_as_bytes(tmp_path: Path) -> None:
    model = load(strings(tmp_path))
    assert model.inputs == [TensorSpec("text", "BYTES", (-1,))]
    result = infer(model, text=np.array([b"caf\xc3\xa9", b"x"], dtype=object))
    assert result["same"].tolist() == [b"caf\xc3\xa9", b"x"]
    with pytest.raises(InvalidInput, match="UTF-8"):
        infer(model, text=np.array([b"\xff"], dtype=object))


def test_wrong_shape_and_unsafe_cast_are_rejected_by_declared_inputs(tmp_path: Path) -> None:
    model = load(two_in_two_out(tmp_path))
    with pytest.raises(InvalidInput, match=r"expects \[-1, 3\]"):
        conform_inputs(
            [Tensor.from_numpy("a", np.ones((1, 4), np.float32)),
             Tensor.from_numpy("b", np.ones((1, 2), np.float32))],
            model.inputs, "m",
        )
    with pytest.raises(InvalidInput, match="FP64 but model 'm' expects FP32"):
        conform_inputs(  # 0.1 has no exact FP32 value
            [Tensor.from_numpy("a", np.full((1, 3), 0.1)), Tensor.from_numpy("b", np.ones((1, 2)))],
            model.inputs, "m",
        )


def test_thread_options(tmp_path: Path) -> None:
    model = load(two_in_two_out(tmp_path), intra_op_threads=1, inter_op_threads=1)
    assert infer(model, ["prod"], a=np.ones((1, 3), np.float32), b=np.ones((1, 2), np.float32))
    with pytest.raises(LoadError, match="intra_op_threads must be a whole number"):
        load(tmp_path, intra_op_threads="many")


def test_providers(tmp_path: Path) -> None:
    two_in_two_out(tmp_path)
    model = load(tmp_path, providers=["CPUExecutionProvider"])
    assert model.session.get_providers() == ["CPUExecutionProvider"]
    load(tmp_path, providers=[{"CPUExecutionProvider": {"use_arena": "0"}}])
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        with pytest.raises(LoadError, match=r"\['CUDAExecutionProvider'\] are not available"):
            load(tmp_path, providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
    with pytest.raises(LoadError, match="not available"):
        load(tmp_path, providers=["NoSuchExecutionProvider"])
    with pytest.raises(LoadError, match="non-empty list"):
        load(tmp_path, providers=[])


@pytest.mark.parametrize(
    "damage",
    [lambda b: b[: len(b) // 2], lambda b: b"definitely not protobuf" * 3, lambda b: b""],
    ids=["truncated", "garbage", "empty"],
)
def test_corrupt_artifact_is_a_load_error(tmp_path: Path, damage) -> None:
    artifact = two_in_two_out(tmp_path) / "model.onnx"
    artifact.write_bytes(damage(artifact.read_bytes()))
    with pytest.raises(LoadError, match="cannot read model.onnx"):
        load(tmp_path)


def test_missing_artifact(tmp_path: Path) -> None:
    with pytest.raises(LoadError, match="no model.onnx"):
        load(tmp_path)


@pytest.mark.parametrize(
    ("declared", "fragment"),
    [
        ([TensorSpec("a", "FP32", (-1, 4)), TensorSpec("b", "FP32", (-1, 2))],
         r"input 'a' has shape \[-1, 4\], but the model takes \[-1, 3\]"),
        ([TensorSpec("a", "FP64", (-1, 3)), TensorSpec("b", "FP32", (-1, 2))],
         "input 'a' is FP64, but the model takes FP32"),
        ([TensorSpec("a", "FP32", (-1, 3)), TensorSpec("b", "FP32", (-1, 2, 1))],
         r"input 'b' has shape \[-1, 2, 1\], but the model takes \[-1, 2\]"),
        ([TensorSpec("a", "FP32", (-1, -1)), TensorSpec("b", "FP32", (-1, 2))],
         r"input 'a' has shape \[-1, -1\], but the model takes \[-1, 3\]"),
    ],
    ids=["width", "datatype", "rank", "open-where-fixed"],
)
def test_declared_inputs_that_contradict_the_graph_fail_the_load(tmp_path: Path, declared, fragment) -> None:
    model = ONNXModel("m", "1", two_in_two_out(tmp_path))
    model.inputs = declared
    with pytest.raises(LoadError, match=fragment):
        model.load()


def test_declared_inputs_may_pin_what_the_graph_leaves_open(tmp_path: Path) -> None:
    model = ONNXModel("m", "1", two_in_two_out(tmp_path))
    model.inputs = [TensorSpec("a", "FP32", (8, 3)), TensorSpec("b", "FP32", (8, 2))]
    model.load()
    assert model.inputs[0].shape == (8, 3)


def test_an_input_of_unknown_rank_is_declared_in_model_yaml(tmp_path: Path) -> None:
    """onnxruntime shows such an input as a scalar: a declared shape is what it needs, and only
    the datatype is checked."""
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])], "any",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )
    save(graph, tmp_path)
    model = ONNXModel("m", "1", tmp_path)
    model.inputs = [TensorSpec("x", "FP32", (-1, 4))]
    model.load()
    assert model.inputs == [TensorSpec("x", "FP32", (-1, 4))]
    model.inputs = [TensorSpec("x", "INT64", (-1, 4))]
    with pytest.raises(LoadError, match="'x' is INT64, but the model takes FP32"):
        model.load()
