"""What the tracing tests share: a Shoal server run in-process on a thread of its own, a small
OTLP/HTTP receiver that decodes what the exporter sends with ``opentelemetry-proto``, and
the model repositories they serve."""

from __future__ import annotations

import asyncio
import gzip
import sys
import threading
import time
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx

from shoal.server.app import ShoalServer
from shoal.settings import ServerSettings

TESTS = Path(__file__).resolve().parents[1]
if str(TESTS) not in sys.path:  # the end-to-end helpers, when this folder runs on its own
    sys.path.insert(0, str(TESTS))

from e2e.models import iris_rows, sklearn_iris, write
from e2e.process import ShoalProcess

__all__ = ["InProcess", "OtlpReceiver", "ShoalProcess", "iris_rows", "serve_in_process",
           "sklearn_iris", "write"]

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"


def traceparent(trace_id: str, parent: str = PARENT_ID) -> str:
    return f"00-{trace_id}-{parent}-01"


def v2_body(rows: int = 1) -> dict[str, Any]:
    data = iris_rows(rows)
    return {"inputs": [{"name": "x", "shape": list(data.shape), "datatype": "FP64",
                        "data": data.ravel().tolist()}]}


# -- an in-process server ----------------------------------------------------------------------


class _ThreadLoop(asyncio.SelectorEventLoop):
    """The event loop of a server on a background thread: signals are the main thread's, and
    this server is stopped with ``request_stop`` instead."""

    def add_signal_handler(self, sig: int, callback: Any, *args: Any) -> None:
        pass


@dataclass
class InProcess:
    server: ShoalServer
    url: str = ""
    grpc_target: str = ""
    listening: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None


@contextmanager
def serve_in_process(repository: Path, timeout: float = 60.0) -> Iterator[InProcess]:
    """A ready ``ShoalServer`` on free ports, served by a loop on its own thread (so that the
    test talks to it with ordinary blocking clients); stopped, drained, on exit."""
    settings = ServerSettings(repository=repository, http_port=0, grpc_port=0)

    def listening(http_port: int, grpc_port: int) -> None:
        running.url = f"http://127.0.0.1:{http_port}"
        running.grpc_target = f"127.0.0.1:{grpc_port}"
        running.listening.set()

    running = InProcess(ShoalServer(settings, on_listening=listening))
    loop = _ThreadLoop()

    def serve() -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(running.server.serve())
        except BaseException as exc:  # handed to the test's thread
            running.error = exc
        finally:
            running.listening.set()

    thread = threading.Thread(target=serve, name="shoal-in-process", daemon=True)
    thread.start()
    try:
        if not running.listening.wait(timeout) or running.error is not None:
            raise RuntimeError(f"the in-process server did not start: {running.error!r}")
        _wait_ready(running.url, timeout)
        yield running
    finally:
        loop.call_soon_threadsafe(running.server.request_stop)
        thread.join(timeout)
        loop.close()
    if running.error is not None:
        raise running.error


def _wait_ready(url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if httpx.get(f"{url}/v2/health/ready", timeout=5).status_code == 200:
            return
        time.sleep(0.02)
    raise TimeoutError("the in-process server did not become ready")


# -- an OTLP/HTTP receiver ---------------------------------------------------------------------


@dataclass(frozen=True)
class ReceivedSpan:
    service: str
    trace_id: str
    span_id: str
    parent_id: str
    name: str
    kind: str
    attributes: dict[str, Any]
    links: list[tuple[str, str]]


class OtlpReceiver:
    """``POST /v1/traces`` with an ``ExportTraceServiceRequest`` (protobuf, maybe gzipped),
    as a collector takes it: each span is kept, with the service that sent it."""

    def __init__(self) -> None:
        self.spans: list[ReceivedSpan] = []
        self.paths: list[str] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                encoding = self.headers.get("Content-Encoding", "")
                if encoding == "gzip":
                    body = gzip.decompress(body)
                elif encoding == "deflate":
                    body = zlib.decompress(body)
                receiver._take(self.path, body)
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self._server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> OtlpReceiver:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _take(self, path: str, body: bytes) -> None:
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
            ExportTraceServiceRequest,
        )
        from opentelemetry.proto.trace.v1.trace_pb2 import Span

        message = ExportTraceServiceRequest.FromString(body)
        spans = []
        for resource_spans in message.resource_spans:
            resource = _attributes(resource_spans.resource.attributes)
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    spans.append(ReceivedSpan(
                        resource.get("service.name", ""), span.trace_id.hex(), span.span_id.hex(),
                        span.parent_span_id.hex(), span.name, Span.SpanKind.Name(span.kind),
                        _attributes(span.attributes),
                        [(link.trace_id.hex(), link.span_id.hex()) for link in span.links],
                    ))
        with self._lock:
            self.paths.append(path)
            self.spans.extend(spans)

    def received(self) -> list[ReceivedSpan]:
        with self._lock:
            return list(self.spans)


def _attributes(pairs: Any) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for pair in pairs:
        value = pair.value
        kind = value.WhichOneof("value")
        found[pair.key] = getattr(value, kind) if kind else None
    return found
