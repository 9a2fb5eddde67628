"""V1 / TensorFlow Serving REST end to end."""

from __future__ import annotations

import base64

import httpx

from .models import iris_rows
from .process import ShoalProcess


def predict(server: ShoalProcess, model: str, body: dict, version: str = "") -> httpx.Response:
    path = f"/v1/models/{model}" + (f"/versions/{version}" if version else "") + ":predict"
    return httpx.post(server.url + path, json=body)


def test_row_format(server: ShoalProcess) -> None:
    response = predict(server, "iris", {"instances": iris_rows(2).tolist()})
    assert response.status_code == 200, response.text
    assert response.json() == {"predictions": [0, 0]}


def test_columnar_format(server: ShoalProcess) -> None:
    assert predict(server, "iris", {"inputs": iris_rows(2).tolist()}).json() == {"outputs": [0, 0]}


def test_versioned_path(server: ShoalProcess) -> None:
    assert predict(server, "iris", {"instances": iris_rows(1).tolist()}, version="1").status_code == 200
    assert predict(server, "iris", {"instances": iris_rows(1).tolist()}, version="5").status_code == 404


def test_named_inputs_and_multiple_outputs(server: ShoalProcess) -> None:
    body = {"instances": [{"a": [1.0, 2.0], "b": 3}, {"a": [4.0, 5.0], "b": 6}]}
    assert predict(server, "identity", body).json() == {
        "predictions": [{"a": [1.0, 2.0], "b": 3}, {"a": [4.0, 5.0], "b": 6}]
    }
    columnar = predict(server, "identity", {"inputs": {"a": [[1, 2]], "b": ["x"]}}).json()
    assert columnar == {"outputs": {"a": [[1, 2]], "b": ["x"]}}


def test_strings_and_b64(server: ShoalProcess) -> None:
    encoded = base64.b64encode(b"raw").decode()
    body = {"instances": ["text", {"b64": encoded}]}
    assert predict(server, "identity", body).json() == {"predictions": ["text", "raw"]}


def test_status(server: ShoalProcess) -> None:
    status = httpx.get(f"{server.url}/v1/models/iris").json()
    assert status["ready"] is True
    assert [s["version"] for s in status["model_version_status"]] == ["1", "2"]
    assert all(s["state"] == "AVAILABLE" for s in status["model_version_status"])
    one = httpx.get(f"{server.url}/v1/models/iris/versions/2").json()
    assert [s["version"] for s in one["model_version_status"]] == ["2"]
    broken = httpx.get(f"{server.url}/v1/models/broken").json()
    assert broken["model_version_status"][0]["state"] == "END"
    assert httpx.get(f"{server.url}/v1/models/nosuch").status_code == 404


def test_errors(server: ShoalProcess) -> None:
    missing = predict(server, "iris", {"rows": []})
    assert missing.status_code == 400 and "instances" in missing.json()["error"]
    wrong = predict(server, "iris", {"instances": [[1.0, 2.0]]})
    assert wrong.status_code == 400 and "[-1, 4]" in wrong.json()["error"]
    ragged = predict(server, "iris", {"instances": [[1.0, 2.0, 3.0, 4.0], [1.0]]})
    assert ragged.status_code == 400
    explain = httpx.post(f"{server.url}/v1/models/iris:explain", json={"instances": []})
    assert explain.status_code == 501 and "explainer" in explain.json()["error"]
