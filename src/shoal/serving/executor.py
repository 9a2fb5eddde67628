"""Runs blocking model code off the event loop.

One thread pool for the process: model code that releases the GIL (numpy, scikit-learn,
most frameworks) runs in parallel, and the event loop stays free for health checks, metadata
and other models while a slow ``predict`` is busy.
"""

from __future__ import annotations

import asyncio
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, TypeVar

T = TypeVar("T")


def usable_cpus() -> int:
    """CPUs this process may run on (``taskset``, cgroup cpusets), not the machine's count."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS, Windows
        return os.cpu_count() or 1


class Executor:
    def __init__(self, threads: int | None = None) -> None:
        self.threads = threads or max(4, 2 * usable_cpus())
        self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="shoal-model")

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    def shutdown(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
