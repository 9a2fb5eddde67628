"""The triton runtime end to end: a Shoal server whose models live on another V2 server.

A second real Shoal server plays the remote Triton; the front server forwards to it over
HTTP (binary extension) and gRPC (raw contents), and is called with every protocol.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest

from shoal.protocol.grpc_gen import grpc_service_pb2 as pb
from shoal.protocol.grpc_gen import grpc_service_pb2_grpc as pb_grpc

from .models import custom, iris_rows, sklearn_iris, write
from .process import ShoalProcess

PARAMS = """
    import json
    import numpy as np
    from shoal import Model

    class Params(Model):
        def predict(self, request):
            seen = json.dumps(request.parameters, sort_keys=True).encode()
            return {"parameters": np.array([seen], dtype=object),
                    "text": request.as_numpy("text")}
"""

PROTOCOLS = ["http", "grpc"]


def serve(root: Path, *args: str) -> ShoalProcess:
    process = ShoalProcess(root, *args)
    try:
        process.wait_ready()
    except BaseException:
        process.stop()
        raise
    return process


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def fixed_ports() -> tuple[str, ...]:
    """For the remote that a test kills and starts again where it was."""
    return ("--http-port", str(closed_port()), "--grpc-port", str(closed_port()))


def remote_model(root: Path, name: str, url: str, **parameters: object) -> None:
    write(root / name / "model.yaml", json.dumps({"url": url, "parameters": parameters}))


def address(process: ShoalProcess, protocol: str) -> str:
    if protocol == "http":
        return process.url
    return f"grpc://{process.grpc_target}"


@pytest.fixture(scope="module")
def remotes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple]:
    """The remote that stays up, one that a test kills, and how to start that one again."""
    root = tmp_path_factory.mktemp("remote")
    sklearn_iris(root / "iris")
    custom(root / "params", PARAMS)
    doomed_root = tmp_path_factory.mktemp("doomed")
    sklearn_iris(doomed_root / "iris")
    doomed_args = (doomed_root, *fixed_ports())
    with ThreadPoolExecutor(2) as pool:  # start both at once: startup is mostly imports
        started = [pool.submit(serve, root), pool.submit(serve, *doomed_args)]
    try:
        remote, doomed = (future.result() for future in started)
        yield remote, doomed, doomed_args
    finally:
        for future in started:
            if future.exception() is None:
                future.result().stop()


@pytest.fixture(scope="module")
def remote(remotes: tuple) -> ShoalProcess:
    return remotes[0]


@pytest.fixture(scope="module")
def front(
    remotes: tuple, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ShoalProcess]:
    remote, doomed, _ = remotes
    root = tmp_path_factory.mktemp("front")
    for protocol in PROTOCOLS:
        remote_model(root, f"iris-{protocol}", address(remote, protocol), model_name="iris")
        remote_model(root, f"params-{protocol}", address(remote, protocol), model_name="params")
        remote_model(root, f"doomed-{protocol}", address(doomed, protocol), model_name="iris",
                     retries=1, timeout=5)
    remote_model(root, "missing", remote.url, model_name="nope")
    remote_model(root, "nowhere", f"http://127.0.0.1:{closed_port()}", retries=0)
    sklearn_iris(root / "local")
    process = serve(root)
    yield process
    process.stop()


def infer(process: ShoalProcess, model: str, body: dict) -> httpx.Response:
    return httpx.post(f"{process.url}/v2/models/{model}/infer", json=body, timeout=30)


def iris_body(rows: np.ndarray, outputs: list[str] | None = None) -> dict:
    body: dict = {"inputs": [{"name": "input-0", "datatype": "FP64", "shape": list(rows.shape),
                              "data": rows.reshape(-1).tolist()}]}
    if outputs is not None:
        body["outputs"] = [{"name": name} for name in outputs]
    return body


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_predictions_match_the_remote(remote: ShoalProcess, front: ShoalProcess, protocol: str) -> None:
    body = iris_body(iris_rows(5), ["predict", "predict_proba"])
    direct = infer(remote, "iris", body)
    forwarded = infer(front, f"iris-{protocol}", body)
    assert direct.status_code == forwarded.status_code == 200, forwarded.text
    want, got = direct.json(), forwarded.json()
    assert got["model_name"] == f"iris-{protocol}" and got["model_version"] == "1"
    assert got["outputs"] == want["outputs"]


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_every_front_protocol(remote: ShoalProcess, front: ShoalProcess, protocol: str) -> None:
    rows = iris_rows(3)
    want = infer(remote, "iris", iris_body(rows))
    labels = want.json()["outputs"][0]["data"]
    model = f"iris-{protocol}"

    v1 = httpx.post(f"{front.url}/v1/models/{model}:predict", json={"instances": rows.tolist()})
    assert v1.status_code == 200 and v1.json() == {"predictions": labels}, v1.text

    with grpc.insecure_channel(front.grpc_target) as channel:
        request = pb.ModelInferRequest(model_name=model)
        request.inputs.add(name="input-0", datatype="FP64", shape=[3, 4])
        request.raw_input_contents.append(rows.tobytes())
        answer = pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=30)
    assert np.frombuffer(answer.raw_output_contents[0], dtype=np.int64).tolist() == labels

    header = json.dumps({"inputs": [{"name": "input-0", "datatype": "FP64", "shape": [3, 4],
                                     "parameters": {"binary_data_size": rows.nbytes}}],
                         "parameters": {"binary_data_output": True}}).encode()
    binary = httpx.post(f"{front.url}/v2/models/{model}/infer", content=header + rows.tobytes(),
                        headers={"Inference-Header-Content-Length": str(len(header))})
    assert binary.status_code == 200, binary.text
    length = int(binary.headers["Inference-Header-Content-Length"])
    assert np.frombuffer(binary.content[length:], dtype=np.int64).tolist() == labels


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_metadata_comes_from_the_remote(
    remote: ShoalProcess, front: ShoalProcess, protocol: str
) -> None:
    want = httpx.get(f"{remote.url}/v2/models/iris").json()
    got = httpx.get(f"{front.url}/v2/models/iris-{protocol}").json()
    assert got["name"] == f"iris-{protocol}" and got["versions"] == ["1"]
    assert got["platform"] == want["platform"] == "sklearn"
    assert got["inputs"] == want["inputs"] and got["outputs"] == want["outputs"]
    assert httpx.get(f"{front.url}/v2/models/iris-{protocol}/ready").status_code == 200


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_requested_outputs_are_honoured(front: ShoalProcess, protocol: str) -> None:
    response = infer(front, f"iris-{protocol}", iris_body(iris_rows(2), ["predict_proba"]))
    outputs = response.json()["outputs"]
    assert [o["name"] for o in outputs] == ["predict_proba"] and outputs[0]["shape"] == [2, 3]


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_wrong_shape_is_400_naming_the_remote_shape(front: ShoalProcess, protocol: str) -> None:
    response = infer(front, f"iris-{protocol}", iris_body(np.ones((1, 3))))
    assert response.status_code == 400 and "expects [-1, 4]" in response.json()["error"]


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_remote_rejection_carries_its_message(front: ShoalProcess, protocol: str) -> None:
    response = infer(front, f"iris-{protocol}", iris_body(iris_rows(1), ["nope"]))
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error.startswith("remote model 'iris' at ")
    assert "model 'iris' has no output 'nope'" in error  # the remote's own words


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_parameters_and_bytes_are_forwarded(front: ShoalProcess, protocol: str) -> None:
    body = {"parameters": {"temperature": 0.5, "tag": "x"},
            "inputs": [{"name": "text", "datatype": "BYTES", "shape": [2], "data": ["h\u00e9", ""]}]}
    response = infer(front, f"params-{protocol}", body)
    assert response.status_code == 200, response.text
    outputs = {o["name"]: o["data"] for o in response.json()["outputs"]}
    seen = json.loads(outputs["parameters"][0])
    assert seen["temperature"] == 0.5 and seen["tag"] == "x"
    assert outputs["text"] == ["h\u00e9", ""]


def test_failed_loads_name_the_reason(front: ShoalProcess) -> None:
    rows = {r["name"]: r for r in httpx.post(f"{front.url}/v2/repository/index", json={}).json()}
    assert rows["missing"]["state"] == "UNAVAILABLE"
    assert "remote model 'nope'" in rows["missing"]["reason"] and "404" in rows["missing"]["reason"]
    assert rows["nowhere"]["state"] == "UNAVAILABLE"
    assert "unreachable" in rows["nowhere"]["reason"]
    assert infer(front, "nowhere", iris_body(iris_rows(1))).status_code == 503


def test_killed_remote_is_a_quick_503_and_the_rest_keeps_serving(
    remotes: tuple, front: ShoalProcess
) -> None:
    body = iris_body(iris_rows(1))
    for protocol in PROTOCOLS:
        assert infer(front, f"doomed-{protocol}", body).status_code == 200
    remotes[1].proc.kill()
    remotes[1].proc.wait()
    for protocol in PROTOCOLS:
        started = time.monotonic()
        response = infer(front, f"doomed-{protocol}", body)
        assert response.status_code == 503, response.text
        assert time.monotonic() - started < 3
        assert "unreachable" in response.json()["error"], response.text
    assert infer(front, "local", body).status_code == 200
    assert infer(front, "iris-http", body).status_code == 200
    assert httpx.get(f"{front.url}/v2/health/ready").status_code == 200

    # The remote comes back where it was: its models answer again, with no reload.
    revived = serve(*remotes[2])
    try:
        for protocol in PROTOCOLS:
            deadline = time.monotonic() + 10
            while infer(front, f"doomed-{protocol}", body).status_code != 200:
                assert time.monotonic() < deadline, f"doomed-{protocol} did not recover"
                time.sleep(0.1)
    finally:
        revived.stop()
