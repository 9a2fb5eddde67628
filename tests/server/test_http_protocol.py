"""The inference routes' shortcut past uvicorn's ASGI messages (``take_body`` and
``send_whole``): on a real uvicorn server with Shoal's protocol, an answer written whole is
byte for byte the answer uvicorn writes for the same two ASGI messages, and where the shortcut
cannot do what uvicorn would, it declines and changes nothing."""

from __future__ import annotations

import re
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import uvicorn

from shoal.server.http_protocol import connection_of, http_protocol, send_whole, take_body

HEADERS = [(b"content-type", b"application/json"), (b"x-shoal", b"yes")]
declined: list[str] = []


async def app(scope: dict, receive: Any, send: Any) -> None:
    """``/whole``: the shortcut; ``/asgi``: uvicorn's send; ``/decline/<why>``: the shortcut
    asked for what it must decline, then the ASGI path answers."""
    path = scope["path"]
    cycle = connection_of(receive)
    assert cycle is not None
    body = take_body(cycle)
    if body is None:  # not all there yet: as an app without the shortcut reads it
        message = await receive()
        body = message["body"]
        while message.get("more_body"):
            message = await receive()
            body += message["body"]
    answer = b'{"echo": %d}' % len(body)
    # As in ``shoal serve`` (access_log=False); pytest's log capture makes uvicorn think there
    # is an access log here. The shortcut declines when there is one (see "access-log").
    cycle.access_log = path == "/decline/access-log"
    if path == "/whole":
        assert send_whole(cycle, 200, HEADERS, answer)
        return
    if path.startswith("/decline/"):
        why = path.removeprefix("/decline/")
        headers = HEADERS + ([(b"connection", b"close")] if why == "framing" else [])
        headers += [(b"x-bad", b"a\nb")] if why == "bad-value" else []
        if why == "paused":
            cycle.flow.write_paused = True
        assert not send_whole(cycle, 200, headers, answer)
        assert not cycle.response_started  # nothing done
        declined.append(why)
        cycle.flow.write_paused = False
        headers = [h for h in headers if h[0] != b"x-bad"]
    else:
        headers = HEADERS
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-length", b"%d" % len(answer)), *headers]})
    await send({"type": "http.response.body", "body": answer})


@pytest.fixture(scope="module")
def port() -> Iterator[int]:
    """A uvicorn server with Shoal's protocol, on its own thread and event loop."""
    config = uvicorn.Config(app, host="127.0.0.1", port=0, lifespan="off", access_log=False,
                            log_level="warning", http=http_protocol(64 * 1024, 10.0))
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "the server did not start"
        time.sleep(0.01)
    yield server.servers[0].sockets[0].getsockname()[1]
    server.should_exit = True
    thread.join(10)


def exchange(port: int, *writes: bytes, pause: float = 0.0, answers: int | None = None) -> bytes:
    """What the server sends back for ``writes`` (one after another, ``pause`` apart) until
    it has sent ``answers`` (default: one per write) or closed."""
    answers = len(writes) if answers is None else answers
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        for request in writes:
            sock.sendall(request)
            if pause:
                time.sleep(pause)
        data = b""
        while data.count(b"HTTP/1.1 200") < answers or not _complete(data):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
        return data


def _complete(data: bytes) -> bool:
    head, _, rest = data.rpartition(b"\r\n\r\n")
    length = re.findall(rb"content-length: (\d+)", head)
    return bool(length) and len(rest) >= int(length[-1])


def request(path: str, body: bytes = b"[1, 2, 3]", extra: bytes = b"",
            version: bytes = b"1.1") -> bytes:
    return (b"POST %s HTTP/%s\r\nhost: x\r\ncontent-length: %d\r\n%s\r\n"
            % (path.encode(), version, len(body), extra)) + body


def undated(data: bytes) -> bytes:
    return re.sub(rb"date: [^\r]*\r\n", b"", data)


@pytest.mark.parametrize(
    ("extra", "version"),
    [(b"", b"1.1"), (b"connection: close\r\n", b"1.1"), (b"", b"1.0"),
     (b"connection: keep-alive\r\n", b"1.0")],
    ids=["keep-alive", "connection-close", "http-1.0", "http-1.0-keep-alive"],
)
def test_a_whole_answer_is_what_uvicorn_writes(port: int, extra: bytes, version: bytes) -> None:
    whole = exchange(port, request("/whole", extra=extra, version=version))
    asgi = exchange(port, request("/asgi", extra=extra, version=version))
    assert whole.startswith(b"HTTP/1.1 200 OK\r\n") and whole.endswith(b'{"echo": 9}')
    assert undated(whole) == undated(asgi)


def test_pipelined_requests_are_answered_in_order(port: int) -> None:
    whole = exchange(port, request("/whole", b"1") + request("/whole", b"22")
                     + request("/whole", b"333"), answers=3)
    assert [int(n) for n in re.findall(rb'"echo": (\d+)', whole)] == [1, 2, 3]


def test_a_body_still_arriving_is_read_through_receive(port: int) -> None:
    body = b"x" * 100
    head = request("/whole", body)[: -len(body)]
    data = exchange(port, head + body[:10], body[10:], pause=0.2, answers=1)
    assert data.endswith(b'{"echo": 100}')


@pytest.mark.parametrize("why", ["framing", "bad-value", "paused", "access-log"])
def test_what_the_shortcut_cannot_do_it_declines(port: int, why: str) -> None:
    data = exchange(port, request(f"/decline/{why}"))
    assert data.startswith(b"HTTP/1.1 200 OK\r\n") and data.endswith(b'{"echo": 9}')
    assert declined[-1] == why


def test_head_requests_are_declined(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"HEAD /decline/head HTTP/1.1\r\nhost: x\r\n\r\n")
        head = b""
        while b"\r\n\r\n" not in head:
            head += sock.recv(65536)
    assert head.startswith(b"HTTP/1.1 200 OK\r\n") and declined[-1] == "head"


def test_a_large_body_in_one_write_is_taken_whole_and_the_connection_goes_on(port: int) -> None:
    big = b"x" * 300_000  # past uvicorn's 64 KiB high-water mark: reading pauses until taken
    data = exchange(port, request("/whole", big) + request("/whole", b"12"), answers=2)
    assert [int(n) for n in re.findall(rb'"echo": (\d+)', data)] == [300_000, 2]
