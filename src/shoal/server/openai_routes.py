"""The OpenAI-compatible API under ``/openai/v1``, for Hugging Face models (``runtime:
huggingface``), so the official ``openai`` client works against Shoal unchanged.

- ``GET /models``, ``GET /models/{model}``: the Hugging Face models served in this process.
- ``POST /completions``: text generation from a prompt (a string, strings, or token ids).
- ``POST /chat/completions``: the messages through the tokenizer's chat template, then
  generation (400 when the model has no chat template).
- ``POST /embeddings``: ``feature-extraction`` models (mean pooling over the attention mask).

Generation goes to the model's engine (:mod:`shoal.llm.engine`: continuous batching), one
sequence per prompt and choice. ``stream: true`` answers Server-Sent Events (``data: {json}``
chunks, then ``data: [DONE]``). A client that disconnects, streaming or not, has its sequences
cancelled at once: the disconnect is awaited beside the generation, not found at the next
write.

Every error on these routes is OpenAI's body, ``{"error": {"message", "type", "param",
"code"}}``, made here: the app's own ``{"error": "..."}`` handler never sees them. Parsing and
the response shapes are :mod:`shoal.protocol.openai`. Requests are counted in
``shoal_requests_total`` with ``protocol="openai"``; the generation series are
:mod:`shoal.llm.metrics`.

A request is admitted as a V2 request is: through the model's rollout when the name has one
(the variant chosen as for V2 requests, counted in the rollout's series; never mirrored), then
the version's in-flight count (``max_inflight``: 429; an unload, reload or new version waits
for it), its time limit (``timeout`` or the ``Shoal-Timeout`` header: 504, or an error event
ending a stream) and the data plane's running requests (a SIGTERM drain waits for it; past
the drain timeout a stream ends with an error event). Payload logging and tracing do not
cover these routes.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import sys
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ..errors import ModelNotFound, ShoalError
from ..graph.context import HEADERS as REQUEST_HEADERS
from ..graph.context import VARIANT_HEADER
from ..observe import logging as log
from ..protocol import openai as oa
from ..serving.dataplane import DataPlane
from ..types import InferenceRequest
from .infer_asgi import read_body, timeout_of

PREFIX = "/openai/v1"
JSON = "application/json"
PROTOCOL = "openai"
#: The module and class of Hugging Face models; imported only by the runtime (torch).
HF_MODULE = "shoal.runtimes.huggingface"
HF_PLATFORMS = frozenset({"huggingface", "transformers"})
ANY_METHOD = ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
_ROUTES = {"/models": "GET", "/completions": "POST", "/chat/completions": "POST",
           "/embeddings": "POST"}
_SSE_HEADERS = [(b"content-type", b"text/event-stream; charset=utf-8"),
                (b"cache-control", b"no-cache"), (b"x-accel-buffering", b"no")]


#: Texts embedded per call of the model: a client that goes away stops the rest.
EMBED_CHUNK = 32


def json_response(value: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(value), status, headers=headers, media_type=JSON)


def error_response(error: oa.OpenAIError) -> Response:
    return Response(oa.error_body(error), error.status, headers=error.headers or None,
                    media_type=JSON)


def openai_routes(dataplane: DataPlane, max_request_size: int) -> list[Route]:
    api = OpenAIAPI(dataplane, max_request_size)
    return [
        Route(f"{PREFIX}/models", api.handler(api.list_models), methods=["GET"]),
        Route(f"{PREFIX}/models/{{model}}", api.handler(api.get_model), methods=["GET"]),
        Route(f"{PREFIX}/completions", api.handler(api.completions), methods=["POST"]),
        Route(f"{PREFIX}/chat/completions", api.handler(api.chat), methods=["POST"]),
        Route(f"{PREFIX}/embeddings", api.handler(api.embeddings), methods=["POST"]),
        # Anything else under the prefix: OpenAI's error body too (a 404, or a 405).
        Route(PREFIX, api.handler(api.unknown), methods=ANY_METHOD),
        Route(f"{PREFIX}/{{rest:path}}", api.handler(api.unknown), methods=ANY_METHOD),
    ]


class _Target:
    """What a model name resolved to: the version's endpoint and model, and the rollout (and
    the variant's role) when the name has one."""

    __slots__ = ("endpoint", "model", "name", "role", "rollout", "version")

    def __init__(self, name: str, endpoint: Any, model: Any, rollout: Any, role: str | None) -> None:
        self.name = name
        self.endpoint = endpoint
        self.model = model
        self.rollout = rollout
        self.role = role
        served = getattr(endpoint, "name", name)
        # The version label: ``model:version`` for a rollout variant that is another model.
        self.version = (endpoint.version if served == name
                        else f"{served}:{endpoint.version}")

    def headers(self) -> dict[str, str] | None:
        return {VARIANT_HEADER: self.role} if self.role else None


class _Admitted:
    """One admitted request, from admission to its last byte: in the endpoint's in-flight
    count (``max_inflight``; unload and reload wait for it), ``shoal_requests_total`` with
    ``protocol="openai"`` and the in-flight gauge, the rollout's series, and the data plane's
    running requests (the SIGTERM drain waits for it, and cuts it off past the drain timeout).
    ``finish`` undoes all of it, once."""

    __slots__ = (
        "dataplane",
        "deadline",
        "done",
        "release",
        "started",
        "target",
        "task",
        "timeout",
    )

    def __init__(self, dataplane: DataPlane, target: _Target, scope: dict) -> None:
        self.dataplane = dataplane
        self.target = target
        self.done = False
        asked = timeout_of(scope)  # a bad Shoal-Timeout header: 400, nothing counted
        self.started = time.perf_counter()
        try:
            self.release, self.timeout = target.endpoint.hold(asked)
        except ShoalError as exc:  # not ready, or max_inflight: never in flight
            self.done = True
            outcome = _outcome(exc)
            dataplane.metrics.request_counted(target.name, target.version, PROTOCOL, outcome,
                                              time.perf_counter() - self.started)
            if target.rollout is not None:
                target.rollout.answered(target.role, outcome, time.perf_counter() - self.started)
            raise
        self.deadline = time.monotonic() + self.timeout if self.timeout else None
        dataplane.metrics.request_started(target.name)
        self.task = dataplane.track()  # what the drain waits for and cuts off

    def remaining(self) -> float | None:
        """Seconds left before the request's time limit (None: no limit)."""
        if self.deadline is None:
            return None
        return max(self.deadline - time.monotonic(), 0.0)

    def timed_out(self) -> oa.OpenAIError:
        return oa.timed_out(f"model {self.target.name!r} did not answer within "
                            f"{self.timeout:g} s; its sequences were cancelled")

    def aborting(self) -> bool:
        """Whether the server's drain timeout has passed: cut-off requests get an answer."""
        return self.dataplane.aborting

    def cut_off(self) -> bool:
        """On a CancelledError: whether the drain timeout cut this request off (then it can
        still answer), rather than the client leaving."""
        return self.dataplane.cut_off(asyncio.current_task())

    def fail(self, exc: BaseException) -> None:
        if isinstance(exc, asyncio.CancelledError):
            self.finish("503" if self.aborting() else "cancelled")
        else:
            self.finish(_outcome(exc))

    def finish(self, outcome: str) -> None:
        if self.done:
            return
        self.done = True
        seconds = time.perf_counter() - self.started
        target = self.target
        try:
            self.dataplane.metrics.request_finished(target.name, target.version, PROTOCOL,
                                                    outcome, seconds)
            if target.rollout is not None:
                target.rollout.answered(target.role, outcome, seconds)
        finally:
            self.release()
            self.dataplane.untrack(self.task)


class OpenAIAPI:
    def __init__(self, dataplane: DataPlane, max_request_size: int) -> None:
        self.dataplane = dataplane
        self.limit = max_request_size
        self.started = int(time.time())

    # -- plumbing --------------------------------------------------------------------------

    def handler(self, fn: Callable[[Request], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
        """``fn`` with every failure answered in OpenAI's shape."""
        async def endpoint(request: Request) -> Response:
            REQUEST_HEADERS.set(request.scope["headers"])  # a rollout's sticky key may read them
            try:
                return await fn(request)
            except _ClientGone:  # nobody is left to answer
                return Response(status_code=499)
            except asyncio.CancelledError:
                if self.dataplane.cut_off(asyncio.current_task()):
                    # Cut off by the drain timeout: OpenAI's 503, not a dropped connection.
                    return error_response(oa.shutting_down())
                raise
            except oa.OpenAIError as exc:
                return error_response(exc)
            except ShoalError as exc:
                return error_response(oa.from_shoal(exc))
            except Exception as exc:  # a bug of ours: still OpenAI's shape
                log.event("openai_request_failed", logging.ERROR, path=request.url.path,
                          error=f"{type(exc).__name__}: {exc}")
                return error_response(oa.server_error(f"internal error: {type(exc).__name__}: {exc}"))

        return endpoint

    async def unknown(self, request: Request) -> Response:
        path = request.url.path[len(PREFIX):].rstrip("/") or "/"
        method = _ROUTES.get(path) or ("GET" if path.startswith("/models/") else None)
        if method is not None and request.method not in (method, "HEAD"):
            return error_response(oa.OpenAIError(
                405, f"{request.method} is not allowed on {request.url.path}; use {method}",
                "invalid_request_error", "method_not_allowed", None, {"Allow": method},
            ))
        return error_response(oa.OpenAIError(
            404, f"unknown route {request.method} {request.url.path}; served under {PREFIX}: "
                 "GET /models, GET /models/{model}, POST /completions, POST /chat/completions, "
                 "POST /embeddings",
            "invalid_request_error", "unknown_url", None,
        ))

    async def _body(self, request: Request) -> dict[str, Any]:
        return oa.parse_json(await read_body(request.scope, request.receive, self.limit))

    def _model(self, name: str) -> _Target:
        """The endpoint and the in-process Hugging Face model serving ``name``: through its
        rollout when it has one (the variant chosen as for V2 requests), else its newest
        ready version."""
        if self.dataplane.draining:
            raise oa.shutting_down()
        rollout, role = None, None
        try:
            endpoint = self.dataplane.registry.get(name)
            pick = getattr(endpoint, "pick", None)
            if pick is not None:  # a rollout: the variant, by its weights and sticky key
                rollout = endpoint
                role, endpoint = pick(InferenceRequest([]))
        except ModelNotFound:
            raise oa.model_not_found(f"The model '{name}' does not exist (not served here)") from None
        model = getattr(endpoint, "model", None)
        if model is None:
            raise oa.model_not_found(
                f"The model '{name}' is a graph; graphs are not served by the OpenAI API "
                f"(use V2: POST /v2/models/{name}/infer)"
            )
        if _is_huggingface(model):
            return _Target(name, endpoint, model, rollout, role)
        platform = getattr(model, "platform", "custom")
        if platform in HF_PLATFORMS:  # a proxy of a model loaded in worker processes
            raise oa.invalid(
                f"The model '{name}' runs in worker processes (workers:, --workers, "
                f"resources: gpus or autoscaling:); the OpenAI API serves Hugging Face models "
                f"loaded in the server process only: set workers: 0 in its model.yaml (and "
                f"parameters.device: cuda for a GPU), or use V2 (POST /v2/models/{name}/infer)",
                "model", "model_not_supported",
            )
        raise oa.model_not_found(
            f"The model '{name}' (runtime {platform}) is not served by the OpenAI API: only "
            f"Hugging Face models (runtime: huggingface) are; use V2 "
            f"(POST /v2/models/{name}/infer)"
        )

    def _served_models(self) -> list[str]:
        names = []
        for name in self.dataplane.registry.names():
            try:
                endpoint = self.dataplane.registry.served(name)
            except ShoalError:
                continue
            if _is_huggingface(getattr(endpoint, "model", None)):
                names.append(name)
        return names

    # -- models ----------------------------------------------------------------------------

    async def list_models(self, request: Request) -> Response:
        return json_response(oa.model_list(
            [oa.model_object(name, self.started) for name in self._served_models()]
        ))

    async def get_model(self, request: Request) -> Response:
        name = request.path_params["model"]
        self._model(name)
        return json_response(oa.model_object(name, self.started))

    # -- completions -----------------------------------------------------------------------

    async def completions(self, request: Request) -> Response:
        parsed = oa.parse_completion(await self._body(request))
        target = self._model(parsed.model)
        model = target.model
        engine = _engine(model, parsed.model, "/completions")
        room = _room(model, engine)
        for p in parsed.prompts:  # token ids: checked before anything is tokenized
            if not isinstance(p, str):
                _check_length(_check_ids(model, p), room, "prompt")
        prompts = []
        for p in parsed.prompts:
            if isinstance(p, str):
                p = _check_length(await _tokenized(model, model.encode_prompt, p, len(p)), room, "prompt")
            prompts.append(p)
        default = getattr(model, "max_new_tokens", None) or 16  # OpenAI's: 16
        params = [_params(parsed.sampling.for_choice(j), default, model)
                  for _ in prompts for j in range(parsed.n)]
        work = [ids for ids in prompts for _ in range(parsed.n)]
        admitted = _Admitted(self.dataplane, target, request.scope)
        try:
            streams = _submit(engine, work, params)
        except BaseException as exc:
            admitted.fail(exc)
            raise
        prompt_tokens = sum(len(ids) for ids in prompts)
        id, created = oa.completion_id(), oa.now()
        text_of = _token_texts(model)
        logprobs = parsed.sampling.logprobs
        if parsed.stream:
            return EventStream(
                self._completion_chunks(streams, id, created, parsed, prompt_tokens, text_of),
                streams, admitted,
            )
        choices = await _collect_all(request, streams, logprobs is not None, admitted)
        return json_response(oa.completion_body(id, created, parsed.model, choices,
                                                prompt_tokens, text_of, logprobs),
                             headers=target.headers())

    async def _completion_chunks(
        self, streams: list[Any], id: str, created: int, parsed: oa.CompletionRequest,
        prompt_tokens: int, text_of: oa.TokenText,
    ) -> AsyncIterator[bytes]:
        top = parsed.sampling.logprobs
        offsets = [0] * len(streams)
        async for index, event in _merged(streams):
            finish = _finish_reason(event.finish_reason)
            logprobs = None
            if top is not None and event.token_id >= 0:
                logprobs = oa.completion_logprobs(
                    [oa.TokenLogprob(event.token_id, event.logprob, event.top_logprobs)],
                    text_of, top, offsets[index],
                )
                offsets[index] += len(text_of(event.token_id))
            if event.text or finish or logprobs is not None:
                chunk = oa.completion_chunk(id, created, parsed.model, index, event.text,
                                            finish, logprobs)
                if parsed.include_usage:
                    chunk["usage"] = None
                yield oa.sse(chunk)
        if parsed.include_usage:
            yield oa.sse(oa.usage_chunk(id, created, parsed.model, "text_completion",
                                        prompt_tokens, sum(s.completion_tokens for s in streams)))

    # -- chat ------------------------------------------------------------------------------

    async def chat(self, request: Request) -> Response:
        parsed = oa.parse_chat(await self._body(request))
        target = self._model(parsed.model)
        model = target.model
        engine = _engine(model, parsed.model, "/chat/completions")
        if getattr(model, "chat_template", True) is None:
            raise oa.invalid(
                f"The model '{parsed.model}' has no chat template (neither its "
                f"tokenizer_config.json nor a chat_template.jinja holds one): use /completions "
                f"with a prompt, or add a chat template to the model's folder", "messages",
                "no_chat_template",
            )
        try:
            ids = await _tokenized(model, model.apply_chat_template, parsed.messages,
                                  sum(len(str(m.get("content") or "")) for m in parsed.messages))
        except ShoalError as exc:  # "model has no chat template", a template that failed
            raise oa.invalid(str(exc), "messages", "invalid_messages") from None
        room = _room(model, engine)
        _check_length(ids, room, "messages")
        # OpenAI's chat default: until the context ends (here: what the engine admits).
        default = (room - len(ids) if room is not None
                   else getattr(model, "max_new_tokens", None) or 16)
        params = [_params(parsed.sampling.for_choice(j), default, model) for j in range(parsed.n)]
        admitted = _Admitted(self.dataplane, target, request.scope)
        try:
            streams = _submit(engine, [ids] * parsed.n, params)
        except BaseException as exc:
            admitted.fail(exc)
            raise
        id, created = oa.chat_id(), oa.now()
        text_of = _token_texts(model)
        if parsed.stream:
            return EventStream(
                self._chat_chunks(streams, id, created, parsed, len(ids), text_of,
                                  _token_bytes(model, text_of)),
                streams, admitted,
            )
        choices = await _collect_all(request, streams, parsed.logprobs, admitted)
        return json_response(oa.chat_body(id, created, parsed.model, choices, len(ids), text_of,
                                          parsed.logprobs, parsed.top_logprobs,
                                          _token_bytes(model, text_of)),
                             headers=target.headers())

    async def _chat_chunks(
        self, streams: list[Any], id: str, created: int, parsed: oa.ChatRequest,
        prompt_tokens: int, text_of: oa.TokenText, bytes_of: oa.TokenBytes,
    ) -> AsyncIterator[bytes]:
        usage = parsed.include_usage
        for index in range(len(streams)):
            yield oa.sse(oa.chat_chunk(id, created, parsed.model, index,
                                       {"role": "assistant", "content": ""}, None,
                                       include_usage=usage))
        async for index, event in _merged(streams):
            finish = _finish_reason(event.finish_reason)
            logprobs = None
            if parsed.logprobs and event.token_id >= 0:
                logprobs = oa.chat_logprobs(
                    [oa.TokenLogprob(event.token_id, event.logprob, event.top_logprobs)],
                    text_of, parsed.top_logprobs, bytes_of,
                )
            if event.text or logprobs is not None:
                delta: dict[str, Any] = {"content": event.text}
            elif finish:
                delta = {}
            else:
                continue  # text held back (a partial character, a possible stop string)
            yield oa.sse(oa.chat_chunk(id, created, parsed.model, index, delta, finish,
                                       logprobs, include_usage=usage))
        if usage:
            yield oa.sse(oa.usage_chunk(id, created, parsed.model, "chat.completion.chunk",
                                        prompt_tokens, sum(s.completion_tokens for s in streams)))

    # -- embeddings ------------------------------------------------------------------------

    async def embeddings(self, request: Request) -> Response:
        parsed = oa.parse_embeddings(await self._body(request))
        target = self._model(parsed.model)
        model = target.model
        task = getattr(model, "task", None)
        if task != "feature-extraction":
            raise oa.invalid(
                f"The model '{parsed.model}' is a {task} model; /embeddings serves "
                f"feature-extraction models (parameters: task: feature-extraction)", "model",
                "model_not_supported",
            )
        admitted = _Admitted(self.dataplane, target, request.scope)
        try:
            vectors, counts = await _race_disconnect(
                request, _embed(model, parsed.inputs), None, admitted,
            )
            if parsed.dimensions is not None and parsed.dimensions != vectors.shape[1]:
                raise oa.unsupported(
                    "dimensions", f"the model's embeddings have {vectors.shape[1]} dimensions "
                                  "and are not shortened",
                )
        except BaseException as exc:
            admitted.fail(exc)
            raise
        admitted.finish("success")
        return json_response(oa.embeddings_body(parsed.model, vectors, counts,
                                                parsed.encoding_format),
                             headers=target.headers())


class EventStream(Response):
    """An ASGI response sending Server-Sent Events from ``chunks``, then ``data: [DONE]``.

    The client's disconnect is awaited beside the sending: when it comes, every sequence of
    the request is cancelled at once (its slot and KV cache freed before the engine's next
    step), not when the next token would have been written. A stream past its time limit, or
    cut off by the server's drain timeout, cancels its sequences and ends with an error
    event (no ``[DONE]``)."""

    def __init__(self, chunks: AsyncIterator[bytes], streams: list[Any], admitted: _Admitted) -> None:
        self.chunks = chunks
        self.streams = streams
        self.admitted = admitted
        self.status_code = 200
        self.background = None
        variant = admitted.target.role
        self.headers_list = _SSE_HEADERS + (
            [(VARIANT_HEADER.lower().encode(), variant.encode())] if variant else [])

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        outcome = "500"  # unless found otherwise: send() itself failed
        try:
            outcome = await self._run(receive, send)
        finally:
            _cancel(self.streams)  # no-op for finished ones
            self.admitted.finish(outcome)

    async def _run(self, receive: Any, send: Any) -> str:
        await send({"type": "http.response.start", "status": 200, "headers": self.headers_list})
        sending = asyncio.ensure_future(self._send_all(send))
        listening = asyncio.ensure_future(_disconnected(receive))
        try:
            await asyncio.wait({sending, listening}, timeout=self.admitted.remaining(),
                               return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:  # the server is cutting requests off
            _cancel(self.streams)
            sending.cancel()
            listening.cancel()
            if not self.admitted.cut_off():
                raise
            # Past the drain timeout: the stream ends with OpenAI's error event.
            await asyncio.gather(sending, return_exceptions=True)
            await _end_with(send, oa.shutting_down())
            return "503"
        if sending.done():
            listening.cancel()
            outcome = sending.result()
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            return outcome
        _cancel(self.streams)
        sending.cancel()
        await asyncio.gather(sending, return_exceptions=True)
        if listening.done():  # the client went away
            return "cancelled"
        listening.cancel()  # the time limit passed
        await _end_with(send, self.admitted.timed_out())
        return "504"

    async def _send_all(self, send: Any) -> str:
        """Send every chunk; the outcome (``success`` or the status of an error event)."""
        try:
            async for chunk in self.chunks:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        except oa.OpenAIError as exc:
            error = exc
        except ShoalError as exc:
            error = oa.from_shoal(exc)
        except Exception as exc:
            log.event("openai_stream_failed", logging.ERROR, error=f"{type(exc).__name__}: {exc}")
            error = oa.server_error(f"internal error: {type(exc).__name__}: {exc}")
        else:
            await send({"type": "http.response.body", "body": oa.SSE_DONE, "more_body": True})
            return "success"
        finally:
            _cancel(self.streams)  # no-op for finished ones
        # An error once the stream has begun: OpenAI's error object as the last event.
        await send({"type": "http.response.body", "body": oa.sse(error.body()), "more_body": True})
        return str(error.status)


async def _end_with(send: Any, error: oa.OpenAIError) -> None:
    """End a stream with ``error`` as its last event."""
    await send({"type": "http.response.body", "body": oa.sse(error.body()), "more_body": True})
    await send({"type": "http.response.body", "body": b"", "more_body": False})


# -- generation helpers --------------------------------------------------------------------


def _is_huggingface(model: Any) -> bool:
    module = sys.modules.get(HF_MODULE)  # not imported: no Hugging Face model is loaded
    cls = getattr(module, "HuggingFaceModel", None) if module is not None else None
    return cls is not None and isinstance(model, cls)


def _engine(model: Any, name: str, route: str) -> Any:
    engine = getattr(model, "engine", None)
    if engine is None:
        task = getattr(model, "task", None)
        if task == "text-generation":  # its engine is stopped: the model is being unloaded
            raise oa.OpenAIError(503, f"The model '{name}' is being unloaded", "server_error",
                                 "service_unavailable")
        raise oa.invalid(
            f"The model '{name}' is a {task} model; {route} serves text-generation models "
            f"(decoder-only, AutoModelForCausalLM)"
            + (" — use /embeddings" if task == "feature-extraction" else ""),
            "model", "model_not_supported",
        )
    return engine


async def _tokenized(model: Any, fn: Callable[..., Any], text: Any, chars: int) -> Any:
    """``fn(text)``: inline for a short text, on the model's own threads for a long one, so a
    long prompt never holds up the event loop (as the runtime's V2 path does)."""
    from ..runtimes.huggingface import INLINE_TOKENIZE_CHARS

    on_thread = getattr(model, "off_loop", None)
    if chars > INLINE_TOKENIZE_CHARS and on_thread is not None:
        return await on_thread(fn, text)
    result = fn(text)
    if inspect.isawaitable(result):
        result = await result
    return result


def _check_ids(model: Any, ids: list[int]) -> list[int]:
    vocab = _vocab_size(model)
    if vocab is not None:
        bad = next((i for i in ids if not 0 <= i < vocab), None)
        if bad is not None:
            raise oa.invalid(f"token id {bad} in 'prompt' is outside the model's vocabulary "
                             f"(0 to {vocab - 1})", "prompt")
    return ids


def _vocab_size(model: Any) -> int | None:
    sizes = []
    tokenizer = getattr(model, "tokenizer", None)
    if tokenizer is not None:
        try:
            sizes.append(len(tokenizer))
        except TypeError:
            pass
    config = getattr(getattr(model, "model", None), "config", None)
    vocab = getattr(config, "vocab_size", None)
    if isinstance(vocab, int):
        sizes.append(vocab)
    return min(sizes) if sizes else None


def _room(model: Any, engine: Any) -> int | None:
    """The most tokens a sequence may hold, prompt and completion: the smaller of the model's
    context length and the engine's ``max_num_tokens`` (None: neither is known)."""
    limits = [getattr(engine, "max_num_tokens", None), getattr(engine, "max_context", None),
              getattr(model, "context_length", None)]
    known = [n for n in limits if isinstance(n, int) and not isinstance(n, bool) and n > 0]
    return min(known) if known else None


def _check_length(ids: list[int], room: int | None, param: str) -> list[int]:
    """A 400 for a prompt that leaves no room for one new token (before anything is
    allocated for it)."""
    if room is not None and len(ids) >= room:
        raise oa.invalid(
            f"the prompt is {len(ids)} tokens; this model takes at most {room} tokens in all "
            f"(prompt and completion: its context length, or max_num_tokens if smaller), so "
            f"at most {room - 1} prompt tokens", param, "context_length_exceeded",
        )
    return ids


def _params(sampling: oa.Sampling, default_max_tokens: int, model: Any) -> Any:
    """The engine's parameters: the request's, OpenAI's defaults for what it leaves out,
    and the model's generation_config for what OpenAI has no parameter for (``top_k``,
    ``repetition_penalty``), so a completion samples as the model's authors meant."""
    from ..llm.params import SamplingParams

    max_tokens = sampling.max_tokens
    if max_tokens is None:
        max_tokens = max(int(default_max_tokens), 1)
    defaults = getattr(model, "default_sampling", None)
    return SamplingParams.checked(
        max_new_tokens=max_tokens, temperature=sampling.temperature, top_p=sampling.top_p,
        stop=sampling.stop, seed=sampling.seed, logprobs=sampling.logprobs,
        top_k=getattr(defaults, "top_k", 0),
        repetition_penalty=getattr(defaults, "repetition_penalty", 1.0),
    )


def _submit(engine: Any, prompts: list[list[int]], params: list[Any]) -> list[Any]:
    """Submit every sequence, or none (a refusal cancels those already submitted): every
    check ran before (``params`` built), so a refusal is the engine's (full, stopped)."""
    streams: list[Any] = []
    try:
        for ids, p in zip(prompts, params):
            streams.append(engine.submit(ids, p))
    except BaseException:
        _cancel(streams)
        raise
    return streams


def _cancel(streams: list[Any]) -> None:
    for stream in streams:
        if stream.finish_reason is None:
            stream.cancel()


def _finish_reason(reason: str | None) -> str | None:
    if reason is None:
        return None
    finish = oa.FINISH_REASONS.get(reason)
    if finish is None:  # cancelled by the engine itself: the model is going away
        raise oa.OpenAIError(503, "the generation was cancelled: the model is being unloaded "
                                  "or the server is shutting down", "server_error",
                             "service_unavailable")
    return finish


def _token_bytes(model: Any, text_of: oa.TokenText) -> oa.TokenBytes:
    """Token id -> the token's own bytes: a byte-level BPE token (GPT-2, Llama 3, Qwen) maps
    its characters back to bytes, a byte-fallback token (``<0xE2>``) is its byte, so a token
    that holds part of a UTF-8 character gives that part; other tokens: their text's UTF-8."""
    tokenizer = getattr(model, "tokenizer", None)
    convert = getattr(tokenizer, "convert_ids_to_tokens", None)
    cache: dict[int, bytes] = {}
    byte_level: list[bool] = []  # found on first use: only requests with logprobs pay for it

    def of(token_id: int) -> bytes:
        value = cache.get(token_id)
        if value is None:
            if not byte_level:
                byte_level.append(_is_byte_level(tokenizer))
            value = cache[token_id] = _raw_bytes(convert, byte_level[0], token_id, text_of)
        return value

    return of


def _raw_bytes(convert: Any, byte_level: bool, token_id: int, text_of: oa.TokenText) -> bytes:
    token = None
    if convert is not None:
        try:
            token = convert(token_id)
        except Exception:  # noqa: BLE001 - an id the tokenizer does not know
            token = None
    if isinstance(token, str):
        if byte_level:
            table = _unicode_to_byte()
            if all(c in table for c in token):
                return bytes(table[c] for c in token)
        elif len(token) == 6 and token.startswith("<0x") and token.endswith(">"):
            try:
                return bytes([int(token[3:5], 16)])
            except ValueError:
                pass
    return text_of(token_id).encode()


_BYTE_LEVEL: weakref.WeakKeyDictionary[Any, bool] = weakref.WeakKeyDictionary()


def _is_byte_level(tokenizer: Any) -> bool:
    """Whether the tokenizer decodes with GPT-2's byte-level alphabet (found once each)."""
    try:
        return _BYTE_LEVEL[tokenizer]
    except (KeyError, TypeError):
        pass
    backend = getattr(tokenizer, "backend_tokenizer", None)
    decoder = getattr(backend, "decoder", None)
    found = False
    if decoder is not None:
        if type(decoder).__name__ == "ByteLevel":
            found = True
        else:
            try:  # a Sequence of decoders holding ByteLevel
                decoding = orjson.loads(backend.to_str()).get("decoder")
                found = b'"ByteLevel"' in orjson.dumps(decoding)
            except Exception:  # noqa: BLE001 - not a tokenizers backend
                found = False
    try:
        _BYTE_LEVEL[tokenizer] = found
    except TypeError:  # not weakly referenceable: found again next time
        pass
    return found


_BYTE_TABLE: dict[str, int] = {}


def _unicode_to_byte() -> dict[str, int]:
    """GPT-2's byte-level alphabet, character -> byte."""
    if not _BYTE_TABLE:
        printable = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
                     + list(range(ord("®"), ord("ÿ") + 1)))
        chars = printable[:]
        extra = 0
        for b in range(256):
            if b not in printable:
                printable.append(b)
                chars.append(256 + extra)
                extra += 1
        _BYTE_TABLE.update({chr(c): b for b, c in zip(printable, chars)})
    return _BYTE_TABLE


async def _embed(model: Any, texts: list[str]) -> tuple[Any, list[int]]:
    """The model's embeddings of ``texts``, ``EMBED_CHUNK`` at a time: a cancelled request
    (client gone, time limit) runs no further chunk."""
    import numpy as np

    vectors, counts = [], []
    for start in range(0, len(texts), EMBED_CHUNK):
        part, part_counts = await model.embed(texts[start:start + EMBED_CHUNK])
        vectors.append(part)
        counts.extend(part_counts)
    return (vectors[0] if len(vectors) == 1 else np.concatenate(vectors)), counts


def _token_texts(model: Any) -> oa.TokenText:
    """Token id -> its text, cached for the request."""
    cache: dict[int, str] = {}

    def text(token_id: int) -> str:
        value = cache.get(token_id)
        if value is None:
            value = cache[token_id] = model.decode([token_id])
        return value

    return text


async def _merged(streams: list[Any]) -> AsyncIterator[tuple[int, Any]]:
    """(choice index, event) of every stream, as they come."""
    if len(streams) == 1:
        async for event in streams[0]:
            yield 0, event
        return
    queue: asyncio.Queue[tuple[int, Any, BaseException | None]] = asyncio.Queue()
    done = object()

    async def pump(index: int, stream: Any) -> None:
        try:
            async for event in stream:
                queue.put_nowait((index, event, None))
        except BaseException as exc:
            queue.put_nowait((index, done, exc))
            raise
        queue.put_nowait((index, done, None))

    tasks = [asyncio.ensure_future(pump(i, s)) for i, s in enumerate(streams)]
    try:
        remaining = len(tasks)
        while remaining:
            index, event, error = await queue.get()
            if event is done:
                if error is not None and not isinstance(error, asyncio.CancelledError):
                    raise error
                remaining -= 1
                continue
            yield index, event
    finally:
        for task in tasks:
            task.cancel()


async def _collect(stream: Any, index: int, logprobs: bool) -> oa.ChoiceResult:
    choice = oa.ChoiceResult(index)
    texts = []
    async for event in stream:
        if event.token_id < 0:  # the end of a cancelled stream: no token
            choice.finish_reason = _finish_reason(event.finish_reason or "cancelled")
            continue
        texts.append(event.text)
        if logprobs:
            choice.logprobs.append(oa.TokenLogprob(event.token_id, event.logprob,
                                                   event.top_logprobs))
        if event.finish_reason is not None:
            choice.finish_reason = _finish_reason(event.finish_reason)
    if choice.finish_reason is None:
        choice.finish_reason = _finish_reason(stream.finish_reason or "cancelled")
    choice.text = "".join(texts)
    choice.completion_tokens = stream.completion_tokens
    return choice


async def _collect_all(
    request: Request, streams: list[Any], logprobs: bool, admitted: _Admitted,
) -> list[oa.ChoiceResult]:
    try:
        choices = await _race_disconnect(
            request,
            asyncio.gather(*(_collect(s, i, logprobs) for i, s in enumerate(streams))),
            streams, admitted,
        )
    except BaseException as exc:
        _cancel(streams)
        admitted.fail(exc)
        raise
    admitted.finish("success")
    return list(choices)


class _ClientGone(Exception):
    pass


async def _race_disconnect(
    request: Request, work: Awaitable[Any], streams: list[Any] | None, admitted: _Admitted,
) -> Any:
    """``work``'s result, unless the client disconnects first (then the sequences are
    cancelled at once and :class:`_ClientGone` ends the request: nobody is left to answer)
    or the request's time limit passes (the sequences are cancelled; a 504)."""
    task = asyncio.ensure_future(work)
    listening = asyncio.ensure_future(_disconnected(request.receive))
    try:
        await asyncio.wait({task, listening}, timeout=admitted.remaining(),
                           return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        if streams:
            _cancel(streams)
        task.cancel()
        listening.cancel()
        raise
    if task.done():
        listening.cancel()
        return task.result()
    if streams:
        _cancel(streams)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    if listening.done():
        raise _ClientGone()
    listening.cancel()
    raise admitted.timed_out()


async def _disconnected(receive: Any) -> None:
    """Returns once the client has gone (the body was read before)."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


def _outcome(exc: BaseException) -> str:
    if isinstance(exc, (_ClientGone, asyncio.CancelledError)):
        return "cancelled"
    if isinstance(exc, oa.OpenAIError):
        return str(exc.status)
    if isinstance(exc, ShoalError):
        return str(oa.from_shoal(exc).status)
    return "500"
