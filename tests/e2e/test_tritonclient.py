"""Triton's own clients, unchanged, over HTTP (binary extension) and gRPC (raw contents)."""

from __future__ import annotations

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from .models import iris_rows
from .process import ShoalProcess


@pytest.fixture(params=["http", "grpc"])
def client(request: pytest.FixtureRequest, server: ShoalProcess):
    if request.param == "http":
        return httpclient, httpclient.InferenceServerClient(f"127.0.0.1:{server.http_port}")
    return grpcclient, grpcclient.InferenceServerClient(server.grpc_target)


def test_health_and_metadata(client) -> None:
    module, triton = client
    assert triton.is_server_live() and triton.is_server_ready()
    assert triton.is_model_ready("iris") and triton.is_model_ready("iris", "1")
    assert not triton.is_model_ready("broken")
    meta = triton.get_server_metadata()
    name = meta["name"] if isinstance(meta, dict) else meta.name
    assert name == "shoal"
    model = triton.get_model_metadata("iris")
    inputs = model["inputs"] if isinstance(model, dict) else model.inputs
    assert (inputs[0]["name"] if isinstance(model, dict) else inputs[0].name) == "input-0"


@pytest.mark.parametrize("binary", [True, False])
def test_infer_iris(client, binary: bool) -> None:
    module, triton = client
    rows = iris_rows(3)
    tensor = module.InferInput("input-0", list(rows.shape), "FP64")
    if module is httpclient:
        tensor.set_data_from_numpy(rows, binary_data=binary)
        outputs = [module.InferRequestedOutput("predict_proba", binary_data=binary)]
    else:
        tensor.set_data_from_numpy(rows)
        outputs = [module.InferRequestedOutput("predict_proba")]
    result = triton.infer("iris", [tensor], outputs=outputs, model_version="1")
    proba = result.as_numpy("predict_proba")
    assert proba.shape == (3, 3) and np.allclose(proba.sum(axis=1), 1)


def test_bytes_and_every_dtype_through_identity(client) -> None:
    module, triton = client
    arrays = {
        "b": np.array([True, False]),
        "i8": np.array([-1, 2], dtype=np.int8),
        "u16": np.array([1, 65535], dtype=np.uint16),
        "i64": np.array([2**40, -3], dtype=np.int64),
        "u64": np.array([2**63, 1], dtype=np.uint64),
        "f16": np.array([0.5, 1.5], dtype=np.float16),
        "f32": np.array([0.25, 3.0], dtype=np.float32),
        "f64": np.array([1e300, -0.0], dtype=np.float64),
        "s": np.array([b"one", b"\x00two"], dtype=np.object_),
    }
    from tritonclient.utils import np_to_triton_dtype

    inputs = []
    for name, array in arrays.items():
        tensor = module.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    result = triton.infer("identity", inputs)
    for name, array in arrays.items():
        assert np.array_equal(result.as_numpy(name), array), name


def test_errors_surface_as_exceptions(client) -> None:
    module, triton = client
    tensor = module.InferInput("input-0", [1, 3], "FP64")
    tensor.set_data_from_numpy(np.zeros((1, 3)))
    with pytest.raises(InferenceServerException) as info:
        triton.infer("iris", [tensor])
    assert "[-1, 4]" in str(info.value)
    with pytest.raises(InferenceServerException):
        triton.get_model_metadata("nosuch")


def test_repository_index_load_unload(server: ShoalProcess) -> None:
    for module, triton in (
        (httpclient, httpclient.InferenceServerClient(f"127.0.0.1:{server.http_port}")),
        (grpcclient, grpcclient.InferenceServerClient(server.grpc_target)),
    ):
        index = triton.get_model_repository_index()
        names = {m["name"] for m in index} if isinstance(index, list) else {m.name for m in index.models}
        assert {"iris", "broken"} <= names
        triton.load_model("slow")
        assert triton.is_model_ready("slow")
        with pytest.raises(InferenceServerException):
            triton.load_model("nosuch")
