"""MLflow models served end to end: V2 REST, V2 gRPC and V1, metadata, bad input, bad folders."""

from __future__ import annotations

import textwrap
from collections.abc import Iterator

import grpc
import httpx
import mlflow.pyfunc
import mlflow.sklearn
import numpy as np
import pytest
from mlflow.models import ModelSignature, infer_signature
from mlflow.types.schema import Schema, TensorSpec
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression

from shoal.protocol.grpc_gen import grpc_service_pb2 as pb
from shoal.protocol.grpc_gen import grpc_service_pb2_grpc as pb_grpc

from .process import ShoalProcess

# MLflow nudges towards input examples while saving: not this suite's subject.
pytestmark = pytest.mark.filterwarnings("ignore:.*input example was not provided:UserWarning")

#: Defined in a module of its own, so cloudpickle stores the class by value, as it does for a
#: class written in a notebook: the server process has no module to import it from.
DOUBLER = """
    import mlflow.pyfunc

    class Doubler(mlflow.pyfunc.PythonModel):
        def predict(self, context, model_input, params=None):
            x = model_input["x"]
            return {"doubled": x * 2, "sum": x.sum(axis=1)}
"""
COLUMNS = ["sepal_length", "sepal_width", "petal_length", "petal_width"]


def doubler() -> object:
    namespace: dict = {"__name__": "shoal_e2e_mlflow_doubler"}
    exec(textwrap.dedent(DOUBLER), namespace)
    return namespace["Doubler"]()


@pytest.fixture(scope="module")
def iris() -> tuple:
    frame = load_iris(as_frame=True).data
    frame.columns = COLUMNS
    return frame, LogisticRegression(max_iter=500).fit(frame, load_iris().target)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, iris) -> Iterator[ShoalProcess]:
    frame, estimator = iris
    root = tmp_path_factory.mktemp("mlflow")
    signature = ModelSignature(inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, 4), "x")]),
                               outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, 4), "doubled"),
                                               TensorSpec(np.dtype(np.float32), (-1,), "sum")]))
    mlflow.pyfunc.save_model(str(root / "doubler"), python_model=doubler(), signature=signature,
                             pip_requirements=[])
    mlflow.sklearn.save_model(estimator, str(root / "iris-columns"), serialization_format="cloudpickle",
                              signature=infer_signature(frame, estimator.predict(frame)),
                              pip_requirements=[])
    (root / "corrupt").mkdir()
    (root / "corrupt" / "MLmodel").write_text("flavors: [unclosed\n")
    process = ShoalProcess(root)
    try:
        process.wait_ready()
        yield process
    finally:
        process.stop()


def infer(served: ShoalProcess, model: str, body: dict) -> httpx.Response:
    return httpx.post(f"{served.url}/v2/models/{model}/infer", json=body, timeout=30)


X = np.arange(8, dtype=np.float32).reshape(2, 4)
X_BODY = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 4], "data": X.reshape(-1).tolist()}]}


def test_metadata_comes_from_the_signature(served: ShoalProcess) -> None:
    meta = httpx.get(f"{served.url}/v2/models/doubler").json()
    assert meta["platform"] == "mlflow"
    assert meta["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}]
    assert [o["name"] for o in meta["outputs"]] == ["doubled", "sum"]
    columns = httpx.get(f"{served.url}/v2/models/iris-columns").json()
    assert columns["inputs"] == [{"name": c, "datatype": "FP64", "shape": [-1]} for c in COLUMNS]


def test_v2_rest_named_outputs_and_requested_outputs(served: ShoalProcess) -> None:
    response = infer(served, "doubler", X_BODY)
    assert response.status_code == 200, response.text
    outputs = {o["name"]: o for o in response.json()["outputs"]}
    assert outputs["doubled"]["data"] == (X * 2).reshape(-1).tolist()
    assert outputs["sum"] == {"name": "sum", "datatype": "FP32", "shape": [2], "data": [6.0, 22.0]}
    only = infer(served, "doubler", {**X_BODY, "outputs": [{"name": "sum"}]})
    assert [o["name"] for o in only.json()["outputs"]] == ["sum"]


def test_v2_grpc(served: ShoalProcess) -> None:
    request = pb.ModelInferRequest(model_name="doubler")
    request.inputs.add(name="x", datatype="FP32", shape=[2, 4])
    request.raw_input_contents.append(X.tobytes())
    with grpc.insecure_channel(served.grpc_target) as channel:
        answer = pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=30)
    raw = dict(zip((o.name for o in answer.outputs), answer.raw_output_contents))
    assert np.frombuffer(raw["doubled"], np.float32).tolist() == (X * 2).reshape(-1).tolist()


def test_columns_over_v2_and_v1(served: ShoalProcess, iris) -> None:
    frame, estimator = iris
    rows = frame[:3]
    want = estimator.predict(rows).tolist()
    body = {"inputs": [{"name": c, "datatype": "FP64", "shape": [3], "data": rows[c].tolist()}
                       for c in COLUMNS]}
    response = infer(served, "iris-columns", body)
    assert response.status_code == 200, response.text
    assert response.json()["outputs"][0]["data"] == want
    v1 = httpx.post(f"{served.url}/v1/models/iris-columns:predict",
                    json={"instances": rows.to_dict(orient="records")})
    assert v1.status_code == 200 and v1.json() == {"predictions": want}, v1.text
    columnar = httpx.post(f"{served.url}/v1/models/doubler:predict", json={"inputs": {"x": X.tolist()}})
    assert columnar.json()["outputs"]["sum"] == [6.0, 22.0], columnar.text


def test_wrong_shape_and_type_are_400(served: ShoalProcess) -> None:
    narrow = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 3], "data": [1, 2, 3]}]}
    response = infer(served, "doubler", narrow)
    assert response.status_code == 400 and "expects [-1, 4]" in response.json()["error"]
    # 0.1 has no exact FP32 value (FP64 data that has one is converted)
    wide = {"inputs": [{"name": "x", "datatype": "FP64", "shape": [1, 4], "data": [0.1, 2, 3, 4]}]}
    response = infer(served, "doubler", wide)
    assert response.status_code == 400
    assert "is FP64 but model 'doubler' expects FP32" in response.json()["error"]


def test_corrupt_mlmodel_is_a_failed_load_with_its_reason(served: ShoalProcess) -> None:
    rows = {r["name"]: r for r in httpx.post(f"{served.url}/v2/repository/index", json={}).json()}
    assert rows["corrupt"]["state"] == "UNAVAILABLE"
    assert "cannot load the MLflow model" in rows["corrupt"]["reason"]
    assert rows["doubler"]["state"] == rows["iris-columns"]["state"] == "READY"
