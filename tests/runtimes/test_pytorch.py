"""The PyTorch runtime on small modules scripted and exported here."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from shoal.errors import InvalidInput, LoadError, ModelFailure
from shoal.runtimes.pytorch import PyTorchModel
from shoal.types import InferenceRequest, RequestedOutput, Tensor, TensorSpec

torch.manual_seed(0)


class MLP(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.hidden = torch.nn.Linear(4, 8)
        self.out = torch.nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.relu(self.hidden(x)))


class Two(torch.nn.Module):
    """Two inputs, two named outputs."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(3, 2)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"sum": self.linear(a) + b, "prod": a * 2}


class Pair(torch.nn.Module):
    """A tuple of outputs, one of them integer."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x + 1, torch.argmax(x, dim=1)


BATCH = torch.export.Dim("batch")


def scripted(module: torch.nn.Module, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    torch.jit.script(module.eval()).save(str(folder / "model.pt"))
    return folder


def exported(module: torch.nn.Module, example: tuple, folder: Path, dynamic: bool = True) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    names = list(module.forward.__code__.co_varnames[1 : 1 + len(example)])
    shapes = {n: {0: BATCH} for n in names} if dynamic else None
    program = torch.export.export(module.eval(), example, dynamic_shapes=shapes)
    torch.export.save(program, str(folder / "model.pt2"))
    return folder


def load(folder: Path, inputs=(), outputs=(), **parameters: object) -> PyTorchModel:
    model = PyTorchModel("m", "1", folder, parameters)
    model.inputs, model.outputs = list(inputs), list(outputs)  # what model.yaml would declare
    model.load()
    return model


def infer(model: PyTorchModel, inputs: dict[str, np.ndarray], outputs: list[str] | None = None) -> dict:
    request = InferenceRequest(
        [Tensor.from_numpy(n, v) for n, v in inputs.items()],
        outputs=None if outputs is None else [RequestedOutput(n) for n in outputs],
    )
    return {t.name: t.data for t in model.predict(request)}


def test_torchscript_matches_the_module(tmp_path: Path) -> None:
    module = MLP()
    model = load(scripted(module, tmp_path))
    assert model.inputs == [] and model.argument_names == ["x"]  # TorchScript has no shapes
    x = np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32)
    result = infer(model, {"anything": x})
    with torch.inference_mode():
        expected = module(torch.from_numpy(x)).numpy()
    assert list(result) == ["output-0"] and np.allclose(result["output-0"], expected, atol=1e-6)


def test_declared_outputs_name_a_single_tensor(tmp_path: Path) -> None:
    model = load(scripted(MLP(), tmp_path), outputs=[TensorSpec("logits", "FP32", (-1, 3))])
    assert list(infer(model, {"x": np.ones((1, 4), np.float32)})) == ["logits"]


def test_torchscript_many_inputs_by_argument_name(tmp_path: Path) -> None:
    module = Two()
    model = load(scripted(module, tmp_path))
    a, b = np.ones((2, 3), np.float32), np.full((2, 2), 0.5, np.float32)
    result = infer(model, {"b": b, "a": a})  # request order does not matter
    with torch.inference_mode():
        expected = module(torch.from_numpy(a), torch.from_numpy(b))
    assert np.allclose(result["sum"], expected["sum"].numpy())
    assert np.array_equal(result["prod"], 2 * a)
    assert list(infer(model, {"a": a, "b": b}, outputs=["prod"])) == ["prod"]
    declared = load(tmp_path, outputs=[TensorSpec("sum", "FP32", (-1, 2))])
    assert list(infer(declared, {"a": a, "b": b})) == ["sum"]  # declared outputs are the default
    with pytest.raises(InvalidInput, match=r"takes inputs \['a', 'b'\].*lacks \['b'\]"):
        infer(model, {"a": a, "c": b})


def test_declared_inputs_set_the_positional_order(tmp_path: Path) -> None:
    model = load(
        scripted(Two(), tmp_path),
        inputs=[TensorSpec("first", "FP32", (-1, 3)), TensorSpec("second", "FP32", (-1, 2))],
    )
    result = infer(model, {"second": np.zeros((1, 2), np.float32), "first": np.ones((1, 3), np.float32)})
    assert np.array_equal(result["prod"], [[2, 2, 2]])


def test_tuple_outputs(tmp_path: Path) -> None:
    model = load(scripted(Pair(), tmp_path))
    result = infer(model, {"x": np.array([[1, 5, 2]], np.float32)})
    assert result["output-0"].tolist() == [[2, 6, 3]] and result["output-1"].tolist() == [1]
    assert result["output-1"].dtype == np.int64
    model = load(tmp_path, outputs=[TensorSpec("only", "FP32", (-1, 3))])
    with pytest.raises(ModelFailure, match="returned 2 outputs but declares 1"):
        infer(model, {"x": np.ones((1, 3), np.float32)})


def test_exported_program_metadata_and_outputs(tmp_path: Path) -> None:
    module = Two()
    example = (torch.ones(2, 3), torch.ones(2, 2))
    model = load(exported(module, example, tmp_path))
    assert model.inputs == [TensorSpec("a", "FP32", (-1, 3)), TensorSpec("b", "FP32", (-1, 2))]
    assert model.outputs == [TensorSpec("sum", "FP32", (-1, 2)), TensorSpec("prod", "FP32", (-1, 3))]
    a = np.random.default_rng(1).normal(size=(3, 3)).astype(np.float32)
    b = np.zeros((3, 2), np.float32)
    result = infer(model, {"a": a, "b": b})
    with torch.inference_mode():
        expected = module(torch.from_numpy(a), torch.from_numpy(b))["sum"].numpy()
    assert np.allclose(result["sum"], expected, atol=1e-6)


def test_exported_static_shapes_and_tuple_outputs(tmp_path: Path) -> None:
    model = load(exported(Pair(), (torch.ones(1, 3),), tmp_path, dynamic=False))
    assert model.inputs == [TensorSpec("x", "FP32", (1, 3))]  # specialised to the example
    assert model.outputs == [TensorSpec("output-0", "FP32", (1, 3)), TensorSpec("output-1", "INT64", (1,))]
    assert infer(model, {"x": np.array([[0, 0, 9]], np.float32)})["output-1"].tolist() == [2]


def test_model_yaml_metadata_wins_over_the_program(tmp_path: Path) -> None:
    declared = [TensorSpec("features", "FP32", (-1, 3))]
    model = load(exported(Pair(), (torch.ones(2, 3),), tmp_path), inputs=declared)
    assert model.inputs == declared


def test_read_only_inputs_are_not_written_through(tmp_path: Path) -> None:
    class AddInPlace(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.add_(1)

    model = load(scripted(AddInPlace(), tmp_path))
    body = np.ones(3, np.float32).tobytes()
    data = np.frombuffer(body, dtype=np.float32)  # how binary and gRPC requests arrive
    assert infer(model, {"x": data})["output-0"].tolist() == [2, 2, 2]
    assert np.frombuffer(body, dtype=np.float32).tolist() == [1, 1, 1]


def test_bytes_inputs_are_refused(tmp_path: Path) -> None:
    model = load(scripted(MLP(), tmp_path))
    with pytest.raises(InvalidInput, match="BYTES"):
        infer(model, {"x": np.array([b"a"], dtype=object)})


def test_device(tmp_path: Path) -> None:
    scripted(MLP(), tmp_path)
    assert load(tmp_path, device="cpu").device == torch.device("cpu")
    if not torch.cuda.is_available():
        with pytest.raises(LoadError, match="CUDA is not available"):
            load(tmp_path, device="cuda")
    with pytest.raises(LoadError, match="not a device"):
        load(tmp_path, device="gpu please")
    with pytest.raises(LoadError, match="cpu or cuda"):
        load(tmp_path, device="meta")


@pytest.mark.parametrize("artifact", ["model.pt", "model.pt2"])
@pytest.mark.parametrize(
    "damage",
    [lambda b: b[: len(b) // 2], lambda b: b"not a zip archive" * 10, lambda b: b""],
    ids=["truncated", "garbage", "empty"],
)
def test_corrupt_artifact_is_a_load_error(tmp_path: Path, artifact: str, damage) -> None:
    if artifact == "model.pt":
        scripted(MLP(), tmp_path)
    else:
        exported(MLP(), (torch.ones(2, 4),), tmp_path)
    path = tmp_path / artifact
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(LoadError, match=f"cannot read {artifact}"):
        load(tmp_path)


def test_damaged_program_archive_names_the_reason(tmp_path: Path) -> None:
    """A .pt2 whose zip records Python still reads but PyTorch's reader refuses: the reason
    torch.export.load only logs must reach the repository index, not "see the warnings"."""
    path = exported(MLP(), (torch.ones(2, 4),), tmp_path) / "model.pt2"
    path.write_bytes(path.read_bytes()[:-50])
    with pytest.raises(LoadError, match="cannot read model.pt2: .*archive is corrupted") as info:
        load(tmp_path)
    assert "warnings" not in str(info.value)


def test_torch_save_output_gets_a_hint(tmp_path: Path) -> None:
    torch.save(MLP(), tmp_path / "model.pt")
    with pytest.raises(LoadError, match="looks like torch.save output"):
        load(tmp_path)


def test_world_writable_artifact_is_refused(tmp_path: Path) -> None:
    artifact = scripted(MLP(), tmp_path) / "model.pt"
    os.chmod(artifact, 0o666)
    with pytest.raises(LoadError, match="world-writable"):
        load(tmp_path)
