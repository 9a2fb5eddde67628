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
    assert explain.status_code == 400  # nothing to explain: the explainer says so
    assert explain.json()["error"]


def test_tf_serving_classify_and_regress_are_501_naming_the_verb(server: ShoalProcess) -> None:
    for method in ("POST", "GET"):
        for path in ("/v1/models/iris:classify", "/v1/models/iris/versions/1:regress"):
            response = httpx.request(method, server.url + path, json={"examples": []})
            assert response.status_code == 501, (method, path, response.text)
            error = response.json()["error"]
            assert path.rsplit(":", 1)[1] in error and ":predict" in error, error
    # As in TF Serving, an unknown model or version is 404 before the verb is looked at.
    missing = httpx.post(f"{server.url}/v1/models/nosuch:classify", json={})
    assert missing.status_code == 404 and "'nosuch' is not served" in missing.json()["error"]
    assert httpx.post(f"{server.url}/v1/models/iris/versions/9:regress", json={}).status_code == 404


def test_unknown_verbs_are_404_naming_the_verb(server: ShoalProcess) -> None:
    for method in ("POST", "GET"):
        response = httpx.request(method, f"{server.url}/v1/models/iris:foo")
        assert response.status_code == 404
        assert "unknown V1 verb ':foo'" in response.json()["error"]
    versioned = httpx.post(f"{server.url}/v1/models/iris/versions/1:foo", json={})
    assert versioned.status_code == 404 and "':foo'" in versioned.json()["error"]
    wrong_method = httpx.get(f"{server.url}/v1/models/iris:explain")
    assert wrong_method.status_code == 405 and wrong_method.headers["allow"] == "POST"


def test_v2_body_on_v1_predict_names_the_v2_route(server: ShoalProcess) -> None:
    v2 = {"inputs": [{"name": "input-0", "datatype": "FP64", "shape": [1, 4], "data": [5.1, 3.5, 1.4, 0.2]}]}
    response = predict(server, "iris", v2)
    assert response.status_code == 400
    assert "V2 inference request" in response.json()["error"]
    assert "POST /v2/models/" in response.json()["error"]
    # V1 rows and columns whose input names happen to be name/datatype/shape stay V1.
    rows = {"instances": [{"name": [1.0], "datatype": [2.0], "shape": [3.0]}]}
    assert predict(server, "identity", rows).json() == {"predictions": rows["instances"]}
    columns = {"inputs": {"name": [1.0], "datatype": [2.0], "shape": [3.0]}}
    assert predict(server, "identity", columns).json() == {"outputs": columns["inputs"]}


def test_metadata_in_tf_serving_rest_shape(server: ShoalProcess) -> None:
    response = httpx.get(f"{server.url}/v1/models/iris/metadata")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model_spec"] == {"name": "iris", "version": "2", "signature_name": ""}
    signature = body["metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert signature["method_name"] == "tensorflow/serving/predict"
    assert signature["inputs"] == {
        "input-0": {
            "name": "input-0",
            "dtype": "DT_DOUBLE",
            "tensor_shape": {"dim": [{"size": "-1", "name": ""}, {"size": "4", "name": ""}],
                             "unknown_rank": False},
        }
    }
    v2 = httpx.get(f"{server.url}/v2/models/iris").json()
    assert set(signature["outputs"]) == {o["name"] for o in v2["outputs"]}
    assert signature["outputs"]["predict"]["dtype"] == "DT_INT64"

    one = httpx.get(f"{server.url}/v1/models/iris/versions/1/metadata").json()
    assert one["model_spec"]["version"] == "1"
    assert httpx.get(f"{server.url}/v1/models/nosuch/metadata").status_code == 404
    assert httpx.get(f"{server.url}/v1/models/iris/versions/7/metadata").status_code == 404
    # The status route is still the status route.
    assert httpx.get(f"{server.url}/v1/models/iris").json()["name"] == "iris"
