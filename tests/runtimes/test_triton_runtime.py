"""The triton runtime on its own: configuration, error mapping, retries and time limits.

A small stdlib HTTP server stands in for a remote that misbehaves on purpose (503s, slow
answers); the end-to-end tests use a real second Shoal server.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import grpc
import numpy as np
import pytest

from shoal.errors import (
    DeadlineExceeded,
    InvalidInput,
    LoadError,
    ModelFailure,
    NotSupported,
    Overloaded,
    Unavailable,
)
from shoal.repository.config import ModelConfig
from shoal.runtimes import create_model
from shoal.runtimes.triton import RemoteDown, TritonModel, grpc_error, http_error, parse_url
from shoal.types import InferenceRequest, Tensor

METADATA = {"name": "m", "versions": ["1"], "platform": "onnxruntime_onnx",
            "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 2]}],
            "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 2]}]}


def model(url: str, **parameters: object) -> TritonModel:
    config = ModelConfig(url=url, parameters=parameters)
    created = create_model("local", "1", Path("."), Path("."), config)
    assert isinstance(created, TritonModel)
    return created


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# -- configuration -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "protocol", "expected"),
    [
        ("http://triton:8000", None, ("http", "http://triton:8000")),
        ("https://gw.example/serving/", None, ("http", "https://gw.example/serving")),
        ("grpc://triton:8001", None, ("grpc", "triton:8001")),
        ("grpc://triton:8001", "grpc", ("grpc", "triton:8001")),
        ("triton:8001", "grpc", ("grpc", "triton:8001")),
        ("triton:8000", None, ("http", "http://triton:8000")),
    ],
)
def test_urls(url: str, protocol: str | None, expected: tuple[str, str]) -> None:
    assert parse_url(url, protocol) == expected


@pytest.mark.parametrize(
    ("url", "protocol", "fragment"),
    [
        ("ftp://triton:21", None, "use http://, https:// or grpc://"),
        ("http://triton:8000", "grpc", "is http but parameters.protocol says grpc"),
        ("grpc://triton", None, "a gRPC address is host:port"),
        ("grpc://triton:8001/v2", None, "a gRPC address is host:port"),
        ("http://triton:99999", None, "invalid port"),
        ("http://:8000", None, "names no host"),
    ],
)
def test_bad_urls(url: str, protocol: str | None, fragment: str) -> None:
    with pytest.raises(LoadError, match=fragment):
        parse_url(url, protocol)


def test_url_selects_the_runtime_and_parameters_configure_it() -> None:
    remote = model("grpc://h:1", model_name="resnet", model_version=2, timeout=1.5, retries=0)
    assert (remote.protocol, remote.address) == ("grpc", "h:1")
    assert (remote.remote_name, remote.remote_version) == ("resnet", "2")
    assert (remote.settings.timeout, remote.settings.retries) == (1.5, 0)
    assert model("http://h:1").remote_name == "local"  # the remote name defaults to ours


@pytest.mark.parametrize(
    ("parameters", "fragment"),
    [
        ({"timout": 3}, "parameters.timout: Extra inputs are not permitted"),
        ({"timeout": 0}, "parameters.timeout"),
        ({"retries": -1}, "parameters.retries"),
        ({"protocol": "udp"}, "parameters.protocol"),
    ],
)
def test_bad_parameters_fail_the_load(parameters: dict, fragment: str) -> None:
    with pytest.raises(LoadError, match=fragment):
        model("http://h:1", **parameters)


def test_runtime_without_url() -> None:
    with pytest.raises(LoadError, match="needs the remote server's address"):
        create_model("m", "1", Path("."), Path("."), ModelConfig(runtime="triton"))


# -- error mapping -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "error"),
    [(400, InvalidInput), (422, InvalidInput), (404, Unavailable), (429, Overloaded),
     (501, NotSupported), (503, RemoteDown), (504, DeadlineExceeded), (500, ModelFailure)],
)
def test_http_statuses(status: int, error: type) -> None:
    mapped = http_error(status, "the remote's words", "remote model 'm' at http://h:1")
    assert type(mapped) is error
    assert str(mapped) == f"remote model 'm' at http://h:1 answered {status}: the remote's words"


@pytest.mark.parametrize(
    ("code", "error"),
    [(grpc.StatusCode.INVALID_ARGUMENT, InvalidInput), (grpc.StatusCode.NOT_FOUND, Unavailable),
     (grpc.StatusCode.UNAVAILABLE, RemoteDown), (grpc.StatusCode.RESOURCE_EXHAUSTED, Overloaded),
     (grpc.StatusCode.UNIMPLEMENTED, NotSupported), (grpc.StatusCode.INTERNAL, ModelFailure)],
)
def test_grpc_codes(code: grpc.StatusCode, error: type) -> None:
    mapped = grpc_error(code, "the remote's words", "remote model 'm' at h:1")
    assert type(mapped) is error and "the remote's words" in str(mapped)


# -- a remote that is down, flaky or slow --------------------------------------------------


@pytest.mark.parametrize("scheme", ["http", "grpc"])
def test_remote_down_at_load_fails_quickly_with_the_reason(scheme: str) -> None:
    remote = model(f"{scheme}://127.0.0.1:{closed_port()}", retries=1)
    started = time.monotonic()
    with pytest.raises(LoadError) as info:
        asyncio.run(remote.load())
    assert time.monotonic() - started < 5
    assert "unreachable" in str(info.value) and "(after 2 attempts)" in str(info.value)
    assert str(info.value).startswith("remote model 'local' at ")
    assert remote.remote is None


class Script:
    """What the stand-in remote answers: how many 503s first, how slow inference is."""

    def __init__(self) -> None:
        self.unavailable = 0
        self.infer_delay = 0.0
        self.requests: list[str] = []


@pytest.fixture
def script() -> Iterator[tuple[Script, str]]:
    state = Script()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def reply(self, status: int, body: dict, headers: dict | None = None) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            for key, value in {"Content-Length": str(len(data)), **(headers or {})}.items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            state.requests.append(self.path)
            if state.unavailable:
                state.unavailable -= 1
                self.reply(503, {"error": "warming up"})
            elif self.path.endswith("/ready"):
                self.reply(200, {"ready": True})
            else:
                self.reply(200, METADATA)

        def do_POST(self) -> None:
            state.requests.append(self.path)
            length = int(self.headers["Content-Length"])
            header_length = int(self.headers["Inference-Header-Content-Length"])
            raw = self.rfile.read(length)
            time.sleep(state.infer_delay)
            request = json.loads(raw[:header_length])
            self.reply(200, {"model_name": "m", "outputs": [
                {"name": "y", "datatype": "FP32", "shape": request["inputs"][0]["shape"],
                 "data": (np.frombuffer(raw[header_length:], np.float32) * 2).tolist()}],
                "parameters": {"seen": request["parameters"]}})

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def x_request() -> InferenceRequest:
    return InferenceRequest([Tensor.from_numpy("x", np.array([[1.0, 2.0]], np.float32))],
                            parameters={"k": 1})


def test_retries_ride_out_503s_and_metadata_comes_from_the_remote(script) -> None:
    state, url = script
    state.unavailable = 2
    remote = model(url, model_name="m", model_version="1", retries=2)

    async def scenario() -> None:
        await remote.load()
        try:
            response = await remote.predict(x_request())
        finally:
            await remote.unload()
        assert response.outputs[0].data.tolist() == [[2.0, 4.0]]
        # the remote saw the client's parameters, and was asked for binary outputs
        assert response.parameters["seen"] == {"k": 1, "binary_data_output": True}

    asyncio.run(scenario())
    assert state.requests[:3] == ["/v2/models/m/versions/1/ready"] * 3
    assert state.requests[-1] == "/v2/models/m/versions/1/infer"
    assert remote.platform == "onnxruntime_onnx"
    assert [s.to_dict() for s in remote.inputs] == METADATA["inputs"]
    assert [s.to_dict() for s in remote.outputs] == METADATA["outputs"]
    assert remote.remote is None


def test_too_many_503s_fail_the_load_with_the_remote_message(script) -> None:
    state, url = script
    state.unavailable = 5
    with pytest.raises(LoadError, match=r"answered 503: warming up \(after 2 attempts\)"):
        asyncio.run(model(url, retries=1).load())


def test_a_slow_remote_is_a_504_after_the_timeout(script) -> None:
    state, url = script
    state.infer_delay = 2.0
    remote = model(url, timeout=0.3)

    async def scenario() -> float:
        await remote.load()
        started = time.monotonic()
        try:
            with pytest.raises(DeadlineExceeded, match="did not answer within 0.3 s"):
                await remote.predict(x_request())
        finally:
            await remote.unload()
        return time.monotonic() - started

    assert asyncio.run(scenario()) < 1.5


def test_predict_after_unload_is_unavailable() -> None:
    remote = model("http://127.0.0.1:1")
    with pytest.raises(Unavailable, match="not connected"):
        asyncio.run(remote.predict(x_request()))
