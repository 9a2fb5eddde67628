"""The Java model wrapper (wrappers/java/): alone, and served by Shoal through ``runtime: process``.

The wrapper and its example (examples/languages/java-logreg/) are built once per module into
a temporary repository, with a second Java model beside it: ``echo``, written here, which
answers every input as an output and so shows every V2 datatype crossing the wrapper's JSON
and binary codecs unchanged. Needs a JDK (javac) and Debian's Jackson jars; ``./dev test``
installs both.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psutil
import pytest

from e2e.process import ShoalProcess
from shoal.datatypes import NUMPY_DTYPES
from shoal.protocol import v2_json
from shoal.types import InferenceRequest, RequestedOutput, Tensor

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "languages" / "java-logreg"
BUILD_SH = ROOT / "wrappers" / "java" / "build.sh"

pytestmark = [
    pytest.mark.skipif(shutil.which("javac") is None,
                       reason="javac is missing: install a JDK (Debian: openjdk-17-jdk-headless; "
                              "./dev test installs it)"),
    pytest.mark.timeout(180),
]

ECHO_SOURCE = r"""
package echo;

import io.shoal.wrapper.*;
import java.util.LinkedHashMap;
import java.util.Map;

/** Answers every input as an output; the request's parameters say what else to do. */
public final class EchoModel implements Model {
    @Override
    public Map<String, Tensor> predict(Map<String, Tensor> inputs) {
        return inputs;
    }

    @Override
    public InferenceResponse infer(InferenceRequest request) throws Exception {
        Object mode = request.parameters().get("mode");
        if ("bad".equals(mode)) {
            throw new IllegalArgumentException("echo cannot take mode 'bad'");
        }
        if ("fail".equals(mode)) {
            throw new IllegalStateException("echo broke on purpose");
        }
        if ("bad-output".equals(mode)) {
            return new InferenceResponse(Map.of("x", new Tensor("x", DataType.FP64, new long[] {2}, new double[1])));
        }
        if ("sleep".equals(mode)) {
            Thread.sleep(300);
        }
        Map<String, Object> parameters = new LinkedHashMap<>(request.parameters());
        if (request.id() != null) {
            parameters.put("seen_id", request.id());
        }
        return new InferenceResponse(predict(request.inputs()), parameters);
    }

    @Override
    public void load() throws Exception {
        String delay = System.getenv("ECHO_LOAD_DELAY_MS");
        if (delay != null) {
            Thread.sleep(Long.parseLong(delay));
        }
        if (System.getenv("ECHO_LOAD_FAIL") != null) {
            throw new IllegalStateException("no weights here");
        }
    }

    @Override
    public String name() {
        return "echo";
    }
}
"""

# Served through ModelServer's own main, which takes the model class as its argument.
ECHO_YAML = """\
runtime: process
command: ["java", "-cp", "lib/*", "io.shoal.wrapper.ModelServer", "echo.EchoModel"]
ready_timeout: 60
"""


def load_example_build() -> Any:
    spec = importlib.util.spec_from_file_location("java_logreg_build", EXAMPLE / "build.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Built:
    def __init__(self, repository: Path, logreg: Path, echo: Path, example: Any) -> None:
        self.repository = repository
        self.logreg = logreg  # version folders: each the working directory of its program
        self.echo = echo
        self.example = example


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    """The example (trained, built and checked against scikit-learn by its build.py) and
    the echo model, in one repository."""
    repository = tmp_path_factory.mktemp("java-repository")
    example = load_example_build()
    logreg = example.build(repository)
    source = tmp_path_factory.mktemp("echo-src")
    (source / "echo").mkdir()
    (source / "echo" / "EchoModel.java").write_text(ECHO_SOURCE)
    echo = repository / "echo" / "1"
    echo.mkdir(parents=True)
    (repository / "echo" / "model.yaml").write_text(ECHO_YAML)
    subprocess.run([str(BUILD_SH), "--model", str(source), "--out", str(echo / "lib")],
                   check=True, capture_output=True, timeout=120)
    return Built(repository, logreg, echo, example)


class JavaServer:
    """A wrapped model's program as Shoal runs it (in its version folder, $PORT set), on a
    port it picks itself (PORT=0; the wrapper prints the one it got)."""

    def __init__(self, version_dir: Path, command: list[str], **env: str) -> None:
        self.proc = subprocess.Popen(
            command, cwd=version_dir, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
            env={**os.environ, "PORT": "0", **env},
        )
        self.lines: list[str] = []
        self.port: int | None = None
        self._port_known = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        if not self._port_known.wait(30) or self.port is None:
            self.stop()
            raise RuntimeError(f"the Java server did not start: {self.log()}")
        self.url = f"http://127.0.0.1:{self.port}"

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)
            found = re.search(r" on http://[\d.]+:(\d+) ", line)
            if found and self.port is None:
                self.port = int(found.group(1))
                self._port_known.set()
        self._port_known.set()

    def wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if httpx.get(f"{self.url}/v2/health/ready").status_code == 200:
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise RuntimeError(f"the Java server never became ready: {self.log()}")

    def log(self) -> str:
        return "".join(self.lines)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()
        finally:
            self._reader.join(5)


ECHO_COMMAND = ["java", "-cp", "lib/*", "io.shoal.wrapper.ModelServer", "echo.EchoModel"]
LOGREG_COMMAND = ["java", "-cp", "lib/*", "example.LogisticRegressionModel"]


@pytest.fixture(scope="module")
def echo(built: Built) -> Iterator[JavaServer]:
    server = JavaServer(built.echo, ECHO_COMMAND, SHOAL_MODEL_NAME="echo-test", SHOAL_MODEL_VERSION="3")
    try:
        server.wait_ready()
        yield server
    finally:
        assert server.stop() in (0, 143), server.log()


@pytest.fixture(scope="module")
def logreg(built: Built) -> Iterator[JavaServer]:
    server = JavaServer(built.logreg, LOGREG_COMMAND, WEIGHTS="weights.json")
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


def infer(server: JavaServer, body: Any, model: str = "echo-test", **kwargs: Any) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.post(f"{server.url}/v2/models/{model}/infer", content=content, timeout=30, **kwargs)


# -- the wrapper alone -------------------------------------------------------------------


def test_health_and_metadata(echo: JavaServer) -> None:
    assert httpx.get(f"{echo.url}/v2/health/live").json() == {"live": True}
    assert httpx.get(f"{echo.url}/v2/health/ready").json() == {"ready": True}
    assert "binary_tensor_data" in httpx.get(f"{echo.url}/v2").json()["extensions"]
    metadata = httpx.get(f"{echo.url}/v2/models/echo-test").json()
    assert metadata == {"name": "echo-test", "versions": ["3"], "platform": "java",
                        "inputs": [], "outputs": []}
    assert httpx.get(f"{echo.url}/v2/models/echo-test/versions/3").json() == metadata
    assert httpx.get(f"{echo.url}/v2/models/echo-test/ready").json() == {"name": "echo-test", "ready": True}
    assert httpx.get(f"{echo.url}/v2/models/echo-test/versions/3/ready").status_code == 200


def test_example_metadata(logreg: JavaServer) -> None:
    # Without $SHOAL_MODEL_NAME the model's own name; inputs and outputs as it declares them.
    metadata = httpx.get(f"{logreg.url}/v2/models/java-logreg").json()
    assert metadata == {
        "name": "java-logreg", "versions": ["1"], "platform": "java",
        "inputs": [{"name": "features", "datatype": "FP64", "shape": [-1, 4]}],
        "outputs": [{"name": "label", "datatype": "INT64", "shape": [-1]},
                    {"name": "probabilities", "datatype": "FP64", "shape": [-1, 3]}],
    }


#: Each datatype at its edges, as JSON sends it (NaN and the infinities as strings).
JSON_TENSORS = [
    ("BOOL", [2], [True, False]),
    ("UINT8", [3], [0, 1, 255]),
    ("UINT16", [2], [0, 65535]),
    ("UINT32", [2], [0, 4294967295]),
    ("UINT64", [3], [0, 9223372036854775808, 18446744073709551615]),
    ("INT8", [2], [-128, 127]),
    ("INT16", [2], [-32768, 32767]),
    ("INT32", [2], [-2147483648, 2147483647]),
    ("INT64", [2], [-9223372036854775808, 9223372036854775807]),
    ("FP16", [2, 2], [[0.5, -2.0], [65504.0, "-Infinity"]]),
    ("FP32", [4], [1.5, 3.4028234663852886e38, 1e-45, "Infinity"]),
    ("FP64", [2, 3], [0.1, -1e-300, 1.7976931348623157e308, "NaN", "Infinity", 2.5]),
    ("BYTES", [3], ["text", "é ü 中", ""]),
]


def flat(value: Any) -> list[Any]:
    return [x for item in value for x in flat(item)] if isinstance(value, list) else [value]


def as_sent(values: list[Any], datatype: str) -> list[Any]:
    """JSON values as the datatype holds them: FP32 and FP16 come back as the shortest
    decimal of the float, not of the double the test wrote."""
    if datatype not in ("FP16", "FP32"):
        return values
    numbers = [v2_json.NONFINITE.get(v, v) if isinstance(v, str) else v for v in values]
    return np.array(numbers, dtype=NUMPY_DTYPES[datatype]).tolist()


def test_every_datatype_round_trips_as_json(echo: JavaServer) -> None:
    inputs = [{"name": f"t{i}", "datatype": dt, "shape": shape, "data": data}
              for i, (dt, shape, data) in enumerate(JSON_TENSORS)]
    response = infer(echo, {"inputs": inputs})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert body["model_name"] == "echo-test" and body["model_version"] == "3"
    assert [o["name"] for o in body["outputs"]] == [i["name"] for i in inputs]
    for sent, got in zip(inputs, body["outputs"]):
        assert got["datatype"] == sent["datatype"] and got["shape"] == sent["shape"]
        assert as_sent(got["data"], got["datatype"]) == as_sent(flat(sent["data"]), sent["datatype"])


def random_tensors(rng: np.random.Generator) -> dict[str, tuple[str, np.ndarray]]:
    arrays: dict[str, tuple[str, np.ndarray]] = {"bool": ("BOOL", rng.random((2, 3)) > 0.5)}
    for dt, np_type in [("UINT8", np.uint8), ("UINT16", np.uint16), ("UINT32", np.uint32),
                        ("UINT64", np.uint64), ("INT8", np.int8), ("INT16", np.int16),
                        ("INT32", np.int32), ("INT64", np.int64)]:
        info = np.iinfo(np_type)
        values = rng.integers(info.min, info.max, size=(3, 2), dtype=np_type, endpoint=True)
        values.flat[0], values.flat[1] = info.min, info.max
        arrays[dt.lower()] = (dt, values)
    for dt, np_type in [("FP16", np.float16), ("FP32", np.float32), ("FP64", np.float64)]:
        values = rng.standard_normal((2, 4)).astype(np_type)
        values.flat[0], values.flat[1], values.flat[2] = np.nan, -np.inf, np.finfo(np_type).tiny / 4
        arrays[dt.lower()] = (dt, values)
    raw = np.empty(4, dtype=object)
    raw[:] = [b"", b"\x00\xff\xfe binary", "é".encode(), bytes(range(256))]
    arrays["bytes"] = ("BYTES", raw.reshape(2, 2))
    arrays["empty"] = ("FP32", np.zeros((0, 3), dtype=np.float32))
    return arrays


def same(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal element for element, NaNs included (floats compared by their bits)."""
    if a.dtype.kind == "f":
        return a.shape == b.shape and a.dtype == b.dtype and a.tobytes() == b.tobytes()
    return a.shape == b.shape and a.tolist() == b.tolist()


def test_every_datatype_round_trips_binary(echo: JavaServer) -> None:
    """Shoal's own V2 client codec (what runtime: process sends) both ways."""
    arrays = random_tensors(np.random.default_rng(7))
    request = InferenceRequest(
        inputs=[Tensor(name, dt, a.shape, a) for name, (dt, a) in arrays.items()],
        id="binary-1", parameters={"binary_data_output": True},
    )
    body, header_length = v2_json.encode_request(request)
    response = infer(echo, body, headers={"Inference-Header-Content-Length": str(header_length)})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/octet-stream"
    decoded = v2_json.decode_response(
        response.content, int(response.headers["inference-header-content-length"])
    )
    assert decoded.id == "binary-1" and decoded.model_name == "echo-test"
    assert decoded.parameters == {"binary_data_output": True, "seen_id": "binary-1"}
    got = {t.name: t for t in decoded.outputs}
    assert list(got) == list(arrays)
    for name, (dt, array) in arrays.items():
        assert got[name].datatype == dt and got[name].shape == array.shape
        assert same(np.asarray(got[name].data), array), name


def test_outputs_parameters_and_id(echo: JavaServer) -> None:
    body = {
        "id": "req-9",
        "parameters": {"note": {"nested": [1, 2.5, "x", None]}, "flag": True},
        "inputs": [
            {"name": "a", "datatype": "INT32", "shape": [2], "data": [1, 2], "parameters": {"unit": "cm"}},
            {"name": "b", "datatype": "FP32", "shape": [1], "data": [0.5]},
            {"name": "c", "datatype": "BYTES", "shape": [1], "data": ["hello"]},
        ],
        # Only c then a, in that order: a in the binary section, c as JSON.
        "outputs": [{"name": "c"}, {"name": "a", "parameters": {"binary_data": True}}],
    }
    response = infer(echo, body)
    assert response.status_code == 200, response.text
    length = int(response.headers["inference-header-content-length"])
    header = json.loads(response.content[:length])
    assert header["id"] == "req-9"
    assert header["parameters"] == {**body["parameters"], "seen_id": "req-9"}
    assert [o["name"] for o in header["outputs"]] == ["c", "a"]
    assert header["outputs"][0]["data"] == ["hello"]
    assert header["outputs"][1]["parameters"] == {"unit": "cm", "binary_data_size": 8}
    assert np.frombuffer(response.content[length:], "<i4").tolist() == [1, 2]

    missing = infer(echo, {**body, "outputs": [{"name": "zzz"}]})
    assert missing.status_code == 400
    assert missing.json() == {"error": "model 'echo-test' has no output 'zzz'; it produced [a, b, c]"}


def test_json_numbers_round_as_numpy_does(echo: JavaServer) -> None:
    """Decimals into FP16 and FP32: the nearest value, ties to even (the wrapper's own FP16
    conversion, as Java 17 has none), compared bit for bit with numpy's."""
    rng = np.random.default_rng(3)
    values = np.concatenate([
        rng.standard_normal(300) * 10.0 ** rng.integers(-9, 5, 300),  # subnormal to 65504
        np.arange(2049, 2060) + 0.5, [65519.99, 2.0**-25, 2.0**-24 * 1.5, -0.0, 1 / 3],
    ])
    values = values[np.abs(values) < 65504]
    response = infer(echo, {
        "inputs": [{"name": dt, "datatype": dt, "shape": [len(values)], "data": values.tolist()}
                   for dt in ("FP16", "FP32")],
        "parameters": {"binary_data_output": True},
    })
    assert response.status_code == 200, response.text
    decoded = v2_json.decode_response(
        response.content, int(response.headers["inference-header-content-length"])
    )
    got = {t.name: np.asarray(t.data) for t in decoded.outputs}
    assert got["FP16"].tobytes() == values.astype(np.float16).tobytes()
    assert got["FP32"].tobytes() == values.astype(np.float32).tobytes()


def tensor(datatype: str, shape: list[int], data: Any, name: str = "x") -> dict[str, Any]:
    return {"inputs": [{"name": name, "datatype": datatype, "shape": shape, "data": data}]}


@pytest.mark.parametrize(("body", "message"), [
    (b'{"inputs": [', "request body is not valid JSON"),
    (b'{"inputs": []} trailing', "request body is not valid JSON"),
    (b"", "request body is not valid JSON"),
    (b"[1, 2]", "request body must be a JSON object"),
    (b'{"inputs": 3}', "'inputs' must be a list of tensors"),
    (tensor("FP32", [2, 2], [1, 2, 3]), "input 'x': 3 data elements do not match shape [2, 2] (4 elements)"),
    (tensor("FLOAT", [1], [1]), "unknown datatype 'FLOAT'"),
    (tensor("BOOL", [2], [1, 0]), "input 'x': BOOL data must be true or false"),
    (tensor("INT32", [1], [1.5]), "input 'x': INT32 data must be integers"),
    (tensor("INT8", [1], [128]), "input 'x': a value is out of range for INT8 (-128 to 127)"),
    (tensor("UINT64", [1], [-1]), "out of range for UINT64"),
    (tensor("FP32", [1], [1e39]), "is out of range for FP32"),
    (tensor("FP64", [1], [9007199254740993]), "9007199254740993 cannot be represented exactly as FP64"),
    (tensor("FP64", [1], ["one"]), "FP64 data must be numbers"),
    (tensor("BYTES", [1], [1]), "BYTES elements must be strings in JSON"),
    (tensor("FP32", [-1], [1]), "'shape' must be a list of non-negative integers"),
    ({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1]}]},
     "input 'x' has neither 'data' nor parameters.binary_data_size"),
    ({"inputs": [{"name": "x", "datatype": "INT8", "shape": [1], "data": [1]}] * 2},
     "input 'x' appears more than once"),
    ({"id": 5, "inputs": []}, "'id' must be a string"),
])
def test_bad_input_is_400(echo: JavaServer, body: Any, message: str) -> None:
    response = infer(echo, body)
    assert response.status_code == 400, response.text
    assert response.headers["content-type"] == "application/json"
    assert message in response.json()["error"]


def test_bad_binary_input_is_400(echo: JavaServer) -> None:
    header = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [2],
                                     "parameters": {"binary_data_size": 8}}]}).encode()
    cases = [
        (header + b"\0" * 4, len(header), "binary_data_size 8 overruns the 4 bytes of binary data left"),
        (header + b"\0" * 12, len(header), "4 bytes of binary data that no input claims"),
        (header + b"\0" * 8, len(header) + 100, "Inference-Header-Content-Length is"),
        (header + b"\0" * 8, "ten", "Inference-Header-Content-Length must be a non-negative integer"),
    ]
    for body, length, message in cases:
        response = infer(echo, body, headers={"Inference-Header-Content-Length": str(length)})
        assert response.status_code == 400 and message in response.json()["error"], response.text
    bytes_header = json.dumps({"inputs": [{"name": "s", "datatype": "BYTES", "shape": [1],
                                           "parameters": {"binary_data_size": 6}}]}).encode()
    response = infer(echo, bytes_header + b"\x09\0\0\0ab",
                     headers={"Inference-Header-Content-Length": str(len(bytes_header))})
    assert response.status_code == 400
    assert "BYTES element 0 claims 9 bytes but only 2 remain" in response.json()["error"]


def test_huge_declared_shape_is_400_not_out_of_memory(built: Built) -> None:
    """A tiny body declaring a huge shape is refused by comparing the shape with the data
    present, before anything sized by the shape is allocated; on a small heap (as any machine
    has for a big enough shape) sizing from the shape first was a 500 OutOfMemoryError."""
    server = JavaServer(built.echo, ["java", "-Xmx64m", *ECHO_COMMAND[1:]], SHOAL_MODEL_NAME="echo-test")
    try:
        server.wait_ready()
        for shape in ([2_000_000_000], [50_000, 40_000], [20_000_000]):
            for data in ([1.0, 2.0], [[1.0], [2.0]]):
                response = infer(server, tensor("FP64", shape, data, name="big"))
                assert response.status_code == 400, (shape, response.text)
                assert ("input 'big': 2 data elements do not match shape "
                        f"{shape} ") in response.json()["error"]
        for datatype, size in (("FP32", 8), ("BYTES", 8), ("BOOL", 2)):
            header = json.dumps({"inputs": [{"name": "big", "datatype": datatype, "shape": [2_000_000_000],
                                             "parameters": {"binary_data_size": size}}]}).encode()
            response = infer(server, header + b"\1\0\0\0x\0\0\0"[:size],
                             headers={"Inference-Header-Content-Length": str(len(header))})
            assert response.status_code == 400, (datatype, response.text)
            assert "input 'big'" in response.json()["error"]
        ok = infer(server, tensor("FP64", [2], [1.0, 2.0]))  # and it goes on serving
        assert ok.status_code == 200 and ok.json()["outputs"][0]["data"] == [1.0, 2.0]
        assert "OutOfMemoryError" not in server.log()
    finally:
        server.stop()


def test_model_errors(echo: JavaServer) -> None:
    body = tensor("INT8", [1], [1])
    bad = infer(echo, {**body, "parameters": {"mode": "bad"}})
    assert bad.status_code == 400 and bad.json() == {"error": "echo cannot take mode 'bad'"}
    failed = infer(echo, {**body, "parameters": {"mode": "fail"}})
    assert failed.status_code == 500
    assert failed.json() == {"error": "model 'echo-test' failed: IllegalStateException: echo broke on purpose"}
    broken = infer(echo, {**body, "parameters": {"mode": "bad-output"}})
    assert broken.status_code == 500 and "has 1 elements but its shape [2] holds 2" in broken.json()["error"]
    assert infer(echo, body).status_code == 200  # and it goes on serving


def test_routes(echo: JavaServer) -> None:
    body = tensor("INT8", [1], [1])
    unknown = infer(echo, body, model="nope")
    assert unknown.status_code == 404
    assert unknown.json() == {"error": "model 'nope' is not served here (this server serves 'echo-test')"}
    version = httpx.post(f"{echo.url}/v2/models/echo-test/versions/9/infer", json=body)
    assert version.status_code == 404 and "has no version '9'" in version.json()["error"]
    assert httpx.post(f"{echo.url}/v2/models/echo-test/versions/3/infer", json=body).status_code == 200
    route = httpx.get(f"{echo.url}/v3/whatever")
    assert route.status_code == 404 and route.json() == {"error": "Not Found: GET /v3/whatever"}
    head = httpx.head(f"{echo.url}/v2/health/live")
    assert head.status_code == 200 and head.content == b""
    method = httpx.get(f"{echo.url}/v2/models/echo-test/infer")
    assert method.status_code == 405 and method.headers["allow"] == "POST"
    assert "error" in method.json()


def test_requests_run_concurrently(echo: JavaServer) -> None:
    body = {**tensor("INT8", [1], [1]), "parameters": {"mode": "sleep"}}
    started = time.monotonic()
    with ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(lambda _: infer(echo, body).status_code, range(8)))
    elapsed = time.monotonic() - started
    assert statuses == [200] * 8
    assert elapsed < 8 * 0.3 / 2, f"8 requests of 0.3 s took {elapsed:.2f} s: not concurrent"


def test_not_ready_until_loaded_and_load_failure(built: Built) -> None:
    slow = JavaServer(built.echo, ECHO_COMMAND, SHOAL_MODEL_NAME="slow", ECHO_LOAD_DELAY_MS="1500")
    try:
        assert httpx.get(f"{slow.url}/v2/health/live").status_code == 200
        ready = httpx.get(f"{slow.url}/v2/health/ready")
        assert ready.status_code == 503 and ready.json() == {"error": "model 'slow' is loading"}
        loading = httpx.post(f"{slow.url}/v2/models/slow/infer", json=tensor("INT8", [1], [1]))
        assert loading.status_code == 503
        slow.wait_ready()
        assert httpx.post(f"{slow.url}/v2/models/slow/infer", json=tensor("INT8", [1], [1])).status_code == 200
    finally:
        slow.stop()

    broken = JavaServer(built.echo, ECHO_COMMAND, ECHO_LOAD_FAIL="1")
    assert broken.proc.wait(30) == 1
    broken.stop()
    assert broken.lines[-1].strip() == (
        "model 'echo' failed to load: java.lang.IllegalStateException: no weights here"
    )


def numpy_logreg(version_dir: Path, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    weights = json.loads((version_dir / "weights.json").read_text())
    z = rows @ np.array(weights["coef"]).T + np.array(weights["intercept"])
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    return np.array(weights["classes"])[p.argmax(axis=1)], p


REQUEST = json.loads((EXAMPLE / "request.json").read_text())
ROWS = np.array(REQUEST["inputs"][0]["data"], dtype=np.float64)


@pytest.fixture(scope="module")
def java_answer(built: Built) -> dict[str, Any]:
    """What the Java model itself computes for the example request (``--predict``)."""
    return built.example.java_predict(built.logreg, EXAMPLE / "request.json")


def outputs_of(body: dict[str, Any]) -> dict[str, list[Any]]:
    return {o["name"]: o["data"] for o in body["outputs"]}


def test_example_served_alone_matches_predict(logreg: JavaServer, built: Built,
                                              java_answer: dict[str, Any]) -> None:
    response = infer(logreg, REQUEST, model="java-logreg")
    assert response.status_code == 200, response.text
    assert response.json() == java_answer
    labels, probabilities = numpy_logreg(built.logreg, ROWS)
    answer = outputs_of(java_answer)
    assert answer["label"] == labels.tolist()
    assert np.allclose(answer["probabilities"], probabilities.ravel(), rtol=0, atol=1e-12)


def test_example_refuses_what_it_cannot_take(logreg: JavaServer) -> None:
    nan = infer(logreg, tensor("FP64", [1, 4], [1, "NaN", 0, 0]), model="java-logreg")
    assert nan.status_code == 400
    assert nan.json() == {"error": "features must be finite numbers: row 0, feature 'x1' is NaN"}
    shape = infer(logreg, tensor("FP64", [1, 3], [1, 2, 3]), model="java-logreg")
    assert shape.status_code == 400
    assert shape.json()["error"] == ("input 'x' (its input 'features') has shape [1, 3] but model "
                                     "'java-logreg' expects [-1, 4] (-1 is any size)")
    text = infer(logreg, tensor("BYTES", [1, 4], ["a", "b", "c", "d"]), model="java-logreg")
    assert text.status_code == 400 and "is BYTES" in text.json()["error"]
    # Integers the declared FP64 holds exactly are converted, as Shoal converts them.
    ints = infer(logreg, tensor("INT64", [1, 4], [1, 0, -1, 2]), model="java-logreg")
    floats = infer(logreg, tensor("FP64", [1, 4], [1.0, 0.0, -1.0, 2.0]), model="java-logreg")
    assert ints.status_code == 200 and ints.json() == floats.json()


def test_predict_reports_errors(built: Built) -> None:
    with pytest.raises(RuntimeError, match="features must be finite numbers"):
        built.example.java_predict(built.logreg, tensor("FP64", [1, 4], [0, 0, "Infinity", 0]))


# -- through Shoal -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def shoal(built: Built) -> Iterator[ShoalProcess]:
    process = ShoalProcess(built.repository)
    children: list[psutil.Process] = []
    try:
        process.wait_ready(timeout=90)
        children = psutil.Process(process.proc.pid).children(recursive=True)
        yield process
    finally:
        process.stop()
        # Shoal stops the Java programs with itself.
        _, alive = psutil.wait_procs(children, timeout=10)
        assert not alive, f"left running after Shoal stopped: {alive}"


def test_shoal_serves_the_java_metadata(shoal: ShoalProcess) -> None:
    java = [p for p in psutil.Process(shoal.proc.pid).children(recursive=True) if p.name() == "java"]
    assert len(java) == 2  # java-logreg and echo
    metadata = httpx.get(f"{shoal.url}/v2/models/java-logreg").json()
    assert metadata["inputs"] == [{"name": "features", "datatype": "FP64", "shape": [-1, 4]}]
    assert [o["name"] for o in metadata["outputs"]] == ["label", "probabilities"]


def test_shoal_v2_rest_matches_java(shoal: ShoalProcess, java_answer: dict[str, Any]) -> None:
    response = httpx.post(f"{shoal.url}/v2/models/java-logreg/infer", json=REQUEST, timeout=30)
    assert response.status_code == 200, response.text
    assert response.json()["id"] == REQUEST["id"]
    assert outputs_of(response.json()) == outputs_of(java_answer)


def test_shoal_v2_grpc_matches_java(shoal: ShoalProcess, java_answer: dict[str, Any]) -> None:
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(shoal.grpc_target)
    features = grpcclient.InferInput("features", list(ROWS.shape), "FP64")
    features.set_data_from_numpy(ROWS)
    result = client.infer("java-logreg", [features])
    answer = outputs_of(java_answer)
    assert result.as_numpy("label").tolist() == answer["label"]
    assert result.as_numpy("probabilities").ravel().tolist() == answer["probabilities"]


def test_shoal_v1_matches_java(shoal: ShoalProcess, java_answer: dict[str, Any]) -> None:
    response = httpx.post(f"{shoal.url}/v1/models/java-logreg:predict",
                          json={"instances": ROWS.tolist()}, timeout=30)
    assert response.status_code == 200, response.text
    answer = outputs_of(java_answer)
    k = len(answer["probabilities"]) // len(ROWS)
    assert response.json()["predictions"] == [
        {"label": answer["label"][i], "probabilities": answer["probabilities"][i * k:(i + 1) * k]}
        for i in range(len(ROWS))
    ]


def test_shoal_passes_on_the_wrappers_400(shoal: ShoalProcess) -> None:
    response = httpx.post(f"{shoal.url}/v2/models/java-logreg/infer",
                          json=tensor("FP64", [1, 4], [1, 2, "NaN", 0]), timeout=30)
    assert response.status_code == 400
    assert "features must be finite numbers: row 0, feature 'x2' is NaN" in response.json()["error"]


def test_every_datatype_through_shoal(shoal: ShoalProcess) -> None:
    """Shoal -> the wrapper -> back, for every datatype (binary both ways between them)."""
    arrays = random_tensors(np.random.default_rng(11))
    del arrays["empty"]  # Shoal gives a zero-element tensor no datatype-specific path
    request = InferenceRequest(
        inputs=[Tensor(name, dt, a.shape, a) for name, (dt, a) in arrays.items()],
        parameters={"binary_data_output": True},
        outputs=[RequestedOutput(name) for name in reversed(list(arrays))],
    )
    body, header_length = v2_json.encode_request(request)
    response = httpx.post(f"{shoal.url}/v2/models/echo/infer", content=body, timeout=30,
                          headers={"Inference-Header-Content-Length": str(header_length)})
    assert response.status_code == 200, response.text
    decoded = v2_json.decode_response(
        response.content, int(response.headers["inference-header-content-length"])
    )
    assert [t.name for t in decoded.outputs] == list(reversed(list(arrays)))
    got = {t.name: t for t in decoded.outputs}
    for name, (dt, array) in arrays.items():
        assert got[name].datatype == dt
        assert same(np.asarray(got[name].data), array), name
