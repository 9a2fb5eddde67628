"""The worker process: load models, run requests one at a time, answer over the socket.

A worker runs one request at a time on its main thread: that is the point of a worker for
GIL-bound code, and it keeps the model's behaviour the same as in the server (the same
:class:`~shoal.serving.endpoint.ModelEndpoint` runs its stages, with an executor that calls
them inline). It exits when the server closes the socket, so a server that dies never leaves
workers behind.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import signal
import socket
import sys
from pathlib import Path
from typing import Any, Callable, TypeVar

from ...errors import LoadError, ShoalError, Unavailable
from ...observe import logging as log
from ...repository.config import ModelConfig
from ...runtimes import create_model, declare_metadata
from ..endpoint import ModelEndpoint
from . import wire

T = TypeVar("T")


class InlineExecutor:
    """Runs sync model code right here: the worker's main thread is the model's thread."""

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        return fn(*args)


def _recv_exactly(sock: socket.socket, size: int) -> bytes:
    buffer = bytearray(size)
    view = memoryview(buffer)
    got = 0
    while got < size:
        n = sock.recv_into(view[got:])
        if not n:
            raise EOFError
        got += n
    return bytes(buffer)


class Worker:
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.endpoints: dict[str, ModelEndpoint] = {}

    def handle(self, op: str, payload: Any) -> Any:
        if op == "infer":
            key, packed = payload
            endpoint = self.endpoints.get(key)
            if endpoint is None:  # the server's wiring, never the client's fault
                raise Unavailable(f"model {key!r} is not loaded in this worker process")
            request = wire.unpack_request(packed)
            response = self.loop.run_until_complete(endpoint._execute(request))
            return wire.pack_response(response)
        if op == "load":
            return self.load(*payload)
        if op == "unload":
            endpoint = self.endpoints.pop(payload, None)
            if endpoint is not None:
                self._call(endpoint.model.unload)
            return None
        raise ValueError(f"unknown worker operation {op!r}")

    def load(
        self, key: str, name: str, version: str, version_dir: str, model_dir: str,
        config: dict[str, Any],
    ) -> tuple[str, list[Any], list[Any]]:
        settings = ModelConfig.model_validate(config)
        model = create_model(name, version, Path(version_dir), Path(model_dir), settings)
        self._call(model.load)
        declare_metadata(model, settings)
        self.endpoints[key] = ModelEndpoint(model, InlineExecutor())  # type: ignore[arg-type]
        return model.platform, model.inputs, model.outputs

    def _call(self, fn: Callable[[], Any]) -> Any:
        if inspect.iscoroutinefunction(fn):
            return self.loop.run_until_complete(fn())
        return fn()


def main(sock: socket.socket, log_level: str, env: dict[str, str] | None = None) -> None:
    # Before any model code: e.g. CUDA_VISIBLE_DEVICES, read when a framework first
    # initialises CUDA.
    os.environ.update(env or {})
    # Ctrl-C and a group-wide SIGTERM reach workers too, but the server decides when they
    # stop: it drains its requests first, then closes their sockets.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    log.configure(log_level)
    worker = Worker()
    sock.setblocking(True)
    try:
        while True:
            (size,) = wire.HEADER.unpack(_recv_exactly(sock, wire.HEADER.size))
            call_id, op, payload = wire.loads(_recv_exactly(sock, size))
            try:
                reply = (call_id, True, worker.handle(op, payload))
            except ShoalError as exc:
                reply = (call_id, False, (type(exc).__name__, str(exc)))
            except Exception as exc:  # a load or unload that failed outside ShoalError
                reply = (call_id, False, ("LoadError" if op == "load" else "ModelFailure",
                                          f"{type(exc).__name__}: {exc}"))
            try:
                message = wire.dumps(reply)
            except Exception as exc:  # e.g. a model put an unpicklable object in parameters
                message = wire.dumps((call_id, False, (
                    "ModelFailure", f"the result cannot cross to the server: {exc}")))
            sock.sendall(message)
    except (EOFError, ConnectionError):
        pass  # the server closed the socket: it is stopping, or it is gone
    finally:
        # runtime: process programs started here get SIGTERM first, and a short grace (the
        # server may be gone): they would die by their parent-death signal anyway.
        supervisor = sys.modules.get("shoal.runtimes.process_supervisor")
        if supervisor is not None:
            worker.loop.run_until_complete(
                supervisor.stop_all(min(supervisor.default_stop_timeout(), 2.0)))
        wire.sweep(os.getpid())
        sys.exit(0)
