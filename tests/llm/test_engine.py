"""The continuous-batching generation engine (shoal.llm.engine) on a tiny random GPT-2."""

from __future__ import annotations

import asyncio
import threading

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from e2e.hf_models import train_tokenizer
from llm_engine_helpers import alone, engine_for, run

from shoal.errors import InvalidInput, ModelFailure, Unavailable
from shoal.llm.detokenize import IncrementalDetokenizer, StopStrings
from shoal.llm.engine import GenerationEngine
from shoal.llm.params import SamplingParams

PROMPTS = [
    "Hello",
    "The quick brown fox",
    "Alice lives in Paris and Bob lives in",
    "What is",  # greedy reaches the end-of-sequence token after 10 tokens
    "Streaming",  # ... after 35
    "I love this movie, it was wonderful! I hate rainy days;",
    "Numbers like 1, 2",
    "A user asks a question and the assistant",
]


class Recorder:
    """An EngineObserver that keeps every call."""

    def __init__(self) -> None:
        self.steps: list[tuple[int, int, int, int]] = []
        self.first: list[float] = []
        self.inter: list[float] = []
        self.done: list[tuple[int, int, str]] = []
        self.threads: set[int] = set()

    def first_token(self, seconds: float) -> None:
        self.first.append(seconds)

    def inter_token(self, seconds: float) -> None:
        self.inter.append(seconds)

    def finished(self, prompt_tokens: int, completion_tokens: int, reason: str) -> None:
        self.done.append((prompt_tokens, completion_tokens, reason))

    def step(self, running: int, waiting: int, kv_tokens_used: int, max_num_tokens: int) -> None:
        self.threads.add(threading.get_ident())
        self.steps.append((running, waiting, kv_tokens_used, max_num_tokens))


def reference(lm, ids: list[int], n: int, **kw) -> list[int]:
    model, _ = lm
    with torch.inference_mode():
        out = model.generate(
            torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
            max_new_tokens=n, pad_token_id=0, **kw,
        )
    return out[0, len(ids):].tolist()


def test_greedy_equals_generate(lm):
    _, tokenizer = lm
    for prompt in PROMPTS:
        ids = tokenizer.encode(prompt)
        result = alone(lm, ids, SamplingParams(max_new_tokens=40))
        expected = reference(lm, ids, 40, do_sample=False)
        assert result.token_ids == expected, prompt
        assert result.finish_reason == ("stop" if expected[-1] == tokenizer.eos_token_id else "length")
        assert result.text == tokenizer.decode(expected, skip_special_tokens=True)
        assert result.prompt_tokens == len(ids) and result.completion_tokens == len(expected)


def test_sixteen_staggered_equal_alone(lm):
    _, tokenizer = lm
    jobs = []
    for i in range(16):
        ids = tokenizer.encode(PROMPTS[i % len(PROMPTS)] + " the" * (i // len(PROMPTS)))
        jobs.append((ids, SamplingParams(max_new_tokens=12 + 3 * i, ignore_eos=i % 3 == 0)))
    expected = [alone(lm, ids, params) for ids, params in jobs]
    recorder = Recorder()

    async def main():
        engine = engine_for(lm, observer=recorder)
        streams = []
        for i, (ids, params) in enumerate(jobs):
            streams.append(engine.submit(ids, params))
            if i % 4 == 3:  # the next ones join a batch that is already running
                while streams[-1].completion_tokens < 2:
                    await asyncio.sleep(0.001)
        results = [await stream.result() for stream in streams]
        engine.stop()
        return results

    results = run(main())
    for got, want in zip(results, expected):
        assert got.token_ids == want.token_ids
        assert got.text == want.text
        assert got.finish_reason == want.finish_reason
    assert max(step[0] for step in recorder.steps) >= 5  # they did share steps


def test_seeded_sampling_reproducible_and_independent_of_the_batch(lm):
    _, tokenizer = lm
    ids = tokenizer.encode("The quick brown fox")
    params = SamplingParams(max_new_tokens=24, temperature=0.9, top_p=0.8, seed=7, ignore_eos=True)
    first = alone(lm, ids, params)
    second = alone(lm, ids, params)
    assert first.token_ids == second.token_ids

    async def crowded():
        engine = engine_for(lm)
        others = [
            engine.submit(tokenizer.encode(p), SamplingParams(max_new_tokens=30, temperature=1.0))
            for p in PROMPTS[:5]
        ]
        mine = engine.submit(ids, params)
        others += [engine.submit(tokenizer.encode(p), SamplingParams(max_new_tokens=5)) for p in PROMPTS]
        result = await mine.result()
        for other in others:
            await other.result()
        engine.stop()
        return result

    assert run(crowded()).token_ids == first.token_ids
    # ... and equal to generate's sampling after torch.manual_seed (same algorithm, same draws).
    torch.manual_seed(7)
    model, _ = lm
    model.generation_config.eos_token_id, saved = None, model.generation_config.eos_token_id
    try:
        expected = reference(lm, ids, 24, do_sample=True, temperature=0.9, top_p=0.8, top_k=0)
    finally:
        model.generation_config.eos_token_id = saved
    assert first.token_ids == expected
    other_seed = alone(lm, ids, SamplingParams(**{**params.__dict__, "seed": 8}))
    assert other_seed.token_ids != first.token_ids


def test_stop_strings(lm):
    _, tokenizer = lm
    ids = tokenizer.encode("Hello")
    full = alone(lm, ids, SamplingParams(max_new_tokens=40, ignore_eos=True)).text
    stop = full[12:15]
    cut = full.find(stop)

    async def main(params):
        engine = engine_for(lm)
        stream = engine.submit(ids, params)
        pieces = []
        async for event in stream:
            pieces.append(event.text)
            # A stop string is never streamed.
            assert not any(s in "".join(pieces) for s in params.stop)
        result = await stream.result()
        engine.stop()
        return pieces, result

    pieces, result = run(main(SamplingParams(max_new_tokens=40, ignore_eos=True, stop=(stop,))))
    assert result.finish_reason == "stop"
    assert result.text == "".join(pieces) == full[:cut]
    # The first of several stop strings wins; a stop string that never comes changes nothing.
    later = full[20:23]
    _, result = run(main(SamplingParams(max_new_tokens=40, ignore_eos=True, stop=(later, stop, "\x00zz"))))
    assert result.text == full[: min(full.find(later), cut)]
    _, result = run(main(SamplingParams(max_new_tokens=40, ignore_eos=True, stop=("\x00zz",))))
    assert result.text == full and result.finish_reason == "length"


def test_max_new_tokens_is_length(lm):
    _, tokenizer = lm

    async def main():
        engine = engine_for(lm)
        stream = engine.submit(tokenizer.encode("Hello"), SamplingParams(max_new_tokens=5, ignore_eos=True))
        events = [event async for event in stream]
        engine.stop()
        return events, stream

    events, stream = run(main())
    assert len(events) == 5
    assert [e.finish_reason for e in events] == [None] * 4 + ["length"]
    assert stream.finish_reason == "length" and stream.completion_tokens == 5


def test_eos_is_stop(lm):
    _, tokenizer = lm
    ids = tokenizer.encode("Hello")
    free = alone(lm, ids, SamplingParams(max_new_tokens=30, ignore_eos=True)).token_ids
    eos = free[6]  # any token can be declared the end of sequence
    end = free.index(eos)

    async def main(params):
        engine = engine_for(lm, eos_token_ids={eos})
        try:
            return await engine.submit(ids, params).result()
        finally:
            engine.stop()

    result = run(main(SamplingParams(max_new_tokens=30)))
    assert result.finish_reason == "stop"
    assert result.token_ids == free[: end + 1]  # the end-of-sequence token included, as generate
    assert result.token_ids == reference(lm, ids, 30, do_sample=False, eos_token_id=eos)
    ignoring = run(main(SamplingParams(max_new_tokens=30, ignore_eos=True)))
    assert ignoring.token_ids == free and ignoring.finish_reason == "length"


def test_logprobs(lm):
    model, tokenizer = lm
    ids = tokenizer.encode("Hello")

    async def main():
        engine = engine_for(lm)
        stream = engine.submit(ids, SamplingParams(max_new_tokens=3, logprobs=2, ignore_eos=True))
        events = [event async for event in stream]
        engine.stop()
        return events, await stream.result()

    events, result = run(main())
    with torch.inference_mode():
        raw = torch.log_softmax(model(torch.tensor([ids])).logits[0, -1].float(), -1)
    first = events[0]
    assert first.logprob == pytest.approx(float(raw[first.token_id]), abs=1e-5)
    assert len(first.top_logprobs) == 2 and first.top_logprobs[0][0] == first.token_id  # greedy
    assert [lp.token_id for lp in result.logprobs] == result.token_ids
    plain = alone(lm, ids, SamplingParams(max_new_tokens=3, ignore_eos=True))
    assert plain.logprobs is None


def test_cancel_frees_the_slot(lm):
    _, tokenizer = lm
    recorder = Recorder()

    async def main():
        engine = engine_for(lm, max_batch_size=1, observer=recorder)
        long = engine.submit(tokenizer.encode("Hello"), SamplingParams(max_new_tokens=400, ignore_eos=True))
        queued = engine.submit(tokenizer.encode("The"), SamplingParams(max_new_tokens=4, ignore_eos=True))
        dropped = engine.submit(tokenizer.encode("Paris"), SamplingParams(max_new_tokens=4))
        while long.completion_tokens < 3:
            await asyncio.sleep(0.001)
        assert engine.waiting == 2 and engine.running == 1
        dropped.cancel()  # a waiting sequence leaves the queue at once
        assert engine.waiting == 1
        long.cancel()
        cancelled = await long.result()
        second = await asyncio.wait_for(queued.result(), 10)
        gone = await dropped.result()
        engine.stop()
        return cancelled, second, gone

    cancelled, second, gone = run(main())
    assert cancelled.finish_reason == "cancelled" and 3 <= cancelled.completion_tokens < 400
    assert second.finish_reason == "length" and second.completion_tokens == 4
    assert gone.finish_reason == "cancelled" and gone.completion_tokens == 0
    assert sorted(r for *_, r in recorder.done) == ["cancelled", "cancelled", "length"]


def test_leaving_the_iteration_cancels(lm):
    _, tokenizer = lm

    async def main():
        engine = engine_for(lm, max_batch_size=1)
        first = engine.submit(tokenizer.encode("Hello"), SamplingParams(max_new_tokens=400, ignore_eos=True))
        second = engine.submit(tokenizer.encode("The"), SamplingParams(max_new_tokens=3))
        async for _ in first:
            break  # a client that went away
        await asyncio.sleep(0)
        result = await first.result()
        await asyncio.wait_for(second.result(), 10)
        engine.stop()
        return result

    assert run(main()).finish_reason == "cancelled"


def test_bounds(lm):
    _, tokenizer = lm
    recorder = Recorder()

    async def main(prompts, **kw):
        engine = engine_for(lm, observer=recorder, **kw)
        streams = [
            engine.submit(tokenizer.encode(p), SamplingParams(max_new_tokens=10, ignore_eos=True))
            for p in prompts
        ]
        results = [await s.result() for s in streams]
        engine.stop()
        return results

    results = run(main(PROMPTS[:5], max_batch_size=2))
    assert all(r.completion_tokens == 10 for r in results)
    assert max(s[0] for s in recorder.steps) == 2
    assert max(s[1] for s in recorder.steps) >= 1
    assert recorder.steps[-1][:3] == (0, 0, 0)
    # The token budget: each of 5 reserves its prompt + 10 tokens; room for 2 of them, not 3.
    recorder.steps.clear()
    reserved = len(tokenizer.encode(PROMPTS[1])) + 10
    results = run(main([PROMPTS[1]] * 5, max_num_tokens=2 * reserved))
    assert all(r.completion_tokens == 10 for r in results)
    assert max(s[0] for s in recorder.steps) == 2
    assert max(s[2] for s in recorder.steps) <= 2 * reserved


def test_invalid_requests(lm):
    _, tokenizer = lm

    async def main():
        engine = engine_for(lm, max_num_tokens=64)
        ids = tokenizer.encode("Hello")
        with pytest.raises(InvalidInput, match="empty"):
            engine.submit([], SamplingParams())
        with pytest.raises(InvalidInput, match="max_num_tokens"):
            engine.submit(ids, SamplingParams(max_new_tokens=64))
        with pytest.raises(InvalidInput, match="between 0 and"):
            engine.submit([10**6], SamplingParams())
        engine.stop()
        with pytest.raises(Unavailable):
            engine.submit(ids, SamplingParams())
        big = engine_for(lm, max_num_tokens=10**6)
        with pytest.raises(InvalidInput, match="maximum context length is 512"):
            big.submit(ids, SamplingParams(max_new_tokens=600))
        big.stop()

    run(main())
    with pytest.raises(InvalidInput):
        SamplingParams(temperature=-1)
    with pytest.raises(InvalidInput):
        SamplingParams(top_p=0)
    with pytest.raises(InvalidInput):
        SamplingParams(max_new_tokens=0)
    with pytest.raises(InvalidInput):
        SamplingParams.checked(logprobs=21)
    with pytest.raises(InvalidInput, match="unknown"):
        SamplingParams.checked(min_p=0.1)
    with pytest.raises(InvalidInput, match="top_k"):
        SamplingParams(top_k=-1)
    with pytest.raises(InvalidInput, match="top_k"):
        SamplingParams.checked(top_k=2.5)
    with pytest.raises(InvalidInput, match="repetition_penalty"):
        SamplingParams(repetition_penalty=0.0)
    with pytest.raises(InvalidInput, match="repetition_penalty"):
        SamplingParams.checked(repetition_penalty=float("inf"))
    assert SamplingParams.checked(top_k=5.0, repetition_penalty=1) == SamplingParams(
        top_k=5, repetition_penalty=1.0
    )
    with pytest.raises(InvalidInput):
        SamplingParams.checked(stop=[""])
    params = SamplingParams.checked(stop="x", temperature=1, max_new_tokens=8.0, seed=None)
    assert params == SamplingParams(stop=("x",), temperature=1.0, max_new_tokens=8)
    with pytest.raises(InvalidInput):
        GenerationEngine(lm[0], lm[1], name="x", version="1", max_batch_size=0, eos_token_ids=set())


def test_a_failing_forward_fails_that_step_only(lm, monkeypatch):
    model, tokenizer = lm
    real = model.forward
    fail = {"decode": False, "prompt_len": -1}

    def flaky(*args, input_ids=None, **kw):
        if fail["decode"] and input_ids.shape[1] == 1:
            fail["decode"] = False
            raise RuntimeError("boom in decode")
        if input_ids.shape[1] == fail["prompt_len"]:
            raise RuntimeError("boom in prefill")
        return real(*args, input_ids=input_ids, **kw)

    recorder = Recorder()

    async def main():
        engine = engine_for(lm, observer=recorder)
        monkeypatch.setattr(model, "forward", flaky)
        ids = tokenizer.encode("Hello")
        victims = [
            engine.submit(tokenizer.encode(p), SamplingParams(max_new_tokens=200, ignore_eos=True))
            for p in PROMPTS[:3]
        ]
        while not all(v.completion_tokens >= 2 for v in victims):
            await asyncio.sleep(0.001)
        fail["decode"] = True
        for victim in victims:
            with pytest.raises(ModelFailure, match="boom in decode"):
                async for _ in victim:
                    pass
            with pytest.raises(ModelFailure):
                await victim.result()
        # A prompt whose prefill fails fails alone; the engine goes on.
        long = tokenizer.encode(PROMPTS[5])
        fail["prompt_len"] = len(long)
        bad = engine.submit(long, SamplingParams(max_new_tokens=5))
        good = engine.submit(ids, SamplingParams(max_new_tokens=8, ignore_eos=True))
        with pytest.raises(ModelFailure, match="boom in prefill"):
            await bad.result()
        result = await good.result()
        engine.stop()
        return result

    result = run(main())
    monkeypatch.undo()
    assert result.token_ids == alone(lm, tokenizer.encode("Hello"), SamplingParams(max_new_tokens=8, ignore_eos=True)).token_ids
    assert [r for *_, r in recorder.done].count("error") == 4


def test_stop_cancels_everything_and_the_thread_idles(lm):
    _, tokenizer = lm
    recorder = Recorder()

    async def main():
        engine = engine_for(lm, max_batch_size=2, observer=recorder)
        quick = engine.submit(tokenizer.encode("Hello"), SamplingParams(max_new_tokens=2))
        await quick.result()
        while not recorder.steps or recorder.steps[-1][:2] != (0, 0):
            await asyncio.sleep(0.005)
        steps = len(recorder.steps)
        await asyncio.sleep(0.2)
        assert len(recorder.steps) == steps  # idle: no steps, no polling
        streams = [
            engine.submit(tokenizer.encode(p), SamplingParams(max_new_tokens=400, ignore_eos=True))
            for p in PROMPTS[:4]
        ]
        while streams[0].completion_tokens < 2 or streams[1].completion_tokens < 1:
            await asyncio.sleep(0.001)
        engine.stop()
        assert not engine._thread.is_alive()
        return [await s.result() for s in streams]

    results = run(main())
    assert {r.finish_reason for r in results} == {"cancelled"}
    assert recorder.steps[-1] == (0, 0, 0, 8192)
    assert len(recorder.threads) == 1 and threading.get_ident() not in recorder.threads
    assert len(recorder.first) == 3  # quick, then the two of the four that were admitted
    assert len([r for *_, r in recorder.done if r == "cancelled"]) == 4


def test_observer_timings(lm):
    _, tokenizer = lm
    recorder = Recorder()

    async def main():
        engine = engine_for(lm, observer=recorder)
        streams = [
            engine.submit(tokenizer.encode(p), SamplingParams(max_new_tokens=6, ignore_eos=True))
            for p in PROMPTS[:3]
        ]
        for s in streams:
            await s.result()
        engine.stop()

    run(main())
    assert len(recorder.first) == 3 and len(recorder.inter) == 15
    assert all(0 <= t < 5 for t in recorder.first + recorder.inter)
    assert sorted(recorder.done) == sorted(
        (len(tokenizer.encode(p)), 6, "length") for p in PROMPTS[:3]
    )


def test_detokenizer_never_breaks_a_character():
    text = "héllo wörld, 日本語 and 😀 emoji; ça va? naïve café 🚀🚀"
    tokenizer = train_tokenizer([text, "plain ascii words"], kind="bpe", vocab_size=80)
    ids = tokenizer.encode(text)
    assert any("\ufffd" in tokenizer.decode([i]) for i in ids)  # some tokens split a character
    detok = IncrementalDetokenizer(tokenizer, [])
    pieces = [detok.add(i) for i in ids] + [detok.flush()]
    assert all("\ufffd" not in p for p in pieces)
    assert "".join(pieces) == text
    # An incomplete character at the very end comes out as it is (U+FFFD) with flush.
    emoji = tokenizer.encode("😀")
    detok = IncrementalDetokenizer(tokenizer, [])
    assert "".join(detok.add(i) for i in emoji[:-1]) == ""
    assert detok.flush() == tokenizer.decode(emoji[:-1])


def test_stop_strings_hold_back_text():
    stops = StopStrings(("STOP", "halt"))
    out = []
    for char in "abc STO":
        text, stopped = stops.feed(char)
        assert not stopped
        out.append(text)
    assert "".join(out) == "abc "  # "STO" could still become "STOP"
    text, stopped = stops.feed("X")
    assert (text, stopped) == ("STOX", False)
    text, stopped = stops.feed(" ha")
    assert (text, stopped) == (" ", False)
    text, stopped = stops.feed("lt and more")
    assert (text, stopped) == ("", True)
    stops = StopStrings(("ab",))
    assert stops.feed("xa") == ("x", False)
    assert stops.flush() == "a"


def test_several_event_loops_and_a_closed_one(lm):
    """Streams of one engine on loops of other threads; a loop that closes without reading its
    stream gives its slot back."""
    _, tokenizer = lm
    recorder = Recorder()
    engine = engine_for(lm, max_batch_size=1, observer=recorder)
    params = SamplingParams(max_new_tokens=8, ignore_eos=True)
    expected = alone(lm, tokenizer.encode("Hello"), params).token_ids

    async def abandon():
        engine.submit(tokenizer.encode("The"), SamplingParams(max_new_tokens=400, ignore_eos=True))
        await asyncio.sleep(0.01)

    asyncio.run(abandon())  # the loop closes with the sequence still running
    results = []

    def other_thread():
        async def main():
            return await engine.submit(tokenizer.encode("Hello"), params).result()

        results.append(asyncio.run(asyncio.wait_for(main(), 30)).token_ids)

    threads = [threading.Thread(target=other_thread) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    engine.stop()
    assert results == [expected] * 3
    abandoned = [done for done in recorder.done if done[2] == "cancelled"]
    assert len(abandoned) == 1 and abandoned[0][1] < 400
