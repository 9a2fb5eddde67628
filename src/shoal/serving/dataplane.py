"""What both transports call: readiness, metadata, repository operations and inference.

Inference is observed here, once, for every protocol: the in-flight gauge, the request
counter and latency histogram, a structured log line for each failed request, and the
payload log record of a model or graph that asks for one (``logger:``). A transport hands
over how to decode the request and how to encode the answer, so encoding counts as part of
the request (an answer that cannot be encoded is a failed request, counted and logged as one).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from typing import Any, Callable, Coroutine, Generic, TypeVar

from .. import __version__
from ..errors import ModelFailure, ModelNotFound, ShoalError, Unavailable
from ..graph.context import HEADERS
from ..observe import logging as log
from ..observe import tracing
from ..observe.metrics import UNKNOWN, Metrics
from ..observe.payload import PayloadLogger, Record, Route, header_metadata
from ..protocol import triton_config, triton_stats
from ..repository.manager import ModelRepository
from ..types import InferenceRequest, InferenceResponse
from .endpoint import Endpoint, ModelState
from .registry import Registry

EXTENSIONS = [
    "binary_tensor_data", "model_repository", "parameters", "model_configuration", "statistics"
]

Decoder = Callable[[Endpoint], InferenceRequest]
Encoded = TypeVar("Encoded")
Encoder = Callable[[InferenceRequest, InferenceResponse], Encoded]
#: What a JSON transport sent, out of what its encoder returned (for the payload log).
SentBody = Callable[[Any], "bytes | None"]
#: The status of a request whose client went away before the answer (nginx's 499).
CLIENT_GONE = 499


class DataPlane:
    def __init__(
        self, registry: Registry, repository: ModelRepository, metrics: Metrics,
        payload: PayloadLogger | None = None,
    ) -> None:
        self.registry = registry
        self.repository = repository
        self.metrics = metrics
        self.payload = payload
        #: Served name -> its payload logging (shared with the logger, which keeps it current).
        self._logged: dict[str, Route] = payload.routes if payload is not None else {}
        self.startup_complete = False
        self.draining = False
        #: The tasks running an inference now, so a shutdown can wait for them, or cut them
        #: off with a proper answer once the drain timeout has passed.
        self._running: set[asyncio.Task[Any]] = set()
        self._idle = asyncio.Event()
        self._idle.set()
        self._aborting = False

    @property
    def live(self) -> bool:
        return True

    @property
    def ready(self) -> bool:
        if not self.startup_complete or self.draining:
            return False
        return self.registry.any_ready() or not self.repository.names()

    def not_ready_reason(self) -> str:
        if self.draining:
            return "shutting down"
        if not self.startup_complete:
            return "still loading models"
        return "no model is ready"

    def server_metadata(self) -> dict[str, Any]:
        return {"name": "shoal", "version": __version__, "extensions": EXTENSIONS}

    def model_metadata(self, name: str, version: str | None = None) -> dict[str, Any]:
        metadata = self.registry.get(name, version).metadata()
        if not version:
            metadata["versions"] = [
                e.version for e in self.registry.entries(name) if e.state is ModelState.READY
            ]
        return metadata

    def model_config(self, name: str, version: str | None = None) -> dict[str, Any]:
        """Triton's model configuration of a ready version (the newest when none is named)."""
        endpoint = self.registry.get(name, version)
        batching = endpoint.batching
        return triton_config.model_config(
            endpoint.metadata(),
            batching.max_batch_size if batching is not None else 0,
            batching.max_batch_delay if batching is not None else 0.0,
            self.repository.loaded_config(name).version_policy,
        )

    def model_statistics(self, name: str = "", version: str | None = None) -> dict[str, Any]:
        """Triton's statistics of every ready version of every model, of one model, or of
        one version."""
        if not name:
            endpoints = [
                e.endpoint for model in self.registry.names() for e in self.registry.entries(model)
                if e.state is ModelState.READY and e.endpoint is not None
            ]
        elif version:
            endpoints = [self.registry.get(name, version)]
        else:
            endpoints = [
                e.endpoint for e in self.registry.entries(name)
                if e.state is ModelState.READY and e.endpoint is not None
            ] or [self.registry.get(name)]  # none ready: 404 or 503 with the reason
        return {
            "model_stats": [
                triton_stats.model_statistics(e.name, e.version, e.stats) for e in endpoints
            ]
        }

    def model_ready(self, name: str, version: str | None = None) -> bool:
        entry = self.registry.entry(name, version)
        ready = entry.state is ModelState.READY and entry.endpoint is not None and entry.endpoint.ready
        if ready and not version:  # a name with a rollout is ready while its stable variant is
            try:
                ready = self.registry.get(name).ready
            except ShoalError:
                ready = False
        return ready and not self.draining

    def logs(self, name: str) -> bool:
        """Whether requests to ``name`` are payload-logged: a transport passes the body it
        received (and says how to find the one it sends) only then."""
        return name in self._logged

    def infer(
        self,
        name: str,
        version: str | None,
        protocol: str,
        decode: Decoder,
        encode: Encoder[Encoded],
        timeout: float | None = None,
        deadline: float | None = None,
        body: bytes | None = None,
        sent: SentBody | None = None,
    ) -> Coroutine[Any, Any, Encoded]:
        """Decode, infer and encode one request (``await dataplane.infer(...)``). ``body`` (the
        request as received, for JSON protocols) and ``sent`` (the response bytes out of what
        ``encode`` returned) are only for the payload log; without them a record renders the
        tensors as V2 JSON.

        A plain method handing back the coroutine, so that tracing, when off, costs this one
        check and no extra frame."""
        if tracing.TRACER is None:
            return self._infer(name, version, protocol, decode, encode, timeout, deadline, body,
                               sent)
        return self._traced(name, version, protocol, decode, encode, timeout, deadline, body,
                            sent)

    async def _traced(
        self, name: str, version: str | None, protocol: str, decode: Decoder,
        encode: Encoder[Encoded], timeout: float | None, deadline: float | None,
        body: bytes | None, sent: SentBody | None,
    ) -> Encoded:
        """The request as a SERVER span continuing the client's trace, with decode and encode
        as spans inside it (``shoal.observe.tracing``)."""
        span, token = tracing.start_request(HEADERS.get(), {
            tracing.MODEL: name, tracing.PROTOCOL: protocol,
        })
        steps = _TracedSteps(span, decode, encode)
        try:
            encoded = await self._infer(name, version, protocol, steps.decode, steps.encode,
                                        timeout, deadline, body, sent)
        except BaseException as exc:
            tracing.end_request(span, token, steps.version(name, version), exc)
            raise
        tracing.end_request(span, token, steps.version(name, version), None)
        return encoded

    async def _infer(
        self,
        name: str,
        version: str | None,
        protocol: str,
        decode: Decoder,
        encode: Encoder[Encoded],
        timeout: float | None,
        deadline: float | None,
        body: bytes | None,
        sent: SentBody | None,
    ) -> Encoded:
        started = time.perf_counter()
        route = self._logged.get(name)
        arrived = time.time() if route is not None else 0.0
        try:
            endpoint = self.registry.get(name, version)
        except ShoalError as exc:  # not served (404) or not ready (503): never in flight
            self._failed(name, version or "", protocol, exc, started, in_flight=False)
            if route is not None:
                self._log(route, name, version or "", protocol, arrived, None, body, None, None,
                          exc.http_status, str(exc))
            raise
        served_version = endpoint.version
        self.metrics.request_started(name)
        task = self.track()
        request: InferenceRequest | None = None
        try:
            request = decode(endpoint)
            request.model_name = name
            request.model_version = served_version
            response = await endpoint.infer(request, timeout, deadline)
            if request.model_name != name or request.model_version != served_version:
                served_version = _served_by(request, name)  # a rollout chose a variant
            encoded = encode(request, response)
        except ShoalError as exc:
            if request is not None:
                served_version = _served_by(request, name)
            self._failed(name, served_version, protocol, exc, started)
            if route is not None:
                self._log(route, name, served_version, protocol, arrived, request, body, None,
                          None, exc.http_status, str(exc))
            raise
        except asyncio.CancelledError:
            if self.cut_off(task):
                # Cut off by the drain timeout: the contract's answer, not a dropped request.
                error = Unavailable("server is shutting down")
                self._failed(name, served_version, protocol, error, started)
                if route is not None:
                    self._log(route, name, served_version, protocol, arrived, request, body,
                              None, None, error.http_status, str(error))
                raise error from None
            # The client went away (gRPC cancel, REST disconnect).
            self.metrics.request_finished(
                name, served_version, protocol, "cancelled", time.perf_counter() - started
            )
            if route is not None:
                self._log(route, name, served_version, protocol, arrived, request, body, None,
                          None, CLIENT_GONE, "the client went away before the answer")
            raise
        except Exception as exc:
            error = ModelFailure(f"internal error: {type(exc).__name__}: {exc}")
            self._failed(name, served_version, protocol, error, started)
            if route is not None:
                self._log(route, name, served_version, protocol, arrived, request, body, None,
                          None, error.http_status, str(error))
            raise error from exc
        finally:
            self.untrack(task)
        self.metrics.request_finished(
            name, served_version, protocol, "success", time.perf_counter() - started
        )
        if route is not None:
            self._log(route, name, served_version, protocol, arrived, request, body, response,
                      None if sent is None else sent(encoded), 200, None)
        explainer = self.repository.sampled.get(name)
        if explainer is not None:  # its explanations' background: rows it answered
            self._sample(name, request, explainer)
        return encoded

    def _log(
        self, route: Route, name: str, version: str, protocol: str, arrived: float,
        request: InferenceRequest | None, body: bytes | None, response: InferenceResponse | None,
        sent: bytes | None, status: int, error: str | None,
    ) -> None:
        """Put the request's record on its sink's queue: all the request path does for it."""
        if route.sample_rate < 1.0 and random.random() >= route.sample_rate:
            return
        size = 512 + (len(body) if body is not None else 0) + (len(sent) if sent is not None else 0)
        if response is not None and sent is None:
            size += sum(t.data.nbytes for t in response.outputs)
        if request is not None and body is None:
            size += sum(t.data.nbytes for t in request.inputs)
        record = Record(
            name, version, protocol, route.component, arrived, time.time(), request, body,
            response, sent, status, error,
            header_metadata(route.headers) if route.headers else None, route.mode, size,
        )
        route.channel.put(record)
        if route.recent is not None:  # the dashboard's recent records (bounded)
            route.remember(record)

    def _sample(self, name: str, request: InferenceRequest, explainer: Any) -> None:
        """Keep the request's rows for explanations; never the request's failure."""
        from ..explain import observe

        try:
            observe(name, request, explainer)
        except Exception as exc:  # a model that changed its inputs in place, say
            log.event("explain_sample_failed", logging.WARNING, model=name,
                      error=f"{type(exc).__name__}: {exc}")

    def track(self) -> asyncio.Task[Any] | None:
        """Count the current task among the running requests (what ``drained`` waits for and
        ``abort_in_flight`` cuts off): every transport's requests, the data plane's own and
        those that reach an engine directly (the OpenAI routes). Pair with ``untrack``."""
        task = asyncio.current_task()
        if task is not None:
            self._running.add(task)
            self._idle.clear()
        return task

    def untrack(self, task: asyncio.Task[Any] | None) -> None:
        if task is not None:
            self._running.discard(task)
            if not self._running:
                self._idle.set()

    @property
    def aborting(self) -> bool:
        """Whether the drain timeout has passed and running requests are being cut off."""
        return self._aborting

    def cut_off(self, task: asyncio.Task[Any] | None) -> bool:
        """On a CancelledError: True if the drain timeout cut ``task`` off (its cancellation
        is taken back, so it can still send the contract's 503), False if the client left."""
        return self._aborting and _uncancel(task)

    async def drained(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the inferences running now to finish; True if
        they did."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except asyncio.TimeoutError:
            return self._idle.is_set()
        return True

    def abort_in_flight(self) -> int:
        """Answer every inference still running with 503 "server is shutting down" (their
        model code, if it is stuck, is left behind); returns how many there were."""
        self._aborting = True
        running = list(self._running)
        for task in running:
            task.cancel()
        return len(running)

    def _failed(
        self, name: str, version: str, protocol: str, error: ShoalError, started: float,
        in_flight: bool = True,
    ) -> None:
        seconds = time.perf_counter() - started
        outcome = str(error.http_status)
        if in_flight:
            self.metrics.request_finished(name, version, protocol, outcome, seconds)
        else:
            self.metrics.request_counted(*self._labels(name, version, error), protocol, outcome, seconds)
        level = logging.ERROR if error.http_status >= 500 else logging.WARNING
        log.event("request_failed", level, model=name, version=version, protocol=protocol,
                  status=error.http_status, error=str(error), seconds=round(seconds, 6),
                  **getattr(error, "log_fields", {}))  # a graph adds the path it took

    def _labels(self, name: str, version: str, error: ShoalError) -> tuple[str, str]:
        """The metric labels of a request the registry refused: a name or version that is not
        served counts under ``_unknown``, so made-up names never become series of their own."""
        if not isinstance(error, ModelNotFound):
            return name, version
        return (name, UNKNOWN) if self.registry.entries(name) else (UNKNOWN, "")

    async def load(self, name: str) -> list[str]:
        return await self.repository.load(name)

    async def unload(self, name: str) -> None:
        await self.repository.unload(name)

    def index(self, ready_only: bool = False) -> list[dict[str, str]]:
        return self.repository.index(ready_only)


class _TracedSteps(Generic[Encoded]):
    """A traced request's decode and encode, each as a span; keeps the decoded request, whose
    model and version say which version answered."""

    __slots__ = ("_span", "_decode", "_encode", "request")

    def __init__(self, span: tracing.Span, decode: Decoder, encode: Encoder[Encoded]) -> None:
        self._span = span
        self._decode = decode
        self._encode = encode
        self.request: InferenceRequest | None = None

    def decode(self, endpoint: Endpoint) -> InferenceRequest:
        self.request = tracing.call_in_span(self._span, tracing.DECODE, self._decode, endpoint)
        return self.request

    def encode(self, request: InferenceRequest, response: InferenceResponse) -> Encoded:
        return tracing.call_in_span(self._span, tracing.ENCODE, self._encode, request, response)

    def version(self, name: str, asked: str | None) -> str:
        """The ``version`` the metrics count the request under."""
        if self.request is None:  # not served, or not decoded
            return asked or ""
        return _served_by(self.request, name)


def _served_by(request: InferenceRequest, name: str) -> str:
    """The ``version`` label of a request a rollout sent to a variant: the version, or
    ``model:version`` for a variant that is another model."""
    version = request.model_version or ""
    return version if request.model_name == name else f"{request.model_name}:{version}"


def _uncancel(task: asyncio.Task[Any] | None) -> bool:
    """Take back the cancellation that cut ``task`` off, so it can still send its answer."""
    if task is None:
        return False
    uncancel = getattr(task, "uncancel", None)  # Python 3.11+; 3.10 keeps no count
    if uncancel is not None:
        uncancel()
    return True
