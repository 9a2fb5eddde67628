"""Continuous batching (issue 20): throughput of 16 concurrent greedy generations, and time to
first token at concurrency 1, with ``shoal.llm.engine.GenerationEngine``.

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/llm_generation.py   # tiny and ~100M, 3 rounds
    .venv/bin/python benchmarks/llm_generation.py --models tiny --rounds 1 --threads 1

(``OMP_WAIT_POLICY=PASSIVE``: on a busy machine torch's spin-waiting OpenMP threads otherwise
dominate every number.) Each number is given twice: wall-clock, and per CPU second of this
process (``time.process_time()``, all threads), which other load on the machine disturbs less.

Models, random weights built here (nothing downloaded, nothing saved): **tiny**, the tests'
GPT-2 (2 layers, 64 wide, the byte-level BPE of ``tests/e2e/hf_models.py``, ~300 tokens of
vocabulary); **gpt2-100m**, GPT-2's small shape (12 layers, 768 wide, 12 heads, 32,000 tokens of
vocabulary: 110M parameters), with the same tokenizer (ids it does not know decode to nothing).

Per model and round:

- **engine, 16 concurrent**: 16 prompts (4 to 16 tokens, all different) submitted at once,
  64 new tokens each (``ignore_eos``), greedy; tokens/s = 1,024 / wall time from the first
  submit to the last token.
- **engine, one at a time**: the same 16, each submitted after the previous one finished.
- **generate, one at a time**: ``model.generate(do_sample=False, max_new_tokens=64)`` for each
  (end-of-sequence disabled, so 64 tokens each).
- **TTFT, c=1**: from ``submit`` to the first event on the event loop (median of 20, 9-token
  prompt), against a **direct forward** of the prompt (``model(ids, cache=DynamicCache(),
  logits_to_keep=1)`` plus the argmax: the first step of ``generate``, without the ~0.4 ms
  ``generate`` spends building ``DynamicCache(config=...)``) and against
  ``generate(max_new_tokens=1)``.

The greedy tokens of the 16 concurrent sequences are checked equal to the one-at-a-time ones
(engine and ``generate``).
Targets: concurrent >= 4x one at a time; TTFT within 10 % of the direct forward.
Torch's threads are left at their default (one per core). The script prints the load average.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
from e2e.hf_models import SENTENCES, train_tokenizer

from shoal.llm.engine import GenerationEngine
from shoal.llm.params import SamplingParams

CONCURRENCY = 16
NEW_TOKENS = 64


def build(name: str, tokenizer):
    from transformers import GPT2Config, GPT2LMHeadModel

    eos = tokenizer.eos_token_id
    if name == "tiny":
        config = GPT2Config(vocab_size=len(tokenizer), n_positions=512, n_embd=64, n_layer=2,
                            n_head=2, bos_token_id=eos, eos_token_id=eos, pad_token_id=eos,
                            initializer_range=0.2)
    else:
        config = GPT2Config(vocab_size=32000, n_positions=1024, n_embd=768, n_layer=12,
                            n_head=12, bos_token_id=eos, eos_token_id=eos, pad_token_id=eos)
    torch.manual_seed(0)
    model = GPT2LMHeadModel(config).eval()
    model.generation_config.eos_token_id = None  # generate: always NEW_TOKENS tokens
    model.generation_config.pad_token_id = eos
    return model


def prompts(tokenizer) -> list[list[int]]:
    words = " ".join(SENTENCES[:12]).split()
    out = []
    for i in range(CONCURRENCY):
        ids = tokenizer.encode(" ".join(words[i : i + 2 + i % 7]))
        out.append(ids[: 4 + (i * 5) % 13])
    return out


def clocks() -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process: all its threads)."""
    return time.perf_counter(), time.process_time()


def since(start: tuple[float, float]) -> tuple[float, float]:
    wall, cpu = clocks()
    return wall - start[0], cpu - start[1]


async def engine_concurrent(engine, jobs, params):
    start = clocks()
    streams = [engine.submit(ids, params) for ids in jobs]
    results = [await s.result() for s in streams]
    return since(start), [r.token_ids for r in results]


async def engine_serial(engine, jobs, params):
    start = clocks()
    results = [await engine.submit(ids, params).result() for ids in jobs]
    return since(start), [r.token_ids for r in results]


def generate_serial(model, jobs):
    start = clocks()
    out = []
    with torch.inference_mode():
        for ids in jobs:
            tokens = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                    do_sample=False, max_new_tokens=NEW_TOKENS)
            out.append(tokens[0, len(ids):].tolist())
    return since(start), out


async def ttft_engine(engine, ids, repeats):
    times = []
    for _ in range(repeats):
        start = clocks()
        stream = engine.submit(ids, SamplingParams(max_new_tokens=1, ignore_eos=True))
        async for _event in stream:
            times.append(since(start))
            break
        await stream.result()
    return medians(times)


def medians(times: list[tuple[float, float]]) -> tuple[float, float]:
    return statistics.median(t[0] for t in times), statistics.median(t[1] for t in times)


def ttft_direct(model, ids, repeats):
    from transformers import DynamicCache

    times = []
    with torch.inference_mode():
        for _ in range(repeats):
            start = clocks()
            x = torch.tensor([ids])
            out = model(x, cache=DynamicCache(), use_cache=True,
                        attention_mask=torch.ones_like(x), logits_to_keep=1)
            int(out.logits[0, -1].float().argmax())
            times.append(since(start))
    return medians(times)


def ttft_generate(model, ids, repeats):
    times = []
    with torch.inference_mode():
        for _ in range(repeats):
            start = clocks()
            model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                           do_sample=False, max_new_tokens=1)
            times.append(since(start))
    return medians(times)


def one_round(name, model, tokenizer):
    jobs = prompts(tokenizer)
    params = SamplingParams(max_new_tokens=NEW_TOKENS, ignore_eos=True)
    total = CONCURRENCY * NEW_TOKENS
    row = {}

    async def main():
        engine = GenerationEngine(model, tokenizer, name=name, version="1",
                                  max_batch_size=CONCURRENCY, eos_token_ids={tokenizer.eos_token_id})
        engine.start()
        try:
            await engine_concurrent(engine, jobs[:2], SamplingParams(max_new_tokens=4))  # warm up
            row["concurrent_s"], batched = await engine_concurrent(engine, jobs, params)
            row["serial_s"], serial = await engine_serial(engine, jobs, params)
            row["identical"] = batched == serial
            row["serial_tokens"] = serial
            ttft_ids = tokenizer.encode("The quick brown fox jumps over the lazy dog.")[:9]
            row["ttft_engine"] = await ttft_engine(engine, ttft_ids, 20)
        finally:
            engine.stop()
        return ttft_ids

    ttft_ids = asyncio.run(main())
    generate_serial(model, [jobs[0][:4]])  # warm up (one-time costs of generate's first call)
    row["generate_s"], generated = generate_serial(model, jobs)
    row["ttft_direct"] = ttft_direct(model, ttft_ids, 20)
    row["ttft_generate"] = ttft_generate(model, ttft_ids, 20)
    row["identical"] = row["identical"] and generated == row.pop("serial_tokens")
    out = {"identical": row["identical"]}
    for clock, i in (("wall", 0), ("cpu", 1)):
        tps = {k: total / row[f"{k}_s"][i] for k in ("concurrent", "serial", "generate")}
        out[clock] = {
            **{f"{k}_tps": v for k, v in tps.items()},
            "vs_serial": tps["concurrent"] / tps["serial"],
            "vs_generate": tps["concurrent"] / tps["generate"],
            **{f"ttft_{k}": row[f"ttft_{k}"][i] for k in ("engine", "direct", "generate")},
            "ttft_ratio": row["ttft_engine"][i] / row["ttft_direct"][i],
        }
    return out


def fmt(values, spec):
    lo, hi = min(values), max(values)
    return format(lo, spec) if format(lo, spec) == format(hi, spec) else f"{lo:{spec}}–{hi:{spec}}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="tiny,gpt2-100m")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0,
                        help="torch intra-op threads (default: torch's own, one per core)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    tokenizer = train_tokenizer()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs")
    for name in args.models.split(","):
        model = build(name, tokenizer)
        params = sum(p.numel() for p in model.parameters()) / 1e6
        rows = []
        for i in range(args.rounds):
            load = os.getloadavg()[0]
            row = one_round(name, model, tokenizer)
            row["load"] = load
            rows.append(row)
            for clock in ("wall", "cpu"):
                r = row[clock]
                print(f"{name} ({params:.1f}M params) round {i + 1} [{clock}]: load {load:.2f}; "
                      f"tokens/s concurrent {r['concurrent_tps']:.0f}, engine one at a time "
                      f"{r['serial_tps']:.0f}, generate one at a time {r['generate_tps']:.0f}; "
                      f"x{r['vs_serial']:.2f} / x{r['vs_generate']:.2f}; TTFT engine "
                      f"{r['ttft_engine'] * 1e3:.2f} ms, direct forward {r['ttft_direct'] * 1e3:.2f} ms, "
                      f"generate(1) {r['ttft_generate'] * 1e3:.2f} ms (x{r['ttft_ratio']:.3f}); "
                      f"batched == one at a time == generate: {row['identical']}", flush=True)
        for clock in ("wall", "cpu"):
            def col(key: str, clock: str = clock, rows: list[dict] = rows) -> list[float]:
                return [r[clock][key] for r in rows]

            def ms(key: str, col=col) -> list[float]:
                return [v * 1e3 for v in col(key)]

            print(
                f"| {name} ({params:.0f}M), {clock} | {fmt(col('concurrent_tps'), ',.0f')} "
                f"| {fmt(col('serial_tps'), ',.0f')} | {fmt(col('generate_tps'), ',.0f')} "
                f"| {fmt(col('vs_serial'), '.1f')}x | {fmt(col('vs_generate'), '.1f')}x "
                f"| {fmt(ms('ttft_engine'), '.2f')} | {fmt(ms('ttft_direct'), '.2f')} "
                f"| {fmt(ms('ttft_generate'), '.2f')} | {fmt(col('ttft_ratio'), '.2f')} "
                f"| {all(r['identical'] for r in rows)} | {fmt([r['load'] for r in rows], '.1f')} |"
            )


if __name__ == "__main__":
    main()
