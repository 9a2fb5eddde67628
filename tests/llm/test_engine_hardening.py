"""The generation engine's bounds, sampling processors and failure handling (review of issue 20):
the waiting queue's bound and O(1) cancel, top_k and repetition_penalty against ``generate``,
the KV cache's padded size, exceptions at every point of a step, a bad row, and a prompt that
ends inside a character."""

from __future__ import annotations

import asyncio
import functools
import threading
import time

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from e2e.hf_models import train_tokenizer
from llm_engine_helpers import alone, engine_for, run

from shoal.errors import ModelFailure, Overloaded, Unavailable
from shoal.llm import kvcache
from shoal.llm.detokenize import IncrementalDetokenizer
from shoal.llm.engine import GenerationEngine
from shoal.llm.params import SamplingParams

PROMPTS = ["Hello", "The quick brown fox", "Alice lives in Paris and Bob lives in", "Streaming"]


class Recorder:
    def __init__(self) -> None:
        self.steps: list[tuple[int, int, int, int]] = []
        self.done: list[tuple[int, int, str]] = []

    def first_token(self, seconds: float) -> None:
        pass

    def inter_token(self, seconds: float) -> None:
        pass

    def finished(self, prompt_tokens: int, completion_tokens: int, reason: str) -> None:
        self.done.append((prompt_tokens, completion_tokens, reason))

    def step(self, running: int, waiting: int, kv_tokens_used: int, max_num_tokens: int) -> None:
        self.steps.append((running, waiting, kv_tokens_used, max_num_tokens))


def reference(lm, ids: list[int], n: int, **kw) -> list[int]:
    model, _ = lm
    saved = model.generation_config.eos_token_id
    model.generation_config.eos_token_id = None  # as ignore_eos
    try:
        with torch.inference_mode():
            out = model.generate(
                torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                max_new_tokens=n, pad_token_id=0, **kw,
            )
    finally:
        model.generation_config.eos_token_id = saved
    return out[0, len(ids):].tolist()


class Gate:
    """A model forward that blocks the engine's thread in decode steps while closed."""

    def __init__(self, model, monkeypatch) -> None:
        self.open = threading.Event()
        self.open.set()
        self.inside = threading.Event()
        real = model.forward

        @functools.wraps(real)  # the engine reads the forward's signature
        def forward(*args, input_ids=None, **kw):
            if input_ids.shape[1] == 1 and not self.open.is_set():
                self.inside.set()
                self.open.wait(30)
            return real(*args, input_ids=input_ids, **kw)

        monkeypatch.setattr(model, "forward", forward)

    def close(self) -> None:
        self.inside.clear()
        self.open.clear()


# --- 1. the waiting queue -------------------------------------------------------------------


def test_the_waiting_queue_is_bounded(lm, monkeypatch):
    model, tokenizer = lm
    assert GenerationEngine(model, tokenizer, name="x", version="1", max_batch_size=4).max_waiting == 256
    assert GenerationEngine(model, tokenizer, name="x", version="1", max_batch_size=64).max_waiting == 1024

    async def main():
        engine = engine_for(lm, max_batch_size=1, max_waiting=2)
        try:
            ids = tokenizer.encode("Hello")
            long = engine.submit(ids, SamplingParams(max_new_tokens=300, ignore_eos=True))
            while long.completion_tokens < 1:
                await asyncio.sleep(0.001)
            queued = [engine.submit(ids, SamplingParams(max_new_tokens=2)) for _ in range(2)]
            with pytest.raises(Overloaded, match="max_waiting 2") as refused:
                engine.submit(ids, SamplingParams(max_new_tokens=2))
            assert refused.value.http_status == 503 and refused.value.headers["Retry-After"] == "1"
            queued[0].cancel()  # a cancelled sequence frees its place in the queue at once
            queued.append(engine.submit(ids, SamplingParams(max_new_tokens=2)))
            long.cancel()
            results = [await q.result() for q in queued]
        finally:
            engine.stop()
        return results

    results = run(main())
    assert [r.finish_reason for r in results] == ["cancelled", "length", "length"]


def test_cancelling_waiting_sequences_is_cheap_and_updates_the_gauge(lm, monkeypatch):
    model, tokenizer = lm
    gate = Gate(model, monkeypatch)
    recorder = Recorder()
    n = 20_000

    async def main():
        engine = engine_for(lm, max_batch_size=1, max_waiting=n, observer=recorder)
        try:
            ids = tokenizer.encode("Hello")
            long = engine.submit(ids, SamplingParams(max_new_tokens=300, ignore_eos=True))
            while long.completion_tokens < 2:
                await asyncio.sleep(0.001)
            gate.close()  # the engine's thread is stuck in a decode step from now on
            await asyncio.get_running_loop().run_in_executor(None, gate.inside.wait, 10)
            started = time.perf_counter()
            waiting = [engine.submit(ids, SamplingParams(max_new_tokens=2)) for _ in range(n)]
            submitted = time.perf_counter() - started
            assert engine.waiting == n
            started = time.perf_counter()
            for stream in reversed(waiting):  # the worst order for a list's remove()
                stream.cancel()
            cancelled = time.perf_counter() - started
            assert engine.waiting == 0
            # The observer heard it at once, though the engine's thread is stuck in its step.
            assert recorder.steps[-1][:2] == (1, 0)
            last = engine.submit(ids, SamplingParams(max_new_tokens=3, ignore_eos=True))
            gate.open.set()
            long.cancel()
            result = await last.result()
            for w in waiting[:10]:
                assert (await w.result()).finish_reason == "cancelled"
            while len(recorder.done) < n + 2:
                await asyncio.sleep(0.01)
        finally:
            gate.open.set()
            engine.stop()
        return submitted, cancelled, result

    submitted, cancelled, result = run(main())
    assert result.completion_tokens == 3
    assert cancelled < max(2 * submitted, 0.5), (cancelled, submitted)
    assert [r for *_, r in recorder.done].count("cancelled") == n + 1
    assert recorder.steps[-1] == (0, 0, 0, 8192)


# --- 2. top_k and repetition_penalty ---------------------------------------------------------


def test_repetition_penalty_greedy_equals_generate(lm):
    _, tokenizer = lm
    changed = 0
    for prompt in PROMPTS:
        ids = tokenizer.encode(prompt)
        params = SamplingParams(max_new_tokens=30, repetition_penalty=1.3, ignore_eos=True)
        got = alone(lm, ids, params).token_ids
        assert got == reference(lm, ids, 30, do_sample=False, repetition_penalty=1.3), prompt
        changed += got != reference(lm, ids, 30, do_sample=False)
    assert changed  # the penalty did change something
    # Below 1 rewards repeats, also as generate does.
    ids = tokenizer.encode(PROMPTS[1])
    got = alone(lm, ids, SamplingParams(max_new_tokens=20, repetition_penalty=0.7, ignore_eos=True))
    assert got.token_ids == reference(lm, ids, 20, do_sample=False, repetition_penalty=0.7)


@pytest.mark.parametrize(
    "settings",
    [
        {"temperature": 0.9, "top_k": 5},
        {"temperature": 0.7, "top_k": 8, "top_p": 0.8, "repetition_penalty": 1.2},
    ],
)
def test_seeded_top_k_and_penalty_equal_generate(lm, settings):
    _, tokenizer = lm
    ids = tokenizer.encode("The quick brown fox")
    params = SamplingParams(max_new_tokens=24, seed=11, ignore_eos=True, **settings)
    got = alone(lm, ids, params).token_ids
    torch.manual_seed(11)
    expected = reference(lm, ids, 24, do_sample=True, **{"top_p": 1.0, **settings})
    assert got == expected

    async def crowded():  # the same among others
        engine = engine_for(lm)
        others = [
            engine.submit(tokenizer.encode(p), SamplingParams(max_new_tokens=20, temperature=1.0, top_k=3))
            for p in PROMPTS
        ]
        mine = engine.submit(ids, params)
        result = await mine.result()
        for other in others:
            await other.result()
        engine.stop()
        return result

    assert run(crowded()).token_ids == got


# --- 3. the KV cache's padded size ----------------------------------------------------------


def test_max_num_tokens_bounds_the_padded_cache(lm, monkeypatch):
    _, tokenizer = lm
    budget = 120
    long_ids = tokenizer.encode("Hello")
    short_ids = tokenizer.encode("The quick brown fox")
    # Half the budget: reserving prompt + max_new_tokens per sequence (padding not counted)
    # would let 5 shorts run beside it, 6 rows as wide as the long one (~360 slots).
    jobs = [(long_ids, SamplingParams(max_new_tokens=budget // 2 - len(long_ids), ignore_eos=True))]
    jobs += [(short_ids, SamplingParams(max_new_tokens=6, ignore_eos=True))] * 8
    expected = [alone(lm, ids, params).token_ids for ids, params in jobs[:2]]
    recorder = Recorder()
    peaks: list[int] = []
    real = kvcache.BatchCache.decode_inputs

    def decode_inputs(self, device):
        mask, positions = real(self, device)
        peaks.append(mask.shape[0] * mask.shape[1])  # rows x (width + 1): the forward's cache
        return mask, positions

    monkeypatch.setattr(kvcache.BatchCache, "decode_inputs", decode_inputs)

    async def main():
        engine = engine_for(lm, max_num_tokens=budget, observer=recorder)
        streams = [engine.submit(ids, params) for ids, params in jobs[:2]]
        while streams[0].completion_tokens < 30:  # the others join a batch that is already wide
            await asyncio.sleep(0.001)
        streams += [engine.submit(ids, params) for ids, params in jobs[2:]]
        results = [await s.result() for s in streams]
        engine.stop()
        return results

    results = run(main())
    assert results[0].token_ids == expected[0]
    assert all(r.token_ids == expected[1] for r in results[1:])
    assert max(peaks) <= budget, max(peaks)
    # kv_tokens_used is the slots allocated (padding included): honest, and within the budget.
    assert max(s[2] for s in recorder.steps) <= budget
    assert max(s[0] for s in recorder.steps) >= 2  # shorts did run beside the long one


def test_kv_tokens_used_counts_padding(lm, monkeypatch):
    model, tokenizer = lm
    gate = Gate(model, monkeypatch)

    async def main():
        engine = engine_for(lm)
        a = engine.submit(tokenizer.encode(PROMPTS[2]), SamplingParams(max_new_tokens=50, ignore_eos=True))
        b = engine.submit(tokenizer.encode("Hi"), SamplingParams(max_new_tokens=50, ignore_eos=True))
        while b.completion_tokens < 5:
            await asyncio.sleep(0.001)
        gate.close()  # the engine's thread waits in its next decode step: nothing moves
        await asyncio.get_running_loop().run_in_executor(None, gate.inside.wait, 10)
        lengths = list(engine._kv.lengths)
        used, cached = engine.kv_tokens_used, engine.kv_tokens_cached
        gate.open.set()
        a.cancel()
        b.cancel()
        engine.stop()
        return lengths, used, cached

    lengths, used, cached = run(main())
    assert lengths[0] > lengths[1]
    assert used == 2 * lengths[0] and cached == sum(lengths)


# --- 4. exceptions at every point of a step --------------------------------------------------


def _join_fails(lm, monkeypatch, target, name):
    """The second sequence's joining the batch raises once: it fails alone, the first goes on."""
    _, tokenizer = lm
    ids = tokenizer.encode("Hello")
    params = SamplingParams(max_new_tokens=12, ignore_eos=True)
    expected = alone(lm, ids, params).token_ids
    real = getattr(target, name)
    calls = {"n": 0}

    def failing(*args, **kw):
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("out of memory joining")
        return real(*args, **kw)

    async def main():
        engine = engine_for(lm)
        first = engine.submit(ids, params)
        while first.completion_tokens < 2:
            await asyncio.sleep(0.001)
        monkeypatch.setattr(target, name, failing)
        second = engine.submit(tokenizer.encode("The"), SamplingParams(max_new_tokens=5))
        with pytest.raises(ModelFailure, match="out of memory joining"):
            await second.result()
        result = await first.result()
        monkeypatch.undo()
        later = await engine.submit(ids, params).result()
        assert engine.broken is None and engine.running == 0
        engine.stop()
        return result, later

    result, later = run(main(), 20)
    assert result.token_ids == expected and later.token_ids == expected


def test_a_failing_join_fails_that_sequence_only(lm, monkeypatch):
    _join_fails(lm, monkeypatch, kvcache.BatchCache, "add")


def test_a_failing_stack_leaves_the_batch_intact(lm, monkeypatch):
    _join_fails(lm, monkeypatch, kvcache, "_stack")


def test_a_failing_remove_fails_the_step_and_the_engine_goes_on(lm, monkeypatch):
    _, tokenizer = lm
    recorder = Recorder()
    ids = tokenizer.encode("Hello")
    params = SamplingParams(max_new_tokens=6, ignore_eos=True)
    expected = alone(lm, ids, params).token_ids
    real = kvcache.BatchCache.remove

    def failing(self, rows):
        raise RuntimeError("boom in remove")

    async def main():
        engine = engine_for(lm, observer=recorder)
        monkeypatch.setattr(kvcache.BatchCache, "remove", failing)
        short = engine.submit(ids, SamplingParams(max_new_tokens=3, ignore_eos=True))
        long = engine.submit(ids, SamplingParams(max_new_tokens=50, ignore_eos=True))
        first = await short.result()  # it finished: its last event is not lost
        with pytest.raises(ModelFailure, match="boom in remove"):
            await long.result()
        monkeypatch.setattr(kvcache.BatchCache, "remove", real)
        later = await engine.submit(ids, params).result()
        assert engine.broken is None
        engine.stop()
        return first, later

    first, later = run(main(), 20)
    assert first.finish_reason == "length" and first.token_ids == expected[:3]
    assert later.token_ids == expected
    assert sorted(r for *_, r in recorder.done) == ["error", "length", "length"]


def test_a_failing_delivery_loses_only_that_loop(lm, monkeypatch):
    _, tokenizer = lm
    from shoal.llm import engine as engine_module

    ids = tokenizer.encode("Hello")

    async def main():
        engine = engine_for(lm)
        calls = {"n": 0}
        real = engine_module._Mailbox.post

        def post(self, items):
            calls["n"] += 1
            if calls["n"] == 1:
                raise RuntimeError("boom in post")
            return real(self, items)

        monkeypatch.setattr(engine_module._Mailbox, "post", post)
        lost = engine.submit(ids, SamplingParams(max_new_tokens=300, ignore_eos=True))
        await asyncio.sleep(0.2)
        # Its first event was lost, so the engine cancelled it; it can still be cancelled here.
        assert engine.running == 0 and not engine._running
        lost.cancel()
        monkeypatch.undo()
        result = await engine.submit(ids, SamplingParams(max_new_tokens=4)).result()
        engine.stop()
        return result

    assert run(main(), 20).completion_tokens >= 1


def test_a_dying_thread_fails_every_sequence_and_marks_the_engine_broken(lm, monkeypatch):
    _, tokenizer = lm
    recorder = Recorder()
    ids = tokenizer.encode("Hello")

    async def main():
        engine = engine_for(lm, max_batch_size=1, observer=recorder)
        running = engine.submit(ids, SamplingParams(max_new_tokens=300, ignore_eos=True))
        while running.completion_tokens < 2:
            await asyncio.sleep(0.001)
        real = engine._admit

        def admit(dropped):  # a bug after admitting: the admitted are in neither list
            admitted = real(dropped)
            if admitted:
                raise SystemError("bug in admission")
            return admitted

        monkeypatch.setattr(engine, "_admit", admit)
        admitted = engine.submit(ids, SamplingParams(max_new_tokens=5))
        waiting = engine.submit(ids, SamplingParams(max_new_tokens=5))
        running.cancel()
        for stream in (admitted, waiting):
            with pytest.raises(ModelFailure, match="bug in admission"):
                await stream.result()
        assert (await running.result()).finish_reason == "cancelled"
        engine._thread.join(5)
        assert not engine._thread.is_alive()
        assert engine.broken == "SystemError: bug in admission"
        with pytest.raises(Unavailable, match="failed"):
            engine.submit(ids, SamplingParams())
        engine.stop()

    run(main(), 20)
    assert sorted(r for *_, r in recorder.done) == ["cancelled", "error", "error"]
    assert recorder.steps[-1][:3] == (0, 0, 0)


def test_the_recovery_itself_failing_kills_the_thread_cleanly(lm, monkeypatch):
    _, tokenizer = lm
    ids = tokenizer.encode("Hello")

    async def main():
        engine = engine_for(lm)

        def step(*args):
            raise RuntimeError("boom in step")

        def recover(*args):
            raise RuntimeError("boom in recovery")

        monkeypatch.setattr(engine, "_step", step)
        monkeypatch.setattr(engine, "_recover", recover)
        stream = engine.submit(ids, SamplingParams(max_new_tokens=5))
        with pytest.raises(ModelFailure, match="boom in recovery"):
            await stream.result()
        engine._thread.join(5)
        assert engine.broken is not None and engine.running == 0 and engine.waiting == 0
        with pytest.raises(Unavailable):
            engine.submit(ids, SamplingParams())

    run(main(), 20)


# --- 5. one bad row, tiny temperatures --------------------------------------------------------


def test_nan_logits_fail_that_row_only(lm, monkeypatch):
    model, tokenizer = lm
    greedy = SamplingParams(max_new_tokens=10, ignore_eos=True)
    ids = [tokenizer.encode(p) for p in PROMPTS[:3]]
    expected = [alone(lm, i, greedy).token_ids for i in ids]
    real = model.forward
    poison = {"on": False}

    def forward(*args, input_ids=None, **kw):
        output = real(*args, input_ids=input_ids, **kw)
        if poison["on"] and input_ids.shape == (3, 1):
            output.logits[0] = float("nan")  # the first row (the sampled victim)
            poison["on"] = False
        return output

    async def main(victim_params):
        engine = engine_for(lm)
        monkeypatch.setattr(model, "forward", forward)
        streams = [engine.submit(ids[0], victim_params)]
        streams += [engine.submit(i, greedy) for i in ids[1:]]
        poison["on"] = True
        results = await asyncio.gather(*(s.result() for s in streams), return_exceptions=True)
        monkeypatch.undo()
        engine.stop()
        return results

    for victim in (
        SamplingParams(max_new_tokens=10, temperature=0.8, ignore_eos=True),
        SamplingParams(max_new_tokens=10, temperature=0.8, top_k=4, top_p=0.9, ignore_eos=True),
        SamplingParams(max_new_tokens=10, ignore_eos=True),  # greedy: no garbage token either
        SamplingParams(max_new_tokens=10, repetition_penalty=1.2, ignore_eos=True),
    ):
        results = run(main(victim), 20)
        assert isinstance(results[0], ModelFailure), results[0]
        assert "NaN" in str(results[0])
        assert [r.token_ids for r in results[1:]] == expected[1:]


def test_tiny_temperatures_are_greedy(lm):
    _, tokenizer = lm
    ids = tokenizer.encode("Hello")
    greedy = alone(lm, ids, SamplingParams(max_new_tokens=12, ignore_eos=True)).token_ids
    for temperature in (1e-40, 5e-324, 9e-6):
        params = SamplingParams(max_new_tokens=12, temperature=temperature, ignore_eos=True)
        assert params.greedy
        assert alone(lm, ids, params).token_ids == greedy
    assert not SamplingParams(temperature=1e-5).greedy


# --- 6. a token-id prompt that ends inside a character ----------------------------------------


def test_a_prompt_ending_inside_a_character_keeps_it():
    text = "héllo wörld, 日本語 and 😀 emoji; ça va? naïve café 🚀🚀"
    tokenizer = train_tokenizer([text, "plain ascii words"], kind="bpe", vocab_size=80)
    ids = tokenizer.encode(text)
    splits = 0
    for k in range(1, len(ids)):
        prompt_text = tokenizer.decode(ids[:k])
        if not prompt_text.endswith("\ufffd"):
            continue
        splits += 1
        detok = IncrementalDetokenizer(tokenizer, ids[:k])
        pieces = [detok.add(i) for i in ids[k:]] + [detok.flush()]
        assert all("\ufffd" not in p for p in pieces)
        # The completed character is the first thing emitted.
        assert "".join(pieces) == text[len(prompt_text.rstrip("\ufffd")) :], k
    assert splits >= 3
    # A generation that does not complete the character emits its own text only.
    k = next(k for k in range(1, len(ids)) if tokenizer.decode(ids[:k]).endswith("\ufffd"))
    detok = IncrementalDetokenizer(tokenizer, ids[:k])
    assert "".join(detok.add(i) for i in tokenizer.encode("plain")) + detok.flush() == "plain"
