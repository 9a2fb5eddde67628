"""Large language models: generation with continuous batching, and what serves Hugging Face folders.

- :mod:`shoal.llm.params`: :class:`~shoal.llm.params.SamplingParams` (no torch import);
- :mod:`shoal.llm.engine`: :class:`~shoal.llm.engine.GenerationEngine`, one thread stepping
  every running sequence through one batched forward pass per token (imports torch);
- :mod:`shoal.llm.kvcache`, :mod:`shoal.llm.sampling`, :mod:`shoal.llm.detokenize`: its parts.

Importing this package imports nothing heavy: import the submodule you need.
"""
