"""Bad input over REST: a clear {"error": ...} with the right status, and no state change."""

from __future__ import annotations

import struct

import httpx
import orjson
import pytest

from .process import ShoalProcess

GOOD = {"inputs": [{"name": "x", "datatype": "FP64", "shape": [1, 4], "data": [1, 2, 3, 4]}]}


def post(server: ShoalProcess, path: str, content: bytes, headers: dict | None = None) -> httpx.Response:
    return httpx.post(f"{server.url}{path}", content=content, headers=headers or {})


def assert_error(response: httpx.Response, status: int, fragment: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert list(body) == ["error"], body
    assert fragment in body["error"], body["error"]


def input_body(**changes: object) -> bytes:
    tensor = {"name": "x", "datatype": "FP64", "shape": [1, 4], "data": [1, 2, 3, 4]}
    tensor.update(changes)
    return orjson.dumps({"inputs": [tensor]})


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (b"{not json", "not valid JSON"),
        (b"[1, 2]", "must be a JSON object"),
        (b'{"inputs": 3}', "'inputs' must be a list"),
        (orjson.dumps({"inputs": [{"datatype": "FP64", "shape": [1], "data": [1]}]}), "'name'"),
        (input_body(datatype=7), "'datatype'"),
        (input_body(datatype="FLOAT"), "unknown datatype 'FLOAT'"),
        (input_body(shape="1,4"), "'shape' must be a list"),
        (input_body(shape=[1, -4]), "'shape' must be a list of non-negative"),
        (input_body(data=[1, 2, 3]), "do not match shape [1, 4]"),
        (input_body(data=["a", "b", "c", "d"]), "FP64 data"),
        (input_body(shape=[1, 3], data=[1, 2, 3]), "expects [-1, 4]"),
        (input_body(datatype="BYTES", data=["a", "b", "c", "d"]), "expects FP64"),
        (orjson.dumps({"inputs": [{"name": "x", "datatype": "FP64", "shape": [1, 4]}]}), "neither 'data'"),
        (orjson.dumps({**GOOD, "outputs": [{"name": "nope"}]}), "no output 'nope'"),
    ],
)
def test_bad_json_requests_are_400(server: ShoalProcess, content: bytes, fragment: str) -> None:
    assert_error(post(server, "/v2/models/iris/infer", content), 400, fragment)


def test_binary_header_length_larger_than_body(server: ShoalProcess) -> None:
    header = orjson.dumps(GOOD)
    response = post(server, "/v2/models/iris/infer", header,
                    {"Inference-Header-Content-Length": str(len(header) + 10)})
    assert_error(response, 400, "Inference-Header-Content-Length")


def test_binary_data_size_overrun(server: ShoalProcess) -> None:
    header = orjson.dumps({"inputs": [{"name": "x", "datatype": "FP64", "shape": [1, 4],
                                       "parameters": {"binary_data_size": 64}}]})
    response = post(server, "/v2/models/iris/infer", header + b"\0" * 32,
                    {"Inference-Header-Content-Length": str(len(header))})
    assert_error(response, 400, "overruns")


def test_bytes_element_length_overrun(server: ShoalProcess) -> None:
    raw = struct.pack("<I", 100) + b"short"
    header = orjson.dumps({"inputs": [{"name": "s", "datatype": "BYTES", "shape": [1],
                                       "parameters": {"binary_data_size": len(raw)}}]})
    response = post(server, "/v2/models/identity/infer", header + raw,
                    {"Inference-Header-Content-Length": str(len(header))})
    assert_error(response, 400, "claims 100 bytes")


def test_unknown_model_and_version_are_404(server: ShoalProcess) -> None:
    body = orjson.dumps(GOOD)
    assert_error(post(server, "/v2/models/nosuch/infer", body), 404, "'nosuch'")
    assert_error(post(server, "/v2/models/iris/versions/9/infer", body), 404, "no version '9'")
    assert_error(httpx.get(f"{server.url}/v2/models/nosuch"), 404, "nosuch")
    assert_error(httpx.get(f"{server.url}/v2/models/nosuch/ready"), 404, "nosuch")


def test_body_over_max_request_size_is_413(server: ShoalProcess) -> None:
    big = b"[" + b"0," * 600_000 + b"0]"  # server runs with --max-request-size 1M
    assert_error(post(server, "/v2/models/iris/infer", big), 413, "limit")

    def chunks():  # no Content-Length: the limit must hold for streamed bodies too
        for _ in range(20):
            yield b"x" * 100_000

    response = httpx.post(f"{server.url}/v2/models/iris/infer", content=chunks())
    assert_error(response, 413, "limit")


@pytest.mark.parametrize("name", ["..", "a..b", "%00x", "x%00", "..%2F..%2Fetc", "m" * 300])
def test_repository_calls_reject_unsafe_names(server: ShoalProcess, name: str) -> None:
    for action in ("load", "unload"):
        response = post(server, f"/v2/repository/models/{name}/{action}", b"")
        assert response.status_code in (400, 404), response.text
        assert "error" in response.json()
        if response.status_code == 400:
            assert "invalid model name" in response.json()["error"]


def test_model_that_raises_is_500_and_server_stays_up(server: ShoalProcess) -> None:
    body = orjson.dumps({"inputs": [{"name": "x", "datatype": "FP64", "shape": [1], "data": [1]}]})
    assert_error(post(server, "/v2/models/boom/infer", body), 500, "kaboom")
    assert httpx.get(f"{server.url}/v2/health/live").status_code == 200
    assert post(server, "/v2/models/iris/infer", orjson.dumps(GOOD)).status_code == 200


def test_failed_models_are_reported_not_fatal(server: ShoalProcess) -> None:
    index = httpx.post(f"{server.url}/v2/repository/index").json()
    states = {(row["name"], row.get("version")): row for row in index}
    assert states[("broken", "1")]["state"] == "UNAVAILABLE"
    assert "model.joblib" in states[("broken", "1")]["reason"]
    assert "not valid YAML" in states[("badconfig", "1")]["reason"]
    assert states[("iris", "2")]["state"] == "READY"
    assert_error(httpx.get(f"{server.url}/v2/models/broken/ready"), 503, "unavailable")
    assert_error(post(server, "/v2/models/broken/infer", orjson.dumps(GOOD)), 503, "model.joblib")
    ready_only = httpx.post(f"{server.url}/v2/repository/index", json={"ready": True}).json()
    assert "broken" not in {row["name"] for row in ready_only}


def test_unknown_route_and_wrong_method_use_the_error_shape(server: ShoalProcess) -> None:
    assert_error(httpx.get(f"{server.url}/v3/what"), 404, "Not Found")
    assert_error(httpx.get(f"{server.url}/v2/models/iris/infer"), 405, "Method Not Allowed")


def test_bad_requests_change_nothing(server: ShoalProcess) -> None:
    before = httpx.post(f"{server.url}/v2/repository/index").json()
    post(server, "/v2/models/iris/infer", b"{oops")
    post(server, "/v2/repository/models/../load", b"")
    assert httpx.post(f"{server.url}/v2/repository/index").json() == before
