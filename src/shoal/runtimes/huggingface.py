"""Hugging Face model folders (``save_pretrained()`` output) served with transformers.

A folder holds ``config.json``, weights (``model.safetensors``, sharded safetensors with their
index, or ``pytorch_model.bin``) and a tokenizer (``tokenizer.json``, or
``tokenizer_config.json`` with a slow tokenizer's vocabulary); :mod:`shoal.llm.folder` checks
it and names what is missing. Everything loads from the folder alone: every transformers
call passes ``local_files_only=True`` (nothing is downloaded, the hub is never asked), and
``trust_remote_code`` is never set: a folder whose ``config.json`` or
``tokenizer_config.json`` has an ``auto_map`` (custom modelling code) is refused.
``pytorch_model.bin`` is a pickle: transformers reads it with ``torch.load(weights_only=True)``,
and, as for other pickles, Shoal refuses one that is world-writable (or in a world-writable
folder); a sharded one (``pytorch_model.bin.index.json``) has its index and every shard it
names checked so. Prefer safetensors.

The task (:mod:`shoal.llm.tasks`) is ``parameters.task`` or what ``config.json``'s
architecture says. Per task, V2 input ``text_input`` (BYTES, one string per row; a
one-input request may name it anything), and outputs:

- ``text-generation``: ``text_output`` BYTES [-1], the generated text (without the prompt).
  Rows go to the :class:`~shoal.llm.engine.GenerationEngine` one by one, so concurrent
  requests share forward passes (continuous batching); the adaptive batcher is not put in
  front of it, and ``model.yaml``'s ``max_batch_size`` bounds its running sequences instead
  (default 16; 0 or 1: one at a time). Request parameters: ``max_new_tokens``,
  ``temperature`` (0: greedy), ``top_p``, ``top_k`` and ``repetition_penalty`` (where the
  engine has them), ``stop`` (a string or a list; the text ends before it), ``seed``,
  ``ignore_eos``. A request that sets no ``max_new_tokens`` gets the default, cut to the room
  its prompt leaves in the model's context and the engine's ``max_num_tokens``; one that sets
  more than fits is refused (400). A generation the engine cancels (the model unloading, the
  server stopping) answers 503, never a cut text. Such a model runs in the server process
  only: ``workers`` and ``autoscaling`` (and ``resources.gpus``, which run a model in worker
  processes) fail its load, since the engine batches requests only within its process and
  the OpenAI routes reach the model there (``parameters.device: cuda`` puts it on a GPU).
- ``text2text-generation`` (encoder-decoders such as T5): ``text_output``; each (adaptively
  batched) request runs ``model.generate`` over its rows, in micro-batches (no continuous
  batching). The same request parameters; a seeded sampled request generates row by row, so
  each row's text depends on its seed only. ``max_new_tokens`` is at most the decoder's
  positions less one (``max_position_embeddings``), or 1024 for models without a fixed number
  (T5's relative positions); a default above that is cut to it.
- ``text-classification``: ``label`` BYTES [-1], ``score`` FP32 [-1] (the label's
  probability: softmax, or sigmoid for one-label and multi-label models, as transformers'
  pipeline), ``scores`` FP32 [-1, labels].
- ``token-classification``: ``entities`` BYTES [-1], per row a JSON array of
  ``{entity, score, start, end, word}``: consecutive tokens of one entity grouped as the
  pipeline's ``aggregation_strategy="simple"`` does, ``O`` left out.
- ``feature-extraction``: ``embedding`` FP32 [-1, hidden], the mean of the last hidden state
  over the tokens (``parameters.pooling: cls`` takes the first token's), unit length when
  ``parameters.normalize`` is true.
- ``fill-mask``: ``token_str``, ``sequence`` BYTES [-1, top_k] and ``score`` FP32
  [-1, top_k]: the ``top_k`` (``parameters.top_k``, default 5) most likely tokens for the one
  mask token each row must hold.

Encoder tasks run on Shoal's worker threads under ``torch.inference_mode()``, in
micro-batches of at most 32 rows of similar length (each padded to its longest row), the
answer in the request's order; a row longer than the model takes is refused (400), and so is
a request of more than 2048 rows (any task). ``embed`` (the OpenAI embeddings route) runs its
micro-batches on the model's own two threads (at most two forward passes of one model at
once; more requests wait their turn) and stops between them when its caller goes away.

Texts are tokenized off the event loop when they are long; one whose characters outnumber the
model's token budget times its vocabulary's longest entry cannot fit (short of a tokenizer
normalizer that deletes characters) and is refused before it is tokenized.

Generation defaults: the folder's ``generation_config.json`` (what transformers reads as
``model.generation_config``). Its ``do_sample`` (false: greedy), ``temperature``, ``top_p``,
``top_k``, ``repetition_penalty``, ``max_new_tokens`` and ``stop_strings`` are the defaults of
V2 requests (``model.default_sampling``; the OpenAI routes take ``top_k`` and
``repetition_penalty`` from it, ``temperature`` and ``top_p`` from the request). A setting that
changes what is generated but that the continuous-batching engine does not apply
(``num_beams`` > 1, ``no_repeat_ngram_size``, ``bad_words_ids``, ``suppress_tokens``,
``min_new_tokens``, ``typical_p``, ``min_p``, ...) fails a text-generation model's load, naming
it, unless ``parameters.ignore_generation_config`` lists it (or is ``true``: every such
setting) to serve the model without it. ``model.generate`` (text2text) applies the whole
generation_config itself; the settings ``ignore_generation_config`` names are dropped for it too.

``parameters``: ``task``, ``device`` (``cpu``, the default, ``cuda`` or ``cuda:N``),
``dtype`` (``auto``: the checkpoint's; ``float32``, the default on cpu; ``float16``,
``bfloat16``; on cuda the default is ``auto``), ``max_num_tokens`` (the engine's token budget,
default 8192), ``max_new_tokens`` (a generation request's default: the folder's
generation_config, else 16), ``ignore_generation_config`` (a list of generation_config
settings, or true), ``pooling`` (``mean`` or ``cls``), ``normalize``, ``top_k``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import copy
import dataclasses
import json
import logging
import multiprocessing
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import transformers

from ..errors import InvalidInput, LoadError, Unavailable
from ..llm import tasks as T
from ..llm.folder import inspect_folder, read_config, remote_code
from ..llm.params import SamplingParams
from ..model import Model
from ..types import InferenceRequest, Tensor, TensorSpec
from . import IMPORT_LOCK, first_line
from .trust import refuse_untrusted
from .torch_device import torch_device

log = logging.getLogger(__name__)

PARAMETERS = frozenset(
    {"task", "device", "dtype", "max_num_tokens", "max_new_tokens", "ignore_generation_config",
     "pooling", "normalize", "top_k"}
)
#: Request parameters that belong to the protocols (binary output, tritonclient's options),
#: not to the model: ignored.
PROTOCOL_PARAMETERS = frozenset(
    {"binary_data_output", "content_type", "headers", "timeout", "priority", "sequence_id",
     "sequence_start", "sequence_end"}
)
#: What SamplingParams holds (the engine's settings; top_k and repetition_penalty where it has them).
SAMPLING_FIELDS = frozenset(f.name for f in dataclasses.fields(SamplingParams))
#: What a V2 generation request may set in its parameters.
GENERATION_PARAMETERS = (
    "max_new_tokens", "temperature", "top_p", "stop", "seed", "ignore_eos",
    *(name for name in ("top_k", "repetition_penalty") if name in SAMPLING_FIELDS),
)
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "auto": "auto"}
POOLINGS = ("mean", "cls")
DEFAULT_MAX_BATCH_SIZE = 16
DEFAULT_MAX_NEW_TOKENS = 16
DEFAULT_MAX_NUM_TOKENS = 8192
DEFAULT_TOP_K = 5
#: The most rows (texts) one request may carry, every task (OpenAI's embeddings limit).
MAX_ROWS = 2048
#: The most rows of one forward pass (encoder tasks, embeddings, text2text's generate).
MICRO_BATCH_ROWS = 32
#: Threads of a model's own (``embed``, tokenizing long prompts): its forward passes at once.
OWN_THREADS = 2
#: text2text models whose decoder has no fixed number of positions (T5): the most new tokens.
TEXT2TEXT_MAX_NEW_TOKENS = 1024
#: Prompts up to this many characters (a request's in all) are tokenized on the event loop.
INLINE_TOKENIZE_CHARS = 4096
INPUT = "text_input"
TEXT_OUTPUT = "text_output"
#: The name of Shoal's worker processes (serving.workers.pool): text generation stays out of them.
WORKER_PROCESS_PREFIX = "shoal-worker-"

#: generation_config settings that become request defaults, as SamplingParams fields
#: (``do_sample`` decides the default temperature).
GENERATION_DEFAULTS = {
    "max_new_tokens": "max_new_tokens", "temperature": "temperature", "top_p": "top_p",
    "top_k": "top_k", "repetition_penalty": "repetition_penalty", "stop_strings": "stop",
}
#: generation_config settings that do not change what is generated (token ids Shoal reads
#: elsewhere, what generate returns, caching and compilation, speculative decoding, beam-only
#: settings), or that Shoal bounds otherwise (max_length: the model's positions do).
GENERATION_NEUTRAL = frozenset({
    "do_sample", "bos_token_id", "eos_token_id", "pad_token_id", "decoder_start_token_id",
    "use_cache", "output_attentions", "output_hidden_states", "output_scores", "output_logits",
    "return_dict_in_generate", "transformers_version", "_from_model_config",
    "cache_implementation", "cache_config", "compile_config", "disable_compile", "low_memory",
    "max_cache_len", "continuous_batching_config", "prefill_chunk_size", "max_length",
    "max_time", "is_assistant", "assistant_confidence_threshold", "assistant_early_exit",
    "assistant_lookbehind", "target_lookbehind", "num_assistant_tokens",
    "num_assistant_tokens_schedule", "prompt_lookup_num_tokens", "max_matching_ngram_size",
    "length_penalty", "early_stopping", "remove_invalid_values", "renormalize_logits",
})
#: Values of the other settings that change nothing (anything else is not applied by the engine).
GENERATION_NO_EFFECT: dict[str, tuple[Any, ...]] = {
    "num_beams": (1,), "num_beam_groups": (1,), "num_return_sequences": (1,),
    "min_length": (0,), "min_new_tokens": (0,), "no_repeat_ngram_size": (0,),
    "encoder_no_repeat_ngram_size": (0,), "typical_p": (1.0,), "epsilon_cutoff": (0.0,),
    "eta_cutoff": (0.0,), "min_p": (0.0,), "diversity_penalty": (0.0,),
    "encoder_repetition_penalty": (1.0,), "guidance_scale": (1.0,), "penalty_alpha": (0.0,),
    "token_healing": (False,), "top_k": (0,), "repetition_penalty": (1.0,),
    "bad_words_ids": ([],), "suppress_tokens": ([],), "begin_suppress_tokens": ([],),
    "force_words_ids": ([],), "sequence_bias": ({},), "constraints": ([],),
}

#: Sampling in model.generate uses torch's global generator: one sampled generate at a time,
#: so that a seeded one draws only its own numbers.
_SEEDED = threading.Lock()


class HuggingFaceModel(Model):
    """A Hugging Face folder. Text generation is served by :class:`TextGenerationModel`
    (chosen when the folder's task is ``text-generation``), whose ``predict`` is a coroutine."""

    platform = "huggingface"
    accepted_parameters = PARAMETERS
    #: Whether the model schedules concurrent requests itself (the generation engine): the
    #: repository manager then puts no adaptive batcher in front of ``predict``, and passes
    #: model.yaml's ``max_batch_size`` as :attr:`max_batch_size`.
    batches_itself = False

    def __new__(  # noqa: PYI034 - it may return a subclass (TextGenerationModel)
        cls, name: str, version: str = "1", path: Path | None = None,
        parameters: dict[str, Any] | None = None,
    ) -> HuggingFaceModel:
        chosen = cls
        if cls is HuggingFaceModel and path is not None and (
            _task_hint(Path(path), parameters or {}) == T.TEXT_GENERATION
        ):
            chosen = TextGenerationModel
        return super().__new__(chosen)

    def __init__(
        self, name: str, version: str = "1", path: Path | None = None,
        parameters: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(name, version, path, parameters)
        self.task: str | None = None
        self.engine: Any = None  # shoal.llm.engine.GenerationEngine, for text-generation
        self.tokenizer: Any = None
        self.model: Any = None
        self.chat_template: str | None = None
        #: model.yaml's max_batch_size (set by create_model for models that batch themselves).
        self.max_batch_size: int | None = None
        #: The most tokens (prompt and generated) the model's positions allow; None: no limit known.
        self.context_length: int | None = None
        self.max_new_tokens = DEFAULT_MAX_NEW_TOKENS
        self.max_input_tokens: int | None = None
        #: text2text: the most new tokens a request may ask for.
        self.max_output_tokens: int | None = None
        #: Generation models: the request defaults generation_config gives (SamplingParams
        #: field -> value, only those it sets), and the settings of a request that sets
        #: nothing (None for other tasks).
        self.generation_defaults: dict[str, Any] = {}
        self.default_sampling: SamplingParams | None = None
        #: generation_config settings ignored (parameters.ignore_generation_config) -> value.
        self.ignored_generation_config: dict[str, Any] = {}
        self._generation_config: Any = None  # text2text: generation_config less what is ignored
        #: The most characters one token stands for (the vocabulary's longest entry): a text
        #: longer than the token budget times this is refused before it is tokenized.
        self.max_chars_per_token = 1
        self._tokenizing = threading.Lock()
        self._threads: concurrent.futures.ThreadPoolExecutor | None = None
        self._threads_lock = threading.Lock()

    # -- loading ---------------------------------------------------------------------------

    def load(self) -> None:
        if self.path is None:
            raise LoadError("a Hugging Face model needs its folder")
        folder = inspect_folder(self.path)
        custom = remote_code(folder)
        if custom:
            raise LoadError(
                f"{self.path.name}/: {custom} names custom modelling code; Shoal does not run code "
                "from model folders (trust_remote_code), so only architectures transformers "
                f"{transformers.__version__} ships are served"
            )
        self.task = T.resolve_task(folder.config, self.parameters.get("task"))
        if (self.task == T.TEXT_GENERATION) != isinstance(self, TextGenerationModel):
            raise LoadError(f"internal: task {self.task} loaded by {type(self).__name__}")
        if self.task == T.TEXT_GENERATION and _in_worker_process():
            raise LoadError(
                f"model {self.name!r} is a text-generation model, which runs in the server process "
                "only (its generation engine batches concurrent requests within one process, and "
                "the OpenAI routes reach the model there); model.yaml's workers, autoscaling or "
                "resources.gpus (or the server's --workers / --autoscale) put it in worker "
                "processes: set workers: 0 in its model.yaml and drop autoscaling and resources "
                "(parameters.device: cuda puts it on a GPU)"
            )
        self._check_parameters()
        self.device = _device(str(self.parameters.get("device", "cpu")))
        dtype = self.parameters.get("dtype", "float32" if self.device.type == "cpu" else "auto")
        for pickled in folder.pickle_files():
            try:
                refuse_untrusted(pickled)
            except OSError as exc:
                raise LoadError(f"cannot read {pickled.name}: {exc}") from None
        model_type = folder.config.get("model_type")
        from transformers.models.auto.configuration_auto import CONFIG_MAPPING

        if not isinstance(model_type, str) or model_type not in CONFIG_MAPPING:
            raise LoadError(
                f"{self.path.name}/config.json: model_type {model_type!r} is not an architecture "
                f"transformers {transformers.__version__} knows (a newer transformers may; models "
                "that need custom code are not served)"
            )
        auto = getattr(transformers, T.AUTO_CLASSES[self.task])
        transformers.utils.logging.disable_progress_bar()
        try:
            with IMPORT_LOCK:  # transformers imports each architecture's module lazily
                config = transformers.AutoConfig.from_pretrained(
                    self.path, local_files_only=True, trust_remote_code=False
                )
                mapping = getattr(auto, "_model_mapping", None)
                if mapping is not None and type(config) not in mapping:
                    raise LoadError(
                        f"{self.path.name}/config.json: transformers has no {self.task} model for "
                        f"model_type {model_type!r} ({auto.__name__} does not take "
                        f"{type(config).__name__}); set parameters.task to what it serves"
                    )
                tokenizer = transformers.AutoTokenizer.from_pretrained(
                    self.path, local_files_only=True, trust_remote_code=False
                )
                model = auto.from_pretrained(
                    self.path, config=config, local_files_only=True, trust_remote_code=False,
                    dtype=DTYPES[dtype],
                )
        except LoadError:
            raise
        except Exception as exc:
            raise LoadError(f"cannot load {self.path.name}/ with transformers: {first_line(exc)}") from exc
        model.to(self.device)
        model.eval()
        self.model = model
        self.tokenizer = tokenizer
        self.config = config
        template = getattr(tokenizer, "chat_template", None)
        if isinstance(template, dict):  # named templates: the default one
            template = template.get("default")
        self.chat_template = template or None
        if tokenizer.pad_token is None:  # decoder-only tokenizers (GPT-2) have none
            tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
        positions = getattr(config, "max_position_embeddings", None)
        self.context_length = positions if isinstance(positions, int) and positions > 0 else None
        limit = getattr(tokenizer, "model_max_length", None)
        limits = [n for n in (self.context_length, limit) if isinstance(n, int) and 0 < n < 10**9]
        self.max_input_tokens = min(limits) if limits else None
        self.max_chars_per_token = _longest_token(tokenizer)
        if self.task in T.GENERATION_TASKS:
            self._read_generation_config(model)
        self.inputs = self.inputs or [TensorSpec(INPUT, "BYTES", (-1,))]
        self.outputs = self.outputs or self._output_specs()
        self._loaded()

    def _loaded(self) -> None:
        """Task-specific setup after the model and tokenizer are read."""
        if self.task == T.FEATURE_EXTRACTION and getattr(self.config, "is_encoder_decoder", False):
            self._encoder = self.model.get_encoder()
        else:
            self._encoder = self.model

    def _check_parameters(self) -> None:
        p = self.parameters
        device = p.get("device", "cpu")
        if not isinstance(device, str):
            raise LoadError(f"parameters.device must be cpu, cuda or cuda:N, not {device!r}")
        if "dtype" in p and p["dtype"] not in DTYPES:
            raise LoadError(f"parameters.dtype {p['dtype']!r}: one of {', '.join(DTYPES)}")
        for key in ("max_num_tokens", "max_new_tokens", "top_k"):
            if key in p and (isinstance(p[key], bool) or not isinstance(p[key], int) or p[key] < 1):
                raise LoadError(f"parameters.{key} must be a whole number of at least 1, not {p[key]!r}")
        if "pooling" in p and p["pooling"] not in POOLINGS:
            raise LoadError(f"parameters.pooling {p['pooling']!r}: one of {', '.join(POOLINGS)}")
        if "normalize" in p and not isinstance(p["normalize"], bool):
            raise LoadError(f"parameters.normalize must be true or false, not {p['normalize']!r}")
        ignore = p.get("ignore_generation_config", False)
        if not isinstance(ignore, bool) and not (
            isinstance(ignore, list) and all(isinstance(n, str) for n in ignore)
        ):
            raise LoadError(
                "parameters.ignore_generation_config must be true, false or a list of "
                f"generation_config settings, not {ignore!r}"
            )
        takes = {
            "max_num_tokens": {T.TEXT_GENERATION},
            "max_new_tokens": T.GENERATION_TASKS,
            "ignore_generation_config": T.GENERATION_TASKS,
            "pooling": {T.FEATURE_EXTRACTION},
            "normalize": {T.FEATURE_EXTRACTION},
            "top_k": {T.FILL_MASK},
        }
        for key, tasks in takes.items():
            if key in p and self.task not in tasks:
                raise LoadError(
                    f"parameters.{key} applies to {' and '.join(sorted(tasks))} models; this one "
                    f"serves {self.task}"
                )

    def _read_generation_config(self, model: Any) -> None:
        """The request defaults generation_config gives, the settings it has that the engine
        does not apply (LoadError for text generation unless ignored), and max_new_tokens."""
        gc = getattr(model, "generation_config", None)
        settings = {k: v for k, v in (gc.to_dict() if gc is not None else {}).items() if v is not None}
        applied = {name for name, field in GENERATION_DEFAULTS.items() if field in SAMPLING_FIELDS}
        unapplied = {
            name: value for name, value in sorted(settings.items())
            if name not in GENERATION_NEUTRAL and name not in applied
            and value not in GENERATION_NO_EFFECT.get(name, ())
        }
        wanted = self.parameters.get("ignore_generation_config", False)
        if wanted is True:
            ignored = dict(unapplied)
        else:
            names = list(wanted or [])
            known = set(transformers.GenerationConfig().to_dict())
            unknown = [n for n in names if n not in known]
            if unknown:
                raise LoadError(
                    f"parameters.ignore_generation_config names {', '.join(map(repr, unknown))}, "
                    f"not generation_config settings (transformers {transformers.__version__})"
                )
            ignored = {n: settings[n] for n in names if n in settings}
        self.ignored_generation_config = ignored
        left = {n: v for n, v in unapplied.items() if n not in ignored}
        if left and self.task == T.TEXT_GENERATION:
            shown = ", ".join(f"{n}={v!r}" for n, v in left.items())
            raise LoadError(
                f"{self.path.name if self.path else self.name}/generation_config.json sets "
                f"{shown}, which Shoal's generation engine does not apply (it applies do_sample, "
                f"{', '.join(sorted(applied))}); list them in model.yaml's "
                "parameters.ignore_generation_config (or set it to true) to serve the model "
                "without them"
            )
        if ignored:
            log.warning("model %s: generation_config settings ignored: %s", self.name,
                        ", ".join(f"{n}={v!r}" for n, v in ignored.items()))
        # model.generate (text2text) applies generation_config itself, less what is ignored and
        # its stop strings (Shoal cuts the text at them; generate would need the tokenizer).
        dropped = [*ignored, *(["stop_strings"] if "stop_strings" in settings else [])]
        if dropped and self.task == T.TEXT2TEXT and gc is not None:
            self._generation_config = copy.deepcopy(gc)
            for name in dropped:
                setattr(self._generation_config, name, None)
        defaults: dict[str, Any] = {}
        for name, field in GENERATION_DEFAULTS.items():
            if name in settings and name in applied and name not in ignored:
                defaults[field] = settings[name]
        if isinstance(defaults.get("stop"), str):
            defaults["stop"] = [defaults["stop"]]
        if settings.get("do_sample") and "do_sample" not in ignored:
            defaults.setdefault("temperature", 1.0)
        else:
            defaults["temperature"] = 0.0  # do_sample false (or unset): greedy
        configured = defaults.pop("max_new_tokens", None)
        if self.task == T.TEXT2TEXT:
            self.max_output_tokens = (
                self.context_length - 1 if self.context_length and self.context_length > 1
                else TEXT2TEXT_MAX_NEW_TOKENS
            )
            room = self.max_output_tokens
        else:
            room = self._token_budget() - 1
        if "max_new_tokens" in self.parameters:
            default = int(self.parameters["max_new_tokens"])
            if default > room:
                raise LoadError(
                    f"parameters.max_new_tokens is {default}, but model {self.name!r} generates at "
                    f"most {room} new tokens"
                )
        elif isinstance(configured, int) and configured > 0:
            default = min(configured, room)
            if default < configured:
                log.warning("model %s: generation_config's max_new_tokens %d cut to %d, what fits",
                            self.name, configured, default)
        else:
            default = min(DEFAULT_MAX_NEW_TOKENS, room)
        self.max_new_tokens = max(1, default)
        try:
            self.default_sampling = SamplingParams.checked(max_new_tokens=self.max_new_tokens, **defaults)
        except InvalidInput as exc:
            raise LoadError(f"{self.path.name if self.path else self.name}/generation_config.json: {exc}") from None
        self.generation_defaults = defaults

    def _token_budget(self) -> int:
        """text-generation: the most tokens a sequence (prompt and new tokens) may have."""
        limits = [int(self.parameters.get("max_num_tokens", DEFAULT_MAX_NUM_TOKENS)), self.context_length,
                  getattr(self.engine, "max_context", None)]
        return min(n for n in limits if isinstance(n, int) and n > 0)

    def _output_specs(self) -> list[TensorSpec]:
        task = self.task
        if task in T.GENERATION_TASKS:
            return [TensorSpec(TEXT_OUTPUT, "BYTES", (-1,))]
        if task == T.TEXT_CLASSIFICATION:
            labels = int(self.config.num_labels)
            return [TensorSpec("label", "BYTES", (-1,)), TensorSpec("score", "FP32", (-1,)),
                    TensorSpec("scores", "FP32", (-1, labels))]
        if task == T.TOKEN_CLASSIFICATION:
            return [TensorSpec("entities", "BYTES", (-1,))]
        if task == T.FEATURE_EXTRACTION:
            hidden = getattr(self.config, "hidden_size", None) or getattr(self.config, "d_model", -1)
            return [TensorSpec("embedding", "FP32", (-1, int(hidden)))]
        top_k = self.top_k
        return [TensorSpec("token_str", "BYTES", (-1, top_k)), TensorSpec("score", "FP32", (-1, top_k)),
                TensorSpec("sequence", "BYTES", (-1, top_k))]

    @property
    def top_k(self) -> int:
        return min(int(self.parameters.get("top_k", DEFAULT_TOP_K)), len(self.tokenizer))

    def unload(self) -> None:
        if self.engine is not None:
            self.engine.stop()
            self.engine = None
        with self._threads_lock:
            threads, self._threads = self._threads, None
        if threads is not None:
            threads.shutdown(wait=False, cancel_futures=True)
        self.model = None
        self._encoder = None
        if getattr(self, "device", None) is not None and self.device.type == "cuda":
            torch.cuda.empty_cache()

    def _own_threads(self) -> concurrent.futures.ThreadPoolExecutor:
        """The model's own threads (``embed``, long prompts): at most OWN_THREADS at work."""
        with self._threads_lock:
            if self.model is None:
                raise Unavailable(f"model {self.name!r} is unloaded")
            if self._threads is None:
                self._threads = concurrent.futures.ThreadPoolExecutor(
                    OWN_THREADS, thread_name_prefix=f"shoal-hf-{self.name}"
                )
            return self._threads

    async def off_loop(self, fn: Any, *args: Any) -> Any:
        """``fn(*args)`` on the model's own threads (tokenizing a long text, a forward pass):
        never on the event loop, and never more than the model's threads at once."""
        return await asyncio.get_running_loop().run_in_executor(self._own_threads(), fn, *args)

    # -- requests --------------------------------------------------------------------------

    def predict(self, request: InferenceRequest) -> list[Tensor]:
        """Encoder tasks and text2text-generation, on a worker thread."""
        texts = self._texts(request)
        if self.task == T.TEXT2TEXT:
            return self._text2text(texts, *self._sampling(request))
        self._no_parameters(request)
        with torch.inference_mode():
            if self.task == T.TEXT_CLASSIFICATION:
                return self._classify(texts)
            if self.task == T.TOKEN_CLASSIFICATION:
                return self._entities(texts)
            if self.task == T.FEATURE_EXTRACTION:
                return [Tensor.from_numpy("embedding", self._embed(texts)[0])]
            return self._fill_mask(texts)

    def _texts(self, request: InferenceRequest) -> list[str]:
        if len(request.inputs) != 1:
            raise InvalidInput(
                f"model {self.name!r} takes one input, {INPUT!r} (BYTES, one text per row); "
                f"the request has {len(request.inputs)}"
            )
        tensor = request.inputs[0]
        if tensor.datatype != "BYTES":
            raise InvalidInput(f"input {tensor.name!r} is {tensor.datatype}; model {self.name!r} takes BYTES text")
        self._check_rows(int(tensor.data.size))
        texts = []
        for row, value in enumerate(tensor.data.reshape(-1)):
            if isinstance(value, (bytes, bytearray)):
                try:
                    value = bytes(value).decode("utf-8")
                except UnicodeDecodeError:
                    raise InvalidInput(f"input {tensor.name!r} row {row} is not UTF-8 text") from None
            texts.append(str(value))
        return texts

    def _check_rows(self, rows: int) -> None:
        if rows > MAX_ROWS:
            raise InvalidInput(
                f"the request holds {rows} texts; model {self.name!r} takes at most {MAX_ROWS} per "
                "request: split it"
            )

    def _check_chars(self, texts: list[str], budget: int | None, what: str = "text row") -> None:
        """Refuse, untokenized, a text too long to fit ``budget`` tokens whatever it holds."""
        if budget is None:
            return
        most = budget * self.max_chars_per_token
        for row, text in enumerate(texts):
            if len(text) > most:
                raise InvalidInput(
                    f"{what} {row} is {len(text)} characters, more than {budget} tokens can hold "
                    f"(model {self.name!r} takes at most {budget} tokens, and its longest token "
                    f"is {self.max_chars_per_token} characters)"
                )

    def _no_parameters(self, request: InferenceRequest) -> None:
        unknown = sorted(set(request.parameters) - PROTOCOL_PARAMETERS)
        if unknown:
            raise InvalidInput(
                f"model {self.name!r} ({self.task}) takes no request parameters; got "
                f"{', '.join(unknown)}"
            )

    def _sampling(self, request: InferenceRequest) -> tuple[SamplingParams, frozenset[str]]:
        """The generation settings a V2 request's parameters give over the model's defaults
        (InvalidInput when wrong), and the names the request set."""
        given = {k: v for k, v in request.parameters.items()
                 if k not in PROTOCOL_PARAMETERS and v is not None}
        unknown = sorted(set(given) - set(GENERATION_PARAMETERS))
        if unknown:
            raise InvalidInput(
                f"model {self.name!r} ({self.task}) does not take request parameter(s) "
                f"{', '.join(unknown)}; it takes {', '.join(GENERATION_PARAMETERS)}"
            )
        values = {**self.generation_defaults, **given}
        values.setdefault("max_new_tokens", self.max_new_tokens)
        params = SamplingParams.checked(**values)
        limit = self.max_output_tokens
        if limit is not None and params.max_new_tokens > limit:
            raise InvalidInput(
                f"max_new_tokens is {params.max_new_tokens}; model {self.name!r} generates at most "
                f"{limit} new tokens"
            )
        return params, frozenset(given)

    # -- encoder tasks: micro-batches ------------------------------------------------------

    def _encode_rows(self, texts: list[str], **extra: Any) -> list[dict[str, list[Any]]]:
        """Each text's encoding, unpadded (one tokenizer call); InvalidInput naming the first
        row the model cannot take."""
        self._check_chars(texts, self.max_input_tokens)
        # A fast tokenizer's padding settings live in its Rust object, which two threads may
        # not use at once while one of them changes them ("Already borrowed"): one at a time.
        with self._tokenizing:
            encoded = self.tokenizer(texts, padding=False, **extra)
        keys = list(encoded.keys())
        rows = [{key: encoded[key][i] for key in keys} for i in range(len(texts))]
        limit = self.max_input_tokens
        if limit is not None:
            for row, values in enumerate(rows):
                if len(values["input_ids"]) > limit:
                    raise InvalidInput(
                        f"text row {row} is {len(values['input_ids'])} tokens; model {self.name!r} "
                        f"takes at most {limit}"
                    )
        return rows

    @staticmethod
    def _micro_batches(rows: list[dict[str, list[Any]]]) -> Iterator[list[int]]:
        """Row indices in groups of at most MICRO_BATCH_ROWS of similar length."""
        order = sorted(range(len(rows)), key=lambda i: len(rows[i]["input_ids"]))
        for start in range(0, len(order), MICRO_BATCH_ROWS):
            yield order[start:start + MICRO_BATCH_ROWS]

    def _pad(self, rows: list[dict[str, list[Any]]]) -> tuple[dict[str, torch.Tensor], list[int]]:
        """The rows as padded tensors (input_ids, attention_mask, token_type_ids where the
        tokenizer gives them), and where each row's first token sits."""
        width = max(len(r["input_ids"]) for r in rows)
        left = getattr(self.tokenizer, "padding_side", "right") == "left"
        pads = {"input_ids": self.tokenizer.pad_token_id or 0, "attention_mask": 0,
                "token_type_ids": getattr(self.tokenizer, "pad_token_type_id", 0) or 0}
        starts = [width - len(r["input_ids"]) if left else 0 for r in rows]
        tensors = {}
        for key, pad in pads.items():
            if key == "attention_mask":
                values = [[1] * len(r["input_ids"]) for r in rows]
            elif key in rows[0]:
                values = [list(r[key]) for r in rows]
            else:
                continue
            tensors[key] = torch.tensor(
                [[pad] * (width - len(v)) + v if left else v + [pad] * (width - len(v)) for v in values],
                dtype=torch.long,
            )
        return tensors, starts

    def _forward(self, encoded: Any, module: Any = None) -> Any:
        inputs = {k: v.to(self.device) for k, v in encoded.items()
                  if k in ("input_ids", "attention_mask", "token_type_ids")}
        return (module or self.model)(**inputs)

    def _classify(self, texts: list[str]) -> list[Tensor]:
        labels = self.config.id2label
        if not texts:
            return _empty_classification(int(self.config.num_labels))
        rows = self._encode_rows(texts)
        scores_np = np.zeros((len(texts), int(self.config.num_labels)), np.float32)
        problem = getattr(self.config, "problem_type", None)
        for chunk in self._micro_batches(rows):
            logits = self._forward(self._pad([rows[i] for i in chunk])[0]).logits.float()
            if problem == "regression":
                scores = logits
            elif problem == "multi_label_classification" or logits.shape[-1] == 1:
                scores = torch.sigmoid(logits)
            else:
                scores = torch.softmax(logits, dim=-1)
            scores_np[chunk] = scores.cpu().numpy().astype(np.float32)
        best = scores_np.argmax(axis=-1)
        names = np.array([str(labels[int(i)]).encode() for i in best], dtype=object)
        return [
            Tensor("label", "BYTES", (len(texts),), names),
            Tensor.from_numpy("score", scores_np[np.arange(len(texts)), best]),
            Tensor.from_numpy("scores", scores_np),
        ]

    def _entities(self, texts: list[str]) -> list[Tensor]:
        out = np.empty(len(texts), dtype=object)
        if texts:
            rows = self._encode_rows(texts, return_offsets_mapping=True, return_special_tokens_mask=True)
            for chunk in self._micro_batches(rows):
                encoded, starts = self._pad([rows[i] for i in chunk])
                logits = self._forward(encoded).logits.float().cpu().numpy()
                for j, row in enumerate(chunk):
                    values = rows[row]
                    n = len(values["input_ids"])
                    entities = self._row_entities(
                        texts[row], logits[j, starts[j]:starts[j] + n], list(values["input_ids"]),
                        [list(o) for o in values["offset_mapping"]], list(values["special_tokens_mask"]),
                        [1] * n,
                    )
                    out[row] = json.dumps(entities, ensure_ascii=False).encode()
        return [Tensor("entities", "BYTES", (len(texts),), out)]

    def _row_entities(
        self, text: str, logits: np.ndarray, ids: list[int], offsets: list[list[int]],
        special: list[int], mask: list[int],
    ) -> list[dict[str, Any]]:
        """transformers' token-classification pipeline with ``aggregation_strategy="simple"``:
        per token its best label; consecutive tokens of one entity (``I-`` after ``B-``/``I-``
        of the same type) grouped, their scores averaged; ``O`` dropped."""
        shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
        scores = shifted / shifted.sum(axis=-1, keepdims=True)
        labels = self.config.id2label
        tokens = []
        for index, token_id in enumerate(ids):
            if special[index] or not mask[index]:
                continue
            start, end = offsets[index]
            word = self.tokenizer.convert_ids_to_tokens(token_id)
            if token_id == self.tokenizer.unk_token_id:
                word = text[start:end]
            best = int(scores[index].argmax())
            tokens.append({"entity": str(labels[best]), "score": float(scores[index][best]),
                           "word": word, "start": start, "end": end})
        groups: list[list[dict[str, Any]]] = []
        for token in tokens:
            bi, tag = _tag(token["entity"])
            if groups and bi != "B" and tag == _tag(groups[-1][-1]["entity"])[1]:
                groups[-1].append(token)
            else:
                groups.append([token])
        entities = []
        for group in groups:
            label = group[0]["entity"].split("-", 1)[-1]
            if label == "O":
                continue
            entities.append({
                "entity": label,
                "score": float(np.mean([t["score"] for t in group])),
                "start": group[0]["start"],
                "end": group[-1]["end"],
                "word": self.tokenizer.convert_tokens_to_string([t["word"] for t in group]),
            })
        return entities

    def _embed_rows(self, rows: list[dict[str, list[Any]]]) -> np.ndarray:
        """One micro-batch's embeddings [len(rows), hidden] (FP32)."""
        with torch.inference_mode():
            encoded, starts = self._pad(rows)
            states = self._forward(encoded, self._encoder)[0].float()
            if self.parameters.get("pooling", "mean") == "cls":
                pooled = states[torch.arange(len(rows)), torch.tensor(starts)]
            else:
                mask = encoded["attention_mask"].to(states.device).unsqueeze(-1).to(states.dtype)
                pooled = (states * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)
            if self.parameters.get("normalize", False):
                pooled = torch.nn.functional.normalize(pooled, p=2, dim=-1)
            return pooled.cpu().numpy().astype(np.float32)

    def _hidden_size(self) -> int:
        shape = self.outputs[0].shape if self.outputs else ()
        return max(int(shape[1]), 0) if len(shape) == 2 else 0

    def _embed(self, texts: list[str]) -> tuple[np.ndarray, list[int]]:
        if not texts:
            return np.zeros((0, self._hidden_size()), np.float32), []
        rows = self._encode_rows(texts)
        vectors: np.ndarray | None = None
        for chunk in self._micro_batches(rows):
            pooled = self._embed_rows([rows[i] for i in chunk])
            if vectors is None:
                vectors = np.zeros((len(texts), pooled.shape[1]), np.float32)
            vectors[chunk] = pooled
        assert vectors is not None
        return vectors, [len(r["input_ids"]) for r in rows]

    async def embed(self, texts: list[str]) -> tuple[np.ndarray, list[int]]:
        """Embeddings [len(texts), hidden] (FP32) and each text's token count
        (feature-extraction models only), computed on the model's own threads (at most
        OWN_THREADS forward passes at once) in micro-batches; a caller that goes away
        (cancelled) stops it before its next micro-batch."""
        if self.task != T.FEATURE_EXTRACTION:
            raise InvalidInput(f"model {self.name!r} serves {self.task}, not embeddings (feature-extraction)")
        texts = list(texts)
        self._check_rows(len(texts))
        if not texts:
            return np.zeros((0, self._hidden_size()), np.float32), []
        # Not on the event loop even when short: the tokenizer's lock may be held by a V2
        # request tokenizing thousands of rows on another thread.
        rows = await self.off_loop(self._encode_rows, texts)
        vectors: np.ndarray | None = None
        for chunk in self._micro_batches(rows):
            pooled = await self.off_loop(self._embed_rows, [rows[i] for i in chunk])
            if vectors is None:
                vectors = np.zeros((len(texts), pooled.shape[1]), np.float32)
            vectors[chunk] = pooled
        assert vectors is not None
        return vectors, [len(r["input_ids"]) for r in rows]

    def _fill_mask(self, texts: list[str]) -> list[Tensor]:
        top_k = self.top_k
        n = len(texts)
        token_str = np.empty((n, top_k), dtype=object)
        sequence = np.empty((n, top_k), dtype=object)
        score = np.zeros((n, top_k), np.float32)
        mask_id = self.tokenizer.mask_token_id
        if n:
            if mask_id is None:
                raise InvalidInput(f"model {self.name!r}'s tokenizer has no mask token")
            rows = self._encode_rows(texts)
            positions = []
            for row, values in enumerate(rows):
                ids = list(values["input_ids"])
                count = ids.count(mask_id)
                if count != 1:
                    raise InvalidInput(
                        f"text row {row} holds {count} mask tokens ({self.tokenizer.mask_token}); "
                        f"model {self.name!r} fills exactly one per text"
                    )
                positions.append(ids.index(mask_id))
            pad = self.tokenizer.pad_token_id
            for chunk in self._micro_batches(rows):
                encoded, starts = self._pad([rows[i] for i in chunk])
                logits = self._forward(encoded).logits
                at = torch.tensor([starts[j] + positions[row] for j, row in enumerate(chunk)])
                picked = logits[torch.arange(len(chunk), device=logits.device), at.to(logits.device)]
                values, predictions = picked.float().softmax(dim=-1).topk(top_k)
                for j, row in enumerate(chunk):
                    tokens = np.array(rows[row]["input_ids"])
                    for k, (value, token) in enumerate(zip(values[j].tolist(), predictions[j].tolist())):
                        filled = tokens.copy()
                        filled[positions[row]] = token
                        filled = filled[filled != pad]
                        sequence[row, k] = self.tokenizer.decode(filled, skip_special_tokens=True).encode()
                        token_str[row, k] = self.tokenizer.decode([token]).encode()
                        score[row, k] = value
        return [
            Tensor("token_str", "BYTES", (n, top_k), token_str),
            Tensor.from_numpy("score", score),
            Tensor("sequence", "BYTES", (n, top_k), sequence),
        ]

    def _text2text(self, texts: list[str], params: SamplingParams, given: frozenset[str]) -> list[Tensor]:
        """model.generate over micro-batches of the rows (greedy, or sampled; seeded sampling
        row by row). Sampling settings neither the request nor generation_config set are
        left to model.generate (transformers' defaults)."""
        options: dict[str, Any] = {"max_new_tokens": params.max_new_tokens, "do_sample": not params.greedy}
        explicit = given | set(self.generation_defaults)
        chosen = ("repetition_penalty",) if params.greedy else (
            "temperature", "top_p", "top_k", "repetition_penalty")
        for name in chosen:
            if name in explicit and name in SAMPLING_FIELDS:
                options[name] = getattr(params, name)
        if params.ignore_eos:
            options["min_new_tokens"] = params.max_new_tokens
        if self._generation_config is not None:
            options["generation_config"] = self._generation_config
        outputs: list[str] = [""] * len(texts)
        if texts:
            rows = self._encode_rows(texts)
            if not params.greedy and params.seed is not None:
                for row, values in enumerate(rows):
                    with _SEEDED, torch.random.fork_rng(devices=self._rng_devices()):
                        torch.manual_seed(params.seed)
                        [outputs[row]] = self._generate([values], options)
            else:
                for chunk in self._micro_batches(rows):
                    if params.greedy:
                        texts_out = self._generate([rows[i] for i in chunk], options)
                    else:  # torch's global generator: not while a seeded generate draws from it
                        with _SEEDED:
                            texts_out = self._generate([rows[i] for i in chunk], options)
                    for row, text in zip(chunk, texts_out):
                        outputs[row] = text
        result = np.array([_before_stop(t, params.stop).encode() for t in outputs], dtype=object)
        return [Tensor(TEXT_OUTPUT, "BYTES", (len(texts),), result.reshape(-1))]

    def _rng_devices(self) -> list[Any]:
        return [self.device] if self.device.type == "cuda" else []

    def _generate(self, rows: list[dict[str, list[Any]]], options: dict[str, Any]) -> list[str]:
        encoded, _ = self._pad(rows)
        with torch.inference_mode():
            out = self.model.generate(
                input_ids=encoded["input_ids"].to(self.device),
                attention_mask=encoded["attention_mask"].to(self.device), **options,
            )
        return self.tokenizer.batch_decode(out, skip_special_tokens=True)

    # -- what the OpenAI routes use (plain calls, fast enough for the event loop) -----------

    def encode_prompt(self, text: str) -> list[int]:
        """A completion prompt's tokens (with the tokenizer's special tokens, e.g. BOS); an
        empty prompt is the BOS token where the tokenizer has one. A text too long to fit the
        model whatever it holds is refused (InvalidInput) before it is tokenized."""
        self._check_chars([text], self._prompt_budget(), "prompt")
        ids = list(self.tokenizer(text, add_special_tokens=True)["input_ids"])
        if not ids and self.tokenizer.bos_token_id is not None:
            ids = [self.tokenizer.bos_token_id]
        return ids

    def _prompt_budget(self) -> int | None:
        return self.max_input_tokens

    def apply_chat_template(self, messages: list[dict[str, Any]]) -> list[int]:
        """The chat's tokens through the tokenizer's chat template, ending with the assistant's
        turn; InvalidInput when the model has no chat template or the template refuses."""
        if not self.chat_template:
            raise InvalidInput(
                f"model {self.name!r} has no chat template (its tokenizer_config.json or "
                "chat_template.jinja holds none): use completions, or add a chat template"
            )
        try:
            text = self.tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=True
            )
        except Exception as exc:  # noqa: BLE001 - jinja's TemplateError, raise_exception()
            raise InvalidInput(f"model {self.name!r}'s chat template refused the messages: {first_line(exc)}") from None
        self._check_chars([text], self._prompt_budget(), "the chat, rendered,")
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)


class TextGenerationModel(HuggingFaceModel):
    """text-generation: every row is one sequence of the continuous-batching engine."""

    batches_itself = True

    def _loaded(self) -> None:
        from ..llm.engine import GenerationEngine

        size = DEFAULT_MAX_BATCH_SIZE if self.max_batch_size is None else max(1, int(self.max_batch_size))
        self.engine = GenerationEngine(
            self.model, self.tokenizer, name=self.name, version=self.version, max_batch_size=size,
            max_num_tokens=int(self.parameters.get("max_num_tokens", DEFAULT_MAX_NUM_TOKENS)),
            eos_token_ids=self.eos_token_ids(),
        )
        self.engine.start()

    def _prompt_budget(self) -> int | None:
        return self._token_budget()

    def eos_token_ids(self) -> set[int]:
        ids: set[int] = set()
        for source in (getattr(self.model, "generation_config", None), self.config, self.tokenizer):
            value = getattr(source, "eos_token_id", None)
            if isinstance(value, int):
                ids.add(value)
            elif isinstance(value, (list, tuple)):
                ids.update(int(v) for v in value)
        return ids

    def check_fits(self, prompt_ids: list[int], params: SamplingParams) -> None:
        """InvalidInput when the prompt and its new tokens exceed the model's positions."""
        limit = self.context_length
        if limit is not None and len(prompt_ids) + params.max_new_tokens > limit:
            raise InvalidInput(
                f"the prompt is {len(prompt_ids)} tokens and max_new_tokens {params.max_new_tokens}; "
                f"model {self.name!r} takes at most {limit} tokens in all"
            )

    def fitted_params(self, prompt_ids: list[int], params: SamplingParams, chosen: bool) -> SamplingParams:
        """``params`` for this prompt: a default max_new_tokens (``chosen`` false: the request
        set none) cut to the room the prompt leaves in the context and max_num_tokens;
        InvalidInput when the request's own does not fit. (The OpenAI routes may use it too.)"""
        if not chosen:
            room = self._token_budget() - len(prompt_ids)
            if 1 <= room < params.max_new_tokens:
                params = dataclasses.replace(params, max_new_tokens=room)
        self.check_fits(prompt_ids, params)
        return params

    def _encode_prompts(self, texts: list[str]) -> list[list[int]]:
        return [self.encode_prompt(text) for text in texts]

    async def predict(self, request: InferenceRequest) -> list[Tensor]:  # type: ignore[override]
        texts = self._texts(request)
        params, given = self._sampling(request)
        engine = self.engine
        if engine is None:
            raise Unavailable(f"model {self.name!r} is unloaded")
        self._check_chars(texts, self._token_budget())
        if sum(len(t) for t in texts) > INLINE_TOKENIZE_CHARS:  # long: not on the event loop
            prompts = await self.off_loop(self._encode_prompts, texts)
        else:
            prompts = self._encode_prompts(texts)
        per_row = [self.fitted_params(ids, params, "max_new_tokens" in given) for ids in prompts]
        streams = []
        try:
            for ids, row_params in zip(prompts, per_row):
                streams.append(engine.submit(ids, row_params))
            results = await asyncio.gather(*(s.result() for s in streams))
        except BaseException:
            for stream in streams:
                stream.cancel()
            raise
        if any(r.finish_reason == "cancelled" for r in results):
            raise Unavailable(
                f"model {self.name!r}: the generation was cancelled (the model is being unloaded "
                "or the server is stopping); retry"
            )
        texts_out = np.array([r.text.encode() for r in results], dtype=object).reshape(-1)
        return [Tensor(TEXT_OUTPUT, "BYTES", (len(texts),), texts_out)]


def _task_hint(path: Path, parameters: dict[str, Any]) -> str | None:
    """The task a folder will load as, where it can tell at once (load checks it fully)."""
    wanted = parameters.get("task")
    if wanted is not None:
        return wanted if isinstance(wanted, str) else None
    config = read_config(path)
    if config is None:
        return None
    try:
        return T.resolve_task(config, None)
    except LoadError:
        return None


def _in_worker_process() -> bool:
    """Whether this is one of Shoal's worker processes (``workers:``, autoscaled replicas)."""
    return multiprocessing.parent_process() is not None and (
        multiprocessing.current_process().name.startswith(WORKER_PROCESS_PREFIX)
    )


def _longest_token(tokenizer: Any) -> int:
    """The most characters one token stands for (its vocabulary's longest entry; byte-level
    entries spell one character per byte, so they overcount), at least 1."""
    try:
        vocab = tokenizer.get_vocab()
    except Exception:  # noqa: BLE001 - a tokenizer without a readable vocabulary: no bound
        return 1 << 30
    return max((len(token) for token in vocab), default=1) or 1


def _device(wanted: str) -> torch.device:
    return torch_device(wanted, "Hugging Face models")


def _tag(entity: str) -> tuple[str, str]:
    if entity.startswith(("B-", "I-")):
        return entity[0], entity[2:]
    return "I", entity


def _before_stop(text: str, stop: tuple[str, ...]) -> str:
    cut = min((i for i in (text.find(s) for s in stop) if i >= 0), default=-1)
    return text if cut < 0 else text[:cut]


def _empty_classification(labels: int) -> list[Tensor]:
    return [
        Tensor("label", "BYTES", (0,), np.empty(0, dtype=object)),
        Tensor.from_numpy("score", np.zeros(0, np.float32)),
        Tensor.from_numpy("scores", np.zeros((0, labels), np.float32)),
    ]
