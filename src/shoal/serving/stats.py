"""Cumulative statistics of one model version, in the terms of Triton's statistics extension.

Recorded on the event loop only (the endpoint measures stage times on the model's thread and
records them once the execution is back on the loop), so plain integer adds need no lock.
Durations are nanoseconds from ``time.perf_counter_ns``. Per-request figures (success, fail,
queue, compute) count client requests; ``execution_count`` and the per-batch-size figures
count model executions, so a merged batch of 8 requests adds 8 to the former and 1 to the
latter, as Triton counts them.
"""

from __future__ import annotations

from time import perf_counter_ns, time_ns


class BatchStats:
    """Executions of one batch size and their summed stage times."""

    __slots__ = ("count", "input_ns", "infer_ns", "output_ns")

    def __init__(self) -> None:
        self.count = 0
        self.input_ns = 0
        self.infer_ns = 0
        self.output_ns = 0


class ModelStats:
    __slots__ = (
        "success_count", "success_ns", "fail_count", "fail_ns",
        "requests_executed", "queue_ns", "input_ns", "infer_ns", "output_ns",
        "inference_count", "execution_count", "last_success", "batches",
    )

    def __init__(self) -> None:
        self.success_count = 0
        self.success_ns = 0
        self.fail_count = 0
        self.fail_ns = 0
        #: Client requests answered by successful executions: the count of queue and compute_*.
        self.requests_executed = 0
        self.queue_ns = 0
        self.input_ns = 0
        self.infer_ns = 0
        self.output_ns = 0
        self.inference_count = 0
        self.execution_count = 0
        #: ``perf_counter_ns`` when the last successful request ended; 0 before the first.
        self.last_success = 0
        self.batches: dict[int, BatchStats] = {}

    @property
    def last_inference(self) -> int:
        """Milliseconds since the epoch when the last successful request ended; 0 before the
        first (converted when read, so the hot path reads one clock, not two)."""
        if not self.last_success:
            return 0
        return (time_ns() - (perf_counter_ns() - self.last_success)) // 1_000_000

    def succeeded(self, started: int, ended: int) -> None:
        """A request answered between ``started`` and ``ended`` (``perf_counter_ns``)."""
        self.success_count += 1
        self.success_ns += ended - started
        self.last_success = ended

    def failed(self, started: int, ended: int) -> None:
        self.fail_count += 1
        self.fail_ns += ended - started

    def executed(
        self, rows: int, requests: int, queue_ns: int, input_ns: int, infer_ns: int, output_ns: int
    ) -> None:
        """One successful model execution of ``rows`` inferences answering ``requests``
        client requests, which waited ``queue_ns`` in all before it started."""
        self.execution_count += 1
        self.inference_count += rows
        self.requests_executed += requests
        self.queue_ns += queue_ns
        self.input_ns += input_ns * requests
        self.infer_ns += infer_ns * requests
        self.output_ns += output_ns * requests
        batch = self.batches.get(rows)
        if batch is None:
            batch = self.batches[rows] = BatchStats()
        batch.count += 1
        batch.input_ns += input_ns
        batch.infer_ns += infer_ns
        batch.output_ns += output_ns
