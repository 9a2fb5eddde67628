"""What the engine tests share: an engine started on the tiny model, a bounded run, and a
sequence generated alone."""

from __future__ import annotations

import asyncio
from typing import Any

from shoal.llm.engine import GenerationEngine
from shoal.llm.params import SamplingParams


def engine_for(lm: tuple[Any, Any], **kw: Any) -> GenerationEngine:
    """A started engine over the ``lm`` fixture's model and tokenizer (EOS from the tokenizer
    unless ``eos_token_ids`` is given)."""
    model, tokenizer = lm
    kw.setdefault("eos_token_ids", {tokenizer.eos_token_id})
    engine = GenerationEngine(model, tokenizer, name="tiny", version="1", **kw)
    engine.start()
    return engine


def run(coro: Any, timeout: float = 60) -> Any:
    return asyncio.run(asyncio.wait_for(coro, timeout))


def alone(lm: tuple[Any, Any], ids: list[int], params: SamplingParams) -> Any:
    """One sequence generated on an engine of its own: what batched runs must equal."""

    async def main() -> Any:
        engine = engine_for(lm)
        try:
            return await engine.submit(ids, params).result()
        finally:
            engine.stop()

    return run(main())
