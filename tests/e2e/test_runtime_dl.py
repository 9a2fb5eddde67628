"""ONNX, PyTorch and TensorFlow models end to end: one real server, every protocol.

The models are built here, and the answers each framework gives in this process are what
V2 REST, V2 gRPC and V1 must return through Shoal, in the server process and in a worker
process. Corrupt artifacts of every format sit in the same repository: they must fail to load
with a reason while the rest serve.
"""

from __future__ import annotations

import shutil
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest

from shoal.protocol.grpc_gen import grpc_service_pb2 as pb
from shoal.protocol.grpc_gen import grpc_service_pb2_grpc as pb_grpc

from .process import ShoalProcess

RNG = np.random.default_rng(7)


@dataclass
class Case:
    inputs: dict[str, np.ndarray]
    expected: dict[str, np.ndarray]  # the framework's own answer, computed in this process
    metadata: dict  # the "inputs" and "outputs" GET /v2/models/{m} must report


def rows(n: int, width: int) -> np.ndarray:
    return RNG.normal(size=(n, width)).astype(np.float32)


def onnx_models(root: Path, cases: dict[str, Case]) -> None:
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    def save(graph: onnx.GraphProto, name: str) -> Path:
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        model.ir_version = 9
        (root / name).mkdir()
        onnx.save(model, root / name / "model.onnx")
        return root / name / "model.onnx"

    w1, w2 = rows(4, 8), rows(8, 3)
    mlp = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w1"], ["h"]),
            helper.make_node("Relu", ["h"], ["r"]),
            helper.make_node("MatMul", ["r", "w2"], ["logits"]),
            helper.make_node("Softmax", ["logits"], ["probs"], axis=1),
        ],
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3]),
            helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["batch", 3]),
        ],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")],
    )
    path = save(mlp, "onnx-mlp")
    x = rows(3, 4)
    logits, probs = ort.InferenceSession(str(path)).run(None, {"x": x})
    cases["onnx-mlp"] = Case({"x": x}, {"logits": logits, "probs": probs}, {
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}],
        "outputs": [{"name": "logits", "datatype": "FP32", "shape": [-1, 3]},
                    {"name": "probs", "datatype": "FP32", "shape": [-1, 3]}],
    })
    two = helper.make_graph(
        [
            helper.make_node("MatMul", ["a", "w"], ["aw"]),
            helper.make_node("Add", ["aw", "b"], ["sum"]),
            helper.make_node("Mul", ["a", "a"], ["square"]),
        ],
        "two",
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, ["n", 3]),
         helper.make_tensor_value_info("b", TensorProto.FLOAT, ["n", 2])],
        [helper.make_tensor_value_info("sum", TensorProto.FLOAT, ["n", 2]),
         helper.make_tensor_value_info("square", TensorProto.FLOAT, ["n", 3])],
        [numpy_helper.from_array(rows(3, 2), "w")],
    )
    path = save(two, "onnx-two")
    a, b = rows(2, 3), rows(2, 2)
    total, square = ort.InferenceSession(str(path)).run(None, {"a": a, "b": b})
    cases["onnx-two"] = Case({"a": a, "b": b}, {"sum": total, "square": square}, {
        "inputs": [{"name": "a", "datatype": "FP32", "shape": [-1, 3]},
                   {"name": "b", "datatype": "FP32", "shape": [-1, 2]}],
        "outputs": [{"name": "sum", "datatype": "FP32", "shape": [-1, 2]},
                    {"name": "square", "datatype": "FP32", "shape": [-1, 3]}],
    })


def torch_models(root: Path, cases: dict[str, Case]) -> None:
    import torch

    torch.manual_seed(0)
    mlp = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3)).eval()
    (root / "torch-script").mkdir()
    torch.jit.script(mlp).save(str(root / "torch-script" / "model.pt"))
    (root / "torch-script" / "model.yaml").write_text(textwrap.dedent("""
        inputs: [{name: x, datatype: FP32, shape: [-1, 4]}]
        outputs: [{name: logits, datatype: FP32, shape: [-1, 3]}]
    """))
    x = rows(3, 4)
    with torch.inference_mode():
        logits = mlp(torch.from_numpy(x)).numpy()
    cases["torch-script"] = Case({"x": x}, {"logits": logits}, {  # TorchScript: from model.yaml
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}],
        "outputs": [{"name": "logits", "datatype": "FP32", "shape": [-1, 3]}],
    })
    # The same module without model.yaml: its input is read from its first layer, so V1 JSON
    # numbers arrive as FP32 and a wrong width is a 400, not TorchScript's error.
    (root / "torch-script-bare").mkdir()
    shutil.copy(root / "torch-script" / "model.pt", root / "torch-script-bare" / "model.pt")
    cases["torch-script-bare"] = Case({"input": x}, {"output-0": logits}, {
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 4]}],
        "outputs": [],
    })

    class Two(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.linear = torch.nn.Linear(3, 2)

        def forward(self, a: torch.Tensor, b: torch.Tensor) -> dict[str, torch.Tensor]:
            return {"sum": self.linear(a) + b, "square": a * a}

    two = Two().eval()
    batch = torch.export.Dim("batch")
    program = torch.export.export(
        two, (torch.ones(2, 3), torch.ones(2, 2)), dynamic_shapes={"a": {0: batch}, "b": {0: batch}}
    )
    (root / "torch-export").mkdir()
    torch.export.save(program, str(root / "torch-export" / "model.pt2"))
    a, b = rows(2, 3), rows(2, 2)
    with torch.inference_mode():
        out = two(torch.from_numpy(a), torch.from_numpy(b))
    cases["torch-export"] = Case(
        {"a": a, "b": b}, {k: v.numpy() for k, v in out.items()},
        {"inputs": [{"name": "a", "datatype": "FP32", "shape": [-1, 3]},
                    {"name": "b", "datatype": "FP32", "shape": [-1, 2]}],
         "outputs": [{"name": "sum", "datatype": "FP32", "shape": [-1, 2]},
                     {"name": "square", "datatype": "FP32", "shape": [-1, 3]}]},
    )


def tensorflow_models(root: Path, cases: dict[str, Case]) -> None:
    import keras
    import tensorflow as tf

    class Two(tf.Module):
        def __init__(self) -> None:
            self.w = tf.Variable(rows(3, 2))

        @tf.function(input_signature=[tf.TensorSpec([None, 3], tf.float32, name="a"),
                                      tf.TensorSpec([None, 2], tf.float32, name="b")])
        def serve(self, a, b):
            return {"sum": tf.matmul(a, self.w) + b, "square": a * a}

    module = Two()
    tf.saved_model.save(module, str(root / "tf-saved" / "1"), signatures={"serving_default": module.serve})
    a, b = rows(2, 3), rows(2, 2)
    out = module.serve(tf.constant(a), tf.constant(b))
    cases["tf-saved"] = Case(
        {"a": a, "b": b}, {k: v.numpy() for k, v in out.items()},
        {"inputs": [{"name": "a", "datatype": "FP32", "shape": [-1, 3]},
                    {"name": "b", "datatype": "FP32", "shape": [-1, 2]}],
         "outputs": [{"name": "square", "datatype": "FP32", "shape": [-1, 3]},
                     {"name": "sum", "datatype": "FP32", "shape": [-1, 2]}]},
    )
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,), name="x"), keras.layers.Dense(8, activation="relu"),
                              keras.layers.Dense(3)])
    (root / "tf-keras").mkdir()
    model.save(root / "tf-keras" / "model.keras")
    x = rows(3, 4)
    cases["tf-keras"] = Case({"x": x}, {"output-0": model(x, training=False).numpy()}, {
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}],
        "outputs": [{"name": "output-0", "datatype": "FP32", "shape": [-1, 3]}],
    })


def corrupt(root: Path) -> dict[str, str]:
    """Damaged copies of each artifact; returns model name -> expected words in the reason."""
    damaged = {
        "broken-onnx": ("onnx-mlp", "model.onnx", lambda b: b[: len(b) // 2]),
        "broken-pt": ("torch-script", "model.pt", lambda b: b"garbage" * 20),
        "broken-pt2": ("torch-export", "model.pt2", lambda b: b[: len(b) // 3]),
        "broken-tf": ("tf-saved/1", "saved_model.pb", lambda b: b[: len(b) // 2]),
        "broken-keras": ("tf-keras", "model.keras", lambda b: b[:100]),
    }
    for name, (source, artifact, damage) in damaged.items():
        folder = root / name
        folder.mkdir()
        if artifact == "saved_model.pb":
            shutil.copytree(root / source / "variables", folder / "variables")
        (folder / artifact).write_bytes(damage((root / source / artifact).read_bytes()))
    return {name: f"cannot read {artifact}" for name, (_, artifact, _) in damaged.items()}


IN_WORKERS = ["onnx-two", "torch-export", "tf-saved"]


def in_workers(root: Path) -> None:
    """Copies that run in a worker process (``workers: 1``; the three share one process):
    only requests and responses cross to it, so any framework's objects may live there."""
    for name in IN_WORKERS:
        shutil.copytree(root / name, root / f"{name}-worker")
        (root / f"{name}-worker" / "model.yaml").write_text("workers: 1\n")


@dataclass
class Served:
    process: ShoalProcess
    cases: dict[str, Case]
    broken: dict[str, str]  # model -> words its load failure reason must contain


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("dl-repository")
    cases: dict[str, Case] = {}
    onnx_models(root, cases)
    torch_models(root, cases)
    tensorflow_models(root, cases)
    in_workers(root)
    broken = corrupt(root)
    process = ShoalProcess(root)
    try:
        process.wait_ready(timeout=120)  # three frameworks to import on a busy machine
        yield Served(process, cases, broken)
    finally:
        process.stop()


@pytest.fixture(scope="module")
def server(served: Served) -> ShoalProcess:
    return served.process


@pytest.fixture(scope="module")
def cases(served: Served) -> dict[str, Case]:
    return served.cases


@pytest.fixture(scope="module")
def stub(server: ShoalProcess) -> Iterator[pb_grpc.GRPCInferenceServiceStub]:
    with grpc.insecure_channel(server.grpc_target) as channel:
        yield pb_grpc.GRPCInferenceServiceStub(channel)


MODELS = ["onnx-mlp", "onnx-two", "torch-script", "torch-script-bare", "torch-export", "tf-saved", "tf-keras"]
MULTI_OUTPUT = {"onnx-mlp": "probs", "onnx-two": "square", "torch-export": "square", "tf-saved": "sum"}


def v2_body(inputs: dict[str, np.ndarray], **extra: object) -> dict:
    return {
        "inputs": [
            {"name": n, "datatype": "FP32" if v.dtype == np.float32 else "FP64",
             "shape": list(v.shape), "data": v.reshape(-1).tolist()}
            for n, v in inputs.items()
        ],
        **extra,
    }


def infer(server: ShoalProcess, model: str, body: dict) -> httpx.Response:
    return httpx.post(f"{server.url}/v2/models/{model}/infer", json=body, timeout=30)


def rest_outputs(response: httpx.Response) -> dict[str, np.ndarray]:
    assert response.status_code == 200, response.text
    return {
        o["name"]: np.array(o["data"], dtype=np.float32).reshape(o["shape"])
        for o in response.json()["outputs"]
    }


@pytest.mark.parametrize("model", MODELS)
def test_v2_rest_json_matches_the_framework(server: ShoalProcess, cases: dict[str, Case], model: str) -> None:
    case = cases[model]
    got = rest_outputs(infer(server, model, v2_body(case.inputs)))
    assert sorted(got) == sorted(case.expected)
    for name, expected in case.expected.items():
        np.testing.assert_allclose(got[name], expected, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("model", MODELS)
def test_v2_grpc_raw_matches_the_framework(stub, cases: dict[str, Case], model: str) -> None:
    case = cases[model]
    request = pb.ModelInferRequest(model_name=model)
    for name, value in case.inputs.items():
        request.inputs.add(name=name, datatype="FP32", shape=list(value.shape))
        request.raw_input_contents.append(value.tobytes())
    response = stub.ModelInfer(request, timeout=30)
    got = {
        o.name: np.frombuffer(raw, dtype="<f4").reshape(tuple(o.shape))
        for o, raw in zip(response.outputs, response.raw_output_contents)
    }
    assert sorted(got) == sorted(case.expected)
    for name, expected in case.expected.items():
        assert np.array_equal(got[name], expected), name  # same bytes as in-process


@pytest.mark.parametrize("model", MODELS)
def test_v1_matches_the_framework(server: ShoalProcess, cases: dict[str, Case], model: str) -> None:
    case = cases[model]
    names = list(case.inputs)
    count = len(next(iter(case.inputs.values())))
    if len(names) == 1:
        instances = case.inputs[names[0]].tolist()
    else:
        instances = [{n: case.inputs[n][i].tolist() for n in names} for i in range(count)]
    response = httpx.post(f"{server.url}/v1/models/{model}:predict", json={"instances": instances})
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    if len(case.expected) == 1:
        [expected] = case.expected.values()
        np.testing.assert_allclose(np.array(predictions, np.float32), expected, rtol=1e-6, atol=1e-7)
    else:
        for name, expected in case.expected.items():
            got = np.array([row[name] for row in predictions], np.float32)
            np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("model", sorted(MULTI_OUTPUT))
def test_requested_output_only(server: ShoalProcess, cases: dict[str, Case], model: str) -> None:
    wanted = MULTI_OUTPUT[model]
    case = cases[model]
    got = rest_outputs(infer(server, model, v2_body(case.inputs, outputs=[{"name": wanted}])))
    assert list(got) == [wanted]
    np.testing.assert_allclose(got[wanted], case.expected[wanted], rtol=1e-6, atol=1e-7)
    response = infer(server, model, v2_body(case.inputs, outputs=[{"name": "nope"}]))
    assert response.status_code == 400 and "nope" in response.json()["error"]


@pytest.mark.parametrize("model", MODELS)
def test_wrong_shape_is_400_naming_the_expected_shape(server: ShoalProcess, cases: dict[str, Case], model: str) -> None:
    inputs = dict(cases[model].inputs)
    name = next(iter(inputs))
    inputs[name] = np.ones((1, 7), np.float32)
    response = infer(server, model, v2_body(inputs))
    assert response.status_code == 400, response.text
    width = cases[model].inputs[name].shape[1]
    assert f"expects [-1, {width}]" in response.json()["error"]


@pytest.mark.parametrize("model", ["onnx-mlp", "torch-script", "torch-script-bare", "tf-keras"])
def test_fp64_to_an_fp32_model_is_400_naming_both_types(server: ShoalProcess, cases: dict[str, Case], model: str) -> None:
    [x] = cases[model].inputs.values()  # one input: any name reaches it
    response = infer(server, model, v2_body({"x": x.astype(np.float64) + 0.1}))  # not FP32-exact
    assert response.status_code == 400
    assert "is FP64 but model" in response.json()["error"] and "expects FP32" in response.json()["error"]
    # A lossless conversion is made: INT16 fits FP32 exactly.
    small = np.array([[1, -2, 3, 4]], np.int16)
    body = {"inputs": [{"name": "x", "datatype": "INT16", "shape": [1, 4], "data": small.reshape(-1).tolist()}]}
    assert infer(server, model, body).status_code == 200


@pytest.mark.parametrize("model", MODELS)
def test_metadata(server: ShoalProcess, stub, cases: dict[str, Case], model: str) -> None:
    meta = httpx.get(f"{server.url}/v2/models/{model}").json()
    assert {"inputs": meta["inputs"], "outputs": meta["outputs"]} == cases[model].metadata
    assert meta["platform"] == {"onnx": "onnx", "torch": "pytorch", "tf": "tensorflow"}[model.split("-")[0]]
    answer = stub.ModelMetadata(pb.ModelMetadataRequest(name=model), timeout=30)
    assert answer.platform == meta["platform"]
    over_grpc = {
        kind: [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in tensors]
        for kind, tensors in (("inputs", answer.inputs), ("outputs", answer.outputs))
    }
    assert over_grpc == cases[model].metadata


def test_tensorflow_serving_client_calls_a_two_input_saved_model(
    server: ShoalProcess, cases: dict[str, Case]
) -> None:
    """What a TF Serving user sends, unchanged: the real client's messages, tensors from
    ``tf.make_tensor_proto``, inputs by signature name."""
    import tensorflow as tf
    from tensorflow_serving.apis import get_model_metadata_pb2, predict_pb2, prediction_service_pb2_grpc

    case = cases["tf-saved"]
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "tf-saved"
    request.model_spec.signature_name = "serving_default"
    for name, value in case.inputs.items():
        request.inputs[name].CopyFrom(tf.make_tensor_proto(value))
    request.output_filter.append("sum")
    with grpc.insecure_channel(server.grpc_target) as channel:
        service = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        response = service.Predict(request, timeout=30)
        ask = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
        ask.model_spec.name = "tf-saved"
        metadata = service.GetModelMetadata(ask, timeout=30)
    assert list(response.outputs) == ["sum"]
    np.testing.assert_array_equal(tf.make_ndarray(response.outputs["sum"]), case.expected["sum"])
    signatures = get_model_metadata_pb2.SignatureDefMap()
    metadata.metadata["signature_def"].Unpack(signatures)
    inputs = signatures.signature_def["serving_default"].inputs
    assert sorted(inputs) == ["a", "b"]
    assert [d.size for d in inputs["a"].tensor_shape.dim] == [-1, 3]


def test_corrupt_artifacts_are_unavailable_with_a_reason(served: Served) -> None:
    server = served.process
    index = {row["name"]: row for row in httpx.post(f"{server.url}/v2/repository/index").json()}
    for name, reason in served.broken.items():
        assert index[name]["state"] == "UNAVAILABLE", name
        assert reason in index[name]["reason"], index[name]
    for name in MODELS:
        assert index[name]["state"] == "READY", index[name]
    response = infer(server, "broken-onnx", {"inputs": []})
    assert response.status_code == 503


@pytest.mark.parametrize("model", IN_WORKERS)
def test_models_in_a_worker_process(server: ShoalProcess, stub, cases: dict[str, Case], model: str) -> None:
    case = cases[model]
    meta = httpx.get(f"{server.url}/v2/models/{model}-worker").json()
    assert {"inputs": meta["inputs"], "outputs": meta["outputs"]} == case.metadata
    got = rest_outputs(infer(server, f"{model}-worker", v2_body(case.inputs)))
    for name, expected in case.expected.items():
        np.testing.assert_allclose(got[name], expected, rtol=1e-6, atol=1e-7)
    request = pb.ModelInferRequest(model_name=f"{model}-worker")
    for name, value in case.inputs.items():
        request.inputs.add(name=name, datatype="FP32", shape=list(value.shape))
        request.raw_input_contents.append(value.tobytes())
    answer = stub.ModelInfer(request, timeout=30)
    assert sorted(o.name for o in answer.outputs) == sorted(case.expected)
    wrong = {n: np.ones((1, 7), np.float32) for n in case.inputs}
    response = infer(server, f"{model}-worker", v2_body(wrong))
    assert response.status_code == 400 and "expects [-1," in response.json()["error"]
