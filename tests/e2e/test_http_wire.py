"""The inference routes' answers on the wire, against raw sockets: they skip uvicorn's ASGI
messages when they can (a body that has fully arrived, a whole answer written at once), and
what a client reads must be what uvicorn itself writes in every case, fast path or not."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from .models import sklearn_iris
from .process import ShoalProcess
from .test_http_limits import connect, read_response, read_until_closed

LIMIT = 2048
ROW = [5.1, 3.5, 1.4, 0.2]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ShoalProcess]:
    root: Path = tmp_path_factory.mktemp("http_wire")
    sklearn_iris(root / "iris")
    process = ShoalProcess(root, "--max-request-size", str(LIMIT))
    process.wait_ready()
    yield process
    process.stop()


def infer_body(rows: int = 1) -> bytes:
    return orjson.dumps({"inputs": [{"name": "x", "datatype": "FP64", "shape": [rows, 4],
                                     "data": [ROW] * rows}]})


def infer_head(body: bytes, extra: bytes = b"", path: bytes = b"/v2/models/iris/infer",
               version: bytes = b"1.1") -> bytes:
    return (b"POST %s HTTP/%s\r\nhost: x\r\ncontent-type: application/json\r\n"
            b"content-length: %d\r\n%s\r\n" % (path, version, len(body), extra))


def raw_response(sock: socket.socket) -> tuple[bytes, bytes]:
    """The head (as sent) and the body of one content-length response."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, data
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    length = int(dict(line.lower().split(b": ", 1) for line in head.split(b"\r\n")[1:])
                 [b"content-length"])
    while len(rest) < length:
        rest += sock.recv(65536)
    assert len(rest) == length, "bytes after the announced body"
    return head, rest


def header_names(head: bytes) -> list[bytes]:
    return [line.split(b": ", 1)[0].lower() for line in head.split(b"\r\n")[1:]]


def test_an_answer_carries_the_same_framing_as_any_other_route(server: ShoalProcess) -> None:
    body = infer_body()
    with connect(server) as sock:
        sock.sendall(infer_head(body) + body)
        head, content = raw_response(sock)
        sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nhost: x\r\n\r\n")
        live_head, _ = raw_response(sock)
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    names = header_names(head)
    # The server's own headers (date, server) as on every route, one content-length, no
    # chunking: the client reads exactly the answer.
    assert [n for n in names if n in (b"date", b"server")] == \
        [n for n in header_names(live_head) if n in (b"date", b"server")]
    assert names.count(b"content-length") == 1 and b"transfer-encoding" not in names
    assert b"content-type: application/json" in head.lower()
    assert orjson.loads(content)["outputs"][0]["data"] == [0]


def test_a_connection_answers_request_after_request_and_closes_when_asked(
    server: ShoalProcess,
) -> None:
    body = infer_body()
    with connect(server) as sock:
        for _ in range(3):  # keep-alive
            sock.sendall(infer_head(body) + body)
            assert read_response(sock)[0] == 200
        sock.sendall(infer_head(body, b"connection: close\r\n") + body)
        rest = read_until_closed(sock, 5.0)
    assert rest.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"\r\nconnection: close\r\n" in rest.lower().split(b"\r\n\r\n")[0] + b"\r\n"


def test_an_http_1_0_request_is_answered_and_closed(server: ShoalProcess) -> None:
    body = infer_body()
    with connect(server) as sock:
        sock.sendall(infer_head(body, version=b"1.0") + body)
        data = read_until_closed(sock, 5.0)
    head, _, content = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK") and b"connection: close" in head.lower()
    assert orjson.loads(content)["outputs"][0]["data"] == [0]


def test_a_body_that_arrives_later_than_its_head_is_read_in_full(server: ShoalProcess) -> None:
    body = infer_body(3)
    with connect(server) as sock:
        sock.sendall(infer_head(body) + body[:10])
        time.sleep(0.3)  # the app runs before the rest of the body has arrived
        sock.sendall(body[10:])
        status, _, content = read_response(sock)
    assert status == 200, content
    assert orjson.loads(content)["outputs"][0]["data"] == [0, 0, 0]


def test_expect_100_continue_is_honoured(server: ShoalProcess) -> None:
    body = infer_body()
    with connect(server) as sock:
        sock.sendall(infer_head(body, b"expect: 100-continue\r\n"))
        interim = b""
        while b"\r\n\r\n" not in interim:
            interim += sock.recv(65536)
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(body)
        status, _, content = read_response(sock)
    assert status == 200, content


def test_a_whole_body_over_the_limit_is_413_and_the_connection_goes_on(
    server: ShoalProcess,
) -> None:
    big = infer_body(150)  # arrives with its head, in one read
    assert len(big) > LIMIT
    small = infer_body()
    with connect(server) as sock:
        sock.sendall(infer_head(big) + big)
        status, headers, content = read_response(sock)
        assert status == 413
        assert orjson.loads(content)["error"] == (
            f"request body of {len(big)} bytes exceeds the {LIMIT}-byte limit")
        assert headers[b"content-type"] == b"application/json"
        sock.sendall(infer_head(small) + small)
        assert read_response(sock)[0] == 200


def test_errors_are_framed_like_answers(server: ShoalProcess) -> None:
    body = infer_body()
    with connect(server) as sock:
        sock.sendall(infer_head(body, path=b"/v2/models/nope/infer") + body)
        head, content = raw_response(sock)
        assert head.startswith(b"HTTP/1.1 404 Not Found\r\n")
        assert "nope" in orjson.loads(content)["error"]
        bad = b'{"inputs": ['
        sock.sendall(infer_head(bad) + bad)
        head, content = raw_response(sock)
        assert head.startswith(b"HTTP/1.1 400 Bad Request\r\n")
        sock.sendall(infer_head(body) + body)
        assert read_response(sock)[0] == 200


@pytest.mark.parametrize(
    ("extra", "status", "message"),
    [
        (b"inference-header-content-length: x\r\n", 400,
         "Inference-Header-Content-Length must be an integer"),
        (b"shoal-timeout: -1\r\n", 400, "Shoal-Timeout must be a positive number of seconds"),
        (b"shoal-timeout: 5\r\n", 200, None),
    ],
    ids=["bad-header-length", "bad-timeout", "timeout"],
)
def test_the_v2_headers_are_read(server: ShoalProcess, extra: bytes, status: int,
                                 message: str | None) -> None:
    body = infer_body()
    with connect(server) as sock:
        sock.sendall(infer_head(body, extra) + body)
        got, _, content = read_response(sock)
    assert got == status, content
    if message is not None:
        assert orjson.loads(content)["error"] == message


def test_a_binary_request_with_a_timeout_is_answered(server: ShoalProcess) -> None:
    import numpy as np

    header = orjson.dumps({"inputs": [{"name": "x", "datatype": "FP64", "shape": [1, 4],
                                       "parameters": {"binary_data_size": 32}}]})
    body = header + np.array([ROW]).tobytes()
    extra = b"inference-header-content-length: %d\r\nshoal-timeout: 5\r\n" % len(header)
    with connect(server) as sock:
        sock.sendall(infer_head(body, extra) + body)
        status, _, content = read_response(sock)
    assert status == 200, content
    assert orjson.loads(content)["outputs"][0]["data"] == [0]
