"""Shadow traffic: a copy of a request sent to another variant off the request's path.

The primary answers first; only then is the shadow's request started, as its own task, so
the client's answer, status and latency never wait for it. At most ``max_pending`` shadow
requests run at once; a request beyond that is not mirrored and is counted as skipped, so a
slow or stuck shadow costs a bounded amount of memory and never a growing queue. A shadow
model with a batch axis gets the requests that piled up while it was busy as one merged call
(the adaptive batcher, with no added wait), which keeps its CPU cost, on a machine the
primary shares, a fraction of the primary's.

The shadow's answer is compared with the primary's, output by output: equal values for
labels, integers, booleans and strings (an agreement rate), the absolute difference for
floating-point values (a mean). An output the shadow lacks or shapes differently, numbers
against strings, or NaN or an infinity where the other answer has another value, is a
mismatch.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np

from ..errors import ShoalError
from ..graph.context import without_routing
from ..observe import logging as log
from ..serving.batcher import Batcher, BatchSettings
from ..types import InferenceRequest, InferenceResponse, Tensor
from .metrics import RolloutMetrics

#: Calls the shadow variant with a request (a local endpoint, or a remote server).
ShadowCall = Callable[[InferenceRequest], Awaitable[InferenceResponse]]
#: Most rows one merged shadow call carries.
SHADOW_BATCH_ROWS = 64


def _never() -> bool:
    return False


class Mirror:
    def __init__(
        self, model: str, call: ShadowCall, percent: float, max_pending: int,
        metrics: RolloutMetrics, closing: Callable[[], Awaitable[None]] | None = None,
        batchable: Callable[[], bool] | None = None, concurrency: int | None = 1,
    ) -> None:
        self.model = model
        self.closing = closing
        #: Whether the shadow takes merged requests now (a model with a batch axis and no
        #: batching of its own): then shadow requests that pile up while it is busy run as
        #: one call, so mirroring costs the primary a fraction of a second request's CPU.
        self.batchable = batchable or _never
        self._batcher = Batcher(self._run_batch, BatchSettings(SHADOW_BATCH_ROWS))
        #: Shadow calls running at once (None: up to ``max_pending``, for a remote shadow).
        #: A local shadow runs one call at a time: it shares the model threads with the
        #: primary, and a slow shadow must never fill them.
        self._slots = asyncio.Semaphore(concurrency) if concurrency else None
        self.call = call
        self.percent = percent
        self.max_pending = max_pending
        self.metrics = metrics
        self._tasks: set[asyncio.Task[None]] = set()

    def sampled(self) -> bool:
        return self.percent >= 100.0 or random.random() * 100.0 < self.percent

    def fire(self, request: InferenceRequest, inputs: list[Tensor], primary: InferenceResponse) -> None:
        """Start the shadow request, unless ``max_pending`` are running (then count a skip)."""
        if len(self._tasks) >= self.max_pending:
            self.metrics.child(self.metrics.shadow_skipped, self.model).inc()
            return
        shadow = InferenceRequest(
            inputs, id=request.id, parameters=without_routing(request.parameters),
            outputs=request.outputs,
        )
        task = asyncio.get_running_loop().create_task(self._run(shadow, primary))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, request: InferenceRequest, primary: InferenceResponse) -> None:
        started = time.perf_counter()
        try:
            if self.batchable():  # the batcher runs one merged call at a time
                response = await self._batcher.submit(request)
            elif self._slots is not None:
                async with self._slots:
                    response = await self.call(request)
            else:
                response = await self.call(request)
        except ShoalError as exc:
            self.metrics.answered(self.model, "shadow", str(exc.http_status), time.perf_counter() - started)
            return
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.metrics.answered(self.model, "shadow", "500", time.perf_counter() - started)
            log.event("shadow_failed", logging.WARNING, model=self.model,
                      error=f"{type(exc).__name__}: {exc}")
            return
        self.metrics.answered(self.model, "shadow", "success", time.perf_counter() - started)
        for output, figures in compare(primary, response).items():
            self._record(output, figures)

    async def _run_batch(self, request: InferenceRequest, waited: list[float]) -> InferenceResponse:
        return await self.call(request)

    def _record(self, output: str, figures: dict[str, float]) -> None:
        metrics, model = self.metrics, self.model
        if "mismatch" in figures:
            metrics.child(metrics.shadow_mismatches, model, output).inc()
            return
        metrics.child(metrics.shadow_compared, model, output).inc(figures["compared"])
        if "abs_difference" in figures:
            metrics.child(metrics.shadow_abs_difference, model, output).inc(figures["abs_difference"])
        else:
            metrics.child(metrics.shadow_agreed, model, output).inc(figures["agreed"])

    @property
    def pending(self) -> int:
        return len(self._tasks)

    async def close(self) -> None:
        """Stop the shadow requests still running (at shutdown, or when replaced)."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._batcher.close()
        if self.closing is not None:
            await self.closing()


def compare(primary: InferenceResponse, shadow: InferenceResponse) -> dict[str, dict[str, float]]:
    """Per primary output: ``compared`` values and ``agreed`` ones (exact types) or their
    summed ``abs_difference`` (floating point); ``mismatch`` when the shadow has no such
    output or another shape. A one-output answer is compared with a one-output shadow
    whatever their names (another model may name its output differently)."""
    theirs = {t.name: t for t in shadow.outputs}
    if len(primary.outputs) == 1 and len(shadow.outputs) == 1:
        theirs = {primary.outputs[0].name: shadow.outputs[0]}
    figures: dict[str, dict[str, float]] = {}
    for ours in primary.outputs:
        other = theirs.get(ours.name)
        if other is None or tuple(other.shape) != tuple(ours.shape):
            figures[ours.name] = {"mismatch": 1.0}
            continue
        a, b = _array(ours), _array(other)
        numeric = a.dtype.kind in _NUMERIC and b.dtype.kind in _NUMERIC
        if (a.dtype.kind in "fc" or b.dtype.kind in "fc") and not numeric:
            figures[ours.name] = {"mismatch": 1.0}  # numbers against strings
        elif numeric and (a.dtype.kind in "fc" or b.dtype.kind in "fc"):
            x, y = a.astype(np.float64), b.astype(np.float64)
            same = (x == y) | (np.isnan(x) & np.isnan(y))  # equal infinities, NaN and NaN
            finite = np.isfinite(x) & np.isfinite(y)
            if not (same | finite).all():  # NaN or an infinity against another value
                figures[ours.name] = {"mismatch": 1.0}
                continue
            with np.errstate(invalid="ignore", over="ignore"):
                difference = np.where(same, 0.0, np.abs(x - y))
            total = float(difference.sum())
            if not np.isfinite(total):  # finite values whose differences overflow
                figures[ours.name] = {"mismatch": 1.0}
                continue
            figures[ours.name] = {"compared": float(a.size), "abs_difference": total}
        else:
            figures[ours.name] = {"compared": float(a.size), "agreed": float(np.count_nonzero(a == b))}
    return figures


_NUMERIC = "biufc"


def _array(tensor: Tensor) -> Any:
    data = np.asarray(tensor.data)
    return data.reshape(tuple(tensor.shape)) if data.size == int(np.prod(tensor.shape)) else data
