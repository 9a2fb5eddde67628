"""Endpoints: the one interface the transports see.

An endpoint answers ``await infer(request)`` and describes itself with ``metadata()``. A
:class:`ModelEndpoint` is one loaded model version; later, graphs, canary splits, mirrors
and remote servers implement the same interface, so every protocol reaches them unchanged.
"""

from __future__ import annotations

import asyncio
import inspect
from enum import Enum
from time import perf_counter_ns
from typing import Any, Protocol, Sequence

import numpy as np

from ..datatypes import numpy_dtype
from ..errors import (
    DeadlineExceeded,
    InvalidInput,
    ModelFailure,
    Overloaded,
    ShoalError,
    Unavailable,
)
from ..model import Model
from ..observe import tracing
from ..types import InferenceRequest, InferenceResponse, Tensor, TensorSpec
from .autoscale.meter import ConcurrencyMeter
from .batcher import Batcher, BatchObserver, BatchSettings, batch_rows
from .executor import Executor
from .limits import Limits
from .stats import ModelStats


class ModelState(str, Enum):
    LOADING = "LOADING"
    READY = "READY"
    UNAVAILABLE = "UNAVAILABLE"
    UNLOADING = "UNLOADING"


class Endpoint(Protocol):
    name: str
    version: str
    #: Cumulative request and execution statistics (Triton's statistics extension).
    stats: ModelStats
    #: The adaptive batching applied to this endpoint's requests; None when it is off.
    batching: BatchSettings | None

    @property
    def ready(self) -> bool: ...

    def unready_reason(self) -> str | None:
        """Why a loaded endpoint cannot answer now (a graph whose model is down); None if ready."""
        ...

    def metadata(self) -> dict[str, Any]: ...

    async def infer(self, request: InferenceRequest) -> InferenceResponse: ...


DEFAULT_OUTPUT = "output-0"

#: How long a request that reaches the model without queueing waited: not at all.
NOT_QUEUED = (0.0,)


class ModelEndpoint:
    """Runs one model version: validate inputs, run its stages off the loop, shape the answer."""

    def __init__(
        self,
        model: Model,
        executor: Executor,
        batching: BatchSettings | None = None,
        observe_batch: BatchObserver | None = None,
        limits: Limits = Limits(),
    ) -> None:
        self.model = model
        self.limits = limits
        self.name = model.name
        self.version = model.version
        self.executor = executor
        self.state = ModelState.READY
        self._stages = [
            getattr(model, stage)
            for stage in ("preprocess", "predict", "postprocess")
            if stage == "predict" or getattr(type(model), stage) is not getattr(Model, stage)
        ]
        # Per stage, decided once: (the stage, is it predict, is it a coroutine function).
        self._plan = [
            (s, s.__name__ == "predict", inspect.iscoroutinefunction(s)) for s in self._stages
        ]
        self._all_sync = not any(is_async for _, _, is_async in self._plan)
        #: The model's say on running a request's predict on the loop (``Model.runs_on_loop``):
        #: asked only of a model that overrides it and has no other stage.
        self._on_loop = (
            model.runs_on_loop
            if type(model).runs_on_loop is not Model.runs_on_loop
            and len(self._plan) == 1 and not self._plan[0][2]
            else None
        )
        self._in_flight = 0
        #: Autoscaled models: what the scaler observes (see ``autoscale.meter``); None: not
        #: measured, and not paid for.
        self.meter: ConcurrencyMeter | None = None
        self._idle = asyncio.Event()
        self._idle.set()
        self.stats = ModelStats()
        self.batching = batching if batching is not None and batching.enabled else None
        #: What this model's predict spans say about it (tracing).
        self._traced_as = {tracing.MODEL: self.name, tracing.VERSION: self.version}
        self.batcher = (
            Batcher(self._execute, self.batching, observe_batch, self._traced_as)
            if self.batching else None
        )

    @property
    def ready(self) -> bool:
        return self.state is ModelState.READY

    def unready_reason(self) -> str | None:
        return None if self.state is ModelState.READY else self.state.value.lower()

    def metadata(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "versions": [self.version],
            "platform": self.model.platform,
            "inputs": [s.to_dict() for s in self.model.inputs],
            "outputs": [s.to_dict() for s in self.model.outputs],
        }

    async def infer(
        self,
        request: InferenceRequest,
        timeout: float | None = None,
        deadline: float | None = None,
    ) -> InferenceResponse:
        """``timeout`` (seconds, from the client) replaces the model's own time limit;
        ``deadline`` (seconds left before the client gives up, e.g. a gRPC deadline) caps it.

        One coroutine from the checks to the answer (every level of ``await`` costs each
        request once on the way in and once on the way out)."""
        started = perf_counter_ns()
        try:
            if self.state is not ModelState.READY:
                raise Unavailable(f"model {self.name!r} version {self.version} is not ready")
            request.inputs = conform_inputs(request.inputs, self.model.inputs, self.name)
            limit = self.limits.max_inflight
            if limit and self._in_flight >= limit:
                raise Overloaded(
                    f"model {self.name!r} version {self.version} has {limit} requests in "
                    "flight, its limit; retry shortly"
                )
            timeout = timeout or self.limits.timeout
            if deadline is not None:
                timeout = min(timeout, deadline) if timeout else deadline
            self._in_flight += 1
            self._idle.clear()
            meter = self.meter
            if meter is not None:
                meter.change(1)
            try:
                if self.batcher is not None:
                    work = self.batcher.submit(request)
                elif tracing.TRACER is None:
                    work = self._execute(request)
                else:
                    work = tracing.predict(self._execute(request), self._traced_as, None)
                if timeout:
                    try:
                        result = await asyncio.wait_for(work, timeout)
                    except asyncio.TimeoutError:
                        raise DeadlineExceeded(
                            f"model {self.name!r} did not answer within {timeout:g} s"
                        ) from None
                else:
                    result = await work
            finally:
                self._in_flight -= 1
                if meter is not None:
                    meter.change(-1)
                if not self._in_flight:
                    self._idle.set()
            response = self._finish(request, result)
        except Exception:  # a cancelled request (client gone) is neither a success nor a failure
            self.stats.failed(started, perf_counter_ns())
            raise
        self.stats.succeeded(started, perf_counter_ns())
        return response

    async def _execute(
        self, request: InferenceRequest, waited: Sequence[float] = NOT_QUEUED
    ) -> InferenceResponse:
        """Run the model's stages on one (possibly merged) request that answers
        ``len(waited)`` client requests, and record the execution's statistics."""
        handed = perf_counter_ns()
        try:
            if self._on_loop is not None and self._on_loop(request):
                result, began, predicting, predicted = self._run_stages(request)
                if waited is NOT_QUEUED:
                    # An answer made in the step that took its request in goes out one loop
                    # step later, after the other requests that arrived with it have been
                    # taken in, as answers from a model thread do: at once, one-row REST
                    # requests lost 30 % of their rate here (answers leaving one by one).
                    await asyncio.sleep(0)
            elif self._all_sync:
                result, began, predicting, predicted = await self.executor.run(
                    self._run_stages, request
                )
            else:
                result = request
                began = predicting = predicted = handed
                for stage, is_predict, is_async in self._plan:
                    if is_predict:
                        predicting = perf_counter_ns()
                    if is_async:
                        result = await stage(result)
                    else:
                        result = await self.executor.run(stage, result)
                    if is_predict:
                        predicted = perf_counter_ns()
                        result = self._to_response(result)
        except ShoalError:
            raise
        except Exception as exc:
            raise ModelFailure(f"model {self.name!r} failed: {type(exc).__name__}: {exc}") from exc
        if not isinstance(result, InferenceResponse):
            raise ModelFailure(
                f"model {self.name!r}: postprocess returned {type(result).__name__}, "
                "not an InferenceResponse"
            )
        # Queue: the time in the batching queue plus the wait for a free model thread. Input:
        # preprocess; infer: predict; output: shaping predict's result, postprocess, and the
        # hop back to the event loop.
        requests = len(waited)
        self.stats.executed(
            (batch_rows(request) or 1) if self.batching is not None else 1,
            requests,
            int(sum(waited) * 1e9) + (began - handed) * requests,
            predicting - began,
            predicted - predicting,
            perf_counter_ns() - predicted,
        )
        return result

    def hold(self, timeout: float | None = None) -> tuple[Any, float]:
        """Count one request that runs outside ``infer`` (an OpenAI generation stream) in
        flight, with ``infer``'s checks: Unavailable when not ready, Overloaded at
        ``max_inflight``. Until the returned ``release()`` is called (once is enough; later
        calls do nothing), ``drained`` (unload, reload, a new version) waits for it. Also
        returns its time limit in seconds (0: none): ``timeout`` (the client's), else the
        model's ``timeout``."""
        if self.state is not ModelState.READY:
            raise Unavailable(f"model {self.name!r} version {self.version} is not ready")
        limit = self.limits.max_inflight
        if limit and self._in_flight >= limit:
            raise Overloaded(
                f"model {self.name!r} version {self.version} has {limit} requests in flight, "
                "its limit; retry shortly"
            )
        self._in_flight += 1
        self._idle.clear()
        meter = self.meter
        if meter is not None:
            meter.change(1)
        held = [True]

        def release() -> None:
            if held.pop() if held else False:
                self._in_flight -= 1
                if meter is not None:
                    meter.change(-1)
                if not self._in_flight:
                    self._idle.set()

        return release, (timeout or self.limits.timeout)

    async def drained(self) -> None:
        """Wait until requests already running on this instance have finished."""
        await self._idle.wait()

    def _run_stages(self, request: InferenceRequest) -> tuple[Any, int, int, int]:
        """On a model thread: the result, and when the thread began, predict began and
        predict returned (``perf_counter_ns``), for the statistics."""
        began = predicting = predicted = perf_counter_ns()
        result: Any = request
        for stage, is_predict, _ in self._plan:
            if is_predict:
                predicting = perf_counter_ns()
                result = stage(result)
                predicted = perf_counter_ns()
                result = self._to_response(result)
            else:
                result = stage(result)
        return result, began, predicting, predicted

    def _to_response(self, result: Any) -> InferenceResponse:
        try:
            return self._as_response(result)
        except ShoalError as exc:  # the model returned something no protocol can carry
            raise ModelFailure(f"model {self.name!r} returned an unusable result: {exc}") from exc

    def _as_response(self, result: Any) -> InferenceResponse:
        name = self.model.outputs[0].name if len(self.model.outputs) == 1 else DEFAULT_OUTPUT
        return as_response(result, name)

    def _finish(self, request: InferenceRequest, response: InferenceResponse) -> InferenceResponse:
        if request.outputs is not None:
            response.outputs = requested_outputs(response, request, f"model {self.name!r}")
        response.model_name = self.name
        response.model_version = self.version
        response.id = request.id
        return response


def as_response(result: Any, default_output: str = DEFAULT_OUTPUT) -> InferenceResponse:
    """What a ``predict`` (or other user code) returned, as a response: a response, a dict of
    name -> array, a list of ``Tensor``, one ``Tensor``, or one array (named
    ``default_output``). ShoalError for what no protocol can carry."""
    if isinstance(result, InferenceResponse):
        return result
    if isinstance(result, Tensor):
        return InferenceResponse([result])
    if isinstance(result, dict):
        return InferenceResponse([Tensor.from_numpy(k, v) for k, v in result.items()])
    if isinstance(result, (list, tuple)) and result and all(isinstance(t, Tensor) for t in result):
        return InferenceResponse(list(result))
    return InferenceResponse([Tensor.from_numpy(default_output, np.asarray(result))])


def requested_outputs(
    response: InferenceResponse, request: InferenceRequest, owner: str
) -> list[Tensor]:
    """The outputs a request asked for, in its order; a 400 naming ``owner`` for a missing one."""
    assert request.outputs is not None
    produced = {t.name: t for t in response.outputs}
    missing = [o.name for o in request.outputs if o.name not in produced]
    if missing:
        raise InvalidInput(f"{owner} has no output {missing[0]!r}; it produced {sorted(produced)}")
    return [produced[o.name] for o in request.outputs]


def conform_inputs(
    inputs: list[Tensor], specs: list[TensorSpec], name: str, kind: str = "model"
) -> list[Tensor]:
    """Match inputs to the declared ones, check shapes, convert datatypes where every value
    survives. ``kind`` and ``name`` say whose inputs they are in errors (``model 'iris'``,
    ``transformer 'parse'``, ``graph 'g'``)."""
    if not specs:
        return inputs
    if len(specs) == 1 and len(inputs) == 1:
        # A one-input model takes its input under any name (clients say "input-0", "x", ...);
        # the model sees it under the name it declared.
        tensor = _conform(inputs[0], specs[0], kind, name)
        if tensor.name != specs[0].name:
            tensor = Tensor(specs[0].name, tensor.datatype, tensor.shape, tensor.data, tensor.parameters)
        return [tensor]
    by_name = {s.name: s for s in specs}
    for tensor in inputs:
        if tensor.name not in by_name:
            raise InvalidInput(
                f"{kind} {name!r} has no input {tensor.name!r}; it expects {sorted(by_name)}"
            )
    missing = set(by_name) - {t.name for t in inputs}
    if missing:
        raise InvalidInput(f"{kind} {name!r} is missing input(s) {sorted(missing)}")
    return [_conform(t, by_name[t.name], kind, name) for t in inputs]


def _conform(tensor: Tensor, spec: TensorSpec, kind: str, name: str) -> Tensor:
    """The tensor as ``spec`` declares it; every mismatch is named at once."""
    sent: list[str] = []
    wanted: list[str] = []
    if not spec.accepts(tensor.shape):
        sent.append(f"has shape {list(tensor.shape)}")
        wanted.append(f"{list(spec.shape)} (-1 is any size)")
    if tensor.datatype != spec.datatype and "BYTES" in (tensor.datatype, spec.datatype):
        sent.append(f"is {tensor.datatype}")
        wanted.append(spec.datatype)
    if sent:
        alias = f" (its input {spec.name!r})" if tensor.name != spec.name else ""
        raise InvalidInput(
            f"input {tensor.name!r}{alias} {' and '.join(sent)} but {kind} {name!r} expects "
            + " and ".join(wanted)
        )
    if tensor.datatype == spec.datatype:
        return tensor
    data, changed = convert_values(tensor.data, numpy_dtype(spec.datatype))
    if changed is not None:
        value = tensor.data.reshape(-1)[changed].item()
        raise InvalidInput(
            f"input {tensor.name!r} is {tensor.datatype} but {kind} {name!r} expects "
            f"{spec.datatype}, and its value {value!r} does not convert to {spec.datatype} "
            f"exactly; send {spec.datatype} data"
        )
    return Tensor(tensor.name, spec.datatype, tensor.shape, data, tensor.parameters)


def convert_values(data: np.ndarray, target: np.dtype) -> tuple[np.ndarray, int | None]:
    """``data`` as ``target``, and the flat index of the first value the conversion changes
    (None: none does), found in one vectorised pass.

    One rule for every pair of numeric datatypes: INT64 5 becomes FP64 5.0, but INT64
    9007199254740993 (no FP64 has it), FP64 1e40 (FP32's inf), FP64 0.1 into FP32 or 1.5
    into INT64 refuse the request instead of changing what the model sees. Pairs where no
    value can change (FP32 into FP64, INT32 into INT64) skip the check.
    """
    source = data.dtype
    if not data.size or _always_exact(source, target):
        return data.astype(target), None
    flat = data.reshape(-1)
    with np.errstate(invalid="ignore", over="ignore"):
        converted = data.astype(target)
        if source.kind in "iub" and target.kind in "iu":  # wrapping keeps a round trip intact
            info = np.iinfo(target)
            changed = (flat < info.min) | (flat > info.max)
        else:
            back = converted.reshape(-1).astype(source)
            changed = back != flat
            if source.kind == "f" and target.kind == "f":
                changed &= ~(np.isnan(flat) & np.isnan(back))
    return converted, (int(np.argmax(changed)) if changed.any() else None)


def converts_every_value(source: str, target: str) -> bool:
    """Whether every value of datatype ``source`` survives conversion to ``target`` (FP32
    into FP64, INT32 into INT64; not INT64 into FP64): the pairs a graph may wire together."""
    if source == target:
        return True
    if "BYTES" in (source, target):
        return False
    return _always_exact(numpy_dtype(source), numpy_dtype(target))


def _always_exact(source: np.dtype, target: np.dtype) -> bool:
    return bool(np.can_cast(source, target, "safe")) and not _inexact_widening(source, target)


def _inexact_widening(source: np.dtype, target: np.dtype) -> bool:
    """Integers into a float whose mantissa cannot hold all of them: numpy calls INT64 into
    FP64 "safe", yet 2**53 + 1 has no FP64."""
    if source.kind not in "iu" or target.kind != "f":
        return False
    bits = source.itemsize * 8 - (source.kind == "i")
    return bits > np.finfo(target).nmant + 1
