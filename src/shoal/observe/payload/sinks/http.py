"""``http(s)://``: binary-mode CloudEvents, one POST per event, as KServe's logger sends.

A POST per event is what every CloudEvents receiver understands (KServe's message dumper,
Knative's brokers, the SDKs' ``from_http``), and the events of a busy model are many: through
a general-purpose client each POST costs about 120 µs of CPU here (``http.client``), more than
the prediction it records. So the POSTs are pipelined on one keep-alive HTTP/1.1 connection
(written back to back, answers read in order by ``httptools``, the parser uvicorn uses),
which also keeps them in order. A receiver that closes the connection midway gets the rest
on a new one.

Answers: 2xx delivered; 3xx, 401, 403, 404, 407, 408, 429 and 5xx mean "later" (the
collector is down or misconfigured: the events wait in the spool and are retried); any other
4xx is the collector refusing that one event for good (counted ``failed``, logged, not
retried). ``http://user:password@host/`` sends HTTP basic auth.
"""

from __future__ import annotations

import asyncio
import base64
import ssl
from collections import deque
from urllib.parse import unquote, urlsplit

import httptools

from .... import __version__
from ..config import sink_label
from ..record import Event, binary_headers
from . import SinkDown

#: POSTs written before their answers are awaited.
WINDOW = 64
CONNECT_TIMEOUT = 5.0
#: Seconds a window's answers may take before the collector counts as down.
ANSWER_TIMEOUT = 10.0


class _Connection(asyncio.Protocol):
    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.statuses: deque[int] = deque()
        self.closed = False
        self.transport: asyncio.Transport | None = None
        self.changed = asyncio.Event()
        self._status: int | None = None  # of the answer being read

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.close()

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        self._status = None if 100 <= status < 200 else status  # 100 Continue is not the answer

    def on_message_complete(self) -> None:
        if self._status is not None:
            self.statuses.append(self._status)
            self._status = None
            self.changed.set()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._status is not None:  # an answer whose body the close ended (HTTP/1.0)
            self.statuses.append(self._status)
            self._status = None
        self.closed = True
        self.changed.set()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
        self.closed = True
        self.changed.set()


#: Answers that say the collector is misconfigured or unavailable rather than that this one
#: event is wrong: the events wait in the spool until it is fixed.
_LATER = frozenset({401, 403, 404, 407, 408, 429})


class HttpSink:
    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.url = sink_label(url)  # what reasons and logs show: no password
        self.host = parts.hostname or ""
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.tls = ssl.create_default_context() if parts.scheme == "https" else None
        path = parts.path or "/"
        if parts.query:
            path += f"?{parts.query}"
        host = self.host if ":" not in self.host else f"[{self.host}]"
        authority = host if parts.port is None else f"{host}:{self.port}"
        auth = ""
        if parts.username is not None:  # http://user:password@host/ as HTTP basic auth
            pair = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()
            auth = f"Authorization: Basic {base64.b64encode(pair).decode()}\r\n"
        self._head = (
            f"POST {path} HTTP/1.1\r\nHost: {authority}\r\nUser-Agent: shoal/{__version__}\r\n"
            f"{auth}"
        ).encode("latin-1")
        self._connection: _Connection | None = None

    async def send(self, events: list[Event]) -> list[tuple[int, str]]:
        rejected: list[tuple[int, str]] = []
        done = 0
        while done < len(events):
            connection = await self._connect(done)
            window = events[done : done + WINDOW]
            connection.statuses.clear()
            assert connection.transport is not None
            connection.transport.write(b"".join(self._request(event) for event in window))
            answered, timed_out = await self._answers(connection, len(window))
            for offset, status in enumerate(answered):
                if 200 <= status < 300:
                    continue
                if status in _LATER or status >= 500 or 300 <= status < 400:
                    self._close()
                    raise SinkDown(done + offset, f"{self.url} answered {status}")
                rejected.append((done + offset, f"answered {status}"))
            done += len(answered)
            if timed_out:
                self._close()
                raise SinkDown(done, f"{self.url} did not answer within {ANSWER_TIMEOUT:g} s")
            if len(answered) < len(window):
                # The receiver closed the connection after some answers (keep-alive limit):
                # the rest go again on a new one.
                self._close()
                if not answered:
                    raise SinkDown(done, f"{self.url} closed the connection")
        return rejected

    async def _answers(self, connection: _Connection, count: int) -> tuple[list[int], bool]:
        """The statuses of up to ``count`` answers, and whether the collector went quiet for
        :data:`ANSWER_TIMEOUT` seconds (the clock restarts with each answer)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + ANSWER_TIMEOUT
        seen = 0
        while len(connection.statuses) < count and not connection.closed:
            if len(connection.statuses) > seen:
                seen = len(connection.statuses)
                deadline = loop.time() + ANSWER_TIMEOUT
            connection.changed.clear()
            remaining = deadline - loop.time()
            if remaining <= 0:
                return list(connection.statuses)[:count], True
            try:
                await asyncio.wait_for(connection.changed.wait(), remaining)
            except asyncio.TimeoutError:
                pass
        return list(connection.statuses)[:count], False

    def _request(self, event: Event) -> bytes:
        body = event.data or b""
        lines = [f"{name}: {value}\r\n" for name, value in binary_headers(event)]
        return b"".join((
            self._head, "".join(lines).encode("latin-1"),
            b"Content-Length: ", str(len(body)).encode(), b"\r\n\r\n", body,
        ))

    async def _connect(self, done: int) -> _Connection:
        if self._connection is not None and not self._connection.closed:
            return self._connection
        loop = asyncio.get_running_loop()
        try:
            _, connection = await asyncio.wait_for(
                loop.create_connection(
                    _Connection, self.host, self.port, ssl=self.tls,
                    server_hostname=self.host if self.tls is not None else None,
                ),
                CONNECT_TIMEOUT,
            )
        except (OSError, asyncio.TimeoutError) as exc:
            raise SinkDown(done, f"cannot connect to {self.url}: {exc or 'timed out'}") from None
        self._connection = connection
        return connection

    def _close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    async def close(self) -> None:
        self._close()
