"""What the generation engine's tests share: the tiny random GPT-2 of ``tests/e2e/hf_models``,
loaded once per module, and torch on one thread."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # e2e.hf_models


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The tiny model gains nothing from more threads, and spinning OpenMP threads make it
    slow on a busy machine."""
    torch = pytest.importorskip("torch")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def lm(tmp_path_factory):
    """(model, tokenizer) of a fresh tiny GPT-2 folder."""
    pytest.importorskip("transformers")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from e2e.hf_models import tiny_gpt2

    folder = tiny_gpt2(tmp_path_factory.mktemp("llm") / "gpt2")
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    return model, tokenizer
