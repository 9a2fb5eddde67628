"""The model-code executor: results, errors, abandoned waiters, threads, shutdown."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from shoal.serving.executor import Executor


def test_runs_off_the_loop_thread_and_returns_or_raises() -> None:
    executor = Executor(2)

    async def main() -> None:
        loop_thread = threading.get_ident()
        assert await executor.run(threading.get_ident) != loop_thread
        assert await executor.run(pow, 2, 10) == 1024
        with pytest.raises(ZeroDivisionError):
            await executor.run(lambda: 1 / 0)

    try:
        asyncio.run(main())
    finally:
        executor.shutdown()


def test_jobs_run_in_parallel_up_to_the_thread_count() -> None:
    executor = Executor(3)

    async def main() -> float:
        await executor.run(time.sleep, 0.01)  # a thread has run a job and waits for more
        started = time.perf_counter()
        await asyncio.gather(*(executor.run(time.sleep, 0.2) for _ in range(3)))
        return time.perf_counter() - started

    try:
        assert asyncio.run(main()) < 0.5  # three at once, not 0.6 s one after another
    finally:
        executor.shutdown()


def test_a_waiter_that_gives_up_does_not_break_the_thread() -> None:
    executor = Executor(1)

    async def main() -> int:
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(executor.run(time.sleep, 0.2), 0.05)
        return await executor.run(lambda: 7)  # the same thread, after the abandoned job

    try:
        assert asyncio.run(main()) == 7
    finally:
        executor.shutdown()


def test_shutdown_cancels_queued_jobs_and_stops_threads() -> None:
    executor = Executor(1)

    async def main() -> list[object]:
        running = asyncio.ensure_future(executor.run(time.sleep, 0.2))
        queued = asyncio.ensure_future(executor.run(lambda: "never"))
        await asyncio.sleep(0.05)
        executor.shutdown()
        return await asyncio.gather(running, queued, return_exceptions=True)

    running, queued = asyncio.run(main())
    assert running is None and isinstance(queued, asyncio.CancelledError)
    assert not any(w.is_alive() for w in executor._workers)
