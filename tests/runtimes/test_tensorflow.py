"""The TensorFlow runtime on SavedModels and Keras files built here.

TensorFlow takes seconds to import, so it is imported, and every model built, once in the
module-scoped ``built`` fixture.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest

from shoal.errors import InvalidInput, LoadError
from shoal.types import InferenceRequest, RequestedOutput, Tensor, TensorSpec


@dataclass
class Built:
    tf: ModuleType
    runtime: ModuleType
    root: Path
    keras_functional: Any  # the Keras model saved as functional/model.keras
    keras_sequential: Any


def build_saved_model(tf: ModuleType, folder: Path) -> None:
    class Two(tf.Module):
        def __init__(self) -> None:
            self.w = tf.Variable(np.arange(6, dtype=np.float32).reshape(3, 2))

        @tf.function(input_signature=[tf.TensorSpec([None, 3], tf.float32), tf.TensorSpec([None, 2], tf.float32)])
        def serve(self, a, b):
            return {"sum": tf.matmul(a, self.w) + b, "prod": a * 2.0}

        @tf.function(input_signature=[tf.TensorSpec(None, tf.string)])
        def shout(self, text):
            return {"upper": tf.strings.upper(text)}

        @tf.function(input_signature=[tf.TensorSpec(None, tf.float32)])
        def pair(self, x):
            return {"pair": tf.reshape(x, [2])}

    module = Two()
    signatures = {"serving_default": module.serve, "shout": module.shout, "pair": module.pair}
    tf.saved_model.save(module, str(folder), signatures=signatures)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    import keras
    import tensorflow as tf

    from shoal.runtimes import tensorflow as runtime

    root = tmp_path_factory.mktemp("tf")
    build_saved_model(tf, root / "savedmodel")
    keras.utils.set_random_seed(0)
    a, b = keras.Input((3,), name="a"), keras.Input((2,), name="b")
    hidden = keras.layers.Dense(4, activation="relu", name="hidden")(a)
    functional = keras.Model(
        {"a": a, "b": b},
        [keras.layers.Dense(2, name="score")(hidden), keras.layers.Concatenate(name="joined")([hidden, b])],
    )
    (root / "functional").mkdir()
    functional.save(root / "functional" / "model.keras")
    sequential = keras.Sequential([keras.Input((4,), name="x"), keras.layers.Dense(3)])
    (root / "sequential").mkdir()
    sequential.save(root / "sequential" / "model.keras")
    tf.saved_model.save(sequential, str(root / "keras-saved"))
    return Built(tf, runtime, root, functional, sequential)


def load(folder: Path, runtime: ModuleType, inputs=(), **parameters: object):
    model = runtime.TensorFlowModel("m", "1", folder, parameters)
    model.inputs = list(inputs)
    model.load()
    return model


def infer(model: Any, inputs: dict[str, np.ndarray], outputs: list[str] | None = None) -> dict:
    request = InferenceRequest(
        [Tensor.from_numpy(n, v) for n, v in inputs.items()],
        outputs=None if outputs is None else [RequestedOutput(n) for n in outputs],
    )
    return {t.name: t.data for t in model.predict(request)}


def test_saved_model_signature_metadata_and_outputs(built: Built) -> None:
    model = load(built.root / "savedmodel", built.runtime)
    assert model.inputs == [TensorSpec("a", "FP32", (-1, 3)), TensorSpec("b", "FP32", (-1, 2))]
    assert model.outputs == [TensorSpec("prod", "FP32", (-1, 3)), TensorSpec("sum", "FP32", (-1, 2))]
    a = np.random.default_rng(0).normal(size=(4, 3)).astype(np.float32)
    b = np.ones((4, 2), np.float32)
    result = infer(model, {"b": b, "a": a})
    direct = built.tf.saved_model.load(str(built.root / "savedmodel")).signatures["serving_default"]
    assert np.array_equal(result["sum"], direct(a=built.tf.constant(a), b=built.tf.constant(b))["sum"].numpy())
    assert list(infer(model, {"a": a, "b": b}, outputs=["prod"])) == ["prod"]
    with pytest.raises(InvalidInput, match="no output 'nope'"):
        infer(model, {"a": a, "b": b}, outputs=["nope"])
    with pytest.raises(InvalidInput, match=r"takes inputs \['a', 'b'\]"):
        infer(model, {"a": a})


def test_signature_selection_and_strings(built: Built) -> None:
    model = load(built.root / "savedmodel", built.runtime, signature="shout")
    assert model.inputs == [] and model.outputs == []  # unknown rank: no V2 shape to declare
    result = infer(model, {"any-name": np.array([b"caf\xc3\xa9", b"ok"], dtype=object)})
    assert result["upper"].tolist() == [b"CAF\xc3\xa9", b"OK"]
    with pytest.raises(LoadError, match=r"no signature 'nope'; it has \['pair', 'serving_default', 'shout'\]"):
        load(built.root / "savedmodel", built.runtime, signature="nope")


def test_tensorflow_rejections_are_invalid_input(built: Built) -> None:
    model = load(built.root / "savedmodel", built.runtime, signature="pair")
    assert infer(model, {"x": np.array([1, 2], np.float32)})["pair"].tolist() == [1, 2]
    with pytest.raises(InvalidInput, match="rejected the input: InvalidArgumentError"):
        infer(model, {"x": np.array([1, 2, 3], np.float32)})


def test_keras_functional_model(built: Built) -> None:
    model = load(built.root / "functional", built.runtime)
    assert model.inputs == [TensorSpec("a", "FP32", (-1, 3)), TensorSpec("b", "FP32", (-1, 2))]
    assert model.outputs == [TensorSpec("score", "FP32", (-1, 2)), TensorSpec("joined", "FP32", (-1, 6))]
    a = np.random.default_rng(1).normal(size=(2, 3)).astype(np.float32)
    b = np.random.default_rng(2).normal(size=(2, 2)).astype(np.float32)
    result = infer(model, {"a": a, "b": b})
    score, joined = built.keras_functional({"a": a, "b": b}, training=False)
    assert np.allclose(result["score"], score.numpy(), atol=1e-6)
    assert np.allclose(result["joined"], joined.numpy(), atol=1e-6)
    assert list(infer(model, {"a": a, "b": b}, outputs=["joined"])) == ["joined"]


def test_keras_sequential_model_and_its_saved_model(built: Built) -> None:
    x = np.random.default_rng(3).normal(size=(3, 4)).astype(np.float32)
    expected = built.keras_sequential(x, training=False).numpy()
    keras_file = load(built.root / "sequential", built.runtime)
    assert keras_file.inputs == [TensorSpec("x", "FP32", (-1, 4))]
    assert keras_file.outputs == [TensorSpec("output-0", "FP32", (-1, 3))]
    assert np.allclose(infer(keras_file, {"input-0": x})["output-0"], expected, atol=1e-6)
    saved = load(built.root / "keras-saved", built.runtime)
    [output] = saved.outputs
    assert np.allclose(infer(saved, {"input-0": x})[output.name], expected, atol=1e-6)


def test_model_yaml_metadata_wins_but_cannot_rename(built: Built) -> None:
    declared = [TensorSpec("x", "FP32", (2, 4))]
    assert load(built.root / "sequential", built.runtime, inputs=declared).inputs == declared
    with pytest.raises(LoadError, match=r"model.yaml inputs \['features'\] do not match"):
        load(built.root / "sequential", built.runtime, inputs=[TensorSpec("features", "FP32", (-1, 4))])
    model = built.runtime.TensorFlowModel("m", "1", built.root / "savedmodel", {})
    model.outputs = [TensorSpec("sum", "FP32", (-1, 2))]
    model.load()
    result = infer(model, {"a": np.ones((1, 3), np.float32), "b": np.ones((1, 2), np.float32)})
    assert list(result) == ["sum"]  # declared outputs are the default


def test_device(built: Built) -> None:
    folder = built.root / "sequential"
    assert load(folder, built.runtime, device="cpu").device == "/CPU:0"
    if not built.tf.config.list_physical_devices("GPU"):
        with pytest.raises(LoadError, match="TensorFlow sees 0 GPU"):
            load(folder, built.runtime, device="gpu")
    with pytest.raises(LoadError, match="use cpu, gpu or gpu:N"):
        load(folder, built.runtime, device="tpu")


@pytest.mark.parametrize(
    "damage",
    [lambda b: b[: len(b) // 2], lambda b: b"not a protobuf at all" * 5, lambda b: b""],
    ids=["truncated", "garbage", "empty"],
)
@pytest.mark.parametrize("source", ["savedmodel", "functional"])
def test_corrupt_artifact_is_a_load_error(built: Built, tmp_path: Path, source: str, damage) -> None:
    folder = tmp_path / source
    shutil.copytree(built.root / source, folder)
    artifact = folder / ("saved_model.pb" if source == "savedmodel" else "model.keras")
    artifact.write_bytes(damage(artifact.read_bytes()))
    with pytest.raises(LoadError, match=f"cannot read {artifact.name}"):
        load(folder, built.runtime)


def test_missing_variables_are_a_load_error(built: Built, tmp_path: Path) -> None:
    shutil.copytree(built.root / "savedmodel", tmp_path / "m")
    shutil.rmtree(tmp_path / "m" / "variables")
    with pytest.raises(LoadError, match="cannot read saved_model.pb"):
        load(tmp_path / "m", built.runtime)


def test_missing_artifact(built: Built, tmp_path: Path) -> None:
    with pytest.raises(LoadError, match="no TensorFlow artifact"):
        load(tmp_path, built.runtime)


@pytest.mark.parametrize("source", ["savedmodel", "functional"])
def test_requests_call_the_concrete_function_traced_at_load(built: Built, source: str) -> None:
    """Not a ``tf.function``, whose per-call argument binding costs more than the small
    models' own work (about 90 µs per one-row request for a Keras model)."""
    model = load(built.root / source, built.runtime)
    assert isinstance(model._run, built.tf.types.experimental.ConcreteFunction)
    for rows in (1, 5):  # one trace serves every batch size
        result = infer(model, {"a": np.ones((rows, 3), np.float32), "b": np.ones((rows, 2), np.float32)})
        assert {len(v) for v in result.values()} == {rows}


@pytest.mark.parametrize(
    ("source", "signature", "declared", "fragment"),
    [
        ("savedmodel", "serving_default",
         [TensorSpec("a", "FP32", (-1, 4)), TensorSpec("b", "FP32", (-1, 2))],
         r"input 'a' has shape \[-1, 4\], but the model takes \[-1, 3\]"),
        ("savedmodel", "serving_default",
         [TensorSpec("a", "FP32", (-1, 3)), TensorSpec("b", "FP64", (-1, 2))],
         "input 'b' is FP64, but the model takes FP32"),
        ("sequential", "serving_default", [TensorSpec("x", "FP32", (-1, 5))],
         r"input 'x' has shape \[-1, 5\], but the model takes \[-1, 4\]"),
        ("savedmodel", "shout", [TensorSpec("text", "FP32", (-1,))],  # unknown rank: datatype only
         "input 'text' is FP32, but the model takes BYTES"),
    ],
)
def test_declared_inputs_that_contradict_the_model_fail_the_load(
    built: Built, source: str, signature: str, declared, fragment: str
) -> None:
    with pytest.raises(LoadError, match=fragment):
        load(built.root / source, built.runtime, inputs=declared, signature=signature)


def test_an_input_of_unknown_rank_takes_its_declared_shape(built: Built) -> None:
    declared = [TensorSpec("text", "BYTES", (-1,))]
    model = load(built.root / "savedmodel", built.runtime, inputs=declared, signature="shout")
    assert model.inputs == declared
