"""uvicorn's httptools protocol, with a size limit and a time limit on each request head.

uvicorn reads a request line and headers of any size (httptools keeps a header value growing
until it ends) and waits for them forever. This protocol counts the bytes of each request
head as they arrive and never feeds the parser more than ``max_header_size`` of them: a head
that does not end within the limit gets ``431`` and the connection closes. A head that has
not arrived in full ``header_timeout`` seconds after its first byte (or after the connection
opened) gets ``408`` and the connection closes, as Go's ``ReadHeaderTimeout``.

Counting is per ``data_received``, not per header: a request whose head arrives in one read
(nearly all of them) costs an addition and a comparison, and no timer (a connection costs
one, for its first request). Bodies are not counted (``--max-request-size`` bounds them), and
an idle keep-alive connection is left to uvicorn's own keep-alive timeout. A pipelined head
that starts in the same read as the end of the request before it is counted from its next
read, so it may pass the limit by what that one read held (the parser still holds at most
the limit plus one read).

A response whose head carries ``content-length`` goes out in one write, head and body
together (uvicorn writes them apart: two socket writes, two TCP segments for the client to
read): the head is held until the body's first write, or until the response ends without one
(``HEAD``) or the connection closes. A streamed response (no ``content-length``) is written as
uvicorn writes it, so its head reaches the client before its first chunk is ready.

The inference routes, the hot path, go further (:func:`connection_of`, :func:`take_body`,
:func:`send_whole`): they take a body that has fully arrived straight from the request cycle,
and write a whole sized answer with one call, doing what uvicorn's ``receive`` and ``send``
do for those messages without the ASGI messages, coroutines and per-header checks of its
own constant headers (a tenth of such a request's cost). Anything else (a body still
arriving, a paused writer, the access log on) takes the ASGI path.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from uvicorn.protocols.http.httptools_impl import (
    HEADER_RE,
    HEADER_VALUE_RE,
    STATUS_LINE,
    HttpToolsProtocol,
)

#: How long a refused connection keeps reading (and dropping) what the client still sends
#: before it closes. Closing at once, with unread bytes, makes the kernel reset the connection,
#: and a client still sending its request would lose the answer.
LINGER_SECONDS = 2.0

_REFUSED = -1  # ``_head`` once the head was refused: drop everything until closed

# Called directly rather than through super(): these run for every request.
_data_received = HttpToolsProtocol.data_received
_on_headers_complete = HttpToolsProtocol.on_headers_complete
_on_message_complete = HttpToolsProtocol.on_message_complete


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    max_header_size = 64 * 1024
    header_timeout = 10.0  # 0: no limit

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Bytes of the request head received so far; None while a request's body is read
        # (or while it is answered), from its end of headers to the end of its body.
        self._head: int | None = 0
        self._head_timer: asyncio.TimerHandle | None = None

    # ---- asyncio.Protocol -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head_timer()  # a connection that never sends a request closes too

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        head = self._head
        if head is None:  # a request body
            _data_received(self, data)
            return
        if head == _REFUSED:
            return
        size = head + len(data)
        if size <= self.max_header_size:
            self._head = size
            _data_received(self, data)
            if self._head and self._head_timer is None:  # a head still incomplete
                self._arm_head_timer()
            return
        # Over the limit if all of it were head: feed no more than the limit, and see whether
        # the head ended within it (a small head with a large body in one read does).
        room = self.max_header_size - head
        self._head = self.max_header_size
        view = memoryview(data)
        if room:
            _data_received(self, view[:room])
        if self.transport.is_closing():
            return
        if self._head == self.max_header_size:
            self._refuse_head()
        else:
            self.data_received(view[room:])

    # ---- httptools parser callbacks ---------------------------------------------------------

    def on_headers_complete(self) -> None:
        self._head = None
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        cycle = self.cycle
        _on_headers_complete(self)
        if self.cycle is not cycle and self.cycle is not None:  # a request to answer
            _hold_sized_heads(self.cycle)

    def on_message_complete(self) -> None:
        self._head = 0  # whatever comes next is the next request's head
        _on_message_complete(self)

    # ---- limits -----------------------------------------------------------------------------

    def _arm_head_timer(self) -> None:
        if self.header_timeout > 0:
            self._head_timer = self.loop.call_later(self.header_timeout, self._head_timed_out)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.transport.is_closing():
            return
        if self._answering():  # a pipelined head stalled behind an answer: close after it
            self._head = _REFUSED
            self.cycle.keep_alive = False
            return
        if self._head:  # part of a request arrived: say why it goes unanswered
            self._write_error(
                408, f"the request line and headers did not arrive within "
                     f"{self.header_timeout:g} seconds"
            )
        self.transport.close()

    def _refuse_head(self) -> None:
        self._head = _REFUSED
        self._cancel_head_timer()
        if self._answering():  # a pipelined head behind an answer: close after it
            self.cycle.keep_alive = False
            return
        self._write_error(
            431, f"the request line and headers exceed the {self.max_header_size}-byte limit"
        )
        # Lingering close: the answer and a FIN go out now, what the client still sends is
        # read and dropped, and the connection closes when the client closes or after a moment.
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self._head_timer = self.loop.call_later(LINGER_SECONDS, self.transport.close)

    def _answering(self) -> bool:
        return self.cycle is not None and not self.cycle.response_complete

    def _write_error(self, status: int, message: str) -> None:
        body = orjson.dumps({"error": message})
        content = [STATUS_LINE[status]]
        for name, value in self.server_state.default_headers:
            content.extend([name, b": ", value, b"\r\n"])
        content.append(b"content-type: application/json\r\ncontent-length: %d\r\n"
                       b"connection: close\r\n\r\n" % len(body))
        content.append(body)
        self.transport.write(b"".join(content))


class _HeldHead:
    """A response's transport that can keep the response head back and send it with the
    body's first write (see the module's docstring)."""

    __slots__ = ("transport", "held", "hold")

    def __init__(self, transport: Any) -> None:
        self.transport = transport
        self.held: bytes | None = None
        self.hold = False

    def write(self, data: bytes) -> None:
        if self.hold:
            self.hold = False
            self.held = data
            return
        held = self.held
        if held is not None:
            self.held = None
            data = held + data
        self.transport.write(data)

    def flush(self) -> None:
        held = self.held
        if held is not None:
            self.held = None
            self.transport.write(held)

    def close(self) -> None:
        self.flush()
        self.transport.close()

    def is_closing(self) -> bool:
        return self.transport.is_closing()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.transport, name)


_CONTENT_LENGTH = b"content-length"


def _hold_sized_heads(cycle: Any) -> None:
    """Make ``cycle`` (uvicorn's RequestResponseCycle) send a response head that carries
    ``content-length`` in the same write as the body."""
    held = cycle.transport = _HeldHead(cycle.transport)
    send = cycle.send

    async def send_held(message: Any) -> None:
        if message["type"] == "http.response.start" and not cycle.response_started:
            for name, _ in message.get("headers", ()):
                if name.lower() == _CONTENT_LENGTH:
                    held.hold = True  # the head's write, which uvicorn makes now, is kept
                    try:
                        await send(message)
                    finally:
                        held.hold = False
                    return
            await send(message)
            return
        try:
            await send(message)
        finally:
            held.flush()  # a body without a write (HEAD) still gets its head out

    cycle.send = send_held


def connection_of(receive: Any) -> Any | None:
    """The request cycle behind an ASGI ``receive`` when it is this module's (see
    :func:`take_body` and :func:`send_whole`), else None."""
    cycle = getattr(receive, "__self__", None)
    return cycle if type(getattr(cycle, "transport", None)) is _HeldHead else None


def take_body(cycle: Any) -> bytes | None:
    """The request body, when all of it has arrived (nearly always, by the time the app
    runs), as ``receive`` would hand it over; None to read it through ``receive``."""
    if cycle.more_body or cycle.waiting_for_100_continue or cycle.disconnected:
        return None
    # As receive does: a large body that arrived in one read paused reading; reading again
    # lets a client that goes away be noticed while its request runs.
    cycle.flow.resume_reading()
    body = bytes(cycle.body)
    cycle.body = bytearray()
    cycle.message_event.clear()
    return body


_FRAMING = frozenset({b"content-length", b"transfer-encoding", b"connection"})


def send_whole(cycle: Any, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> bool:
    """Answer with ``status``, ``headers`` (framing is this function's: no content-length,
    transfer-encoding or connection among them) and ``body`` in one write, the bytes uvicorn's
    ``send`` writes for a start message with ``content-length`` first in its headers and a
    final body message. False, having done nothing, where
    the ASGI path must do it: the answer started, the writer paused for the client to read,
    a HEAD request, the access log on, or a framing header."""
    if (cycle.response_started or cycle.flow.write_paused or cycle.access_log
            or cycle.scope["method"] == "HEAD"):
        return False
    content = [STATUS_LINE[status]]
    for name, value in cycle.default_headers:
        content.extend((name, b": ", value, b"\r\n"))
    content.append(b"content-length: %d\r\n" % len(body))
    for name, value in headers:
        name = name.lower()
        if name in _FRAMING:
            return False
        if HEADER_RE.search(name) or HEADER_VALUE_RE.search(value):
            return False  # uvicorn's send refuses it
        content.extend((name, b": ", value, b"\r\n"))
    cycle.response_started = True
    cycle.waiting_for_100_continue = False
    if cycle.disconnected:
        return True  # what uvicorn's send does: nobody to write to
    if not cycle.keep_alive:
        content.append(b"connection: close\r\n")
    content.append(b"\r\n")
    content.append(body)
    cycle.chunked_encoding = False
    cycle.expected_content_length = 0
    cycle.transport.write(b"".join(content))
    cycle.response_complete = True
    cycle.message_event.set()
    if not cycle.keep_alive:
        cycle.transport.close()
    cycle.on_response()
    return True


def http_protocol(max_header_size: int, header_timeout: float) -> type[LimitedHttpToolsProtocol]:
    """The protocol class for ``uvicorn.Config(http=...)``, with these limits."""
    return type(
        "ShoalHttpProtocol", (LimitedHttpToolsProtocol,),
        {"max_header_size": max_header_size, "header_timeout": header_timeout},
    )
