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


class Executor:
    def __init__(self, threads: int | None = None) -> None:
        self.threads = threads or max(4, (os.cpu_count() or 1) * 2)
        self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="shoal-model")

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    def shutdown(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
