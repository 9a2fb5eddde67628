"""V2 REST end to end: a real server, called with httpx."""

from __future__ import annotations

import struct

import httpx
import numpy as np
import orjson
import pytest

from .models import iris_rows
from .process import ShoalProcess


def infer(server: ShoalProcess, model: str, body: dict, path: str = "") -> httpx.Response:
    return httpx.post(f"{server.url}/v2/models/{model}{path}/infer", json=body)


def iris_body(rows: np.ndarray, **extra: object) -> dict:
    return {
        "inputs": [{"name": "input-0", "datatype": "FP64", "shape": list(rows.shape),
                    "data": rows.reshape(-1).tolist()}],
        **extra,
    }


def test_health_and_server_metadata(server: ShoalProcess) -> None:
    assert httpx.get(f"{server.url}/v2/health/live").json() == {"live": True}
    assert httpx.get(f"{server.url}/v2/health/ready").json() == {"ready": True}
    meta = httpx.get(f"{server.url}/v2").json()
    assert meta["name"] == "shoal"
    assert {"binary_tensor_data", "model_repository"} <= set(meta["extensions"])


def test_model_metadata_reports_versions_and_tensors(server: ShoalProcess) -> None:
    meta = httpx.get(f"{server.url}/v2/models/iris").json()
    assert meta["versions"] == ["1", "2"]
    assert meta["platform"] == "sklearn"
    assert meta["inputs"] == [{"name": "input-0", "datatype": "FP64", "shape": [-1, 4]}]
    assert {"predict", "predict_proba"} <= {o["name"] for o in meta["outputs"]}
    versioned = httpx.get(f"{server.url}/v2/models/iris/versions/1").json()
    assert versioned["versions"] == ["1"]
    assert httpx.get(f"{server.url}/v2/models/iris/versions/1/ready").json()["ready"] is True


def test_infer_json_defaults_to_newest_version(server: ShoalProcess) -> None:
    response = infer(server, "iris", iris_body(iris_rows(3), id="req-1"))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model_name"] == "iris" and body["model_version"] == "2"
    assert body["id"] == "req-1"
    [output] = body["outputs"]
    assert output == {"name": "predict", "datatype": "INT64", "shape": [3], "data": [0, 0, 0]}


def test_infer_specific_version_and_requested_output(server: ShoalProcess) -> None:
    body = iris_body(iris_rows(1), outputs=[{"name": "predict_proba"}])
    v1 = infer(server, "iris", body, "/versions/1").json()
    v2 = infer(server, "iris", body, "/versions/2").json()
    assert v1["model_version"] == "1" and v2["model_version"] == "2"
    assert v1["outputs"][0]["shape"] == [1, 3]
    assert v1["outputs"][0]["data"] != v2["outputs"][0]["data"]  # different C, different model
    assert sum(v1["outputs"][0]["data"]) == pytest.approx(1.0)


def test_fp32_and_int_inputs_convert_safely_to_the_models_fp64(server: ShoalProcess) -> None:
    rows = iris_rows(1)
    for datatype, data in (("FP32", rows.astype(np.float32)), ("INT64", rows.astype(np.int64))):
        body = {"inputs": [{"name": "x", "datatype": datatype, "shape": [1, 4],
                            "data": data.reshape(-1).tolist()}]}
        assert infer(server, "iris", body).status_code == 200


def test_binary_request_and_binary_response(server: ShoalProcess) -> None:
    rows = iris_rows(2)
    header = orjson.dumps({
        "inputs": [{"name": "input-0", "datatype": "FP64", "shape": [2, 4],
                    "parameters": {"binary_data_size": rows.nbytes}}],
        "outputs": [{"name": "predict_proba", "parameters": {"binary_data": True}}],
    })
    response = httpx.post(
        f"{server.url}/v2/models/iris/infer",
        content=header + rows.tobytes(),
        headers={"Inference-Header-Content-Length": str(len(header)),
                 "Content-Type": "application/octet-stream"},
    )
    assert response.status_code == 200, response.text
    json_length = int(response.headers["inference-header-content-length"])
    meta = orjson.loads(response.content[:json_length])
    [output] = meta["outputs"]
    assert output["parameters"]["binary_data_size"] == 2 * 3 * 8
    proba = np.frombuffer(response.content[json_length:], dtype="<f8").reshape(output["shape"])
    assert proba.shape == (2, 3)
    assert np.allclose(proba.sum(axis=1), 1.0)


def test_binary_output_for_all_outputs_with_request_parameter(server: ShoalProcess) -> None:
    body = iris_body(iris_rows(1), parameters={"binary_data_output": True})
    response = infer(server, "iris", body)
    json_length = int(response.headers["inference-header-content-length"])
    assert np.frombuffer(response.content[json_length:], dtype="<i8").tolist() == [0]


@pytest.mark.parametrize("datatype", ["BOOL", "INT8", "INT16", "INT32", "INT64", "UINT8",
                                      "UINT16", "UINT32", "UINT64", "FP16", "FP32", "FP64"])
def test_every_numeric_datatype_round_trips_binary_and_json(server: ShoalProcess, datatype: str) -> None:
    from shoal.datatypes import numpy_dtype

    array = (np.arange(6) % 2 == 1) if datatype == "BOOL" else np.arange(6)
    array = array.astype(numpy_dtype(datatype)).reshape(2, 3)
    header = orjson.dumps({
        "inputs": [{"name": "t", "datatype": datatype, "shape": [2, 3],
                    "parameters": {"binary_data_size": array.nbytes}}],
        "parameters": {"binary_data_output": True},
    })
    response = httpx.post(
        f"{server.url}/v2/models/identity/infer", content=header + array.tobytes(),
        headers={"Inference-Header-Content-Length": str(len(header))},
    )
    assert response.status_code == 200, response.text
    json_length = int(response.headers["inference-header-content-length"])
    [meta] = orjson.loads(response.content[:json_length])["outputs"]
    assert meta["datatype"] == datatype and meta["shape"] == [2, 3]
    back = np.frombuffer(response.content[json_length:], dtype=array.dtype).reshape(2, 3)
    assert np.array_equal(back, array)
    as_json = infer(server, "identity", {"inputs": [{"name": "t", "datatype": datatype, "shape": [2, 3],
                                                     "data": array.reshape(-1).tolist()}]})
    assert as_json.status_code == 200, as_json.text
    assert as_json.json()["outputs"][0]["data"] == array.reshape(-1).tolist()


def test_bytes_tensors_json_and_binary(server: ShoalProcess) -> None:
    body = {"inputs": [{"name": "s", "datatype": "BYTES", "shape": [2], "data": ["héllo", ""]}]}
    out = infer(server, "identity", body).json()["outputs"][0]
    assert out["datatype"] == "BYTES" and out["data"] == ["héllo", ""]
    raw = struct.pack("<I", 3) + b"a\x00b" + struct.pack("<I", 0)
    header = orjson.dumps({"inputs": [{"name": "s", "datatype": "BYTES", "shape": [2],
                                       "parameters": {"binary_data_size": len(raw)}}],
                           "outputs": [{"name": "s", "parameters": {"binary_data": True}}]})
    response = httpx.post(f"{server.url}/v2/models/identity/infer", content=header + raw,
                          headers={"Inference-Header-Content-Length": str(len(header))})
    json_length = int(response.headers["inference-header-content-length"])
    assert response.content[json_length:] == raw


def test_async_preprocess_and_postprocess_run(server: ShoalProcess) -> None:
    body = {"inputs": [{"name": "x", "datatype": "FP64", "shape": [2], "data": [1, 2]}]}
    result = infer(server, "stages", body).json()
    assert result["outputs"][0]["data"] == [4.0, 6.0]
    assert result["parameters"] == {"post": True}


def test_model_list(server: ShoalProcess) -> None:
    names = httpx.get(f"{server.url}/v2/models").json()["models"]
    assert {"iris", "identity", "broken"} <= set(names)
