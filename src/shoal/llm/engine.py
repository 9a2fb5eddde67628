"""Continuous batching: every running sequence advances one token per step, in one forward pass.

:class:`GenerationEngine` owns one daemon thread (``start``) that loops over **steps**:

1. sequences cancelled since the last step leave the batch (their rows and KV-cache columns are
   freed, :meth:`BatchCache.remove`), before anything else runs;
2. waiting sequences are **admitted** in FIFO order while the batch has room, then each is
   **prefilled** alone (one forward pass over its prompt into its own one-row cache), its first
   token chosen, and it joins the batch (:meth:`BatchCache.add`); the first tokens are handed
   to their loops as soon as the prefills are done (time to first token = queueing + its
   prefill, not the step's decode as well);
3. **one decode forward pass** over all running sequences (each row's last token, its own
   position, an attention mask over its own tokens); each row's next token is chosen
   (:mod:`shoal.llm.sampling`), turned into text (:mod:`shoal.llm.detokenize`) and streamed;
   sequences that finish leave the batch at once;
4. the step's other events go to each submitting event loop's mailbox, which wakes its loop
   (``loop.call_soon_threadsafe``) only when it was empty: one wake-up per loop per step at
   most, fewer when the loop lags behind; then the observer's ``step`` is called. Sequences
   whose loop has closed are cancelled.

With nothing running and nothing admissible the thread sleeps on a condition variable (no
polling); ``submit``, ``cancel`` and ``stop`` wake it.

**KV cache**: one left-padded batched ``DynamicCache`` (see :mod:`shoal.llm.kvcache`): rows are
copied in when a sequence joins and cut out when one leaves; a decode step appends one column.
Greedy outputs equal ``model.generate(do_sample=False)`` and running alone (tested with 16
staggered sequences); seeded sampling equals ``generate(do_sample=True)`` with the same
``temperature`` / ``top_k`` / ``top_p`` / ``repetition_penalty`` after
``torch.manual_seed(seed)``, whatever else is in the batch (each sequence has its own
``torch.Generator``; see :mod:`shoal.llm.sampling` for the processors and their order).

**Admission and memory**: the batched cache holds ``rows x width`` key/value slots per layer,
``width`` being the longest running sequence's length: the shorter rows' padding costs memory
too. ``max_num_tokens`` bounds those **slots**, padding included, at every step until every
admitted sequence has finished: a sequence is admitted (FIFO, while fewer than
``max_batch_size`` hold a slot) only if, with the running ones and itself each assumed to run to
its own ``max_new_tokens``, ``rows x width`` never exceeds ``max_num_tokens`` in any future
decode step (a row that ends early only lowers it). So the cache never grows past
``max_num_tokens`` slots per layer and a running sequence is never preempted (the prefilling
sequence's own one-row cache and the copies of a join or a leave are transient, on top). A
request that could never fit alone (prompt + ``max_new_tokens`` over ``max_num_tokens``, or
over the model's context length) is refused by ``submit`` (``InvalidInput``). The queue is
strictly FIFO: a long request at its head waits for room rather than being overtaken, and it
holds at most ``max_waiting`` sequences (default ``max(256, 16 * max_batch_size)``): ``submit``
raises ``Overloaded`` (503 + Retry-After, as the serving layer's ``max_inflight``) when full. A
waiting sequence that is cancelled is only marked (O(1)); admission skips it.
``kv_tokens_used`` (and the observer's ``step``) report the slots allocated, padding included,
so ``kv_tokens_used / max_num_tokens`` is the cache's real use and stays at most 1;
``kv_tokens_cached`` is the tokens actually cached (padding not counted).

**Failures**: an exception in a prefill (or in choosing its first token, or joining the batch)
fails that sequence; one in a decode forward fails every sequence of that step; a row whose
logits are NaN/inf (or whose detokenization raises) fails alone. Their streams raise
``ModelFailure`` and the engine goes on with the others and the queue; the observer's
``finished`` gets the reason ``"error"`` for them. Any other exception in a step (the engine's
own bug: the KV cache's surgery, delivery) fails every sequence that holds a slot, empties the
cache and goes on. Should the thread itself die, every admitted and waiting sequence ends with
``ModelFailure``, :attr:`GenerationEngine.broken` says why, and ``submit`` raises
``Unavailable``: the model must be reloaded.

Not done: chunked prefill (a long prompt's prefill delays the running batch's next step by its
duration), preemption, prefix caching, beam search, the model's ``generation_config`` logits
processors other than the request's own ``repetition_penalty`` / ``top_k`` / ``top_p`` /
``temperature`` (the runtime passes the config's values as request defaults), sliding-window
attention models (refused, ``NotSupported``).

Threads: ``submit``, ``cancel`` and the streams are used on the event loop; the observer is
called on the engine's thread; decoding uses a private copy of the tokenizer so that encoding on
the event loop (which reconfigures a fast tokenizer's truncation) never races with it.

**CPU threads on a busy host.** Each forward's matrix products run on torch's intra-op thread
pool (OpenMP; by default one thread per core). Between parallel regions OpenMP's worker threads
**spin-wait** for a while rather than sleep (the default wait policy of GNU OpenMP, which the
pip torch builds use). On a host where other processes, the server's event loop or other
models compete for the cores, those spinning threads burn CPU and delay everyone: with a load
average of 7-16 on 2 cores the tiny test model's forward took 20-180 ms instead of ~1 ms
(``benchmarks/results/llm_generation.md``). Advice:

- set ``OMP_WAIT_POLICY=PASSIVE`` in the server's environment (idle OpenMP threads sleep). It
  must be set before the process starts: the OpenMP runtime reads it once, when torch loads;
- size torch's threads to the cores the model really has (``OMP_NUM_THREADS=n`` in the
  environment, or ``torch.set_num_threads(n)``), leaving a core for the event loop; each thread
  that runs forwards (each generation engine, each encoder model's predict thread) uses its own
  OpenMP team of that many threads, so N models busy at once use N times as many;
- small models are often fastest with one thread (``OMP_NUM_THREADS=1``), and batching gains
  far more from more cores or a GPU than from more threads on a shared vCPU.

"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import inspect
import logging
import threading
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from ..errors import InvalidInput, ModelFailure, Overloaded, Unavailable
from .detokenize import IncrementalDetokenizer, StopStrings
from .kvcache import BatchCache, check_layers
from .params import FinishReason, SamplingParams
from .sampling import Choice, Sampling, choose

log = logging.getLogger("shoal.llm")

__all__ = [
    "EngineObserver",
    "Generation",
    "GenerationEngine",
    "GenerationStream",
    "TokenEvent",
    "TokenLogprob",
]


@dataclass
class TokenEvent:
    """One generated token, as streamed.

    ``text`` is the new text this token completes: "" while a multi-byte character or a possible
    stop string is held back (released with a later token, or dropped when a stop string
    matches). ``finish_reason`` is set on the last event. A stream that is cancelled ends with
    an event of ``token_id`` -1 (no token), ``text`` "" and ``finish_reason`` "cancelled".
    """

    token_id: int
    text: str
    logprob: float | None = None
    top_logprobs: list[tuple[int, float]] | None = None
    finish_reason: FinishReason | None = None


@dataclass
class TokenLogprob:
    """A generated token's log-probability (raw distribution) and its top alternatives."""

    token_id: int
    logprob: float
    top_logprobs: list[tuple[int, float]] | None = None


@dataclass
class Generation:
    """A finished sequence: ``text`` is the concatenation of its events' texts, ``token_ids``
    every generated token (an end-of-sequence token included, as ``generate`` returns it)."""

    text: str
    token_ids: list[int]
    finish_reason: FinishReason
    prompt_tokens: int
    completion_tokens: int
    logprobs: list[TokenLogprob] | None = None


class EngineObserver(Protocol):
    """What the engine reports, from its own thread (but see ``step``)."""

    def first_token(self, seconds: float) -> None: ...

    def inter_token(self, seconds: float) -> None: ...

    def finished(self, prompt_tokens: int, completion_tokens: int, reason: str) -> None: ...

    def step(
        self, running: int, waiting: int, kv_tokens_used: int, max_num_tokens: int
    ) -> None:
        """After every step; also from the cancelling thread when a waiting sequence is
        cancelled. ``kv_tokens_used``: key/value slots allocated, padding included (at most
        ``max_num_tokens``)."""


class GenerationStream:
    """One sequence's events, on the event loop that submitted it.

    Iterate it (``async for event in stream``) for :class:`TokenEvent`\\ s, and/or await
    :meth:`result` for the :class:`Generation`. Both raise ``ModelFailure`` when the model
    failed. Leaving the iteration early (or dropping the iterator) cancels the sequence.
    """

    def __init__(self, engine: GenerationEngine, loop: asyncio.AbstractEventLoop,
                 prompt_tokens: int, params: SamplingParams) -> None:
        self.prompt_tokens = prompt_tokens
        self.completion_tokens = 0
        self.finish_reason: FinishReason | None = None
        self.params = params
        self._engine = engine
        self._loop = loop
        self._seq: _Seq | None = None
        self._events: deque[TokenEvent] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._done: asyncio.Future[None] = loop.create_future()
        self._ended = False
        self._error: BaseException | None = None
        self._token_ids: list[int] = []
        self._text: list[str] = []
        self._logprobs: list[TokenLogprob] | None = [] if params.logprobs is not None else None
        self._iterating = False

    @property
    def done(self) -> bool:
        return self._ended

    def __aiter__(self) -> AsyncIterator[TokenEvent]:
        if self._iterating:
            raise RuntimeError("a GenerationStream can be iterated once")
        self._iterating = True
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[TokenEvent]:
        try:
            while True:
                while self._events:
                    yield self._events.popleft()
                if self._ended:
                    if self._error is not None:
                        raise self._error
                    return
                self._waiter = self._loop.create_future()
                try:
                    await self._waiter
                finally:
                    self._waiter = None
        finally:
            if not self._ended:
                self.cancel()

    async def result(self) -> Generation:
        """Wait for the end; the :class:`Generation` (or ``ModelFailure``)."""
        await asyncio.shield(self._done)
        if self._error is not None:
            raise self._error
        return self._generation()

    def cancel(self) -> None:
        """Stop generating: the sequence's slot and KV cache are freed before the next step, and
        the stream ends at once with finish reason "cancelled". No effect once it has ended."""
        if self._ended:
            return
        if self._seq is not None:
            self._engine._cancel(self._seq)
        self._on_loop(self._push, TokenEvent(-1, "", finish_reason="cancelled"))

    # --- on the event loop -----------------------------------------------------------------

    def _on_loop(self, fn: Any, *args: Any) -> None:
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self._loop:
            fn(*args)
        else:
            self._loop.call_soon_threadsafe(fn, *args)

    def _push(self, event: TokenEvent) -> None:
        if self._ended:
            return
        if event.token_id >= 0:
            self._token_ids.append(event.token_id)
            self.completion_tokens += 1
            if self._logprobs is not None and event.logprob is not None:
                self._logprobs.append(
                    TokenLogprob(event.token_id, event.logprob, event.top_logprobs)
                )
        self._text.append(event.text)
        self._events.append(event)
        if event.finish_reason is not None:
            self.finish_reason = event.finish_reason
            self._end()
        self._wake()

    def _fail(self, error: BaseException) -> None:
        if self._ended:
            return
        self._error = error
        self._end()
        self._wake()

    def _end(self) -> None:
        self._ended = True
        if not self._done.done():
            self._done.set_result(None)

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _generation(self) -> Generation:
        return Generation(
            text="".join(self._text),
            token_ids=list(self._token_ids),
            finish_reason=self.finish_reason or "cancelled",
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self.completion_tokens,
            logprobs=self._logprobs,
        )


class _Seq:
    """Engine-side state of one sequence (touched by the engine thread only, except
    ``cancelled``, ``finished`` and ``queued``, which are read and written under the engine's
    lock)."""

    __slots__ = (
        "cancelled",
        "detok",
        "end",
        "finished",
        "generated",
        "last_time",
        "last_token",
        "loop",
        "params",
        "prompt",
        "queued",
        "sampling",
        "stops",
        "stream",
        "submitted",
    )

    def __init__(self, stream: GenerationStream, prompt: list[int], params: SamplingParams) -> None:
        self.stream = stream
        self.loop = stream._loop
        self.prompt = prompt
        self.params = params
        #: The most tokens its KV-cache row can hold: the prompt and every generated token but
        #: the last (which is never fed back).
        self.end = len(prompt) + params.max_new_tokens - 1
        self.submitted = time.perf_counter()
        self.last_time = 0.0
        self.generated = 0
        self.last_token = -1
        self.sampling: Sampling | None = None
        self.detok: IncrementalDetokenizer | None = None
        self.stops: StopStrings | None = None
        self.cancelled = False  # asked to stop (client gone, or its loop closed)
        self.finished = False  # its end is decided (last event or failure queued)
        self.queued = False  # in the waiting queue, not cancelled


class _Mailbox:
    """Events for one event loop: the engine appends, the loop drains. The loop is woken
    (``call_soon_threadsafe``) only when the mailbox goes from empty to not empty, so a loop
    that is busy gets one wake-up for several steps' events, not one per step."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._lock = threading.Lock()
        self._items: list[tuple[GenerationStream, Any]] = []

    def post(self, items: list[tuple[GenerationStream, Any]]) -> bool:
        """Queue ``items``; False when the loop is closed (nobody will read them)."""
        if self.loop.is_closed():
            with self._lock:
                self._items.clear()
            return False
        with self._lock:
            wake = not self._items
            self._items.extend(items)
        if wake:
            try:
                self.loop.call_soon_threadsafe(self._drain)
            except RuntimeError:  # the loop is closed
                with self._lock:
                    self._items.clear()
                return False
        return True

    def _drain(self) -> None:
        with self._lock:
            items, self._items = self._items, []
        for stream, item in items:
            if isinstance(item, BaseException):
                stream._fail(item)
            else:
                stream._push(item)


class _Outbox:
    """A step's events and failures, posted to each event loop's mailbox at the end of it."""

    def __init__(self, mailboxes: dict[asyncio.AbstractEventLoop, _Mailbox]) -> None:
        self.mailboxes = mailboxes
        self.by_loop: dict[asyncio.AbstractEventLoop, list[tuple[GenerationStream, Any]]] = {}

    def event(self, seq: _Seq, event: TokenEvent) -> None:
        self.by_loop.setdefault(seq.loop, []).append((seq.stream, event))

    def failure(self, seq: _Seq, error: BaseException) -> None:
        self.by_loop.setdefault(seq.loop, []).append((seq.stream, error))

    def send(self) -> list[GenerationStream]:
        """Deliver; the streams whose loop is closed (nobody can read them any more). Never
        raises for one loop's failure: that loop's streams count as lost."""
        lost: list[GenerationStream] = []
        while self.by_loop:
            loop, items = self.by_loop.popitem()
            try:
                mailbox = self.mailboxes.get(loop)
                if mailbox is None:
                    mailbox = self.mailboxes[loop] = _Mailbox(loop)
                posted = mailbox.post(items)
            except Exception:
                log.exception("could not deliver generation events to an event loop")
                posted = False
            if not posted:
                self.mailboxes.pop(loop, None)
                lost.extend(stream for stream, _ in items)
        if len(self.mailboxes) > 1:  # forget the loops that have closed since
            for loop in [loop for loop in self.mailboxes if loop.is_closed()]:
                del self.mailboxes[loop]
        return lost


#: The waiting queue's default bound: ``max(DEFAULT_MAX_WAITING, 16 * max_batch_size)``.
DEFAULT_MAX_WAITING = 256


class GenerationEngine:
    """Continuous-batching generation for a causal language model (see the module docstring)."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        name: str,
        version: str,
        max_batch_size: int = 16,
        max_num_tokens: int = 8192,
        max_waiting: int | None = None,
        eos_token_ids: set[int] | frozenset[int] | None = None,
        observer: EngineObserver | None = None,
    ) -> None:
        if isinstance(max_batch_size, bool) or not isinstance(max_batch_size, int) or max_batch_size < 1:
            raise InvalidInput(f"max_batch_size must be an integer of at least 1, got {max_batch_size!r}")
        if isinstance(max_num_tokens, bool) or not isinstance(max_num_tokens, int) or max_num_tokens < 2:
            raise InvalidInput(f"max_num_tokens must be an integer of at least 2, got {max_num_tokens!r}")
        if max_waiting is None:
            max_waiting = max(DEFAULT_MAX_WAITING, 16 * max_batch_size)
        if isinstance(max_waiting, bool) or not isinstance(max_waiting, int) or max_waiting < 0:
            raise InvalidInput(f"max_waiting must be an integer of at least 0, got {max_waiting!r}")
        self.model = model
        self.tokenizer = tokenizer
        self.name = name
        self.version = version
        self.max_batch_size = max_batch_size
        self.max_num_tokens = max_num_tokens
        #: The most sequences waiting for a slot; ``submit`` raises ``Overloaded`` beyond.
        self.max_waiting = max_waiting
        self.eos_token_ids = frozenset(int(t) for t in (eos_token_ids or ()))
        self.observer = observer
        config = getattr(model, "config", None)
        self.max_context: int | None = _max_positions(config)
        self.vocab_size: int | None = _vocab_size(model, config)
        self._config = config
        self._device = _device_of(model)
        forward = inspect.signature(model.forward).parameters
        self._cache_arg = "cache" if "cache" in forward else "past_key_values"
        self._logits_to_keep = "logits_to_keep" in forward
        self._position_ids = "position_ids" in forward
        if config is not None:
            from transformers.cache_utils import DynamicCache

            try:
                probe = DynamicCache(config=config)
            except Exception:  # noqa: BLE001 - checked again after the first prefill
                probe = None
            if probe is not None:
                check_layers(probe)
        self._decoder = _private_tokenizer(tokenizer)
        self._cond = threading.Condition()
        # FIFO; holds cancelled sequences too (marked, skipped by admission; compacted when
        # they outnumber the live ones), so that a cancel is O(1).
        self._waiting: deque[_Seq] = deque()
        self._queued = 0  # live (not cancelled) sequences in _waiting
        self._gone_waiting: list[_Seq] = []  # cancelled while waiting, to report (engine thread)
        self._active: dict[_Seq, None] = {}  # hold a slot: prefilling or running (ordered set)
        self._running: list[_Seq] = []  # the engine thread's; in the KV cache's row order
        self._kv = BatchCache()
        self._mailboxes: dict[asyncio.AbstractEventLoop, _Mailbox] = {}  # the engine thread's
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._stopped = False
        #: Why the engine's thread died (``None`` while it is sound): ``submit`` then raises
        #: ``Unavailable`` and the model must be reloaded.
        self.broken: str | None = None
        #: Key/value slots the batched cache holds per layer (``rows * width``, padding
        #: included): what ``max_num_tokens`` bounds.
        self.kv_tokens_used = 0
        #: Tokens actually cached (padding not counted).
        self.kv_tokens_cached = 0

    # --- read by metrics and the dashboard ---------------------------------------------------

    @property
    def running(self) -> int:
        """Sequences holding a slot (running in the batch, or being prefilled to join it)."""
        return len(self._active)

    @property
    def waiting(self) -> int:
        """Sequences queued for a slot (cancelled ones not counted)."""
        return self._queued

    # --- control -------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the step loop's thread (once)."""
        with self._cond:
            if self._stopped or self._stopping:
                raise Unavailable(f"model {self.name}: the generation engine is stopped")
            if self._thread is not None:
                return
            self._thread = threading.Thread(
                target=self._main, name=f"shoal-llm-{self.name}", daemon=True
            )
            self._thread.start()

    def stop(self) -> None:
        """Stop the thread (after its current step): every waiting and running sequence ends
        with finish reason "cancelled". Blocks for at most the current step."""
        with self._cond:
            if self._stopped:
                return
            self._stopping = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join()
        if thread is None:
            self._shutdown()

    def _refusal(self) -> Unavailable | None:
        if self.broken is not None:
            return Unavailable(
                f"model {self.name}: the generation engine failed ({self.broken}); reload the model"
            )
        if self._stopping or self._stopped:
            return Unavailable(f"model {self.name}: the generation engine is stopped")
        return None

    def submit(self, prompt_ids: list[int], params: SamplingParams) -> GenerationStream:
        """Queue a sequence; its events arrive on the calling (running) event loop. Never blocks.
        ``InvalidInput`` for an empty prompt, token ids outside the vocabulary, or a request
        that can never fit (``max_num_tokens`` or the model's context length); ``Overloaded``
        when ``max_waiting`` sequences wait already; ``Unavailable`` when stopped or broken."""
        refusal = self._refusal()
        if refusal is not None:
            raise refusal
        if not isinstance(params, SamplingParams):
            raise TypeError("params must be a SamplingParams")
        try:
            prompt = [int(t) for t in prompt_ids]
        except (TypeError, ValueError):
            raise InvalidInput("the prompt must be a list of token ids (integers)") from None
        if not prompt:
            raise InvalidInput("the prompt is empty: at least one token is needed")
        if min(prompt) < 0 or (self.vocab_size is not None and max(prompt) >= self.vocab_size):
            raise InvalidInput(
                f"prompt token ids must be between 0 and {(self.vocab_size or 0) - 1}"
            )
        need = len(prompt) + params.max_new_tokens
        if need > self.max_num_tokens:
            raise InvalidInput(
                f"the prompt ({len(prompt)} tokens) plus max_new_tokens ({params.max_new_tokens}) "
                f"is {need} tokens, more than this model's max_num_tokens ({self.max_num_tokens})"
            )
        if self.max_context is not None and need > self.max_context:
            raise InvalidInput(
                f"this model's maximum context length is {self.max_context} tokens; the prompt "
                f"({len(prompt)} tokens) plus max_new_tokens ({params.max_new_tokens}) is {need}"
            )
        loop = asyncio.get_running_loop()
        stream = GenerationStream(self, loop, len(prompt), params)
        seq = _Seq(stream, prompt, params)
        stream._seq = seq
        with self._cond:
            refusal = self._refusal()
            if refusal is not None:
                raise refusal
            if self._queued >= self.max_waiting:
                raise Overloaded(
                    f"model {self.name}: {self._queued} generation requests are waiting already "
                    f"(max_waiting {self.max_waiting}); retry shortly"
                )
            seq.queued = True
            self._waiting.append(seq)
            self._queued += 1
            self._cond.notify()
        return stream

    def _cancel(self, seq: _Seq) -> None:
        """From the stream's ``cancel``: a waiting sequence is marked and leaves the count now
        (admission skips it); a running one is marked, and the engine frees it before its next
        step. O(1) either way. A waiting one is reported to the observer's ``step`` at once,
        from this thread (so the waiting gauge never lags behind a long step), and to its
        ``finished`` by the engine thread."""
        with self._cond:
            if seq.finished or seq.cancelled:
                return
            seq.cancelled = True
            if seq.queued:
                seq.queued = False
                seq.finished = True
                self._queued -= 1
                self._gone_waiting.append(seq)
                if len(self._waiting) > 2 * self._queued + 64:  # amortized O(1)
                    self._waiting = deque(s for s in self._waiting if s.queued)
            self._cond.notify()
            was_waiting = seq.finished
            report_now = self._thread is None and was_waiting
            counts = (len(self._active), self._queued)
        if report_now:  # no thread to report it (not started)
            self._report_gone()
        if was_waiting:
            self._notify("step", *counts, self.kv_tokens_used, self.max_num_tokens)

    # --- the engine thread ---------------------------------------------------------------------

    def _main(self) -> None:
        error: BaseException | None = None
        try:
            with torch.inference_mode():
                while True:
                    with self._cond:
                        while (
                            not self._stopping and not self._gone_waiting and not self._has_work()
                        ):
                            self._cond.wait()
                        if self._stopping:
                            break
                        dropped = [s for s in self._running if s.cancelled]
                        admitted = self._admit(len(dropped))
                    out = _Outbox(self._mailboxes)
                    try:
                        self._step(dropped, admitted, out)
                    except Exception as exc:  # noqa: BLE001 - the engine's own failure
                        self._recover(exc, out)
                    self._deliver(out)
                    self._report_step()
        except BaseException as exc:  # the thread dies: fail everything rather than hang
            error = exc
            self.broken = f"{type(exc).__name__}: {exc}"
            log.exception("model %s: the generation engine's thread failed", self.name)
        finally:
            self._shutdown(error)

    def _head(self) -> _Seq | None:
        """The first live waiting sequence (cancelled ones at the head are dropped)."""
        while self._waiting and not self._waiting[0].queued:
            self._waiting.popleft()
        return self._waiting[0] if self._waiting else None

    def _has_work(self) -> bool:
        if self._running:
            return True
        head = self._head()
        return head is not None and self._fits(head, [], 0)

    def _fits(self, seq: _Seq, pending: list[_Seq], dropped: int) -> bool:
        """Whether ``seq`` may join the running sequences (but the ``dropped`` cancelled ones)
        and the ``pending`` ones admitted this step: a free slot, and the cache's future peak
        (see :func:`_peak_slots`) within ``max_num_tokens``."""
        if len(self._active) - dropped >= self.max_batch_size:
            return False
        rows = [
            (length, s.end)
            for s, length in zip(self._running, self._kv.lengths)
            if not s.cancelled
        ]
        rows += [(len(s.prompt), s.end) for s in pending]
        rows.append((len(seq.prompt), seq.end))
        return _peak_slots(rows) <= self.max_num_tokens

    def _admit(self, dropped: int) -> list[_Seq]:
        admitted: list[_Seq] = []
        while True:
            seq = self._head()
            if seq is None or not self._fits(seq, admitted, dropped):
                break
            self._waiting.popleft()
            seq.queued = False
            self._queued -= 1
            self._active[seq] = None
            admitted.append(seq)
        return admitted

    def _release(self, seq: _Seq) -> None:
        with self._cond:
            seq.finished = True
            self._active.pop(seq, None)

    def _step(self, dropped: list[_Seq], admitted: list[_Seq], out: _Outbox) -> None:
        self._report_gone()
        if dropped:
            self._leave([self._running.index(s) for s in dropped])
            for seq in dropped:
                self._release(seq)
                self._notify("finished", len(seq.prompt), seq.generated, "cancelled")
        for seq in admitted:
            self._prefill(seq, out)
        if admitted:
            # First tokens go out now, not after this step's decode pass: a newcomer's time
            # to first token is its queueing and its prefill, never the batch's next step.
            self._deliver(out)
        if self._running:
            self._decode(out)

    def _deliver(self, out: _Outbox) -> None:
        for stream in out.send():
            seq = stream._seq
            if seq is not None:
                with self._cond:
                    seq.cancelled = True

    def _report_gone(self) -> None:
        """The observer's ``finished`` for the sequences cancelled while waiting."""
        with self._cond:
            gone, self._gone_waiting = self._gone_waiting, []
        for seq in gone:
            self._notify("finished", len(seq.prompt), 0, "cancelled")

    def _report_step(self) -> None:
        self.kv_tokens_used = self._kv.slots
        self.kv_tokens_cached = self._kv.tokens
        self._notify("step", len(self._active), self._queued, self.kv_tokens_used,
                     self.max_num_tokens)

    def _leave(self, rows: list[int]) -> None:
        self._kv.remove(rows)
        gone = set(rows)
        self._running = [s for i, s in enumerate(self._running) if i not in gone]

    def _prefill(self, seq: _Seq, out: _Outbox) -> None:
        from transformers.cache_utils import DynamicCache

        try:
            params = seq.params
            seq.detok = IncrementalDetokenizer(self._decoder, seq.prompt)
            seq.stops = StopStrings(params.stop)
            sampling = Sampling(
                greedy=params.greedy, temperature=params.temperature, top_k=params.top_k,
                top_p=params.top_p, repetition_penalty=params.repetition_penalty,
                logprobs=params.logprobs,
            )
            if not params.greedy:
                sampling.generator = torch.Generator(device=self._device)
                if params.seed is None:
                    sampling.generator.seed()
                else:
                    sampling.generator.manual_seed(params.seed % 2**64)
            seq.sampling = sampling
            n = len(seq.prompt)
            # Without the config: its layers (plain DynamicLayers, as __init__ checked) are made
            # as the forward reaches them; DynamicCache(config=...) costs ~0.4 ms per sequence.
            cache = DynamicCache()
            kwargs: dict[str, Any] = {
                self._cache_arg: cache,
                "use_cache": True,
                "attention_mask": torch.ones((1, n), dtype=torch.long, device=self._device),
            }
            if self._position_ids:
                kwargs["position_ids"] = torch.arange(n, device=self._device)[None, :]
            if self._logits_to_keep:
                kwargs["logits_to_keep"] = 1
            ids = torch.tensor([seq.prompt], dtype=torch.long, device=self._device)
            output = self.model(input_ids=ids, **kwargs)
            logits = output.logits[:, -1, :].to(dtype=torch.float32)
            check_layers(cache)
            sampling.start_seen(seq.prompt, logits.shape[-1], logits.device)
            choice = self._choose(logits, [seq])[0]
            if isinstance(choice, Exception):
                raise choice
        except Exception as error:  # noqa: BLE001 - the model's failure, reported to the client
            self._fail([seq], error, out, "prefill")
            return
        try:
            finished = self._accept(seq, choice, out)
        except Exception as error:  # noqa: BLE001
            self._fail([seq], error, out, "detokenize")
            return
        if finished:
            self._release(seq)
            return
        try:
            self._kv.add(cache, n)  # all or nothing: on failure the batch is as it was
        except Exception as error:  # noqa: BLE001 - out of memory joining the batch
            self._fail([seq], error, out, "joining the batch")
            return
        self._running.append(seq)

    def _decode(self, out: _Outbox) -> None:
        rows = self._running
        try:
            ids = torch.tensor([[s.last_token] for s in rows], dtype=torch.long, device=self._device)
            mask, positions = self._kv.decode_inputs(self._device)
            kwargs: dict[str, Any] = {
                self._cache_arg: self._kv.cache, "use_cache": True, "attention_mask": mask,
            }
            if self._position_ids:
                kwargs["position_ids"] = positions
            if self._logits_to_keep:
                kwargs["logits_to_keep"] = 1
            output = self.model(input_ids=ids, **kwargs)
            logits = output.logits[:, -1, :].to(dtype=torch.float32)
            self._kv.advance()
            choices = self._choose(logits, rows)
        except Exception as error:  # noqa: BLE001 - fails this step's sequences, not the engine
            self._kv.reset()
            self._running = []
            self._fail(rows, error, out, "decode")
            return
        done: list[int] = []
        for i, (seq, choice) in enumerate(zip(rows, choices)):
            try:
                if isinstance(choice, Exception):  # this row's logits: it fails alone
                    raise choice
                if self._accept(seq, choice, out):
                    done.append(i)
            except Exception as error:  # noqa: BLE001
                done.append(i)
                where = "sampling" if isinstance(choice, Exception) else "detokenize"
                self._fail([seq], error, out, where, release=False)
        if done:
            finished = [rows[i] for i in done]
            self._leave(done)
            for seq in finished:
                self._release(seq)

    def _choose(self, logits: torch.Tensor, seqs: list[_Seq]) -> list[Choice | Exception]:
        return choose(logits, [s.sampling for s in seqs])  # type: ignore[misc]

    def _accept(self, seq: _Seq, choice: Choice, out: _Outbox) -> bool:
        """Record and stream one chosen token; True when the sequence has finished."""
        assert seq.detok is not None and seq.stops is not None and seq.sampling is not None
        now = time.perf_counter()
        if seq.generated == 0:
            self._notify("first_token", now - seq.submitted)
        else:
            self._notify("inter_token", now - seq.last_time)
        seq.last_time = now
        token = choice.token_id
        seq.generated += 1
        seq.last_token = token
        seq.sampling.saw(token)
        params = seq.params
        reason: FinishReason | None = None
        if not params.ignore_eos and token in self.eos_token_ids:
            reason = "stop"
            piece = seq.detok.flush()
        else:
            piece = seq.detok.add(token)
            if seq.generated >= params.max_new_tokens:
                reason = "length"
                piece += seq.detok.flush()
        text, matched = seq.stops.feed(piece)
        if matched:
            reason = "stop"
        elif reason is not None:
            text += seq.stops.flush()
        out.event(seq, TokenEvent(token, text, choice.logprob, choice.top_logprobs, reason))
        if reason is not None:
            seq.finished = True
            self._notify("finished", len(seq.prompt), seq.generated, reason)
            return True
        return False

    def _fail(self, seqs: list[_Seq], error: BaseException, out: _Outbox, where: str,
              *, release: bool = True) -> None:
        log.error("model %s: generation failed in %s for %d sequence(s): %s: %s",
                  self.name, where, len(seqs), type(error).__name__, error,
                  exc_info=(type(error), error, error.__traceback__))
        failure = ModelFailure(f"model {self.name}: generation failed: {type(error).__name__}: {error}")
        for seq in seqs:
            if seq.finished:  # its last event is queued already
                if release:
                    self._release(seq)
                continue
            seq.finished = True
            out.failure(seq, failure)
            self._notify("finished", len(seq.prompt), seq.generated, "error")
            if release:
                self._release(seq)

    def _recover(self, error: Exception, out: _Outbox) -> None:
        """After an exception a step did not expect (the engine's own): every sequence holding
        a slot fails (those that finished in the step keep their last event), the cache is
        emptied, and the thread goes on with the queue."""
        with self._cond:
            victims = list(self._active)
        self._running = []
        self._kv.reset()
        self._fail(victims, error, out, "the engine's step")
        with self._cond:
            self._active.clear()

    def _shutdown(self, error: BaseException | None = None) -> None:
        """Every sequence left ends: "cancelled" after ``stop``, ``ModelFailure`` when the
        thread died of ``error``. The engine takes no more."""
        with self._cond:
            self._stopping = True
            self._stopped = True
            left = list(self._active) + [s for s in self._waiting if s.queued]
            self._waiting.clear()
            self._queued = 0
            self._active.clear()
        self._running = []
        self._kv.reset()
        self.kv_tokens_used = self.kv_tokens_cached = 0
        failure = None
        if error is not None:
            failure = ModelFailure(
                f"model {self.name}: the generation engine failed: {type(error).__name__}: {error}"
            )
        out = _Outbox(self._mailboxes)
        ended: list[_Seq] = []
        for seq in left:
            with self._cond:
                already = seq.finished
                was_cancelled = seq.cancelled  # its stream has ended "cancelled" already
                seq.finished = True
                seq.cancelled = True
                seq.queued = False
            if already:
                continue
            ended.append(seq)
            if failure is not None and not was_cancelled:
                out.failure(seq, failure)
                self._notify("finished", len(seq.prompt), seq.generated, "error")
            else:
                out.event(seq, TokenEvent(-1, "", finish_reason="cancelled"))
                self._notify("finished", len(seq.prompt), seq.generated, "cancelled")
        self._report_gone()
        try:
            out.send()
        except BaseException:
            log.exception("model %s: could not deliver the engine's last events", self.name)
            for seq in ended:
                with contextlib.suppress(Exception):
                    if failure is not None:
                        seq.loop.call_soon_threadsafe(seq.stream._fail, failure)
                    else:
                        seq.loop.call_soon_threadsafe(
                            seq.stream._push, TokenEvent(-1, "", finish_reason="cancelled")
                        )
        self._notify("step", 0, 0, 0, self.max_num_tokens)

    def _notify(self, method: str, *args: Any) -> None:
        observer = self.observer
        if observer is None:
            return
        try:
            getattr(observer, method)(*args)
        except Exception:
            log.exception("model %s: the engine observer's %s failed", self.name, method)


def _peak_slots(rows: list[tuple[int, int]]) -> int:
    """The most key/value slots (``rows x width``) the batched cache will hold, for rows of
    ``(cached tokens now, most tokens it will hold)``, each assumed to run to its end and none
    to join: at ``t`` decode steps from now a row holds ``now + t`` tokens while ``now + t <=
    end``, the width is the longest alive row's. Between two rows' ends the width only grows,
    so the peak is at ``t = 0`` or at one of the ends: the rows that live longest, ``k`` of
    them, at the ``k``-th's last step. O(rows log rows)."""
    if not rows:
        return 0
    by_life = sorted(rows, key=lambda r: r[1] - r[0], reverse=True)
    peak = len(rows) * max(now for now, _ in rows)  # t = 0
    longest = 0
    for k, (now, end) in enumerate(by_life, start=1):
        longest = max(longest, now)
        peak = max(peak, k * (longest + max(end - now, 0)))
    return peak


def _max_positions(config: Any) -> int | None:
    for name in ("n_positions", "max_position_embeddings", "n_ctx", "max_sequence_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def _vocab_size(model: Any, config: Any) -> int | None:
    try:
        return int(model.get_input_embeddings().num_embeddings)
    except Exception:  # noqa: BLE001
        value = getattr(config, "vocab_size", None)
        return value if isinstance(value, int) else None


def _device_of(model: Any) -> torch.device:
    device = getattr(model, "device", None)
    if isinstance(device, torch.device):
        return device
    try:
        return next(model.parameters()).device
    except (StopIteration, AttributeError):
        return torch.device("cpu")


class _BackendDecoder:
    """``decode`` with a private copy of a fast tokenizer's Rust tokenizer."""

    def __init__(self, backend: Any) -> None:
        self._backend = backend

    def decode(self, ids: list[int], skip_special_tokens: bool = True, **_: Any) -> str:
        return self._backend.decode(ids, skip_special_tokens=skip_special_tokens)


def _private_tokenizer(tokenizer: Any) -> Any:
    """A copy of ``tokenizer`` for the engine thread's decoding (a fast tokenizer's backend:
    faster than ``tokenizer.decode`` and never shared with the event loop's encoding)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        try:
            from tokenizers import Tokenizer

            return _BackendDecoder(Tokenizer.from_str(backend.to_str()))
        except Exception:  # then a copy of the whole tokenizer
            log.debug("could not copy the fast tokenizer's backend", exc_info=True)
    try:
        return copy.deepcopy(tokenizer)
    except Exception:  # noqa: BLE001
        return tokenizer
