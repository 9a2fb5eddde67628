"""Values reach the model and the client unchanged, on every protocol.

- Whatever numpy scalar type a runtime returns (onnxruntime's INT64 outputs are
  ``numpy.longlong``, not ``numpy.int64``) encodes, in V1 rows too, where each value is a
  numpy scalar of its own.
- Non-finite floats are written as ``"NaN"``, ``"Infinity"``, ``"-Infinity"`` in JSON, never as
  ``null``, and read back the same way.
- A datatype conversion happens only when every value survives it; otherwise a 400 names the
  value (INT64 9007199254740993 has no FP64; FP64 1e40 would be FP32's inf).
"""

from __future__ import annotations

from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.http as triton_http

from shoal.protocol.grpc_gen import grpc_service_pb2 as pb
from shoal.protocol.grpc_gen import grpc_service_pb2_grpc as pb_grpc

from .models import custom
from .process import ShoalProcess

#: Returns one output of each odd numpy scalar type, and non-finite floats.
ODD_TYPES = """
    import numpy as np
    from shoal import Model, Tensor, TensorSpec

    class OddTypes(Model):
        def load(self):
            self.inputs = [TensorSpec("x", "FP64", (-1,))]

        def predict(self, request):
            x = request.as_numpy("x")
            n = len(x)
            return {
                "longlong": np.arange(n, dtype=np.longlong),
                "ulonglong": np.arange(n, dtype=np.ulonglong),
                "intc": np.arange(n, dtype=np.intc),
                "half": np.full(n, 0.5, dtype=np.float16),
                "big_endian": np.arange(n, dtype=">i8"),
                "special": np.array([np.nan, np.inf, -np.inf, 1.5][:n] + [2.0] * max(0, n - 4)),
                "echo": x,
            }
"""

FP32_ECHO = """
    from shoal import Model, TensorSpec

    class Echo(Model):
        def load(self):
            self.inputs = [TensorSpec("x", "FP32", (-1,))]

        def predict(self, request):
            x = request.as_numpy("x")
            return {"y": x, "dtype": [str(x.dtype)] * len(x)}
"""

FP64_ECHO = FP32_ECHO.replace('"FP32"', '"FP64"')


def onnx_classifier(folder: Path) -> None:
    """label (INT64) + probabilities (FP32), as a converted scikit-learn classifier has."""
    from onnx import TensorProto, helper, save

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 4])
    label = helper.make_tensor_value_info("label", TensorProto.INT64, [None])
    proba = helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [None, 3])
    weights = helper.make_tensor("W", TensorProto.FLOAT, [4, 3],
                                 [1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0, 0, 0, 0])
    nodes = [helper.make_node("MatMul", ["x", "W"], ["z"]),
             helper.make_node("Softmax", ["z"], ["probabilities"], axis=1),
             helper.make_node("ArgMax", ["z"], ["label"], axis=1, keepdims=0)]
    graph = helper.make_graph(nodes, "classifier", [x], [label, proba], [weights])
    folder.mkdir(parents=True)
    save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(folder / "model.onnx"))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("values")
    onnx_classifier(root / "classifier")
    custom(root / "odd", ODD_TYPES)
    custom(root / "fp32", FP32_ECHO)
    custom(root / "fp64", FP64_ECHO)
    process = ShoalProcess(root)
    process.wait_ready()
    yield process
    process.stop()


def v2(server: ShoalProcess, model: str, datatype: str, data: list, shape: list | None = None) -> httpx.Response:
    return httpx.post(f"{server.url}/v2/models/{model}/infer", json={"inputs": [{
        "name": "x", "datatype": datatype, "shape": shape or [len(data)], "data": data}]})


def test_v1_rows_of_a_multi_output_onnx_classifier(server: ShoalProcess) -> None:
    response = httpx.post(f"{server.url}/v1/models/classifier:predict",
                          json={"instances": [[0, 0, 9, 0], [5, 0, 0, 0]]})
    assert response.status_code == 200, response.text
    rows = response.json()["predictions"]
    assert [r["label"] for r in rows] == [2, 0]
    assert all(len(r["probabilities"]) == 3 for r in rows)


@pytest.mark.parametrize("body", [{"instances": [1.0, 2.0]}, {"inputs": [1.0, 2.0]}])
def test_v1_every_numpy_scalar_type(server: ShoalProcess, body: dict) -> None:
    response = httpx.post(f"{server.url}/v1/models/odd:predict", json=body)
    assert response.status_code == 200, response.text
    result = response.json()
    if "predictions" in result:
        row = result["predictions"][1]
        assert (row["longlong"], row["ulonglong"], row["intc"], row["half"], row["big_endian"]) == (1, 1, 1, 0.5, 1)
        assert [r["special"] for r in result["predictions"]] == ["NaN", "Infinity"]
    else:
        assert result["outputs"]["longlong"] == [0, 1]
        assert result["outputs"]["special"] == ["NaN", "Infinity"]


def test_v2_json_writes_non_finite_floats_as_strings(server: ShoalProcess) -> None:
    response = v2(server, "odd", "FP64", [1.0, 2.0, 3.0, 4.0])
    assert response.status_code == 200, response.text
    outputs = {o["name"]: o["data"] for o in response.json()["outputs"]}
    assert outputs["special"] == ["NaN", "Infinity", "-Infinity", 1.5]
    assert outputs["longlong"] == [0, 1, 2, 3] and outputs["big_endian"] == [0, 1, 2, 3]
    assert "null" not in response.text


def test_non_finite_strings_are_read_back(server: ShoalProcess) -> None:
    response = v2(server, "fp64", "FP64", ["NaN", "Infinity", "-Infinity", 2.5])
    assert response.status_code == 200, response.text
    assert response.json()["outputs"][0]["data"] == ["NaN", "Infinity", "-Infinity", 2.5]
    refused = v2(server, "fp64", "FP64", ["nan?"])
    assert refused.status_code == 400 and "must be numbers" in refused.json()["error"]


def test_tritonclient_reads_non_finite_json_floats(server: ShoalProcess) -> None:
    client = triton_http.InferenceServerClient(server.url.removeprefix("http://"))
    x = triton_http.InferInput("x", [4], "FP64")
    x.set_data_from_numpy(np.array([1.0, 2.0, 3.0, 4.0]), binary_data=True)
    result = client.infer("odd", [x], outputs=[triton_http.InferRequestedOutput("special", binary_data=True)])
    assert np.array_equal(result.as_numpy("special"), [np.nan, np.inf, -np.inf, 1.5], equal_nan=True)


def test_grpc_every_numpy_scalar_type(server: ShoalProcess) -> None:
    with grpc.insecure_channel(server.grpc_target) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        for raw in (False, True):
            request = pb.ModelInferRequest(model_name="odd")
            tensor = request.inputs.add(name="x", datatype="FP64", shape=[2])
            if raw:
                request.raw_input_contents.append(np.array([1.0, 2.0]).tobytes())
            else:
                tensor.contents.fp64_contents.extend([1.0, 2.0])
            response = stub.ModelInfer(request, timeout=10)
            assert [o.name for o in response.outputs][:3] == ["longlong", "ulonglong", "intc"]


def test_an_integer_without_an_fp64_is_refused_not_rounded(server: ShoalProcess) -> None:
    response = v2(server, "fp64", "INT64", [1, 9007199254740993])
    assert response.status_code == 400
    assert "9007199254740993" in response.json()["error"]
    fine = v2(server, "fp64", "INT64", [1, 9007199254740992])
    assert fine.json()["outputs"][0]["data"] == [1.0, 9007199254740992.0]


def test_the_same_rule_for_every_numeric_pair(server: ShoalProcess) -> None:
    assert v2(server, "fp32", "INT64", [1, 16777216]).status_code == 200
    assert v2(server, "fp32", "INT64", [16777217]).status_code == 400
    assert v2(server, "fp32", "FP64", [0.5, 0.25]).status_code == 200
    refused = v2(server, "fp32", "FP64", [0.1])
    assert refused.status_code == 400 and "send FP32 data" in refused.json()["error"]


def test_a_number_beyond_fp32_is_refused_not_made_infinite(server: ShoalProcess) -> None:
    for datatype in ("FP32", "FP64"):  # declared FP32 in JSON, or converted from FP64
        response = v2(server, "fp32", datatype, [1.0, 1e40])
        assert response.status_code == 400, response.text
        assert "1e+40" in response.json()["error"]
    v1 = httpx.post(f"{server.url}/v1/models/fp32:predict", json={"instances": [1e40]})
    assert v1.status_code == 400 and "out of range for FP32" in v1.json()["error"]


def test_grpc_conversion_errors_are_invalid_argument(server: ShoalProcess) -> None:
    with grpc.insecure_channel(server.grpc_target) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        request = pb.ModelInferRequest(model_name="fp64")
        request.inputs.add(name="x", datatype="INT64", shape=[1]).contents.int64_contents.append(
            9007199254740993)
        with pytest.raises(grpc.RpcError) as info:
            stub.ModelInfer(request, timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "9007199254740993" in info.value.details()


def test_seldon_answers_carry_non_finite_floats_as_strings(server: ShoalProcess) -> None:
    for data in ({"ndarray": [1.0, 2.0, 3.0]}, {"tensor": {"shape": [3], "values": [1.0, 2.0, 3.0]}}):
        response = httpx.post(f"{server.url}/seldon/default/odd/api/v1.0/predictions", json={"data": data})
        assert response.status_code == 200, response.text
        assert "null" not in response.text  # several outputs: jsonData by name
        assert response.json()["jsonData"]["special"] == ["NaN", "Infinity", "-Infinity"]


def test_what_a_v1_answer_says_can_be_sent_back(server: ShoalProcess) -> None:
    """V1 and Seldon rows read the non-finite strings too, where the model takes floats."""
    rows = httpx.post(f"{server.url}/v1/models/fp64:predict",
                      json={"instances": ["NaN", "Infinity", 1.5]})
    assert rows.status_code == 200, rows.text
    assert [r["y"] for r in rows.json()["predictions"]] == ["NaN", "Infinity", 1.5]
    seldon = httpx.post(f"{server.url}/seldon/default/fp64/api/v1.0/predictions",
                        json={"data": {"ndarray": ["-Infinity", 2.0]}})
    assert seldon.status_code == 200, seldon.text
    assert seldon.json()["jsonData"]["y"] == ["-Infinity", 2.0]
