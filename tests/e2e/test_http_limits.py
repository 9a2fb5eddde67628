"""REST request heads: a size limit (431) and a time limit (408), against raw sockets."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest

from .models import SLOW, custom, sklearn_iris
from .process import ShoalProcess

LIMIT = 4096
TIMEOUT = 1.0
LIVE = b"GET /v2/health/live HTTP/1.1\r\nhost: x\r\n"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ShoalProcess]:
    root: Path = tmp_path_factory.mktemp("http_limits")
    sklearn_iris(root / "iris")
    custom(root / "slow", SLOW)
    # One limit from the environment, one from the command line: both ways work.
    process = ShoalProcess(root, "--header-timeout", str(TIMEOUT), env={"SHOAL_MAX_HEADER_SIZE": "4K"})
    process.wait_ready()
    yield process
    process.stop()


def connect(server: ShoalProcess) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.http_port), timeout=30)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def read_response(sock: socket.socket) -> tuple[int, dict[bytes, bytes], bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed before a response: {data!r}"
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    headers = dict(line.lower().split(b": ", 1) for line in lines[1:])
    if b"content-length" in headers:
        length = int(headers[b"content-length"])
        while len(rest) < length:
            rest += sock.recv(65536)
        return int(lines[0].split()[1]), headers, rest[:length]
    while not rest.endswith(b"0\r\n\r\n"):  # chunked: one chunk, then the last
        rest += sock.recv(65536)
    size, _, body = rest.partition(b"\r\n")
    return int(lines[0].split()[1]), headers, body[: int(size, 16)]


def read_until_closed(sock: socket.socket, timeout: float) -> bytes:
    """Everything the server sends until it closes; fails if it is still open after timeout."""
    sock.settimeout(timeout)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except ConnectionResetError:
        pass
    except TimeoutError:
        pytest.fail(f"the server left the connection open for {timeout} s")
    return data


def padded_head(size: int, first: bytes = LIVE) -> bytes:
    """A request head of exactly ``size`` bytes (request line + headers + blank line)."""
    head = first + b"x-pad: " + b"a" * (size - len(first) - len(b"x-pad: \r\n\r\n")) + b"\r\n\r\n"
    assert len(head) == size
    return head


def assert_error(status: int, headers: dict, body: bytes, expected: int, fragment: str) -> None:
    assert status == expected, body
    assert headers[b"content-type"] == b"application/json"
    assert fragment in orjson.loads(body)["error"]


def resident_peak_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def test_head_at_the_limit_is_served_and_one_byte_more_is_431(server: ShoalProcess) -> None:
    with connect(server) as sock:
        sock.sendall(padded_head(LIMIT))
        assert read_response(sock)[0] == 200
        sock.sendall(padded_head(LIMIT))  # the limit is per request, not per connection
        assert read_response(sock)[0] == 200
    with connect(server) as sock:
        sock.sendall(padded_head(LIMIT + 1))
        assert_error(*read_response(sock), 431, "exceed the 4096-byte limit")
        assert read_until_closed(sock, 10) == b""


@pytest.mark.parametrize("kind", ["one long header", "many headers", "long URL"])
def test_real_client_gets_431_for_any_oversized_head(server: ShoalProcess, kind: str) -> None:
    url, headers = f"{server.url}/v2/health/live", {}
    if kind == "one long header":
        headers = {"x-big": "a" * 8192}
    elif kind == "many headers":
        headers = {f"x-{i}": "a" * 10 for i in range(500)}
    else:
        url += "?q=" + "a" * 8192
    response = httpx.get(url, headers=headers)
    assert response.status_code == 431
    assert "request line and headers exceed" in response.json()["error"]
    assert response.headers["connection"] == "close"


def test_heads_arriving_in_pieces_are_counted_whole(server: ShoalProcess) -> None:
    head = padded_head(LIMIT - 100)
    with connect(server) as sock:  # under the limit in 50-byte pieces: served
        for i in range(0, len(head), 50):
            sock.sendall(head[i : i + 50])
            time.sleep(0.001)
        assert read_response(sock)[0] == 200
    head = padded_head(2 * LIMIT)
    with connect(server) as sock:  # over it in pieces: refused, though no piece is large
        try:
            for i in range(0, len(head), 50):
                sock.sendall(head[i : i + 50])
                time.sleep(0.001)
        except OSError:
            pass  # refused while still sending
        assert_error(*read_response(sock), 431, "exceed")


def test_bodies_and_pipelined_requests_are_not_counted_as_head(server: ShoalProcess) -> None:
    rows = [[5.1, 3.5, 1.4, 0.2]] * 2000  # ~40 KiB: head and body arrive in one read, > LIMIT
    body = orjson.dumps({"inputs": [{"name": "x", "datatype": "FP64", "shape": [2000, 4], "data": rows}]})
    request = (b"POST /v2/models/iris/infer HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
               b"content-length: %d\r\n\r\n" % len(body)) + body
    with connect(server) as sock:
        sock.sendall(request * 3)  # three requests in one write
        for _ in range(3):
            status, _, content = read_response(sock)
            assert status == 200, content
            assert orjson.loads(content)["outputs"][0]["shape"] == [2000]


def test_giant_header_is_refused_without_buffering_it(server: ShoalProcess) -> None:
    before = resident_peak_mb(server.proc.pid)
    reply: list[bytes] = []

    def attack() -> None:
        with connect(server) as sock:
            try:
                sock.sendall(LIVE + b"x-big: ")
                chunk = b"a" * (1 << 20)
                for _ in range(64):  # 64 MiB of one header value
                    sock.sendall(chunk)
                sock.sendall(b"\r\n\r\n")
                reply.append(sock.recv(4096))
            except OSError:
                reply.append(b"reset")  # the server may close while we are still sending

    thread = threading.Thread(target=attack)
    thread.start()
    while thread.is_alive():  # the server keeps answering meanwhile
        assert httpx.get(f"{server.url}/v2/health/live", timeout=10).status_code == 200
        time.sleep(0.02)
    thread.join()
    grown = resident_peak_mb(server.proc.pid) - before
    assert grown < 32, f"peak resident memory grew by {grown:.0f} MB"
    assert reply[0] == b"reset" or reply[0].startswith(b"HTTP/1.1 431"), reply


def test_slowloris_connections_are_closed_after_the_header_timeout(server: ShoalProcess) -> None:
    silent = [connect(server) for _ in range(100)]  # never send a byte
    slow = [connect(server) for _ in range(100)]  # start a request, then trickle headers
    for sock in slow:
        sock.sendall(LIVE)
    stop = threading.Event()

    def trickle() -> None:
        while not stop.wait(0.1):
            for sock in slow:
                try:
                    sock.send(b"x-slow: 1\r\n")
                except OSError:
                    pass

    thread = threading.Thread(target=trickle)
    thread.start()
    try:
        # All 200 are open now, and the server still answers others promptly.
        assert httpx.get(f"{server.url}/v2/health/live", timeout=5).status_code == 200
        for sock in silent:
            assert read_until_closed(sock, 10) == b""  # closed without a word: nothing was asked
        for sock in slow:
            data = read_until_closed(sock, 10)
            assert data.startswith(b"HTTP/1.1 408 "), data
            assert b"did not arrive within 1 seconds" in data
    finally:
        stop.set()
        thread.join()
        for sock in silent + slow:
            sock.close()
    assert httpx.get(f"{server.url}/v2/health/live", timeout=5).status_code == 200


def test_header_timeout_spares_slow_answers_and_idle_keep_alive(server: ShoalProcess) -> None:
    """The timer runs only while a head is arriving: not while a model works, not between
    requests; an idle keep-alive connection is closed by uvicorn's keep-alive timeout (5 s)."""
    body = orjson.dumps({"parameters": {"sleep": TIMEOUT + 0.3},
                         "inputs": [{"name": "x", "datatype": "FP64", "shape": [1], "data": [1]}]})
    slow = (b"POST /v2/models/slow/infer HTTP/1.1\r\nhost: x\r\ncontent-length: %d\r\n\r\n"
            % len(body)) + body
    with connect(server) as sock:
        sock.sendall(slow)
        assert read_response(sock)[0] == 200
        time.sleep(TIMEOUT + 0.3)
        sock.sendall(LIVE + b"\r\n")
        assert read_response(sock)[0] == 200
        idle_since = time.monotonic()
        assert read_until_closed(sock, 15) == b""
        assert time.monotonic() - idle_since > 3 * TIMEOUT


def test_help_names_the_options() -> None:
    help_text = subprocess.run([sys.executable, "-m", "shoal", "serve", "--help"],
                               capture_output=True, text=True, timeout=60).stdout
    for flag in ("--max-header-size", "SHOAL_MAX_HEADER_SIZE", "--header-timeout", "SHOAL_HEADER_TIMEOUT"):
        assert flag in help_text
