"""Tiny Hugging Face models for the tests (built here in well under a second each, never downloaded).

Each builder writes a complete ``save_pretrained()`` folder (``config.json``, ``model.safetensors``,
tokenizer files) with random weights from a fixed ``torch.manual_seed`` and a tokenizer trained by
the ``tokenizers`` library on :data:`SENTENCES`, so two builds of one model are identical.

    tiny_gpt2(folder)                      # text-generation, with a chat template
    tiny_gpt2(folder, chat_template=False)  # ... without one
    tiny_bert(folder, "text-classification")  # or token-classification / feature-extraction / fill-mask
    tiny_t5(folder)                        # text2text-generation
"""

from __future__ import annotations

import string
from pathlib import Path
from typing import Literal

#: What the tokenizers are trained on (and what tests may send: every word is in the vocabulary).
SENTENCES = [
    "Hello world, this is a tiny model.",
    "The quick brown fox jumps over the lazy dog.",
    "Shoal serves machine learning models over HTTP and gRPC.",
    "Alice lives in Paris and Bob lives in Berlin.",
    "I love this movie, it was wonderful!",
    "I hate rainy days; they are terrible.",
    "Translate English to German: the house is small.",
    "Summarize: the cat sat on the mat and looked at the bird.",
    "What is the capital of France? Paris is the capital of France.",
    "Numbers like 1, 2, 3 and 42 appear here too.",
    "A user asks a question and the assistant answers it.",
    "Streaming tokens one by one makes a chat feel fast.",
    "<|system|>Be brief.\n<|user|>Hi there!\n<|assistant|>Hello, how can I help?\n",
    # Every printable ASCII character, so that any ASCII text encodes without an unknown byte.
    string.printable,
]

#: The chat template tiny_gpt2 carries (Jinja, as transformers renders it).
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|{{ message['role'] }}|>{{ message['content'] }}\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)

TOKEN_LABELS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
SEQUENCE_LABELS = ["NEGATIVE", "POSITIVE"]

BERT_TASKS = {
    "text-classification": "BertForSequenceClassification",
    "token-classification": "BertForTokenClassification",
    "feature-extraction": "BertModel",
    "fill-mask": "BertForMaskedLM",
}


def train_tokenizer(
    sentences: list[str] | None = None, kind: Literal["bpe", "wordpiece", "t5"] = "bpe",
    vocab_size: int = 300,
):
    """A fast tokenizer trained on ``sentences`` (default :data:`SENTENCES`).

    ``bpe``: byte-level BPE like GPT-2's (``<|endoftext|>`` is bos, eos and pad). Its alphabet is
    the bytes of the sentences only (printable ASCII), so whatever a random model generates
    decodes to plain ASCII text (no partial UTF-8 characters).
    ``wordpiece``: BERT's (``[CLS] ... [SEP]``, ``[MASK]``, ``[PAD]``, lower-cased).
    ``t5``: BPE over whitespace-split words with ``</s>`` appended, ``<pad>`` = 0.
    """
    from tokenizers import (
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
        trainers,
    )
    from transformers import PreTrainedTokenizerFast

    sentences = list(sentences or SENTENCES)
    if kind == "bpe":
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size, special_tokens=["<|endoftext|>"], show_progress=False,
        )
        tok.train_from_iterator(sentences, trainer)
        return PreTrainedTokenizerFast(
            tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
            unk_token="<|endoftext|>", pad_token="<|endoftext|>",
        )
    if kind == "wordpiece":
        special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
        tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
        tok.normalizer = normalizers.BertNormalizer(lowercase=True)
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.decoder = decoders.WordPiece()
        trainer = trainers.WordPieceTrainer(
            vocab_size=vocab_size, special_tokens=special, show_progress=False
        )
        tok.train_from_iterator(sentences, trainer)
        cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
            special_tokens=[("[CLS]", cls), ("[SEP]", sep)],
        )
        return PreTrainedTokenizerFast(
            tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
            sep_token="[SEP]", mask_token="[MASK]", model_input_names=["input_ids", "attention_mask"],
        )
    if kind == "t5":
        tok = Tokenizer(models.BPE(unk_token="<unk>"))
        tok.pre_tokenizer = pre_tokenizers.Metaspace()
        tok.decoder = decoders.Metaspace()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size, special_tokens=["<pad>", "</s>", "<unk>"], show_progress=False
        )
        tok.train_from_iterator(sentences, trainer)
        tok.post_processor = processors.TemplateProcessing(
            single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", tok.token_to_id("</s>"))]
        )
        return PreTrainedTokenizerFast(
            tokenizer_object=tok, eos_token="</s>", unk_token="<unk>", pad_token="<pad>",
            model_input_names=["input_ids", "attention_mask"],
        )
    raise ValueError(f"unknown tokenizer kind {kind!r}")


def tiny_gpt2(
    folder: Path, *, chat_template: bool = True, n_layer: int = 2, n_embd: int = 64,
    n_head: int = 2, n_positions: int = 512, seed: int = 0,
) -> Path:
    """A random-weight GPT-2 (``GPT2LMHeadModel``, text-generation) with a byte-level BPE tokenizer."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    tokenizer = train_tokenizer(kind="bpe")
    if chat_template:
        tokenizer.chat_template = CHAT_TEMPLATE
    eos = tokenizer.eos_token_id
    config = GPT2Config(
        vocab_size=len(tokenizer), n_positions=n_positions, n_embd=n_embd, n_layer=n_layer,
        n_head=n_head, bos_token_id=eos, eos_token_id=eos, pad_token_id=eos,
        # Wider than GPT-2's 0.02 so that random logits are far apart: greedy decoding does not
        # hinge on float rounding, and the text varies instead of repeating one token.
        initializer_range=0.2,
    )
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(config).eval()
    return _save(folder, model, tokenizer)


def tiny_bert(folder: Path, task: str = "text-classification", *, seed: int = 0) -> Path:
    """A random-weight 2-layer BERT for ``task`` (text-classification, token-classification,
    feature-extraction or fill-mask) with a WordPiece tokenizer."""
    import torch
    import transformers
    from transformers import BertConfig

    if task not in BERT_TASKS:
        raise ValueError(f"tiny_bert: unknown task {task!r}; one of {', '.join(BERT_TASKS)}")
    tokenizer = train_tokenizer(kind="wordpiece")
    labels = {"text-classification": SEQUENCE_LABELS, "token-classification": TOKEN_LABELS}.get(task)
    extra = {}
    if labels:
        extra = {"id2label": dict(enumerate(labels)), "label2id": {v: k for k, v in enumerate(labels)}}
    config = BertConfig(
        vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=128, pad_token_id=tokenizer.pad_token_id,
        initializer_range=0.2, **extra,
    )
    torch.manual_seed(seed)
    model = getattr(transformers, BERT_TASKS[task])(config).eval()
    return _save(folder, model, tokenizer)


def tiny_t5(folder: Path, *, seed: int = 0) -> Path:
    """A random-weight 2-layer T5 (``T5ForConditionalGeneration``, text2text-generation)."""
    import torch
    from transformers import T5Config, T5ForConditionalGeneration

    tokenizer = train_tokenizer(kind="t5")
    config = T5Config(
        vocab_size=len(tokenizer), d_model=32, d_kv=16, d_ff=64, num_layers=2,
        num_decoder_layers=2, num_heads=2, pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id, decoder_start_token_id=tokenizer.pad_token_id,
        initializer_factor=4.0,
    )
    torch.manual_seed(seed)
    model = T5ForConditionalGeneration(config).eval()
    return _save(folder, model, tokenizer)


def _save(folder: Path, model, tokenizer) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
