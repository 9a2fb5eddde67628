"""OpenAI-compatible request bodies and response bodies (``/openai/v1``), as pure functions.

Parsing turns a JSON body into a small request object and refuses, with a 400 that names the
parameter, anything Shoal would otherwise answer differently from what the client asked:
unknown keys (as OpenAI does) and known parameters that change results but are not served
(``tools``, ``response_format`` other than text, non-zero penalties, ``logit_bias``,
``best_of`` > 1, ``echo``, ``suffix``...). Parameters that only concern OpenAI's platform
(``user``, ``store``, ``metadata``, ``service_tier``...) are accepted and ignored.

Building writes OpenAI's shapes exactly: ``text_completion`` / ``chat.completion`` objects
and their streaming chunks, ``list`` of ``embedding`` objects, ``model`` objects, and the
error body ``{"error": {"message", "type", "param", "code"}}``. Nothing here knows about
models, engines or HTTP: the routes (:mod:`shoal.server.openai_routes`) do.
"""

from __future__ import annotations

import base64
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from ..errors import Overloaded, ShoalError

#: OpenAI's bounds, kept where they are sane for a local model.
MAX_STOP = 4
MAX_N = 128
#: The most sequences one request may start: prompts times ``n`` (a 400 beyond it).
MAX_SEQUENCES = 256
#: The most texts one ``/embeddings`` request may embed (OpenAI's bound).
MAX_EMBEDDING_INPUTS = 2048
MAX_LOGPROBS = 20
TEMPERATURE_RANGE = (0.0, 2.0)

#: Finish reasons of the engine -> OpenAI's. ("cancelled" never reaches a client as a
#: finish reason: the routes answer it as an error.)
FINISH_REASONS = {"stop": "stop", "length": "length"}

#: Every parameter OpenAI documents for each route, by what Shoal does with it. Keys not
#: listed are refused as OpenAI refuses them ("Unrecognized request argument").
_COMMON_SERVED = frozenset({
    "model", "max_tokens", "temperature", "top_p", "n", "stop", "seed", "logprobs", "stream",
    "stream_options",
})
#: Accepted and ignored: they concern OpenAI's platform, not what the model answers.
_IGNORED = frozenset({
    "user", "store", "metadata", "service_tier", "prompt_cache_key", "prompt_cache_retention",
    "prompt_cache_options", "safety_identifier", "prediction", "parallel_tool_calls",
})
COMPLETION_KEYS = _COMMON_SERVED | _IGNORED | {
    "prompt", "best_of", "echo", "frequency_penalty", "presence_penalty", "logit_bias",
    "suffix",
}
CHAT_KEYS = _COMMON_SERVED | _IGNORED | {
    "messages", "max_completion_tokens", "top_logprobs", "frequency_penalty", "presence_penalty",
    "logit_bias", "response_format", "tools", "tool_choice", "functions", "function_call",
    "audio", "modalities", "reasoning_effort", "verbosity", "web_search_options", "moderation",
}
EMBEDDING_KEYS = frozenset({"model", "input", "encoding_format", "dimensions", "user"})

_CHAT_ROLES = frozenset({"system", "developer", "user", "assistant"})


class OpenAIError(Exception):
    """An error answered in OpenAI's shape."""

    def __init__(
        self, status: int, message: str, type: str = "invalid_request_error",
        code: str | None = None, param: str | None = None, headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.code = code
        self.param = param
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param,
                          "code": self.code}}

    def __str__(self) -> str:
        return self.message


def invalid(message: str, param: str | None = None, code: str | None = None) -> OpenAIError:
    return OpenAIError(400, message, "invalid_request_error", code, param)


def unsupported(param: str, why: str) -> OpenAIError:
    return invalid(f"'{param}' is not supported by this server: {why}", param,
                   "unsupported_parameter")


def model_not_found(message: str) -> OpenAIError:
    return OpenAIError(404, message, "invalid_request_error", "model_not_found", "model")


def from_shoal(exc: ShoalError) -> OpenAIError:
    """A Shoal error (from the registry, the engine, the runtime) in OpenAI's shape."""
    status = exc.http_status
    if isinstance(exc, Overloaded):  # max_inflight, or the engine's queue is full: retry
        return OpenAIError(429, str(exc), "requests", "rate_limit_exceeded", None,
                           dict(exc.headers))
    if status == 404:
        return model_not_found(str(exc))
    if status in (400, 413):
        return OpenAIError(status, str(exc), "invalid_request_error", None, None)
    if status == 503:
        return OpenAIError(503, str(exc), "server_error", "service_unavailable", None,
                           dict(exc.headers))
    if status == 504:
        return timed_out(str(exc))
    if status == 501:
        return OpenAIError(501, str(exc), "invalid_request_error", "not_implemented", None)
    if status in (401, 403):
        return OpenAIError(status, str(exc), "authentication_error" if status == 401
                           else "permission_error", None, None, dict(exc.headers))
    return OpenAIError(status if status >= 500 else 500, str(exc), "server_error", None, None)


def error_body(error: OpenAIError) -> bytes:
    return orjson.dumps(error.body())


def server_error(message: str) -> OpenAIError:
    return OpenAIError(500, message, "server_error", None, None)


def timed_out(message: str) -> OpenAIError:
    return OpenAIError(504, message, "server_error", "timeout", None)


def shutting_down() -> OpenAIError:
    return OpenAIError(503, "the server is shutting down", "server_error",
                       "service_unavailable")


# -- parsing ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sampling:
    """What a request asks of generation (SamplingParams' fields, OpenAI's defaults)."""

    max_tokens: int | None = None          # None: the model's default
    temperature: float = 1.0               # OpenAI's default; 0 is greedy
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    logprobs: int | None = None            # None: none; 0: the chosen token's; k: top k too

    def for_choice(self, index: int) -> Sampling:
        """The sampling of the ``index``-th of ``n`` choices of one prompt: with a seed, each
        choice gets its own (``seed + index``), so ``n`` seeded choices differ from each
        other and the first one equals the same request with ``n`` = 1."""
        if self.seed is None or index == 0:
            return self
        seed = self.seed + index
        if seed >= 1 << 64:  # the range torch's generators take
            seed -= 1 << 64
        return Sampling(self.max_tokens, self.temperature, self.top_p, self.stop, seed,
                        self.logprobs)


@dataclass
class CompletionRequest:
    model: str
    prompts: list[str | list[int]]
    sampling: Sampling
    n: int = 1
    stream: bool = False
    include_usage: bool = False


@dataclass
class ChatRequest:
    model: str
    messages: list[dict[str, Any]]
    sampling: Sampling
    n: int = 1
    stream: bool = False
    include_usage: bool = False
    logprobs: bool = False
    top_logprobs: int = 0


@dataclass
class EmbeddingsRequest:
    model: str
    inputs: list[str]
    encoding_format: str = "float"
    dimensions: int | None = None


def parse_json(body: bytes) -> dict[str, Any]:
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise invalid(f"the request body is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise invalid("the request body must be a JSON object")
    return value


def parse_completion(body: dict[str, Any]) -> CompletionRequest:
    _check_keys(body, COMPLETION_KEYS)
    values = _present(body)
    model = _model(values)
    if "prompt" not in values:
        raise invalid("'prompt' is required", "prompt")
    prompts = _prompts(values["prompt"])
    best_of = values.get("best_of")
    if best_of is not None and (_int(best_of, "best_of") != 1):
        raise unsupported("best_of", "only 1 (each choice is returned; use n for more)")
    if values.get("echo") not in (None, False):
        if not isinstance(values["echo"], bool):
            raise invalid("'echo' must be a boolean", "echo")
        raise unsupported("echo", "the prompt is not returned with the completion")
    suffix = values.get("suffix")
    if suffix is not None and suffix != "":
        raise unsupported("suffix", "insertion (text after the completion) is not served")
    _refuse_penalties(values)
    logprobs = values.get("logprobs")
    if logprobs is not None:
        if isinstance(logprobs, bool):  # chat's form: true means the chosen token's
            logprobs = 0 if logprobs else None
        else:
            logprobs = _int_range(logprobs, "logprobs", 0, MAX_LOGPROBS)
    stream, include_usage = _stream(values)
    n = _n(values)
    if len(prompts) * n > MAX_SEQUENCES:
        raise invalid(f"{len(prompts)} prompts with 'n' {n} are {len(prompts) * n} sequences; "
                      f"at most {MAX_SEQUENCES} per request", "prompt", "too_many_sequences")
    return CompletionRequest(
        model, prompts, _sampling(values, "max_tokens", logprobs), n, stream, include_usage,
    )


def parse_chat(body: dict[str, Any]) -> ChatRequest:
    _check_keys(body, CHAT_KEYS)
    values = _present(body)
    model = _model(values)
    messages = _messages(values.get("messages"))
    _refuse_penalties(values)
    tools = values.get("tools")
    if tools is not None and tools != []:
        raise unsupported("tools", "tool calling is not served")
    functions = values.get("functions")
    if functions is not None and functions != []:
        raise unsupported("functions", "function calling is not served")
    for name in ("tool_choice", "function_call"):
        choice = values.get(name)
        if choice is not None and choice not in ("none", "auto"):
            raise unsupported(name, "tool calling is not served")
    response_format = values.get("response_format")
    if response_format is not None:
        if not isinstance(response_format, dict) or "type" not in response_format:
            raise invalid("'response_format' must be an object with a 'type'", "response_format")
        if response_format["type"] != "text":
            raise unsupported("response_format",
                              f"only type 'text' is served, not {response_format['type']!r} "
                              "(the output is not constrained to JSON)")
    modalities = values.get("modalities")
    if modalities is not None and modalities != ["text"]:
        raise unsupported("modalities", "only ['text'] is served")
    for name, why in (("audio", "audio output is not served"),
                      ("reasoning_effort", "the model has no reasoning settings"),
                      ("verbosity", "the model has no verbosity setting"),
                      ("web_search_options", "web search is not served"),
                      ("moderation", "moderation is not served")):
        if values.get(name) is not None:
            raise unsupported(name, why)
    logprobs = values.get("logprobs", False)
    if not isinstance(logprobs, bool):
        raise invalid("'logprobs' must be a boolean", "logprobs")
    top_logprobs = 0
    if values.get("top_logprobs") is not None:
        top_logprobs = _int_range(values["top_logprobs"], "top_logprobs", 0, MAX_LOGPROBS)
        if not logprobs:
            raise invalid("'top_logprobs' needs 'logprobs': true", "top_logprobs")
    length_key = "max_completion_tokens" if "max_completion_tokens" in values else "max_tokens"
    if "max_completion_tokens" in values and "max_tokens" in values and (
        values["max_tokens"] != values["max_completion_tokens"]
    ):
        raise invalid("'max_tokens' and 'max_completion_tokens' disagree: give one",
                      "max_completion_tokens")
    stream, include_usage = _stream(values)
    return ChatRequest(
        model, messages, _sampling(values, length_key, top_logprobs if logprobs else None),
        _n(values), stream, include_usage, logprobs, top_logprobs,
    )


def parse_embeddings(body: dict[str, Any]) -> EmbeddingsRequest:
    _check_keys(body, EMBEDDING_KEYS)
    values = _present(body)
    model = _model(values)
    if "input" not in values:
        raise invalid("'input' is required", "input")
    raw = values["input"]
    if isinstance(raw, str):
        inputs = [raw]
    elif isinstance(raw, list) and raw and all(isinstance(item, str) for item in raw):
        inputs = list(raw)
    elif isinstance(raw, list) and raw and all(
        isinstance(item, int) or isinstance(item, list) for item in raw
    ):
        raise unsupported("input", "token id inputs are not served for embeddings; send text")
    else:
        raise invalid("'input' must be a string or a non-empty list of strings", "input")
    if len(inputs) > MAX_EMBEDDING_INPUTS:
        raise invalid(f"'input' has {len(inputs)} texts; at most {MAX_EMBEDDING_INPUTS} per "
                      "request", "input")
    for index, text in enumerate(inputs):
        if text == "":
            raise invalid(f"'input[{index}]' is empty", "input")
    encoding = values.get("encoding_format", "float")
    if encoding not in ("float", "base64"):
        raise invalid(f"'encoding_format' must be 'float' or 'base64', not {encoding!r}",
                      "encoding_format")
    dimensions = None
    if values.get("dimensions") is not None:
        dimensions = _int_range(values["dimensions"], "dimensions", 1, 1 << 20)
    return EmbeddingsRequest(model, inputs, encoding, dimensions)


def _check_keys(body: dict[str, Any], known: frozenset[str]) -> None:
    unknown = sorted(key for key in body if key not in known)
    if unknown:
        raise invalid(f"Unrecognized request argument supplied: {', '.join(unknown)}",
                      unknown[0], "unknown_parameter")


def _present(body: dict[str, Any]) -> dict[str, Any]:
    """The parameters that are set: ``null`` means "the default", as in OpenAI's API."""
    return {key: value for key, value in body.items() if value is not None}


def _model(values: dict[str, Any]) -> str:
    model = values.get("model")
    if not isinstance(model, str) or not model:
        raise invalid("'model' is required: the name of a served model", "model")
    return model


def _refuse_penalties(values: dict[str, Any]) -> None:
    for name in ("frequency_penalty", "presence_penalty"):
        if name in values:
            value = _number(values[name], name)
            if value != 0:
                raise unsupported(name, "only 0 is served")
    bias = values.get("logit_bias")
    if bias is not None:
        if not isinstance(bias, dict):
            raise invalid("'logit_bias' must be an object", "logit_bias")
        if bias:
            raise unsupported("logit_bias", "token biases are not served")


def _prompts(raw: Any) -> list[str | list[int]]:
    if isinstance(raw, str):
        return [raw]
    if isinstance(raw, list) and raw:
        if all(isinstance(item, str) for item in raw):
            return list(raw)
        if all(_is_int(item) for item in raw):
            return [list(raw)]
        if all(isinstance(item, list) and item and all(_is_int(i) for i in item) for item in raw):
            return [list(item) for item in raw]
    raise invalid("'prompt' must be a string, a list of strings, a list of token ids or a "
                  "list of lists of token ids (none empty)", "prompt")


def _messages(raw: Any) -> list[dict[str, Any]]:
    if not isinstance(raw, list) or not raw:
        raise invalid("'messages' must be a non-empty list of messages", "messages")
    messages = []
    for index, message in enumerate(raw):
        where = f"messages[{index}]"
        if not isinstance(message, dict):
            raise invalid(f"'{where}' must be an object with 'role' and 'content'", where)
        role = message.get("role")
        if role in ("tool", "function"):
            raise unsupported(f"{where}.role", f"{role!r} messages need tool calling, which is "
                              "not served")
        if role not in _CHAT_ROLES:
            raise invalid(f"'{where}.role' must be one of {sorted(_CHAT_ROLES)}, not {role!r}",
                          f"{where}.role")
        for key in ("tool_calls", "function_call", "audio"):
            if message.get(key):
                raise unsupported(f"{where}.{key}", "tool calls and audio are not served")
        unknown = sorted(set(message) - {"role", "content", "name", "refusal", "tool_calls",
                                         "function_call", "audio"})
        if unknown:
            raise invalid(f"'{where}' has unknown field(s): {', '.join(unknown)}",
                          f"{where}.{unknown[0]}")
        content = _content(message.get("content"), where, role)
        entry: dict[str, Any] = {"role": "system" if role == "developer" else role,
                                 "content": content}
        if isinstance(message.get("name"), str):
            entry["name"] = message["name"]
        messages.append(entry)
    return messages


def _content(raw: Any, where: str, role: str) -> str:
    """A message's content as text: a string, or text parts joined (other parts: 400)."""
    if isinstance(raw, str):
        return raw
    if raw is None and role == "assistant":
        return ""
    if isinstance(raw, list):
        texts = []
        for index, part in enumerate(raw):
            part_where = f"{where}.content[{index}]"
            if not isinstance(part, dict) or "type" not in part:
                raise invalid(f"'{part_where}' must be an object with a 'type'", part_where)
            if part["type"] not in ("text", "refusal"):
                raise unsupported(f"{part_where}.type",
                                  f"only text content is served, not {part['type']!r}")
            text = part.get(part["type"])
            if not isinstance(text, str):
                raise invalid(f"'{part_where}.{part['type']}' must be a string", part_where)
            texts.append(text)
        return "".join(texts)
    raise invalid(f"'{where}.content' must be a string or a list of text parts",
                  f"{where}.content")


def _sampling(values: dict[str, Any], length_key: str, logprobs: int | None) -> Sampling:
    max_tokens = None
    if length_key in values:
        max_tokens = _int_range(values[length_key], length_key, 1, 1 << 31)
    temperature = _number(values.get("temperature", 1.0), "temperature")
    low, high = TEMPERATURE_RANGE
    if not low <= temperature <= high:
        raise invalid(f"'temperature' must be between {low:g} and {high:g}, not {temperature}",
                      "temperature")
    top_p = _number(values.get("top_p", 1.0), "top_p")
    if not 0 < top_p <= 1:
        raise invalid(f"'top_p' must be greater than 0 and at most 1, not {top_p}", "top_p")
    seed = None
    if "seed" in values:
        seed = _int(values["seed"], "seed")
        if not -(1 << 63) <= seed < (1 << 64):
            raise invalid("'seed' must fit in 64 bits", "seed")
    return Sampling(max_tokens, float(temperature), float(top_p), _stop(values.get("stop")),
                    seed, logprobs)


def _stop(raw: Any) -> tuple[str, ...]:
    if raw is None:
        return ()
    stops = [raw] if isinstance(raw, str) else raw
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
        raise invalid("'stop' must be a string or a list of strings", "stop")
    if len(stops) > MAX_STOP:
        raise invalid(f"'stop' has {len(stops)} sequences; at most {MAX_STOP}", "stop")
    if any(s == "" for s in stops):
        raise invalid("'stop' sequences must not be empty", "stop")
    return tuple(dict.fromkeys(stops))


def _n(values: dict[str, Any]) -> int:
    return _int_range(values.get("n", 1), "n", 1, MAX_N)


def _stream(values: dict[str, Any]) -> tuple[bool, bool]:
    stream = values.get("stream", False)
    if not isinstance(stream, bool):
        raise invalid("'stream' must be a boolean", "stream")
    options = values.get("stream_options")
    include_usage = False
    if options is not None:
        if not stream:
            raise invalid("'stream_options' is only allowed with 'stream': true",
                          "stream_options")
        if not isinstance(options, dict):
            raise invalid("'stream_options' must be an object", "stream_options")
        unknown = sorted(set(options) - {"include_usage", "include_obfuscation"})
        if unknown:
            raise invalid(f"'stream_options' has unknown field(s): {', '.join(unknown)}",
                          f"stream_options.{unknown[0]}")
        include_usage = options.get("include_usage") or False
        if not isinstance(include_usage, bool):
            raise invalid("'stream_options.include_usage' must be a boolean",
                          "stream_options.include_usage")
    return stream, include_usage


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _int(value: Any, name: str) -> int:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not _is_int(value):
        raise invalid(f"'{name}' must be an integer, not {value!r}", name)
    return value


def _int_range(value: Any, name: str, low: int, high: int) -> int:
    number = _int(value, name)
    if not low <= number <= high:
        raise invalid(f"'{name}' must be between {low} and {high}, not {number}", name)
    return number


def _number(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise invalid(f"'{name}' must be a number, not {value!r}", name)
    return float(value)


# -- responses ----------------------------------------------------------------------------


def completion_id() -> str:
    return f"cmpl-{uuid.uuid4().hex}"


def chat_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"


def now() -> int:
    return int(time.time())


#: Token id -> its text (the model's decoding of that one token).
TokenText = Callable[[int], str]
#: Token id -> its bytes (a token that is part of a UTF-8 character: that part's raw bytes).
TokenBytes = Callable[[int], bytes]


@dataclass
class TokenLogprob:
    """One generated token's log probability, and the top alternatives asked for."""

    token_id: int
    logprob: float | None
    top: list[tuple[int, float]] | None = None


@dataclass
class ChoiceResult:
    """One finished choice: its text, finish reason, token count and logprobs."""

    index: int
    text: str = ""
    finish_reason: str | None = None
    completion_tokens: int = 0
    logprobs: list[TokenLogprob] = field(default_factory=list)


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def completion_body(
    id: str, created: int, model: str, choices: list[ChoiceResult], prompt_tokens: int,
    token_text: TokenText, logprobs: int | None,
) -> dict[str, Any]:
    return {
        "id": id, "object": "text_completion", "created": created, "model": model,
        "system_fingerprint": None,
        "choices": [
            {"index": c.index, "text": c.text, "finish_reason": c.finish_reason,
             "logprobs": (completion_logprobs(c.logprobs, token_text, logprobs, 0)
                          if logprobs is not None else None)}
            for c in choices
        ],
        "usage": usage(prompt_tokens, sum(c.completion_tokens for c in choices)),
    }


def completion_chunk(
    id: str, created: int, model: str, index: int, text: str, finish_reason: str | None,
    logprobs: dict[str, Any] | None = None,
) -> dict[str, Any]:
    return {
        "id": id, "object": "text_completion", "created": created, "model": model,
        "system_fingerprint": None,
        "choices": [{"index": index, "text": text, "finish_reason": finish_reason,
                     "logprobs": logprobs}],
    }


def completion_logprobs(
    entries: Iterable[TokenLogprob], token_text: TokenText, top: int | None, offset: int,
) -> dict[str, Any]:
    """The legacy completions ``logprobs`` object: tokens, their logprobs, the top
    alternatives (when ``top`` > 0) and each token's character offset, counted from
    ``offset`` (the text before these tokens)."""
    tokens: list[str] = []
    token_logprobs: list[float | None] = []
    top_logprobs: list[dict[str, float]] = []
    offsets: list[int] = []
    for entry in entries:
        text = token_text(entry.token_id)
        tokens.append(text)
        token_logprobs.append(entry.logprob)
        top_logprobs.append({token_text(t): lp for t, lp in (entry.top or [])[: top or 0]})
        offsets.append(offset)
        offset += len(text)
    return {"tokens": tokens, "token_logprobs": token_logprobs,
            "top_logprobs": top_logprobs if top else None, "text_offset": offsets}


def chat_body(
    id: str, created: int, model: str, choices: list[ChoiceResult], prompt_tokens: int,
    token_text: TokenText, logprobs: bool, top_logprobs: int,
    token_bytes: TokenBytes | None = None,
) -> dict[str, Any]:
    return {
        "id": id, "object": "chat.completion", "created": created, "model": model,
        "system_fingerprint": None,
        "choices": [
            {"index": c.index,
             "message": {"role": "assistant", "content": c.text, "refusal": None},
             "finish_reason": c.finish_reason,
             "logprobs": (chat_logprobs(c.logprobs, token_text, top_logprobs, token_bytes)
                          if logprobs else None)}
            for c in choices
        ],
        "usage": usage(prompt_tokens, sum(c.completion_tokens for c in choices)),
    }


def chat_chunk(
    id: str, created: int, model: str, index: int, delta: dict[str, Any],
    finish_reason: str | None, logprobs: dict[str, Any] | None = None,
    include_usage: bool = False,
) -> dict[str, Any]:
    chunk: dict[str, Any] = {
        "id": id, "object": "chat.completion.chunk", "created": created, "model": model,
        "system_fingerprint": None,
        "choices": [{"index": index, "delta": delta, "logprobs": logprobs,
                     "finish_reason": finish_reason}],
    }
    if include_usage:  # OpenAI's chunks carry "usage": null until the last one
        chunk["usage"] = None
    return chunk


def usage_chunk(
    id: str, created: int, model: str, object: str, prompt_tokens: int, completion_tokens: int,
) -> dict[str, Any]:
    """The last chunk of a stream with ``stream_options.include_usage``: no choices."""
    return {"id": id, "object": object, "created": created, "model": model,
            "system_fingerprint": None, "choices": [],
            "usage": usage(prompt_tokens, completion_tokens)}


def chat_logprobs(
    entries: Iterable[TokenLogprob], token_text: TokenText, top: int,
    token_bytes: TokenBytes | None = None,
) -> dict[str, Any]:
    """Chat's ``logprobs``: each token's text, log probability and ``bytes``, the token's own
    bytes (``token_bytes``; without it, the UTF-8 of its text)."""
    as_bytes = token_bytes or (lambda token_id: token_text(token_id).encode())
    return {"content": [_chat_token(e, token_text, as_bytes, top) for e in entries],
            "refusal": None}


def _chat_token(
    entry: TokenLogprob, token_text: TokenText, token_bytes: TokenBytes, top: int,
) -> dict[str, Any]:
    return {
        "token": token_text(entry.token_id), "logprob": entry.logprob,
        "bytes": list(token_bytes(entry.token_id)),
        "top_logprobs": [
            {"token": token_text(t), "logprob": lp, "bytes": list(token_bytes(t))}
            for t, lp in (entry.top or [])[:top]
        ],
    }


def sse(value: dict[str, Any]) -> bytes:
    """One Server-Sent Event carrying ``value`` as JSON."""
    return b"data: " + orjson.dumps(value) + b"\n\n"


SSE_DONE = b"data: [DONE]\n\n"


def embeddings_body(
    model: str, vectors: np.ndarray, token_counts: list[int], encoding_format: str,
) -> dict[str, Any]:
    vectors = np.ascontiguousarray(vectors, dtype="<f4")
    data = []
    for index, vector in enumerate(vectors):
        embedding: Any = (base64.b64encode(vector.tobytes()).decode("ascii")
                          if encoding_format == "base64" else vector.tolist())
        data.append({"object": "embedding", "index": index, "embedding": embedding})
    tokens = int(sum(token_counts))
    return {"object": "list", "data": data, "model": model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}


def model_object(name: str, created: int, owned_by: str = "shoal") -> dict[str, Any]:
    return {"id": name, "object": "model", "created": created, "owned_by": owned_by}


def model_list(models: list[dict[str, Any]]) -> dict[str, Any]:
    return {"object": "list", "data": models}
