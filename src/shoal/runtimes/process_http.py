"""The process runtime's HTTP/1.1 client: plain HTTP to a program on loopback.

The remote-model client (``triton.HttpRemote``) builds the requests and reads the answers;
this module only carries them, in place of aiohttp. aiohttp's client costs about 0.25 ms of
CPU per request on the 2-core benchmark machine, more than the rest of Shoal's request path,
while Shoal and its program share the cores; a pool of asyncio connections parsed by
httptools (uvicorn's parser, already a dependency) costs about 0.08 ms.

It does what talking to a local V2 program needs and no more: keep-alive connections (one
request at a time on each), ``Content-Length``, chunked and read-until-close answers,
``Connection: close``, a time limit per call. No TLS, proxies, redirects or compression: a
remote server on another machine keeps the triton runtime's aiohttp client.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httptools

from ..errors import DeadlineExceeded, ModelFailure
from .triton import (
    CONNECT_TIMEOUT_S,
    HttpRemote,
    RemoteUnreachable,
    TritonModel,
    error_message,
    http_error,
)

#: Idle connections kept per program; more are closed after their answer.
MAX_IDLE = 32


class Answer:
    """An HTTP answer: status, reason phrase, headers (lower-case names), body."""

    __slots__ = ("body", "headers", "keep_alive", "reason", "status")

    def __init__(self, status: int, reason: str, headers: dict[str, str], body: bytes,
                 keep_alive: bool) -> None:
        self.status, self.reason, self.headers = status, reason, headers
        self.body, self.keep_alive = body, keep_alive


class Connection(asyncio.Protocol):
    """One keep-alive connection; ``request`` sends one request and waits for its answer."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self._parser = httptools.HttpResponseParser(self)
        self._waiter: asyncio.Future[Answer] | None = None
        self._reset()

    def _reset(self) -> None:
        self._reason = ""
        self._headers: dict[str, str] = {}
        self._body: list[bytes] = []
        self._headers_done = False

    # -- asyncio ----------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(ModelFailure(f"an answer that is not HTTP/1.1 ({exc})"))
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        waiter = self._waiter
        if waiter is None or waiter.done():
            return
        if self._headers_done and not ({"content-length", "transfer-encoding"} & self._headers.keys()):
            self._complete(keep_alive=False)  # an answer that ends with the connection
            return
        self._fail(ConnectionResetError(
            "the connection closed before the answer" + ("" if exc is None else f" ({exc})")))

    # -- httptools ----------------------------------------------------------------------------

    def on_status(self, status: bytes) -> None:
        self._reason = status.decode("latin-1")

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        self._headers_done = True

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        self._complete(self._parser.should_keep_alive())

    # -- requests -------------------------------------------------------------------------------

    def request(self, data: bytes) -> asyncio.Future[Answer]:
        assert self.transport is not None
        self._waiter = asyncio.get_running_loop().create_future()
        self.transport.write(data)
        return self._waiter

    def _complete(self, keep_alive: bool) -> None:
        waiter, self._waiter = self._waiter, None
        answer = Answer(self._parser.get_status_code(), self._reason, self._headers,
                        b"".join(self._body), keep_alive)
        self._reset()
        if waiter is not None and not waiter.done():
            waiter.set_result(answer)

    def _fail(self, exc: BaseException) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)

    def time_out(self) -> None:
        self._fail(TimeoutError())
        self.close()

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class Pool:
    """Keep-alive connections to ``host:port``."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self._idle: list[Connection] = []
        self._closed = False

    async def send(self, data: bytes, timeout: float) -> Answer:
        """Send one whole request (head and body); its answer within ``timeout`` seconds."""
        connection = None
        while self._idle and connection is None:
            candidate = self._idle.pop()
            connection = None if candidate.closed else candidate
        loop = asyncio.get_running_loop()
        if connection is None:
            _, connection = await asyncio.wait_for(
                loop.create_connection(Connection, self.host, self.port),
                min(timeout, CONNECT_TIMEOUT_S),
            )
        timer = loop.call_later(timeout, connection.time_out)
        try:
            answer = await connection.request(data)
        except BaseException:  # failed, timed out or cancelled: the connection is unusable
            connection.close()
            raise
        finally:
            timer.cancel()
        if answer.keep_alive and not connection.closed and not self._closed \
                and len(self._idle) < MAX_IDLE:
            self._idle.append(connection)
        else:
            connection.close()
        return answer

    def close(self) -> None:
        self._closed = True
        for connection in self._idle:
            connection.close()
        self._idle.clear()


class LoopbackRemote(HttpRemote):
    """The remote-model client over :class:`Pool`: the same requests, answers and errors."""

    def __init__(self, model: TritonModel, host: str, port: int, binary: bool = True) -> None:
        self.host, self.port = host, port
        super().__init__(model, binary)

    def open(self) -> Pool:
        return Pool(self.host, self.port)

    async def _send(self, method: str, url: str, data: bytes = b"",
                    headers: dict[str, str] | None = None) -> tuple[int, Any, bytes]:
        where = self.model.where
        path = url[len(self.model.address):] or "/"
        lines = [f"{method} {path} HTTP/1.1", f"Host: {self.host}:{self.port}"]
        lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
        if data or method != "GET":
            lines.append(f"Content-Length: {len(data)}")
        request = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + data
        timeout = self.model.settings.timeout
        try:
            answer = await self.session.send(request, timeout)
        except (TimeoutError, asyncio.TimeoutError):
            raise DeadlineExceeded(f"{where} did not answer within {timeout:g} s") from None
        except OSError as exc:  # refused, reset, closed mid-answer
            raise RemoteUnreachable(f"{where} is unreachable: {exc.strerror or exc}") from None
        except ModelFailure as exc:
            raise ModelFailure(f"{where} sent {exc}") from None
        if answer.status >= 400:
            raise http_error(answer.status, error_message(answer.body, answer.reason), where)
        return answer.status, answer.headers, answer.body

    async def close(self) -> None:
        self.session.close()
