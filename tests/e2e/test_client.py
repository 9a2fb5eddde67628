"""shoal.client against a real server: the sync and async clients over REST and gRPC, and the
`shoal models | metadata | predict | load | unload` commands."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from shoal.client import AsyncClient, Client, ShoalClientError

from .models import IDENTITY, custom, iris_rows, sklearn_iris, write
from .process import ShoalProcess

TOKEN = "s3cret"
FLOAT32 = """
    from shoal import Model, TensorSpec

    class Half(Model):
        def load(self):
            self.inputs = [TensorSpec("x", "FP32", (-1, 2))]

        def predict(self, request):
            x = request.as_numpy("x")
            assert x.dtype.name == "float32"
            return {"y": x * 2}
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ShoalProcess]:
    root = tmp_path_factory.mktemp("client")
    sklearn_iris(root / "iris" / "1", c=0.1)
    sklearn_iris(root / "iris" / "2")
    write(root / "iris" / "model.yaml", "version_policy: all\n")
    custom(root / "identity", IDENTITY)
    custom(root / "float32", FLOAT32)
    (root / "broken").mkdir()
    (root / "broken" / "model.joblib").write_bytes(b"not a pickle")
    process = ShoalProcess(root, "--admin-token", TOKEN)
    try:
        process.wait_ready()
        yield process
    finally:
        process.stop()


@pytest.fixture(params=["rest", "grpc"])
def client(request: pytest.FixtureRequest, server: ShoalProcess) -> Iterator[Client]:
    grpc = server.grpc_target if request.param == "grpc" else None
    with Client(server.url, grpc=grpc, token=TOKEN) as connected:
        yield connected


def expected(version: str, rows: np.ndarray) -> np.ndarray:
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    iris = load_iris()
    c = 0.1 if version == "1" else 1.0
    return LogisticRegression(max_iter=500, C=c).fit(iris.data, iris.target).predict(rows)


def test_models_lists_every_model_with_its_state_and_reason(client: Client) -> None:
    rows = {(m["name"], m["version"]): m for m in client.models()}
    assert rows["iris", "1"]["state"] == rows["iris", "2"]["state"] == "READY"
    assert rows["identity", "1"]["state"] == "READY"
    broken = [m for m in client.models() if m["name"] == "broken"][0]
    assert broken["state"] == "UNAVAILABLE" and broken["reason"]


def test_metadata_and_readiness(client: Client) -> None:
    meta = client.metadata("iris")
    assert meta["name"] == "iris" and meta["inputs"][0]["shape"] == [-1, 4]
    assert client.metadata("iris", "1")["versions"] == ["1"]
    assert client.live() and client.ready() and client.ready("iris") and client.ready("iris", "2")
    assert not client.ready("broken")


def test_infer_takes_numpy_and_gives_numpy(client: Client) -> None:
    rows = iris_rows(3)
    result = client.infer("iris", rows)  # one input, named after the model's
    assert result.model_name == "iris" and result.model_version == "2"
    np.testing.assert_array_equal(result.output, expected("2", rows))
    assert result.output.dtype == np.int64
    one_row = client.infer("iris", rows[0], version="1")  # a batch axis is added
    np.testing.assert_array_equal(one_row["predict"], expected("1", rows[:1]))
    probabilities = client.infer("iris", rows, outputs=["predict_proba"])
    assert list(probabilities.outputs) == ["predict_proba"] and probabilities.output.shape == (3, 3)
    named = client.infer("identity", {"a": np.arange(4, dtype=np.int32), "s": np.array(["x", "y"])})
    assert named["a"].dtype == np.int32 and named["a"].tolist() == [0, 1, 2, 3]
    assert named["s"].tolist() == ["x", "y"] and named.datatypes["s"] == "BYTES"


def test_errors_carry_the_servers_message_and_status(client: Client) -> None:
    with pytest.raises(ShoalClientError) as missing:
        client.infer("nope", [1.0])
    assert missing.value.status == 404 and "nope" in missing.value.message
    with pytest.raises(ShoalClientError) as bad:
        client.infer("iris", np.zeros((1, 2)))
    assert bad.value.status == 400 and "expects [-1, 4]" in bad.value.message


def test_load_and_unload_need_the_token(server: ShoalProcess, client: Client) -> None:
    grpc = client.target
    with Client(server.url, grpc=grpc) as anonymous:
        with pytest.raises(ShoalClientError) as refused:
            anonymous.unload("identity")
        assert refused.value.status == 401
    client.unload("identity")
    assert not client.ready("identity")
    client.load("identity")
    assert client.ready("identity")


def test_an_unreachable_server_is_status_0() -> None:
    with Client("http://127.0.0.1:9") as client, pytest.raises(ShoalClientError) as exc:
        client.models()
    assert exc.value.status == 0 and "cannot reach" in exc.value.message


@pytest.mark.parametrize("protocol", ["rest", "grpc"])
def test_the_async_client(server: ShoalProcess, protocol: str) -> None:
    async def scenario() -> None:
        grpc = server.grpc_target if protocol == "grpc" else None
        async with AsyncClient(server.url, grpc=grpc, token=TOKEN) as client:
            assert await client.ready("iris")
            rows = iris_rows(4)
            results = await asyncio.gather(*(client.infer("iris", rows) for _ in range(8)))
            for result in results:
                np.testing.assert_array_equal(result.output, expected("2", rows))
            assert {m["name"] for m in await client.models()} >= {"iris", "identity"}
            assert (await client.metadata("identity"))["name"] == "identity"
            with pytest.raises(ShoalClientError) as exc:
                await client.infer("iris", np.zeros((1, 2)))
            assert exc.value.status == 400

    asyncio.run(scenario())


# -- the commands ------------------------------------------------------------------------------


def shoal(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "shoal", *args], capture_output=True, text=True,
                          input=stdin, timeout=60)


def test_shoal_models_and_metadata(server: ShoalProcess) -> None:
    listed = shoal("models", "--url", server.url)
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert lines[0].split() == ["MODEL", "VERSION", "STATE", "REASON"]
    assert any(line.split()[:3] == ["iris", "2", "READY"] for line in lines)
    assert any(line.startswith("broken") and "UNAVAILABLE" in line for line in lines)
    as_json = json.loads(shoal("models", "--url", server.url, "--json").stdout)
    assert {"name": "iris", "version": "1", "state": "READY", "reason": ""} in as_json
    meta = shoal("metadata", "iris", "--url", server.url)
    assert meta.returncode == 0 and "input-0" in meta.stdout and "[-1, 4]" in meta.stdout
    over_grpc = shoal("metadata", "iris", "--grpc-address", server.grpc_target, "--json")
    assert json.loads(over_grpc.stdout)["inputs"][0]["shape"] == [-1, 4]


def test_shoal_predict_from_data_and_files(server: ShoalProcess, tmp_path: Path) -> None:
    rows = iris_rows(2)
    labels = expected("2", rows).tolist()
    inline = shoal("predict", "iris", "--data", json.dumps(rows.tolist()), "--url", server.url)
    assert inline.returncode == 0, inline.stderr
    assert "iris version 2" in inline.stdout and str(labels).replace(" ", "") in inline.stdout.replace(" ", "")
    np.save(tmp_path / "x.npy", rows)
    (tmp_path / "x.csv").write_text("a,b,c,d\n" + "\n".join(",".join(map(str, r)) for r in rows) + "\n")
    (tmp_path / "x.json").write_text(json.dumps(rows.tolist()))
    for name in ("x.npy", "x.csv", "x.json"):
        answer = shoal("predict", "iris", "--file", str(tmp_path / name), "--url", server.url, "--json")
        assert answer.returncode == 0, answer.stderr
        assert json.loads(answer.stdout)["outputs"][0]["data"] == labels
    stdin = shoal("predict", "iris", "--data", "-", "--url", server.url, "--json", stdin=json.dumps(rows.tolist()))
    assert json.loads(stdin.stdout)["outputs"][0]["data"] == labels
    grpc = shoal("predict", "iris", "--data", json.dumps(rows.tolist()), "--grpc-address", server.grpc_target,
                 "--output", "predict_proba")
    assert grpc.returncode == 0 and "predict_proba  FP64  [2, 3]" in grpc.stdout
    v1 = shoal("predict", "iris", "--v1", "--data", json.dumps(rows.tolist()), "--url", server.url)
    assert json.loads(v1.stdout) == {"predictions": labels}
    whole = {"inputs": [{"name": "x", "datatype": "FP64", "shape": [2, 4], "data": rows.ravel().tolist()}]}
    body = shoal("predict", "iris", "--data", json.dumps(whole), "--url", server.url, "--json")
    assert json.loads(body.stdout)["outputs"][0]["data"] == labels


def test_shoal_client_commands_fail_with_the_servers_message(server: ShoalProcess, tmp_path: Path) -> None:
    missing = shoal("predict", "nope", "--data", "[1]", "--url", server.url)
    assert missing.returncode == 1 and "error: model 'nope' is not served here (HTTP 404)" in missing.stderr
    bad = shoal("predict", "iris", "--data", "[1, 2]", "--url", server.url)
    assert bad.returncode == 1 and "HTTP 400" in bad.stderr
    usage = shoal("predict", "iris", "--url", server.url)
    assert usage.returncode == 2 and "--data or --file" in usage.stderr
    not_json = shoal("predict", "iris", "--data", "[1,", "--url", server.url)
    assert not_json.returncode == 2 and "not JSON" in not_json.stderr
    np.save(tmp_path / "evil.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    pickled = shoal("predict", "iris", "--file", str(tmp_path / "evil.npy"), "--url", server.url)
    assert pickled.returncode == 2 and "pickle" in pickled.stderr.lower()
    nobody = shoal("models", "--url", "http://127.0.0.1:9")
    assert nobody.returncode == 1 and "cannot reach" in nobody.stderr


def test_shoal_load_and_unload(server: ShoalProcess) -> None:
    refused = shoal("unload", "identity", "--url", server.url)
    assert refused.returncode == 1 and "HTTP 401" in refused.stderr
    done = shoal("unload", "identity", "--url", server.url, "--token", TOKEN)
    assert done.returncode == 0 and "identity: unloaded" in done.stdout
    back = shoal("load", "identity", "--grpc-address", server.grpc_target, "--token", TOKEN)
    assert back.returncode == 0, back.stderr
    assert Client(server.url).ready("identity")


def test_numbers_are_sent_as_the_model_declares_them(client: Client, server: ShoalProcess) -> None:
    """Lists (and JSON, CSV) are FP64 to numpy; an FP32 model gets FP32, not a 400 for 0.1."""
    result = client.infer("float32", [[0.1, 2.5]])
    assert result.output.dtype == np.float32
    np.testing.assert_allclose(result.output, [[0.2, 5.0]], rtol=1e-6)
    answer = shoal("predict", "float32", "--data", "[0.1, 2.5]", "--url", server.url)
    assert answer.returncode == 0, answer.stderr
    assert "y  FP32  [1, 2]" in answer.stdout


def test_an_answer_that_is_not_v2_is_a_clear_error(tmp_path: Path) -> None:
    """A URL that points at something else (a proxy's page) is an error message, not a traceback."""
    import http.server
    import threading

    class Page(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self._answer()

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("content-length", 0)))
            self._answer()

        def _answer(self) -> None:
            body = b"<html>" + b"x" * 5000 + b"</html>"
            self.send_response(200 if self.path.endswith("/infer") else 502)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    page = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Page)
    threading.Thread(target=page.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{page.server_address[1]}"
        with Client(url) as client, pytest.raises(ShoalClientError) as exc:
            client.infer("iris", [[1.0, 2.0]])
        assert "not a V2 response" in exc.value.message
        answer = shoal("predict", "iris", "--data", "[1]", "--url", url)
        assert answer.returncode == 1 and "Traceback" not in answer.stderr
        models = shoal("models", "--url", url)
        assert models.returncode == 1 and "HTTP 502" in models.stderr and len(models.stderr) < 700
    finally:
        page.shutdown()
