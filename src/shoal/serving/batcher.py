"""Adaptive batching: concurrent requests to one model version run as one ``predict``.

Requests queue while the model is busy; when it is free, everything compatible that waited
(up to ``max_batch_size`` rows) is merged along the first axis, run once, and split back. A
batch also waits up to ``max_batch_delay`` after its first request for more to arrive (0: never
wait, batch only what piled up). The wait adapts to traffic: it is skipped while recent
batches held one request each, and ends early once arrivals stop. Requests are merged only when their inputs have the same
names, datatypes and non-batch dimensions, and the same parameters and requested outputs.

Split rule: an output whose first dimension equals the batch's total row count is sliced back
row by row; any other output (no batch axis, e.g. a scalar summary) goes whole to every request
of the batch. A merged batch that fails is rerun one request at a time, so only the requests
that fail on their own fail (one request's bad values never fail its neighbours); a cancelled
request leaves the queue before it reaches the model.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from dataclasses import dataclass
from itertools import accumulate
from typing import Any, Awaitable, Callable, Hashable, Mapping

import numpy as np
import orjson

from ..observe import logging as log
from ..observe import tracing
from ..types import InferenceRequest, InferenceResponse, Tensor

#: Runs one (possibly merged) request. The list holds, for each client request it answers,
#: the seconds that request waited in the queue (one 0.0 for a request that never queued).
Runner = Callable[[InferenceRequest, list[float]], Awaitable[InferenceResponse]]
BatchObserver = Callable[[int, list[float]], None]


@dataclass(frozen=True, slots=True)
class BatchSettings:
    max_batch_size: int
    max_batch_delay: float = 0.0  # seconds

    @property
    def enabled(self) -> bool:
        return self.max_batch_size > 1


@dataclass(slots=True)
class _Waiting:
    request: InferenceRequest
    key: Hashable
    rows: int
    future: asyncio.Future
    enqueued: float
    #: Tracing only: the context the request was submitted in (its span is the parent of the
    #: batch's predict span, or one of its links), and its queue span.
    context: Any = None
    queued: tracing.Span | None = None


def batch_rows(request: InferenceRequest) -> int | None:
    """The batch size shared by every input, or None when the request cannot be batched."""
    sizes = {t.shape[0] if t.shape else None for t in request.inputs}
    if len(sizes) != 1:
        return None
    rows = sizes.pop()
    return rows if rows else None


def batch_key(request: InferenceRequest) -> Hashable:
    tensors = tuple(
        (t.name, t.datatype, t.shape[1:], _frozen(t.parameters)) for t in request.inputs
    )
    outputs = None if request.outputs is None else tuple(
        (o.name, _frozen(o.parameters)) for o in request.outputs
    )
    return tensors, outputs, _frozen(request.parameters)


def _frozen(parameters: dict[str, Any]) -> bytes:
    return orjson.dumps(parameters, option=orjson.OPT_SORT_KEYS) if parameters else b""


def merge(requests: list[InferenceRequest]) -> InferenceRequest:
    first = requests[0]
    inputs = [
        Tensor(
            tensor.name,
            tensor.datatype,
            (sum(r.inputs[i].shape[0] for r in requests), *tensor.shape[1:]),
            np.concatenate([r.inputs[i].data for r in requests], axis=0),
            tensor.parameters,
        )
        for i, tensor in enumerate(first.inputs)
    ]
    return InferenceRequest(
        inputs=inputs,
        parameters=first.parameters,
        outputs=first.outputs,
        model_name=first.model_name,
        model_version=first.model_version,
    )


def split(response: InferenceResponse, rows: list[int]) -> list[InferenceResponse]:
    bounds = list(accumulate(rows, initial=0))
    total = bounds[-1]
    parts: list[InferenceResponse] = [
        InferenceResponse([], response.model_name, response.model_version, None, dict(response.parameters))
        for _ in rows
    ]
    for tensor in response.outputs:
        batched = bool(tensor.shape) and tensor.shape[0] == total
        for index, part in enumerate(parts):
            if batched:
                start, stop = bounds[index], bounds[index + 1]
                part.outputs.append(
                    Tensor(tensor.name, tensor.datatype, (stop - start, *tensor.shape[1:]),
                           tensor.data[start:stop], tensor.parameters)
                )
            else:
                part.outputs.append(tensor)
    return parts


def _abandoned(item: _Waiting) -> bool:
    """Cancelled, or its client disconnected (the waiter is then cancelled too)."""
    if item.future.done():
        return True
    gone = item.request.client_gone
    if gone is not None and gone():
        item.future.cancel()
        return True
    return False


class Batcher:
    def __init__(
        self, run: Runner, settings: BatchSettings, observe: BatchObserver | None = None,
        traced_as: Mapping[str, Any] | None = None,
    ) -> None:
        self._run = run
        self.settings = settings
        self._observe = observe
        #: The attributes of this model's predict spans, when tracing is on.
        self._traced_as: Mapping[str, Any] = traced_as or {}
        self._queue: deque[_Waiting] = deque()
        self._task: asyncio.Task | None = None
        #: While the dispatcher waits for a batch to fill (see _wait): the future it waits on,
        #: the batch key it waits for and the rows of that key that arrived since it began.
        self._filling: asyncio.Future | None = None
        self._filling_key: Hashable = None
        self._filling_rows = 0
        # What recent traffic looked like, to wait only when waiting can pay off (see _wait).
        self._typical_rows = float(settings.max_batch_size)
        self._typical_gap = settings.max_batch_delay
        self._last_arrival = 0.0
        self._batches = 0
        #: Seconds a model execution typically takes (see _wait); 0 until one ran.
        self._typical_run = 0.0

    def submit(self, request: InferenceRequest) -> Awaitable[InferenceResponse]:
        """Queue ``request`` now; what to await for its answer. Without tracing that is the
        request's own future, not a coroutine around it: one level of ``await`` less for
        every request, and ``asyncio.wait_for`` needs no task to wrap it. Cancelling the
        awaited object (a timeout, the client gone) takes the request out of the batch."""
        rows = batch_rows(request)
        if rows is None or rows >= self.settings.max_batch_size:
            return self._predict(request, [0.0], None)
        future = asyncio.get_running_loop().create_future()
        waiting = _Waiting(request, batch_key(request), rows, future, time.perf_counter())
        if tracing.TRACER is not None:  # before the dispatcher can see it
            waiting.context, waiting.queued = tracing.capture(), tracing.start(tracing.QUEUE)
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._dispatch())
        self._queue.append(waiting)
        self._note_arrival(waiting.enqueued)
        filling = self._filling
        if filling is not None and waiting.key == self._filling_key:
            # Wake the waiting dispatcher only once its batch is full: one wake-up per batch,
            # not one per arrival.
            self._filling_rows += rows
            if self._filling_rows >= self.settings.max_batch_size and not filling.done():
                filling.set_result(None)
        if waiting.queued is None:
            return future
        return self._traced_wait(waiting)

    @staticmethod
    async def _traced_wait(waiting: _Waiting) -> InferenceResponse:
        try:
            return await waiting.future
        finally:  # cancelled or timed out in the queue: its span still says how long it waited
            tracing.end_open(waiting.queued)

    async def close(self) -> None:
        """Stop the dispatcher; requests still queued are cancelled."""
        task = self._task
        if task is not None and not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    def _note_arrival(self, now: float) -> None:
        gap = now - self._last_arrival
        self._last_arrival = now
        if gap < self.settings.max_batch_delay:
            self._typical_gap += 0.1 * (gap - self._typical_gap)

    async def _dispatch(self) -> None:
        try:
            while self._queue:
                batch = await self._next_batch()
                if batch:
                    await self._execute(batch)
        finally:
            # Only reached with waiters left when this task was cancelled or broke: never
            # leave a request waiting on a dispatcher that is gone.
            while self._queue:
                item = self._queue.popleft()
                if not item.future.done():
                    item.future.cancel()

    async def _next_batch(self) -> list[_Waiting]:
        while self._queue and _abandoned(self._queue[0]):  # cancelled before its turn
            self._queue.popleft()
        if not self._queue:
            return []
        first = self._queue[0]
        if self._worth_waiting():
            await self._wait(first)
        batch: list[_Waiting] = []
        rows = 0
        kept: deque[_Waiting] = deque()
        while self._queue:
            item = self._queue.popleft()
            if _abandoned(item):  # cancelled by its client: never reaches the model
                continue
            if item.key == first.key and rows + item.rows <= self.settings.max_batch_size:
                batch.append(item)
                rows += item.rows
            else:
                kept.append(item)
        self._queue = kept
        self._batches += 1
        self._typical_rows += 0.2 * (rows - self._typical_rows)
        return batch

    def _worth_waiting(self) -> bool:
        """Waiting pays off only under concurrency. When recent batches held one request
        each (a single client, or light traffic), run at once, and only every 16th batch
        waits, to notice when traffic picks up again."""
        if self.settings.max_batch_delay <= 0:
            return False
        return self._typical_rows >= 1.5 or self._batches % 16 == 0

    async def _wait(self, first: _Waiting) -> None:
        """Until the batch is full, ``max_batch_delay`` after its first request, or arrivals
        stop: no request for three typical gaps between arrivals (a burst of closed-loop
        clients has arrived, and nobody else will until they are answered), nor for a
        quarter of a typical execution. The latter keeps a model whose execution costs much
        more than a request (a forest) from running a batch without the stragglers of a burst
        that the event loop is still reading, at a small fraction of an execution's time."""
        deadline = first.enqueued + self.settings.max_batch_delay
        quiet = max(50e-6, 3 * self._typical_gap, 0.25 * self._typical_run)
        limit = self.settings.max_batch_size
        rows = self._rows_waiting(first.key)
        if rows >= limit:
            return
        # One future and one timer for the whole wait: arrivals only add up rows (submit wakes
        # the future when the batch is full), and the timer, when it fires, ends the wait at
        # the deadline or once no request arrived for ``quiet``, else sleeps on until then.
        loop = asyncio.get_running_loop()
        filling = self._filling = loop.create_future()
        self._filling_key = first.key
        self._filling_rows = rows
        began = time.perf_counter()
        timer: asyncio.TimerHandle | None = None
        quiet_since: float | None = None  # the last arrival when the wait first looked over

        def first_gone(_: asyncio.Future) -> None:
            # The request the wait is for was cancelled (timeout, client gone): neither its
            # layout nor its deadline may hold up the requests behind it.
            waking = self._filling
            if waking is not None and not waking.done():
                waking.set_result(None)

        first.future.add_done_callback(first_gone)

        def check() -> None:
            nonlocal timer, quiet_since
            if filling.done():
                return
            now = time.perf_counter()
            remaining = deadline - now
            last = max(self._last_arrival, began)
            idle = now - last
            if remaining <= 0:
                filling.set_result(None)
            elif idle < quiet:
                timer = loop.call_later(min(remaining, quiet - idle), check)
            elif quiet_since != last:
                # Quiet by the clock, but the event loop may not have read its sockets since
                # (timers run before the poll for I/O): look once more, one loop turn later.
                quiet_since = last
                timer = loop.call_later(0, check)
            else:
                filling.set_result(None)

        try:
            while True:
                if timer is not None:
                    timer.cancel()
                check()
                await filling
                if (
                    self._filling_rows < limit or time.perf_counter() >= deadline
                    or first.future.done()
                ):
                    return
                # Full by the count of arrivals; some may have been cancelled since.
                rows = self._rows_waiting(first.key)
                if rows >= limit:
                    return
                filling = self._filling = loop.create_future()
                self._filling_rows = rows
        finally:
            self._filling = None
            first.future.remove_done_callback(first_gone)
            if timer is not None:
                timer.cancel()

    def _rows_waiting(self, key: Hashable) -> int:
        return sum(
            item.rows for item in self._queue if item.key == key and not item.future.done()
        )

    async def _execute(self, batch: list[_Waiting]) -> None:
        started = time.perf_counter()
        waits = [started - i.enqueued for i in batch]
        if self._observe is not None:
            try:
                self._observe(sum(i.rows for i in batch), waits)
            except Exception as exc:  # metrics never fail requests
                log.event("batch_observer_failed", logging.WARNING, error=repr(exc))
        if tracing.TRACER is not None:
            for item in batch:  # their wait ends here
                tracing.end_open(item.queued)
        try:
            if len(batch) == 1:
                results = [await self._predict(batch[0].request, waits, batch)]
            else:
                merged = merge([item.request for item in batch])
                response = await self._predict(merged, waits, batch)
                results = split(response, [item.rows for item in batch])
            self._typical_run += 0.2 * (time.perf_counter() - started - self._typical_run)
        except asyncio.CancelledError:
            # The runner's own work was cancelled (a thread pool cancelling its futures at
            # shutdown) or this dispatcher was: the batch's requests end as unbatched ones
            # would. A cancelled dispatcher stops, cancelling the requests still queued.
            for item in batch:
                if not item.future.done():
                    item.future.cancel()
            task = asyncio.current_task()
            cancelling = getattr(task, "cancelling", None)  # Python 3.11+
            if cancelling is None or cancelling():
                raise
            return
        except Exception as exc:
            if len(batch) == 1:
                self._fail(batch[0], exc)
            else:
                await self._isolate(batch)
            return
        for item, result in zip(batch, results):
            if not item.future.done():
                item.future.set_result(result)

    async def _isolate(self, batch: list[_Waiting]) -> None:
        """A merged batch failed: run its requests one by one, so only the culprit fails."""
        for item in batch:
            if item.future.done():
                continue
            try:
                result = await self._predict(
                    item.request, [time.perf_counter() - item.enqueued], [item]
                )
            except asyncio.CancelledError:
                if not item.future.done():
                    item.future.cancel()
                raise
            except Exception as exc:
                self._fail(item, exc)
            else:
                if not item.future.done():
                    item.future.set_result(result)

    def _predict(
        self, request: InferenceRequest, waits: list[float], members: list[_Waiting] | None
    ) -> Awaitable[InferenceResponse]:
        """Run ``request``, which answers ``members`` (None: the request of the task running
        it, which never queued); inside its predict span when tracing is on."""
        if tracing.TRACER is None:
            return self._run(request, waits)
        return tracing.predict(
            self._run(request, waits),
            self._traced_as,
            None if members is None else [item.context for item in members],
            sum(item.rows for item in members) if members is not None else 0,
        )

    @staticmethod
    def _fail(item: _Waiting, exc: BaseException) -> None:
        if not item.future.done():
            item.future.set_exception(exc)
