"""The PyTorch runtime on small modules scripted and exported here."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from shoal.errors import InvalidInput, LoadError, ModelFailure
from shoal.runtimes.pytorch import PyTorchModel
from shoal.serving.endpoint import conform_inputs
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
    assert model.argument_names == ["x"]
    assert model.inputs == [TensorSpec("x", "FP32", (-1, 4))]  # read from its first layer
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


# TorchScript inputs: read from the layer forward's argument goes into, verified by a probe.


class Image(torch.nn.Module):
    """A 28x28 one-channel classifier: its Linear pins the map size, which the Conv alone
    leaves open (the probe has to find a size that works)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 4, 3)
        self.fc = torch.nn.Linear(4 * 26 * 26, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(torch.relu(self.conv(x)), 1))


class Tokens(torch.nn.Module):
    """Sequences of token ids: [-1, -1] INT64 (a [-1] batch of ids fails in its mean)."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(10, 4)
        self.fc = torch.nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.embed(x).mean(1))


class Nested(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Linear(5, 3).double(), torch.nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class Reshaped(torch.nn.Module):
    """Takes [-1, 2, 2] and flattens it before its Linear(4): the Linear's width is no rank."""

    def __init__(self) -> None:
        super().__init__()
        self.out = torch.nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(x.reshape(x.shape[0], -1))


class Ids(torch.nn.Module):
    """Accepts ids as [-1] and as [-1, -1]: no rank can be told."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(10, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.embed(x)


class Sequences(torch.nn.Module):
    """Its Linear comes first, but forward needs [-1, steps, 4]: the [-1, 4] guess fails its
    probe and must not be declared (valid [n, steps, 4] requests would become 400s)."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = torch.nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).sum(2)


class Casting(torch.nn.Module):
    """Takes UINT8 images and converts them itself."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.float() / 255)


@pytest.mark.parametrize(
    ("module", "expected"),
    [
        (MLP(), [TensorSpec("x", "FP32", (-1, 4))]),
        (Image(), [TensorSpec("x", "FP32", (-1, 1, -1, -1))]),
        (Tokens(), [TensorSpec("x", "INT64", (-1, -1))]),
        (Nested(), [TensorSpec("x", "FP64", (-1, 5))]),  # through a Sequential; its weight's dtype
        (torch.nn.Linear(4, 2), [TensorSpec("input", "FP32", (-1, 4))]),
    ],
    ids=["mlp", "conv", "embedding", "nested", "bare-linear"],
)
def test_torchscript_inputs_come_from_the_layer_forward_feeds(tmp_path: Path, module, expected) -> None:
    model = load(scripted(module, tmp_path))
    assert model.inputs == expected
    spec = expected[0]
    shape = [2, *(28 if d == -1 else d for d in spec.shape[1:])]
    data = np.zeros(shape, np.int64 if spec.datatype == "INT64" else np.float64 if spec.datatype == "FP64" else np.float32)
    [conformed] = conform_inputs([Tensor.from_numpy("any", data)], model.inputs, "m")
    assert len(model.predict(InferenceRequest([conformed]))[0].data) == 2


@pytest.mark.parametrize("module", [Reshaped(), Ids(), Sequences(), Two(), Casting()],
                         ids=["reshaped-first", "rank-unknown", "probe-fails", "input-added", "cast-first"])
def test_torchscript_inputs_that_cannot_be_told_are_left_undeclared(tmp_path: Path, module) -> None:
    model = load(scripted(module, tmp_path))
    assert model.inputs == []


def test_a_guess_that_fails_its_probe_leaves_valid_requests_working(tmp_path: Path) -> None:
    model = load(scripted(Sequences(), tmp_path))
    x = np.ones((2, 5, 4), np.float32)
    [conformed] = conform_inputs([Tensor.from_numpy("x", x)], model.inputs, "m")
    assert model.predict(InferenceRequest([conformed]))[0].data.shape == (2, 5)


def test_json_numbers_reach_a_torchscript_module_as_its_dtype(tmp_path: Path) -> None:
    """A V1 body with JSON numbers, as the server decodes it for the model's inputs."""
    from shoal.protocol.v1 import decode_request

    module = MLP()
    model = load(scripted(module, tmp_path))
    request, _ = decode_request(b'{"instances": [[1.0, 2.0, 3.0, 4.0]]}', model.inputs)
    request.inputs = conform_inputs(request.inputs, model.inputs, "m")
    [output] = model.predict(request)
    with torch.inference_mode():
        expected = module(torch.tensor([[1.0, 2.0, 3.0, 4.0]])).numpy()
    assert np.allclose(output.data, expected, atol=1e-6)
    with pytest.raises(InvalidInput, match=r"\[-1, 4\]"):  # a wrong width: 400, not the module's error
        conform_inputs([Tensor.from_numpy("x", np.ones((1, 5), np.float32))], model.inputs, "m")


def test_declared_torchscript_inputs_must_fit_the_module(tmp_path: Path) -> None:
    scripted(MLP(), tmp_path)
    with pytest.raises(LoadError, match=r"model.yaml inputs do not fit model.pt: forward on zeros \(x FP32 \[1, 5\]\) fails"):
        load(tmp_path, inputs=[TensorSpec("x", "FP32", (-1, 5))])
    with pytest.raises(LoadError, match=r"declares 2 inputs, but model.pt's forward takes 1 \(x\)"):
        load(tmp_path, inputs=[TensorSpec("x", "FP32", (-1, 4)), TensorSpec("y", "FP32", (-1, 4))])
    with pytest.raises(LoadError, match="'x' is BYTES; PyTorch models take numeric tensors"):
        load(tmp_path, inputs=[TensorSpec("x", "BYTES", (-1, 4))])
    # A declaration the module accepts, though no layer states it, is kept as declared.
    casting = load(scripted(Casting(), tmp_path / "casting"), inputs=[TensorSpec("x", "UINT8", (-1, 4))])
    assert casting.inputs == [TensorSpec("x", "UINT8", (-1, 4))]
    # Sizes left open (-1) cannot be probed for sure: an open declaration is not refused.
    assert load(tmp_path, inputs=[TensorSpec("x", "FP32", (-1, -1))]).inputs == [TensorSpec("x", "FP32", (-1, -1))]


@pytest.mark.parametrize(
    ("declared", "fragment"),
    [
        ([TensorSpec("a", "FP32", (-1, 4)), TensorSpec("b", "FP32", (-1, 2))],
         r"'a' has shape \[-1, 4\], but the model takes \[-1, 3\]"),
        ([TensorSpec("a", "FP64", (-1, 3)), TensorSpec("b", "FP32", (-1, 2))],
         "'a' is FP64, but the model takes FP32"),
        ([TensorSpec("a", "FP32", (-1, 3))], "declares 1 inputs, but model.pt2 takes 2"),
    ],
)
def test_declared_inputs_must_match_the_exported_program(tmp_path: Path, declared, fragment) -> None:
    exported(Two(), (torch.ones(2, 3), torch.ones(2, 2)), tmp_path)
    with pytest.raises(LoadError, match=fragment):
        load(tmp_path, inputs=declared)
    pinned = [TensorSpec("a", "FP32", (8, 3)), TensorSpec("b", "FP32", (8, 2))]  # fixed where dynamic: fine
    assert load(tmp_path, inputs=pinned).inputs == pinned


def test_a_fixed_dimension_cannot_be_declared_open(tmp_path: Path) -> None:
    exported(Pair(), (torch.ones(1, 3),), tmp_path, dynamic=False)
    with pytest.raises(LoadError, match=r"has shape \[-1, 3\], but the model takes \[1, 3\]"):
        load(tmp_path, inputs=[TensorSpec("x", "FP32", (-1, 3))])
