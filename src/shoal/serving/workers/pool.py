"""The server's side of the worker processes: start, place, dispatch, restart.

Workers form one pool for the whole server. A model asking for ``workers: N`` is loaded into
the N workers that host the fewest models, and only there: twenty one-worker models spread
over the pool instead of twenty copies in every process. A request goes to the least busy
worker hosting its model.

A worker that dies fails only the requests it was running (503 / UNAVAILABLE, saying so);
the pool starts a new process in its place and loads its models again, while the model's
other workers, if any, keep answering.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import multiprocessing
import os
import socket
import time
from typing import Any

from ... import errors
from ...errors import LoadError, ModelFailure, ShoalError, Unavailable
from ...observe import logging as log
from ...types import InferenceRequest, InferenceResponse
from . import child, wire

#: What a model load sends to a worker: key, name, version, version_dir, model_dir, config.
LoadSpec = tuple[str, str, str, str, str, dict[str, Any]]


def _error(kind: str, message: str) -> ShoalError:
    cls = getattr(errors, kind, None)
    if not (isinstance(cls, type) and issubclass(cls, ShoalError)):
        cls = ModelFailure
    return cls(message)


class WorkerProcess:
    """One worker process, its socket, and the calls waiting for its answers."""

    def __init__(
        self, pool: WorkerPool, index: int | str, env: dict[str, str] | None = None
    ) -> None:
        self.pool = pool
        self.index = index
        #: Environment variables set in the process before any model code runs (e.g. the
        #: ``CUDA_VISIBLE_DEVICES`` of an autoscaled replica).
        self.env = dict(env or {})
        #: Set when the process is being stopped on purpose: its exit is not a crash.
        self.stopping = False
        #: Called after a (re)start with the models that could not be loaded again (an
        #: autoscaled replica then replaces itself instead of answering without its model).
        self.on_started: Any = None
        self.models: dict[str, LoadSpec] = {}
        self.pending: dict[int, tuple[asyncio.Future[Any], str]] = {}
        self.ready = False
        self.pid = 0
        self._ids = itertools.count()
        self._process: Any = None
        self._writer: asyncio.StreamWriter | None = None
        self._reading: asyncio.Task[None] | None = None
        self._started = 0.0
        self._quick_crashes = 0

    async def start(self) -> None:
        ours, theirs = socket.socketpair()
        context = multiprocessing.get_context("spawn")
        process = context.Process(
            target=child.main, args=(theirs, self.pool.log_level, {**self.pool.env, **self.env}),
            name=f"shoal-worker-{self.index}", daemon=True,
        )
        try:
            process.start()
        except BaseException:  # e.g. fork failing with ENOMEM: nothing to stop later
            ours.close()
            raise
        finally:
            theirs.close()
        self._process = process
        self.pid = process.pid
        self._started = time.monotonic()
        reader, self._writer = await asyncio.open_unix_connection(sock=ours)
        self._reading = asyncio.create_task(self._read(reader))
        lost = []
        for spec in list(self.models.values()):  # after a restart: the models it hosted
            try:
                await self.call("load", spec, starting=True)
            except ShoalError as exc:
                self.models.pop(spec[0], None)
                lost.append(spec[0])
                log.event("worker_model_reload_failed", logging.ERROR, worker=self.index,
                          model=spec[1], version=spec[2], reason=str(exc))
        self.ready = True
        if self.on_started is not None:
            self.on_started(self, lost)

    async def call(self, op: str, payload: Any, starting: bool = False) -> Any:
        if not (self.ready or starting) or self._writer is None:
            raise Unavailable(f"worker process {self.index} is restarting")
        call_id = next(self._ids)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.pending[call_id] = (future, op)
        self._writer.write(wire.dumps((call_id, op, payload)))
        return await future

    async def _read(self, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                (size,) = wire.HEADER.unpack(await reader.readexactly(wire.HEADER.size))
                call_id, ok, result = wire.loads(await reader.readexactly(size))
                future, op = self.pending.pop(call_id, (None, ""))
                if future is None or future.done():  # its client gave up meanwhile
                    if ok and op == "infer":
                        wire.discard(wire.shm_names(result[0]))
                elif ok:
                    future.set_result(result)
                else:
                    future.set_exception(_error(*result))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        await self._exited()

    async def _exited(self) -> None:
        self.ready = False
        process, self._writer = self._process, None
        await asyncio.get_running_loop().run_in_executor(None, process.join, 5)
        code = process.exitcode
        wire.sweep(process.pid)
        error = Unavailable(
            f"worker process {self.index} (pid {process.pid}) exited with code {code} while "
            "running this request; it is being restarted"
        )
        for future, _ in self.pending.values():
            if not future.done():
                future.set_exception(error)
        self.pending.clear()
        if self.pool.closing or self.stopping:
            return
        log.event("worker_crashed", logging.ERROR, worker=self.index, pid=process.pid,
                  exitcode=code, models=sorted(spec[1] for spec in self.models.values()))
        self.pool.restarts += 1
        if self.pool.on_restart is not None:
            self.pool.on_restart()
        # A worker that keeps dying right after starting (a model whose load crashes the
        # process) is restarted with a growing pause instead of in a tight loop.
        quick = time.monotonic() - self._started < 10
        self._quick_crashes = self._quick_crashes + 1 if quick else 0
        if self._quick_crashes > 1:
            await asyncio.sleep(min(2.0 ** (self._quick_crashes - 2), 30.0))
        if not (self.pool.closing or self.stopping):
            await self.start()
        log.event("worker_restarted", worker=self.index, pid=self.pid)

    async def stop(self, timeout: float) -> None:
        self.ready = False
        self.stopping = True
        if self._writer is not None:
            self._writer.close()  # the worker exits when its socket closes
        process = self._process
        if process is None:
            return
        await asyncio.get_running_loop().run_in_executor(None, process.join, timeout)
        if process.is_alive():
            process.kill()
            await asyncio.get_running_loop().run_in_executor(None, process.join, 5)
        wire.sweep(process.pid)


class WorkerPool:
    """All worker processes of one server; processes start when a model first needs them."""

    def __init__(self, log_level: str = "info", size: int = 0) -> None:
        self.log_level = log_level
        #: Environment variables every worker process gets (before its own ``env``).
        self.env: dict[str, str] = {}
        #: Processes to spread models over (--workers); more start when a model asks for more.
        self.size = size
        self.workers: list[WorkerProcess] = []
        self.placements: dict[str, list[WorkerProcess]] = {}
        self.closing = False
        self.restarts = 0
        self.on_restart: Any = None
        self._grow = asyncio.Lock()

    async def _ensure(self, count: int) -> None:
        async with self._grow:
            while len(self.workers) < count:
                worker = WorkerProcess(self, len(self.workers))
                self.workers.append(worker)
                await worker.start()

    async def load(self, spec: LoadSpec, count: int) -> Any:
        """Load a model into ``count`` workers; returns what the first worker reported."""
        await self._ensure(max(count, self.size))
        chosen = sorted(self.workers, key=lambda w: (len(w.models), w.index))[:count]
        for worker in chosen:  # claimed now, so models loading at the same time spread out
            worker.models[spec[0]] = spec
        results = await asyncio.gather(
            *(w.call("load", spec) for w in chosen), return_exceptions=True
        )
        failure = next((r for r in results if isinstance(r, BaseException)), None)
        if failure is not None:
            for worker in chosen:
                worker.models.pop(spec[0], None)
            loaded = [w for w, r in zip(chosen, results) if not isinstance(r, BaseException)]
            await asyncio.gather(*(w.call("unload", spec[0]) for w in loaded),
                                 return_exceptions=True)
            if isinstance(failure, LoadError):
                raise failure
            raise LoadError(str(failure)) from failure
        self.placements[spec[0]] = chosen
        return results[0]

    async def infer(self, key: str, request: InferenceRequest) -> InferenceResponse:
        candidates = [w for w in self.placements.get(key, ()) if w.ready]
        if not candidates:
            raise Unavailable(f"model {request.model_name!r}: its worker processes are restarting")
        worker = min(candidates, key=lambda w: len(w.pending))
        packed = wire.pack_request(request)
        try:
            result = await worker.call("infer", (key, packed))
        except BaseException:
            wire.discard(wire.shm_names(packed[0]))
            raise
        return wire.unpack_response(result)

    async def unload(self, key: str) -> None:
        workers = self.placements.pop(key, [])
        for worker in workers:
            worker.models.pop(key, None)
        await asyncio.gather(
            *(w.call("unload", key) for w in workers if w.ready), return_exceptions=True
        )

    async def close(self, timeout: float = 10.0) -> None:
        self.closing = True
        await asyncio.gather(*(w.stop(timeout) for w in self.workers))
        wire.sweep(os.getpid())
