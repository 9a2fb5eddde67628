"""Runs blocking model code off the event loop.

One set of threads for the process: model code that releases the GIL (numpy, scikit-learn,
most frameworks) runs in parallel, and the event loop stays free for health checks, metadata
and other models while a slow ``predict`` is busy.

Not ``loop.run_in_executor``: that chains a ``concurrent.futures.Future`` to an asyncio one
through two sets of callbacks and a lock, which measured about 15 µs per call here, a tenth
of a small model's whole request. A thread here takes ``(function, arguments, future)`` from
a queue and hands the result straight to the loop with ``call_soon_threadsafe``.
"""

from __future__ import annotations

import asyncio
import os
import queue
import threading
import time
from typing import Any, Callable, TypeVar

T = TypeVar("T")

_Job = tuple[Callable[..., Any], tuple[Any, ...], asyncio.AbstractEventLoop, asyncio.Future[Any]]


def usable_cpus() -> int:
    """CPUs this process may run on (``taskset``, cgroup cpusets), not the machine's count."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS, Windows
        return os.cpu_count() or 1


def _settle(future: asyncio.Future[Any], ok: bool, value: Any) -> None:
    if future.done():  # its caller stopped waiting (timeout, client gone)
        return
    if ok:
        future.set_result(value)
    else:
        future.set_exception(value)


class Executor:
    def __init__(self, threads: int | None = None) -> None:
        self.threads = threads or max(4, 2 * usable_cpus())
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        # All threads start now: starting them on demand would have to count queued jobs
        # against idle threads under a lock on every call; idle threads cost next to nothing.
        self._workers = [
            threading.Thread(target=self._work, name=f"shoal-model-{i}", daemon=True)
            for i in range(self.threads)
        ]
        for worker in self._workers:
            worker.start()

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._jobs.put((fn, args, loop, future))
        return await future

    def _work(self) -> None:
        jobs = self._jobs
        while True:
            job = jobs.get()
            if job is None:
                return
            fn, args, loop, future = job
            try:
                outcome = (True, fn(*args))
            except BaseException as exc:  # handed to the awaiting coroutine, which re-raises
                outcome = (False, exc)
            del job, fn, args
            try:
                loop.call_soon_threadsafe(_settle, future, *outcome)
            except RuntimeError:  # the loop is closed: nobody is waiting any more
                pass

    def shutdown(self, timeout: float | None = None) -> None:
        """Let the jobs already running finish, for up to ``timeout`` seconds in all (None: as
        long as they take); jobs still queued are cancelled. The threads are daemons: one
        still running a hung model does not keep the process from exiting."""
        while True:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                try:
                    job[2].call_soon_threadsafe(job[3].cancel)
                except RuntimeError:
                    pass
        for _ in self._workers:
            self._jobs.put(None)
        deadline = None if timeout is None else time.monotonic() + timeout
        for worker in self._workers:
            worker.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
