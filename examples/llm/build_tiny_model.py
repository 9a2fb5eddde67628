"""Build a tiny chat model to try Shoal's Hugging Face runtime and OpenAI routes offline.

Usage: python examples/llm/build_tiny_model.py [FOLDER]   (default: models/chat)

It writes a complete ``save_pretrained()`` folder: a 2-layer GPT-2 with random weights, a
byte-level BPE tokenizer trained here on a few sentences, a chat template, and a model.yaml.
Nothing is downloaded (it needs ``pip install 'shoal[huggingface]'``). Then:

    shoal serve models
    curl -s localhost:8080/openai/v1/chat/completions -H 'content-type: application/json' \\
        -d '{"model": "chat", "messages": [{"role": "user", "content": "hi"}]}'

The weights are random, so the model writes gibberish: it is for trying the API, the
streaming and the batching, not for reading what it says. Any real folder saved with
``model.save_pretrained(folder)`` and ``tokenizer.save_pretrained(folder)`` serves the same way.
"""

from __future__ import annotations

import string
import sys
from pathlib import Path

SENTENCES = [
    "Hello! How can I help you today?",
    "The quick brown fox jumps over the lazy dog.",
    "Shoal serves machine learning models over HTTP and gRPC.",
    "What is the capital of France? Paris is the capital of France.",
    "A user asks a question and the assistant answers it.",
    "<|system|>Be brief.\n<|user|>Hi there!\n<|assistant|>Hello, how can I help?\n",
    string.printable,  # every printable ASCII character is in the vocabulary
]

#: How the tokenizer renders a chat: what /openai/v1/chat/completions sends to the model.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|{{ message['role'] }}|>{{ message['content'] }}\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)

MODEL_YAML = """\
# runtime: huggingface is detected from model.safetensors; the task (text-generation) from
# config.json's architecture (GPT2LMHeadModel).
max_batch_size: 16              # sequences the generation engine runs at once
parameters:
  max_new_tokens: 32            # a request's default
  # device: cuda                # on a GPU (dtype: auto, float16 or bfloat16 there)
"""


def build(folder: Path) -> Path:
    import torch
    from tokenizers import (
        Tokenizer,
        decoders,
        models,
        pre_tokenizers,
        processors,
        trainers,
    )
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.post_processor = processors.ByteLevel(trim_offsets=False)
    backend.train_from_iterator(
        SENTENCES,
        trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>"], show_progress=False),
    )
    end = "<|endoftext|>"
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token=end, eos_token=end, unk_token=end, pad_token=end
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    config = GPT2Config(
        vocab_size=len(tokenizer), n_positions=1024, n_embd=64, n_layer=2, n_head=2,
        bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.eos_token_id, initializer_range=0.2,
    )
    torch.manual_seed(0)
    model = GPT2LMHeadModel(config).eval()
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    (folder / "model.yaml").write_text(MODEL_YAML)
    return folder


def main() -> None:
    folder = Path(sys.argv[1] if len(sys.argv) > 1 else "models/chat")
    build(folder)
    print(f"built {folder}/: serve its parent folder with: shoal serve {folder.parent}")


if __name__ == "__main__":
    main()
