"""The payload log's delivery against collectors that misbehave (real sockets), and the
channel's resilience: a spool write that fails, a shutdown while a collector stalls."""

from __future__ import annotations

import asyncio
import errno
import socket
import threading
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest
from prometheus_client import CollectorRegistry

from shoal.observe.payload.channel import Channel
from shoal.observe.payload.metrics import PayloadMetrics
from shoal.observe.payload.record import Event, Record, from_structured, structured
from shoal.observe.payload.sinks import SinkDown
from shoal.observe.payload.sinks.http import HttpSink
from shoal.observe.payload.spool import Spool, SpoolBudget

Reply = Callable[[socket.socket, int], bool]  # answer request n; True: close the connection


def collector(reply: Reply) -> tuple[int, list[bytes]]:
    """A raw HTTP/1.1 server: reads each request (head + Content-Length body), lets ``reply``
    answer it with whatever bytes it likes."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    taken: list[bytes] = []

    def handle(connection: socket.socket) -> None:
        buffer = b""
        while True:
            data = connection.recv(65536)
            if not data:
                return
            buffer += data
            while b"\r\n\r\n" in buffer:
                head, rest = buffer.split(b"\r\n\r\n", 1)
                length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                                  if line.lower().startswith(b"content-length")))
                if len(rest) < length:
                    break
                taken.append(head)
                buffer = rest[length:]
                if reply(connection, len(taken)):
                    connection.close()
                    return

    def accept() -> None:
        while True:
            connection, _ = server.accept()
            threading.Thread(target=handle, args=(connection,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    return server.getsockname()[1], taken


EVENTS = [Event({"specversion": "1.0", "id": str(i), "source": "s", "type": "t",
                 "inferenceservicename": "m", "datacontenttype": "application/json"}, b"{}")
          for i in range(3)]


def send(port: int, events: list[Event] = EVENTS) -> list[tuple[int, str]]:
    async def go() -> list[tuple[int, str]]:
        sink = HttpSink(f"http://127.0.0.1:{port}/events")
        try:
            return await asyncio.wait_for(sink.send(events), 15)
        finally:
            await sink.close()

    return asyncio.run(go())


def test_an_answer_ended_by_the_close_counts() -> None:
    port, taken = collector(lambda c, n: (c.sendall(b"HTTP/1.0 200 OK\r\n\r\nok"), True)[1])
    assert send(port) == []
    assert len(taken) == 3  # each event once, each on its own connection


def test_interim_answers_are_not_the_answer() -> None:
    port, _ = collector(lambda c, n: (c.sendall(
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"), False)[1])
    assert send(port) == []


def test_refusals_and_retries_are_told_apart() -> None:
    answers = {1: b"200 OK", 2: b"400 Bad Request", 3: b"200 OK"}
    port, _ = collector(lambda c, n: (c.sendall(
        b"HTTP/1.1 " + answers[n] + b"\r\nContent-Length: 0\r\n\r\n"), False)[1])
    assert send(port) == [(1, "answered 400")]
    port, _ = collector(lambda c, n: (c.sendall(
        b"HTTP/1.1 " + (b"503 Unavailable" if n == 2 else b"200 OK")
        + b"\r\nContent-Length: 0\r\n\r\n"), False)[1])
    with pytest.raises(SinkDown) as down:
        send(port)
    assert down.value.delivered == 1


def test_a_stall_after_a_503_still_retries_the_503(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("shoal.observe.payload.sinks.http.ANSWER_TIMEOUT", 0.5)
    port, _ = collector(lambda c, n: (n <= 2 and c.sendall(
        b"HTTP/1.1 " + (b"200 OK" if n == 1 else b"503 Busy") + b"\r\nContent-Length: 0\r\n\r\n"),
        False)[1])
    with pytest.raises(SinkDown) as down:
        send(port)
    assert down.value.delivered == 1


def test_credentials_in_the_url_are_basic_auth_and_never_shown() -> None:
    port, taken = collector(lambda c, n: (c.sendall(
        b"HTTP/1.1 204 No Content\r\n\r\n"), False)[1])

    async def go() -> str:
        sink = HttpSink(f"http://user:s3cret@127.0.0.1:{port}/events")
        await sink.send(EVENTS[:1])
        await sink.close()
        return sink.url

    shown = asyncio.run(go())
    assert "s3cret" not in shown
    assert b"Authorization: Basic dXNlcjpzM2NyZXQ=" in taken[0]


def test_a_pretty_printed_body_stays_one_line() -> None:
    event = Event({**EVENTS[0].attributes}, b'{\n  "inputs": [\r\n 1, 2]\n}')
    line = structured(event)
    assert b"\n" not in line and b"\r" not in line
    assert orjson.loads(from_structured(line).data) == {"inputs": [1, 2]}


def record(n: int) -> Record:
    return Record("iris", "1", "v2-rest", "predictor", 1.0, 2.0, None, b'{"id":"%d"}' % n, None,
                  b"{}", 200, None, None, "all", 100)


class Down:
    async def send(self, events: list[Event]) -> list[tuple[int, str]]:
        raise SinkDown(0, "down")

    async def close(self) -> None:
        pass


class Stalled:
    async def send(self, events: list[Event]) -> list[tuple[int, str]]:
        await asyncio.sleep(3600)
        return []

    async def close(self) -> None:
        pass


async def running(channel: Channel) -> None:
    async def begin() -> None:
        channel.task = asyncio.current_task()
        await channel.run()

    asyncio.ensure_future(begin())
    await asyncio.sleep(0)


def test_a_failing_spool_write_does_not_end_the_channel(tmp_path: Path) -> None:
    async def go() -> tuple[int, int]:
        spool = Spool(tmp_path, SpoolBudget(1 << 20))
        real = spool.append
        failing = {"on": True}

        def append(lines: list[bytes]) -> int:
            if failing["on"]:
                raise OSError(errno.ENOSPC, "No space left on device")
            return real(lines)

        spool.append = append  # type: ignore[method-assign]
        channel = Channel("x", "x", Down(), spool, PayloadMetrics(CollectorRegistry()),
                          asyncio.get_running_loop(), "s/", None)
        await running(channel)
        channel.put(record(1))
        await asyncio.sleep(0.2)
        assert channel.task is not None and not channel.task.done()
        failing["on"] = False  # the disk has room again
        for n in range(2, 6):
            channel.put(record(n))
        await asyncio.sleep(0.3)
        await channel.close(0.2)
        lines = sum(len(p.read_bytes().splitlines()) for p in tmp_path.glob("*.jsonl"))
        dropped = channel.metrics.records.labels("iris", "x", "dropped")._value.get()
        return lines, int(dropped)

    lines, dropped = asyncio.run(go())
    assert lines == 8  # 4 requests, 2 events each, spooled once the disk could take them
    assert dropped == 2  # the first request's 2 events: counted, not silently lost


def test_shutdown_spools_a_batch_a_stalled_collector_holds(tmp_path: Path) -> None:
    async def go() -> int:
        spool = Spool(tmp_path, SpoolBudget(1 << 20))
        channel = Channel("x", "x", Stalled(), spool, PayloadMetrics(CollectorRegistry()),
                          asyncio.get_running_loop(), "s/", None)
        await running(channel)
        for n in range(10):
            channel.put(record(n))
        await asyncio.sleep(0.1)  # taken from memory, stuck in the send
        await channel.close(0.2)
        return sum(len(p.read_bytes().splitlines()) for p in tmp_path.glob("*.jsonl"))

    assert asyncio.run(go()) == 20
