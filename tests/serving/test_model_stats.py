"""Per-version statistics as a real ModelEndpoint records them (Triton's counting rules)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from shoal import InferenceRequest, Model, Tensor, TensorSpec
from shoal.errors import InvalidInput, ModelFailure
from shoal.serving.batcher import BatchSettings
from shoal.serving.endpoint import ModelEndpoint
from shoal.serving.executor import Executor
from shoal.serving.stats import ModelStats


@pytest.fixture(scope="module")
def executor() -> Iterator[Executor]:
    executor = Executor(threads=4)
    yield executor
    executor.shutdown()


class Sleepy(Model):
    """Doubles its input after ``sleep`` seconds; a row of -1 makes it raise."""

    def __init__(self, sleep: float = 0.0) -> None:
        super().__init__("sleepy", "1")
        self.sleep = sleep
        self.inputs = [TensorSpec("x", "FP64", (-1, 2))]
        self.sizes: list[int] = []

    def predict(self, request: InferenceRequest) -> Any:
        x = request.as_numpy()
        self.sizes.append(len(x))
        time.sleep(self.sleep)
        if (x == -1).any():
            raise ValueError("poisoned")
        return {"y": x * 2}


class Staged(Sleepy):
    async def preprocess(self, request: InferenceRequest) -> InferenceRequest:
        await asyncio.sleep(0.01)
        return request

    def postprocess(self, response: Any) -> Any:
        time.sleep(0.01)
        return response


def rows(n: int, value: float = 1.0) -> InferenceRequest:
    return InferenceRequest([Tensor.from_numpy("x", np.full((n, 2), value))])


def test_model_stats_counts_requests_and_executions() -> None:
    stats = ModelStats()
    stats.executed(rows=6, requests=3, queue_ns=30, input_ns=1, infer_ns=10, output_ns=2)
    stats.executed(rows=6, requests=1, queue_ns=0, input_ns=1, infer_ns=20, output_ns=2)
    assert stats.last_inference == 0
    now = time.perf_counter_ns()
    stats.succeeded(now - 100, now)
    stats.failed(now, now + 7)
    assert (stats.execution_count, stats.inference_count, stats.requests_executed) == (2, 12, 4)
    # Per request: each of the 3 merged requests spent the batch's 10 ns in predict.
    assert (stats.queue_ns, stats.input_ns, stats.infer_ns, stats.output_ns) == (30, 4, 50, 8)
    batch = stats.batches[6]
    assert (batch.count, batch.input_ns, batch.infer_ns, batch.output_ns) == (2, 2, 30, 4)
    assert (stats.success_count, stats.success_ns) == (1, 100)
    assert (stats.fail_count, stats.fail_ns) == (1, 7)
    assert abs(stats.last_inference - time.time() * 1000) < 1000  # epoch milliseconds


def test_unbatched_requests_count_one_inference_each(executor: Executor) -> None:
    endpoint = ModelEndpoint(Sleepy(0.01), executor)

    async def main() -> None:
        for n in (1, 3, 5):
            await endpoint.infer(rows(n))

    asyncio.run(main())
    stats = endpoint.stats
    # Without batching Triton's max_batch_size is 0: a request is one inference of "batch" 1.
    assert (stats.success_count, stats.inference_count, stats.execution_count) == (3, 3, 3)
    assert list(stats.batches) == [1] and stats.batches[1].count == 3
    assert stats.infer_ns >= 3 * 10_000_000  # predict slept 10 ms each time
    assert stats.success_ns >= stats.queue_ns + stats.input_ns + stats.infer_ns + stats.output_ns
    assert stats.fail_count == 0


def test_merged_batch_is_one_execution_of_many_inferences(executor: Executor) -> None:
    model = Sleepy(0.05)
    endpoint = ModelEndpoint(model, executor, BatchSettings(16))

    async def main() -> None:
        first = asyncio.create_task(endpoint.infer(rows(1)))
        while not model.sizes:  # the model is busy with it: the next four queue up
            await asyncio.sleep(0.001)
        await asyncio.gather(first, *(endpoint.infer(rows(2)) for _ in range(4)))

    asyncio.run(main())
    assert model.sizes == [1, 8]
    stats = endpoint.stats
    assert (stats.success_count, stats.inference_count, stats.execution_count) == (5, 9, 2)
    assert sorted(stats.batches) == [1, 8]
    assert stats.batches[8].count == 1 and stats.requests_executed == 5
    # The four queued requests waited for the first execution (about 30 ms each, at least).
    assert stats.queue_ns >= 4 * 20_000_000
    # Each of them is charged the merged execution's predict time.
    assert stats.infer_ns >= 5 * 50_000_000
    assert stats.batches[8].infer_ns >= 50_000_000


def test_failures_count_as_fail_and_never_as_executions(executor: Executor) -> None:
    model = Sleepy()
    endpoint = ModelEndpoint(model, executor, BatchSettings(8))

    async def main() -> None:
        await endpoint.infer(rows(2))
        with pytest.raises(ModelFailure):
            await endpoint.infer(rows(1, -1.0))
        with pytest.raises(InvalidInput):  # wrong shape: refused before the model
            await endpoint.infer(InferenceRequest([Tensor.from_numpy("x", np.ones((1, 3)))]))

    asyncio.run(main())
    stats = endpoint.stats
    assert (stats.success_count, stats.fail_count) == (1, 2)
    assert (stats.inference_count, stats.execution_count, stats.requests_executed) == (2, 1, 1)
    assert stats.fail_ns > 0


def test_a_cancelled_request_is_neither_success_nor_failure(executor: Executor) -> None:
    endpoint = ModelEndpoint(Sleepy(0.2), executor)

    async def main() -> None:
        task = asyncio.create_task(endpoint.infer(rows(1)))
        await asyncio.sleep(0.02)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert (endpoint.stats.success_count, endpoint.stats.fail_count) == (0, 0)


def test_stage_times_with_async_and_sync_stages(executor: Executor) -> None:
    endpoint = ModelEndpoint(Staged(0.01), executor)
    asyncio.run(endpoint.infer(rows(1)))
    stats = endpoint.stats
    assert stats.input_ns >= 10_000_000  # async preprocess slept 10 ms
    assert stats.infer_ns >= 10_000_000
    assert stats.output_ns >= 10_000_000  # sync postprocess slept 10 ms
    assert stats.execution_count == 1 and stats.success_count == 1
