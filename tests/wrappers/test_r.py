"""The R model wrapper (wrappers/r): alone, and serving the example glm through Shoal.

Alone: ``Rscript wrappers/r/shoal.R identity.R`` serves a small identity function written
here; requests go over V2 REST in JSON and in the binary extension (with Shoal's own codec,
which the process runtime sends, and with tritonclient), errors are checked for their codes
and ``{"error"}`` bodies. Through Shoal: the example ``examples/languages/r-glm`` is built by
its ``build.R`` into a fresh repository and served by ``shoal serve`` (``runtime: process``);
its answers over V2 REST, V2 gRPC and V1 must equal what R computes itself (``predict.R``).

Skipped when Rscript or R's httpuv / jsonlite are missing: install Debian's ``r-base-core``,
``r-cran-httpuv`` and ``r-cran-jsonlite`` (``./dev test`` does).
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from shoal.protocol import v2_json
from shoal.types import InferenceRequest, RequestedOutput, Tensor

ROOT = Path(__file__).resolve().parents[2]
WRAPPER = ROOT / "wrappers" / "r" / "shoal.R"
EXAMPLE = ROOT / "examples" / "languages" / "r-glm"

DEBIAN_PACKAGES = "r-base-core, r-cran-httpuv and r-cran-jsonlite"


@functools.cache
def r_missing() -> str | None:
    """Why these tests cannot run here, or None."""
    if shutil.which("Rscript") is None:
        return f"Rscript is not installed (Debian: {DEBIAN_PACKAGES})"
    check = subprocess.run(
        ["Rscript", "-e", "library(httpuv); library(jsonlite)"],
        check=False, capture_output=True, text=True, timeout=60,
    )
    if check.returncode != 0:
        return f"R lacks httpuv or jsonlite (Debian: {DEBIAN_PACKAGES}): {check.stderr.strip()}"
    return None


@pytest.fixture(scope="module", autouse=True)
def _needs_r() -> None:
    reason = r_missing()
    if reason:
        pytest.skip(reason)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RServer:
    """``Rscript ...`` serving on a free $PORT, its output collected for failures."""

    def __init__(self, args: list[str], cwd: Path, name: str, env: dict[str, str] | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.name = name
        self.proc = subprocess.Popen(
            ["Rscript", *args], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True, start_new_session=True,
            env={**os.environ, "PORT": str(self.port), "SHOAL_MODEL_NAME": name,
                 "SHOAL_MODEL_VERSION": "1", **(env or {})},
        )
        self.output: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.client = httpx.Client(base_url=self.url, timeout=10)

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.output.append(line)

    def wait_live(self, timeout: float = 30.0) -> RServer:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self._reader.join(5)
                raise RuntimeError(f"the R wrapper exited: {''.join(self.output)}")
            try:
                if self.client.get("/v2/health/live").status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        raise TimeoutError(f"the R wrapper did not start: {''.join(self.output)}")

    def stop(self) -> None:
        self.client.close()
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()

    def infer(self, body: dict[str, Any], model: str | None = None) -> httpx.Response:
        return self.client.post(f"/v2/models/{model or self.name}/infer", json=body)


IDENTITY_R = """
    # The test's model: each input back under its own name and datatype, plus a few inputs
    # that make it misbehave on purpose.
    shoal_serve(function(inputs, parameters) {
      if (!is.null(inputs[["explode"]])) stop("the model cannot take 'explode'")
      if (!is.null(inputs[["refuse"]])) shoal_abort("the model cannot take 'refuse'", 400)
      if (!is.null(inputs[["text"]])) return(list(text = inputs[["text"]] + 1))
      if (!is.null(inputs[["nopackage"]])) library(shoalnosuchpackage)
      if (!is.null(inputs[["huge"]])) return(list(huge = numeric(1e15)))
      if (!is.null(inputs[["garbage"]])) return(list(garbage = function() 1))
      if (!is.null(inputs[["abort"]])) shoal_abort("the database is down", 500)
      if (!is.null(inputs[["fraction"]])) {
        return(list(fraction = shoal_tensor(inputs[["fraction"]] / 2, "INT32")))
      }
      if (!is.null(inputs[["describe"]])) {
        # How each input arrived in R: its name, typeof, dim, and its values as R prints them.
        return(list(describe = vapply(names(inputs), function(n) {
          x <- inputs[[n]]
          sprintf("%s:%s:%s:%s", n, typeof(x), paste(dim(x), collapse = "x"),
                  paste(format(as.vector(x), digits = 17), collapse = ","))
        }, "")))
      }
      if (!is.null(inputs[["params"]])) {
        return(list(params = as.character(jsonlite::toJSON(parameters, auto_unbox = TRUE))))
      }
      lapply(inputs, function(x) shoal_tensor(x, attr(x, "datatype")))
    }, ready = function() !file.exists("not-ready"))
"""


@pytest.fixture(scope="module")
def echo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RServer]:
    folder = tmp_path_factory.mktemp("r-echo")
    (folder / "identity.R").write_text(textwrap.dedent(IDENTITY_R))
    server = RServer([str(WRAPPER), "identity.R"], folder, "echo")
    server.folder = folder  # type: ignore[attr-defined]
    try:
        yield server.wait_live()
    finally:
        server.stop()


def error_of(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert list(body) == ["error"] and isinstance(body["error"], str), body
    return body["error"]


# -- the wrapper alone ----------------------------------------------------------------------


def test_health_and_metadata(echo: RServer) -> None:
    assert echo.client.get("/v2/health/live").status_code == 200
    assert echo.client.get("/v2/health/ready").status_code == 200
    server = echo.client.get("/v2").json()
    assert "binary_tensor_data" in server["extensions"]
    for path in ("/v2/models/echo", "/v2/models/echo/versions/1"):
        meta = echo.client.get(path).json()
        assert meta == {"name": "echo", "versions": ["1"], "platform": "r", "inputs": [],
                        "outputs": []}
    assert echo.client.get("/v2/models/echo/ready").json() == {"name": "echo", "ready": True}
    assert echo.client.get("/v2/models/echo/versions/1/ready").status_code == 200


def test_answers_close_the_connection_so_none_waits_for_a_delayed_ack(echo: RServer) -> None:
    """httpuv writes head and body separately with Nagle on: on a kept-alive connection each
    answer would wait for the client's delayed ACK (40 ms on Linux)."""
    body = {"inputs": [{"name": "x", "datatype": "FP64", "shape": [1], "data": [1]}]}
    assert echo.infer(body).headers["connection"] == "close"
    started = time.perf_counter()
    for _ in range(20):
        assert echo.infer(body).status_code == 200
    assert time.perf_counter() - started < 0.6  # 20 x 40 ms would be 0.8 s


def test_not_ready_is_503(echo: RServer) -> None:
    flag = echo.folder / "not-ready"  # type: ignore[attr-defined]
    flag.touch()
    try:
        assert echo.client.get("/v2/health/live").status_code == 200
        assert "not ready" in error_of(echo.client.get("/v2/health/ready"), 503)
        error_of(echo.client.get("/v2/models/echo/ready"), 503)
        body = {"inputs": [{"name": "x", "datatype": "FP64", "shape": [1], "data": [1]}]}
        assert "not ready" in error_of(echo.infer(body), 503)
    finally:
        flag.unlink()
    assert echo.client.get("/v2/health/ready").status_code == 200


# Every datatype, with the values at the edges of what R holds exactly.
JSON_CASES: dict[str, list[Any]] = {
    "BOOL": [True, False, True],
    "UINT8": [0, 255, 7],
    "UINT16": [0, 65535, 7],
    "UINT32": [0, 4294967295, 2147483648],
    "UINT64": [0, 9007199254740993 - 1, 9223372036854774784],
    "INT8": [-128, 127, 0],
    "INT16": [-32768, 32767, 0],
    "INT32": [-2147483647, 2147483647, 0],
    "INT64": [-9223372036854774784, 9007199254740992, 2**62],
    "FP16": [0.5, -65504.0, "Infinity"],
    "FP32": [0.25, -3.0e38, "NaN"],
    "FP64": [0.1, 1 / 3, "-Infinity"],
    "BYTES": ["abc", "héllo ✓", ""],
}


@pytest.mark.parametrize("datatype", list(JSON_CASES))
def test_json_round_trip(echo: RServer, datatype: str) -> None:
    data = JSON_CASES[datatype]
    body = {"id": f"req-{datatype}",
            "inputs": [{"name": "x", "datatype": datatype, "shape": [3], "data": data}]}
    response = echo.infer(body)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["id"] == f"req-{datatype}"
    assert answer["model_name"] == "echo" and answer["model_version"] == "1"
    [output] = answer["outputs"]
    assert (output["name"], output["datatype"], output["shape"]) == ("x", datatype, [3])
    if datatype == "FP32":
        assert output["data"][:2] == [0.25, float(np.float32(-3.0e38))]
        assert output["data"][2] == "NaN"
    else:
        assert output["data"] == data


def test_json_decimals_become_the_datatypes_nearest_value(echo: RServer) -> None:
    body = {"inputs": [
        {"name": "a", "datatype": "FP32", "shape": [2, 2], "data": [[0.1, 2], [3, -0.0]]},
        {"name": "b", "datatype": "FP16", "shape": [2], "data": [0.1, 6e-8]},
        {"name": "c", "datatype": "INT16", "shape": [2], "data": [3.0, -4]},
    ]}
    decoded = v2_json.decode_response(echo.infer(body).content)
    arrays = {t.name: t.data for t in decoded.outputs}
    assert arrays["a"].dtype == np.float32
    np.testing.assert_array_equal(arrays["a"], np.array([[0.1, 2], [3, -0.0]], np.float32))
    np.testing.assert_array_equal(arrays["b"], np.array([0.1, 6e-8], np.float16))
    np.testing.assert_array_equal(arrays["c"], [3, -4])


BINARY_CASES: dict[str, np.ndarray] = {
    "BOOL": np.array([True, False]),
    "UINT8": np.array([0, 255], np.uint8),
    "UINT16": np.array([0, 65535], np.uint16),
    "UINT32": np.array([0, 2**32 - 1, 2**31], np.uint32),
    "UINT64": np.array([2**64 - 2048, 1, 2**63], np.uint64),
    "INT8": np.array([-128, 127], np.int8),
    "INT16": np.array([-32768, 32767], np.int16),
    "INT32": np.array([[-2147483647, 2147483647], [5, -6]], np.int32),
    "INT64": np.array([-(2**63), 2**62, -3, 2**53], np.int64),
    "FP16": np.array([0.5, -1.5, np.inf, 65504, 6e-8, -0.0, np.nan], np.float16),
    "FP32": np.array([[0.1, 3.0], [np.nan, -0.0]], np.float32),
    "FP64": np.array([[[0.1], [1 / 3]], [[-np.inf], [5e-324]]], np.float64),
    "BYTES": np.array([b"abc", "héllo".encode(), b"\xff\xfe not utf-8", b""], dtype=object),
}


def binary_call(server: RServer, tensors: list[Tensor], outputs: list[RequestedOutput] | None,
                parameters: dict[str, Any] | None = None) -> httpx.Response:
    """A request exactly as Shoal's process runtime sends it (every input binary)."""
    body, header_length = v2_json.encode_request(InferenceRequest(
        inputs=tensors, id="bin", parameters=parameters or {}, outputs=outputs,
    ))
    return server.client.post(
        f"/v2/models/{server.name}/infer", content=body,
        headers={"Inference-Header-Content-Length": str(header_length),
                 "Content-Type": "application/octet-stream"},
    )


def decode(response: httpx.Response) -> dict[str, np.ndarray]:
    assert response.status_code == 200, response.text
    length = response.headers.get("Inference-Header-Content-Length")
    decoded = v2_json.decode_response(response.content, None if length is None else int(length))
    assert decoded.id == "bin"
    return {t.name: t.data for t in decoded.outputs}


def assert_same(got: np.ndarray, want: np.ndarray) -> None:
    assert got.shape == want.shape
    if want.dtype == object:
        assert list(got.reshape(-1)) == list(want.reshape(-1))
    else:
        assert got.dtype == want.dtype
        np.testing.assert_array_equal(got, want)
        # -0.0 stays -0.0
        assert np.array_equal(np.signbit(got), np.signbit(want)) or want.dtype.kind != "f"


def test_binary_round_trip_every_datatype(echo: RServer) -> None:
    tensors = [Tensor(f"x{dt}", dt, a.shape, a) for dt, a in BINARY_CASES.items()]
    answer = decode(binary_call(echo, tensors, None, {"binary_data_output": True}))
    for datatype, array in BINARY_CASES.items():
        assert_same(answer[f"x{datatype}"], array)


def test_binary_inputs_json_outputs(echo: RServer) -> None:
    cases = {dt: a for dt, a in BINARY_CASES.items() if dt != "BYTES"}
    tensors = [Tensor(f"x{dt}", dt, a.shape, a) for dt, a in cases.items()]
    response = binary_call(echo, tensors, None)
    assert "Inference-Header-Content-Length" not in response.headers
    answer = decode(response)
    for datatype, array in cases.items():
        assert_same(answer[f"x{datatype}"], array)


def test_bytes_that_are_not_text_need_binary_outputs(echo: RServer) -> None:
    raw = np.array([b"\xff\xfe"], dtype=object)
    response = binary_call(echo, [Tensor("s", "BYTES", raw.shape, raw)], None)
    assert "not UTF-8 text; ask for it with binary_data" in error_of(response, 400)


def test_a_large_binary_request_is_read_without_copies(tmp_path: Path) -> None:
    """A ~40 MB FP64 binary request round-trips with R's heap growing by a small multiple of
    the body: 4.0x (the decoded input, its copy without attributes, the encoded output and the
    answer); it was 17x, the body copied and sliced through double index vectors. SHOAL_R_REPORT_MEMORY=1 makes the wrapper log the
    peak of R's vector heap above where each request began."""
    (tmp_path / "identity.R").write_text(textwrap.dedent(IDENTITY_R))
    server = RServer([str(WRAPPER), "identity.R"], tmp_path, "echo",
                     env={"SHOAL_R_REPORT_MEMORY": "1"})
    try:
        server.wait_live()
        values = np.random.default_rng(6).standard_normal(5_000_000)
        body, header_length = v2_json.encode_request(InferenceRequest(
            inputs=[Tensor("x", "FP64", values.shape, values)], id="bin",
            outputs=[RequestedOutput("x", {"binary_data": True})]))
        body = bytes(body)
        assert len(body) > 40_000_000
        response = server.client.post(
            "/v2/models/echo/infer", content=body, timeout=120,
            headers={"Inference-Header-Content-Length": str(header_length),
                     "Content-Type": "application/octet-stream"})
        got = decode(response)["x"]
        assert got.dtype == np.float64 and got.tobytes() == values.tobytes()
        deadline = time.monotonic() + 10
        while not (reports := [line for line in server.output if "request memory" in line]):
            assert time.monotonic() < deadline, "".join(server.output)
            time.sleep(0.05)
        match = re.search(r"peak \+(\d+) bytes for a (\d+)-byte answer", reports[-1])
        assert match, reports
        peak, answer = int(match[1]), int(match[2])
        assert answer == len(response.content)
        assert peak <= 4.5 * len(body), f"R's heap grew {peak / len(body):.2f}x the body"
    finally:
        server.stop()


def test_output_selection_and_per_output_binary(echo: RServer) -> None:
    a = np.array([1.5, 2.5])
    b = np.array([1, 2], np.int16)
    tensors = [Tensor("a", "FP64", a.shape, a), Tensor("b", "INT16", b.shape, b)]
    only_b = decode(binary_call(echo, tensors, [RequestedOutput("b", {"binary_data": True})]))
    assert list(only_b) == ["b"]
    assert_same(only_b["b"], b)
    response = binary_call(echo, tensors, [RequestedOutput("a", {"binary_data": False}),
                                           RequestedOutput("b", {"binary_data": True})])
    length = int(response.headers["Inference-Header-Content-Length"])
    header = json.loads(response.content[:length])
    assert header["outputs"][0]["data"] == [1.5, 2.5]
    assert header["outputs"][1]["parameters"] == {"binary_data_size": 4}
    answer = decode(response)
    assert_same(answer["a"], a)
    missing = echo.infer({"inputs": [{"name": "a", "datatype": "FP64", "shape": [1], "data": [1]}],
                          "outputs": [{"name": "nope"}]})
    assert "no output 'nope'" in error_of(missing, 400)


def test_tritonclient_http(echo: RServer) -> None:
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(f"127.0.0.1:{echo.port}")
    assert client.is_server_ready() and client.is_model_ready("echo")
    inputs = []
    for datatype in ("INT64", "FP16", "BYTES", "BOOL"):
        array = BINARY_CASES[datatype]
        tensor = httpclient.InferInput(f"x{datatype}", list(array.shape), datatype)
        tensor.set_data_from_numpy(array, binary_data=True)
        inputs.append(tensor)
    result = client.infer("echo", inputs, request_id="t1",
                          outputs=[httpclient.InferRequestedOutput(t.name(), binary_data=True)
                                   for t in inputs])
    assert result.get_response()["id"] == "t1"
    for datatype in ("INT64", "FP16", "BYTES", "BOOL"):
        assert_same(result.as_numpy(f"x{datatype}"), BINARY_CASES[datatype])


def test_how_tensors_arrive_in_r(echo: RServer) -> None:
    """Row-major tensors become R arrays with dim = shape; 64-bit integers become doubles."""
    body = {"inputs": [
        {"name": "describe", "datatype": "BOOL", "shape": [1], "data": [True]},
        {"name": "m", "datatype": "INT32", "shape": [2, 3], "data": [[1, 2, 3], [4, 5, 6]]},
        {"name": "t", "datatype": "UINT8", "shape": [2, 1, 2], "data": [1, 2, 3, 4]},
        {"name": "big", "datatype": "INT64", "shape": [1], "data": [2**60]},
        {"name": "u32", "datatype": "UINT32", "shape": [1], "data": [7]},
        {"name": "f", "datatype": "FP32", "shape": [1], "data": [0.5]},
        {"name": "s", "datatype": "BYTES", "shape": [2], "data": ["a", "b"]},
    ]}
    response = echo.infer(body)
    assert response.status_code == 200, response.text
    described = dict(line.split(":", 1) for line in response.json()["outputs"][0]["data"])
    assert described["describe"] == "logical::TRUE"
    # as.vector of an R array reads column-major: m[1,1], m[2,1], m[1,2], ...
    assert described["m"] == "integer:2x3:1,4,2,5,3,6"
    assert described["t"] == "integer:2x1x2:1,3,2,4"
    assert described["big"] == "double::1152921504606846976"
    assert described["u32"] == "double::7"
    assert described["f"] == "double::0.5"
    assert described["s"] == "character::a,b"


def test_request_parameters_reach_a_two_argument_function(echo: RServer) -> None:
    body = {"parameters": {"threshold": 0.5, "mode": "fast"},
            "inputs": [{"name": "params", "datatype": "BOOL", "shape": [1], "data": [True]}]}
    [output] = echo.infer(body).json()["outputs"]
    assert json.loads(output["data"][0]) == {"threshold": 0.5, "mode": "fast"}


@pytest.mark.parametrize(("tensor", "message"), [
    ({"datatype": "INT64", "data": [9007199254740993]}, "cannot be represented exactly"),
    ({"datatype": "FP64", "data": [9007199254740993]}, "cannot be represented exactly"),
    ({"datatype": "UINT64", "data": [2**63]}, "binary extension"),
    ({"datatype": "INT32", "data": [-(2**31)]}, "NA_integer_"),
    ({"datatype": "INT8", "data": [128]}, "out of range for INT8"),
    ({"datatype": "UINT16", "data": [-1]}, "out of range for UINT16"),
    ({"datatype": "INT32", "data": [1.5]}, "not an integer"),
    ({"datatype": "FP32", "data": [1e40]}, "out of range for FP32"),
    ({"datatype": "FP16", "data": [70000]}, "out of range for FP16"),
    ({"datatype": "FP32", "data": [16777217]}, "cannot be represented exactly as FP32"),
    ({"datatype": "BYTES", "data": ["a\u0000b"]}, "\\u0000"),
    ({"datatype": "FP32", "data": ["1.5"]}, "must be numbers"),
    ({"datatype": "INT64", "data": [True]}, "must be integers"),
    ({"datatype": "BOOL", "data": [1]}, "true or false"),
    ({"datatype": "BYTES", "data": [1]}, "must be strings"),
    ({"datatype": "FP64", "data": [None]}, "must be numbers"),
])
def test_values_r_cannot_take_exactly_are_400(echo: RServer, tensor: dict, message: str) -> None:
    body = {"inputs": [{"name": "x", "shape": [1], **tensor}]}
    assert message in error_of(echo.infer(body), 400)


@pytest.mark.parametrize(("datatype", "array", "message"), [
    ("INT64", np.array([2**53 + 1], np.int64), "cannot be represented exactly"),
    ("UINT64", np.array([2**64 - 1], np.uint64), "cannot be represented exactly"),
    ("INT32", np.array([-(2**31)], np.int32), "NA_integer_"),
    ("BYTES", np.array([b"a\x00b"], dtype=object), "NUL byte"),
])
def test_binary_values_r_cannot_hold_are_400(echo: RServer, datatype: str, array: np.ndarray,
                                             message: str) -> None:
    response = binary_call(echo, [Tensor("x", datatype, array.shape, array)], None)
    assert message in error_of(response, 400)


def post_raw(server: RServer, body: bytes, header_length: int | None = None) -> httpx.Response:
    headers = {}
    if header_length is not None:
        headers["Inference-Header-Content-Length"] = str(header_length)
    return server.client.post("/v2/models/echo/infer", content=body, headers=headers)


def test_bad_requests_are_400(echo: RServer) -> None:
    one = {"name": "x", "datatype": "FP64", "shape": [2], "data": [1, 2]}
    assert "not valid JSON" in error_of(post_raw(echo, b'{"inputs": ['), 400)
    assert "not valid JSON" in error_of(post_raw(echo, b""), 400)
    assert "must be a JSON object" in error_of(post_raw(echo, b"[1, 2]"), 400)
    assert "'inputs' must be a list" in error_of(echo.infer({"inputs": 3}), 400)
    count = echo.infer({"inputs": [{**one, "shape": [3]}]})
    assert "2 data elements do not match shape [3]" in error_of(count, 400)
    nested = echo.infer({"inputs": [{**one, "shape": [2, 2], "data": [[1, 2], [3]]}]})
    assert "3 data elements do not match shape [2, 2]" in error_of(nested, 400)
    fp8 = echo.infer({"inputs": [{**one, "datatype": "FP8"}]})
    assert "unknown datatype 'FP8'" in error_of(fp8, 400)
    assert "'shape'" in error_of(echo.infer({"inputs": [{**one, "shape": [-1]}]}), 400)
    assert "non-empty string 'name'" in error_of(echo.infer({"inputs": [{**one, "name": ""}]}), 400)
    no_data = {k: v for k, v in one.items() if k != "data"}
    assert "neither 'data'" in error_of(echo.infer({"inputs": [no_data]}), 400)
    assert "appears twice" in error_of(echo.infer({"inputs": [one, one]}), 400)
    assert "'id' must be a string" in error_of(echo.infer({"id": 5, "inputs": [one]}), 400)
    sized = {**no_data, "parameters": {"binary_data_size": 16}}
    assert "no Inference-Header-Content-Length" in error_of(echo.infer({"inputs": [sized]}), 400)
    header = json.dumps({"inputs": [sized]}).encode()
    assert "overruns" in error_of(post_raw(echo, header + b"\0" * 8, len(header)), 400)
    assert "no input claims" in error_of(post_raw(echo, header + b"\0" * 20, len(header)), 400)
    assert "but the body has only" in error_of(post_raw(echo, header, len(header) + 1), 400)
    assert "16 bytes of FP64 data do not match shape [3]" in error_of(
        post_raw(echo, json.dumps({"inputs": [{**sized, "shape": [3]}]}).encode() + b"\0" * 16,
                 len(json.dumps({"inputs": [{**sized, "shape": [3]}]}).encode())), 400)


def test_model_errors(echo: RServer) -> None:
    def call(name: str, datatype: str = "INT64", data: list | None = None) -> httpx.Response:
        return echo.infer({"inputs": [{"name": name, "datatype": datatype, "shape": [1],
                                       "data": data or [1]}]})

    # R's own errors for input of the wrong kind are the client's problem: 400, with R's
    # message; so is shoal_abort(message, 400).
    assert error_of(call("text", "BYTES", ["a"]), 400) == (
        "model 'echo' raised an error on this input: non-numeric argument to binary operator")
    assert error_of(call("refuse"), 400) == "the model cannot take 'refuse'"
    # Any other error is the model's failure: 500 (a plain stop(), a missing package, memory).
    assert error_of(call("explode"), 500) == "model 'echo' failed: the model cannot take 'explode'"
    assert error_of(call("nopackage"), 500) == (
        "model 'echo' failed: there is no package called ‘shoalnosuchpackage’")
    assert error_of(call("huge"), 500).startswith("model 'echo' failed: cannot allocate vector")
    # shoal_abort() picks the status.
    assert error_of(call("abort"), 500) == "the database is down"
    # Outputs that cannot be sent are the model's failure: 500.
    assert "function, which has no V2 datatype" in error_of(call("garbage"), 500)
    assert "0.5 is not an integer (INT32)" in error_of(call("fraction"), 500)
    # The wrapper keeps serving.
    assert call("x").status_code == 200


def test_unknown_model_route_and_method(echo: RServer) -> None:
    body = {"inputs": [{"name": "x", "datatype": "FP64", "shape": [1], "data": [1]}]}
    assert "unknown model 'other'" in error_of(echo.infer(body, model="other"), 404)
    assert "unknown model" in error_of(echo.client.get("/v2/models/other"), 404)
    assert "no version '2'" in error_of(
        echo.client.post("/v2/models/echo/versions/2/infer", json=body), 404)
    assert echo.client.post("/v2/models/echo/versions/1/infer", json=body).status_code == 200
    assert "no route" in error_of(echo.client.get("/v1/models/echo"), 404)
    assert "no route" in error_of(echo.client.get("/v2/models/echo/stats"), 404)
    assert "does not take GET" in error_of(echo.client.get("/v2/models/echo/infer"), 405)


# -- saved models -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example's model folder, built by its build.R into a fresh repository."""
    repository = tmp_path_factory.mktemp("r-repository")
    shutil.copytree(EXAMPLE / "models" / "r-glm", repository / "r-glm",
                    ignore=shutil.ignore_patterns("model.rds", "shoal.R"))
    built = subprocess.run(["Rscript", str(EXAMPLE / "build.R"), str(repository)],
                           check=False, capture_output=True, text=True, timeout=120)
    assert built.returncode == 0, built.stderr
    assert (repository / "r-glm" / "1" / "model.rds").is_file()
    assert (repository / "r-glm" / "1" / "shoal.R").read_text() == WRAPPER.read_text()
    return repository


ROWS = [[660, 3.67, 3], [800, 4.0, 1], [520, 2.93, 4], [380, 3.61, 2], [640.5, 3.19, 1]]


@pytest.fixture(scope="module")
def r_predictions(repository: Path) -> list[float]:
    """What R computes for ROWS with the example's own predict.R, without serving."""
    request = repository / "rows.json"
    request.write_text(json.dumps({"inputs": [{"name": "input", "datatype": "FP64",
                                               "shape": [len(ROWS), 3], "data": ROWS}]}))
    done = subprocess.run(
        ["Rscript", str(EXAMPLE / "predict.R"), str(repository / "r-glm" / "1" / "model.rds"),
         str(request)], check=False, capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 0, done.stderr
    predictions = json.loads(done.stdout)["predict"]
    assert len(predictions) == len(ROWS) and all(0 < p < 1 for p in predictions)
    return predictions


@pytest.fixture(scope="module")
def glm(repository: Path) -> Iterator[RServer]:
    """The saved glm served by the wrapper alone, as model.yaml's command runs it."""
    server = RServer(["shoal.R", "model.rds"], repository / "r-glm" / "1", "r-glm")
    try:
        yield server.wait_live()
    finally:
        server.stop()


def glm_body(rows: list[list[float]]) -> dict[str, Any]:
    return {"inputs": [{"name": "input", "datatype": "FP64", "shape": [len(rows), 3],
                        "data": rows}]}


def test_saved_glm_metadata_and_predictions(glm: RServer, r_predictions: list[float]) -> None:
    meta = glm.client.get("/v2/models/r-glm").json()
    assert meta["inputs"] == [{"name": "input", "datatype": "FP64", "shape": [-1, 3]}]
    assert meta["outputs"] == [{"name": "predict", "datatype": "FP64", "shape": [-1]}]
    [output] = glm.infer(glm_body(ROWS)).json()["outputs"]
    assert output["shape"] == [len(ROWS)] and output["data"] == r_predictions
    assert "input columns gre, gpa, rank" in "".join(glm.output)


def test_saved_glm_refuses_what_it_cannot_take(glm: RServer) -> None:
    # A rank the model never saw: R's own error, as a 400.
    error = error_of(glm.infer(glm_body([[660, 3.67, 5]])), 400)
    assert error == ("model 'r-glm' raised an error on this input: "
                     "factor factor(rank) has new level 5")
    wrong = {"inputs": [{"name": "input", "datatype": "FP64", "shape": [1, 2], "data": [1, 2]}]}
    assert "expects [-1, 3]" in error_of(glm.infer(wrong), 400)


BUILD_OTHERS_R = """
    set.seed(1)
    d <- data.frame(x = rnorm(30), colour = sample(c("red", "green", "blue"), 30, TRUE),
                    flag = rep(c(TRUE, FALSE), 15))
    d$y <- 2 * d$x + ifelse(d$colour == "red", 1, 0) + d$flag + rnorm(30, sd = 0.1)
    fit <- lm(y ~ x + colour + flag, data = d)
    saveRDS(fit, "mixed.rds")
    new <- data.frame(x = c(0.5, -1), colour = c("red", "blue"), flag = c(TRUE, FALSE))
    writeLines(sprintf("%.17g", predict(fit, newdata = new)), "mixed.txt")
    doubler <- function(inputs) list(doubled = inputs$x * 2)
    saveRDS(doubler, "function.rds")
"""


@pytest.fixture(scope="module")
def other_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("r-others")
    (folder / "build.R").write_text(textwrap.dedent(BUILD_OTHERS_R))
    built = subprocess.run(["Rscript", "build.R"], cwd=folder, check=False, capture_output=True,
                           text=True, timeout=60)
    assert built.returncode == 0, built.stderr
    return folder


def test_saved_lm_with_factor_and_logical_variables(other_models: Path) -> None:
    """A model with non-numeric variables takes one tensor per variable (BYTES for a factor)."""
    server = RServer([str(WRAPPER), "mixed.rds"], other_models, "mixed")
    try:
        server.wait_live()
        meta = server.client.get("/v2/models/mixed").json()
        assert meta["inputs"] == [{"name": "x", "datatype": "FP64", "shape": [-1]},
                                  {"name": "colour", "datatype": "BYTES", "shape": [-1]},
                                  {"name": "flag", "datatype": "BOOL", "shape": [-1]}]
        body = {"inputs": [
            {"name": "x", "datatype": "FP64", "shape": [2], "data": [0.5, -1]},
            {"name": "colour", "datatype": "BYTES", "shape": [2], "data": ["red", "blue"]},
            {"name": "flag", "datatype": "BOOL", "shape": [2], "data": [True, False]},
        ]}
        [output] = server.infer(body).json()["outputs"]
        expected = [float(v) for v in (other_models / "mixed.txt").read_text().split()]
        assert output["data"] == expected
        body["inputs"][1]["data"] = ["red", "purple"]
        assert "new level" in error_of(server.infer(body), 400)
    finally:
        server.stop()


def test_saved_function(other_models: Path) -> None:
    server = RServer([str(WRAPPER), "function.rds"], other_models, "doubler")
    try:
        server.wait_live()
        body = {"inputs": [{"name": "x", "datatype": "FP64", "shape": [2], "data": [1.5, -2]}]}
        [output] = server.infer(body).json()["outputs"]
        assert output == {"name": "doubled", "datatype": "FP64", "shape": [2], "data": [3, -4]}
    finally:
        server.stop()


def test_startup_failures_exit_with_the_reason(other_models: Path) -> None:
    for args, reason in ((["missing.rds"], "missing.rds does not exist"),
                         (["build.R"], "returned without serving")):
        done = subprocess.run(["Rscript", str(WRAPPER), *args], cwd=other_models,
                              check=False, capture_output=True, text=True, timeout=60,
                              env={**os.environ, "PORT": str(free_port())})
        assert done.returncode == 1 and reason in done.stderr, done.stderr


# -- through Shoal ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shoal(repository: Path) -> Iterator[Any]:
    from e2e.process import ShoalProcess

    process = ShoalProcess(repository)
    try:
        process.wait_ready(timeout=60)
        yield process
    finally:
        process.stop()


def wait_model_ready(shoal: Any, model: str = "r-glm", timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = httpx.get(f"{shoal.url}/v2/models/{model}/ready", timeout=5)
        if last.status_code == 200:
            return
        time.sleep(0.1)
    index = httpx.post(f"{shoal.url}/v2/repository/index", json={}, timeout=5).text
    raise AssertionError(f"model {model} never became ready: {last.text if last else ''} {index}")


def test_through_shoal_v2_rest(shoal: Any, r_predictions: list[float]) -> None:
    wait_model_ready(shoal)
    meta = httpx.get(f"{shoal.url}/v2/models/r-glm").json()
    assert meta["inputs"] == [{"name": "input", "datatype": "FP64", "shape": [-1, 3]}]
    response = httpx.post(f"{shoal.url}/v2/models/r-glm/infer", json={"id": "s1", **glm_body(ROWS)})
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["id"] == "s1"
    [output] = answer["outputs"]
    assert output["name"] == "predict" and output["data"] == r_predictions


def test_through_shoal_v2_grpc(shoal: Any, r_predictions: list[float]) -> None:
    import tritonclient.grpc as grpcclient

    wait_model_ready(shoal)
    client = grpcclient.InferenceServerClient(shoal.grpc_target)
    tensor = grpcclient.InferInput("input", [len(ROWS), 3], "FP64")
    tensor.set_data_from_numpy(np.array(ROWS, np.float64))
    result = client.infer("r-glm", [tensor])
    assert result.as_numpy("predict").tolist() == r_predictions


def test_through_shoal_v1(shoal: Any, r_predictions: list[float]) -> None:
    wait_model_ready(shoal)
    response = httpx.post(f"{shoal.url}/v1/models/r-glm:predict", json={"instances": ROWS})
    assert response.status_code == 200, response.text
    assert response.json() == {"predictions": r_predictions}


def test_through_shoal_an_input_the_model_cannot_take_is_400(shoal: Any) -> None:
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    wait_model_ready(shoal)
    expected = "factor factor(rank) has new level 5"
    rest = httpx.post(f"{shoal.url}/v2/models/r-glm/infer", json=glm_body([[660, 3.67, 5]]))
    assert rest.status_code == 400 and expected in rest.json()["error"], rest.text
    v1 = httpx.post(f"{shoal.url}/v1/models/r-glm:predict", json={"instances": [[660, 3.67, 5]]})
    assert v1.status_code == 400 and expected in v1.text, v1.text
    client = grpcclient.InferenceServerClient(shoal.grpc_target)
    tensor = grpcclient.InferInput("input", [1, 3], "FP64")
    tensor.set_data_from_numpy(np.array([[660, 3.67, 5]], np.float64))
    with pytest.raises(InferenceServerException) as caught:
        client.infer("r-glm", [tensor])
    assert "INVALID_ARGUMENT" in str(caught.value.status()) and expected in caught.value.message()
    # The model keeps serving after the error.
    ok = httpx.post(f"{shoal.url}/v2/models/r-glm/infer", json=glm_body(ROWS[:1]))
    assert ok.status_code == 200, ok.text
