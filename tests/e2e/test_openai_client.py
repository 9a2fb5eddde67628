"""The OpenAI-compatible API of a real ``shoal serve``, through the official ``openai`` client:
completions, chat, streaming, embeddings, errors, a client that disconnects mid-stream, and
16 concurrent streams. Expected values come from the same folders loaded with transformers
directly (``model.generate``, the encoder's hidden states), never from Shoal."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from .hf_models import tiny_bert, tiny_gpt2
from .models import IDENTITY, custom
from .process import ShoalProcess

PROMPT = "Hello world, this is"
MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there!"}]
PROMPTS = [  # 16 prompts of different lengths (in the tokenizer's vocabulary)
    "Hello", "The quick brown fox", "Shoal serves", "Alice lives in Paris and Bob",
    "I love this movie", "I hate rainy days", "Translate English to German:", "Summarize: the cat",
    "What is the capital of France?", "Numbers like 1, 2, 3", "A user asks a question",
    "Streaming tokens one by one", "the house is small", "lazy dog", "Berlin", "wonderful!",
]


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("openai-repository")
    tiny_gpt2(root / "chat")
    tiny_gpt2(root / "plain", chat_template=False)
    tiny_bert(root / "embed", "feature-extraction")
    custom(root / "identity", IDENTITY)
    return root


@pytest.fixture(scope="module")
def server(repository: Path) -> Iterator[ShoalProcess]:
    process = ShoalProcess(repository)
    try:
        process.wait_ready(120)
        yield process
    finally:
        process.stop()


@pytest.fixture(scope="module")
def client(server: ShoalProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/openai/v1", api_key="unused", max_retries=0)


@pytest.fixture(scope="module")
def reference(repository: Path):
    """The generation folder loaded with transformers, in this process."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = repository / "chat"
    return AutoModelForCausalLM.from_pretrained(folder).eval(), AutoTokenizer.from_pretrained(folder)


def generate(reference, ids: list[int], max_new_tokens: int, seed: int | None = None) -> tuple[str, int]:
    """(text, generated token count) of ``model.generate``: greedy, or seeded sampling."""
    import torch

    model, tokenizer = reference
    options = {"do_sample": False}
    if seed is not None:
        torch.manual_seed(seed)
        options = {"do_sample": True, "top_k": 0, "top_p": 1.0, "temperature": 1.0}
    with torch.inference_mode():
        out = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                             max_new_tokens=max_new_tokens, pad_token_id=tokenizer.eos_token_id, **options)
    new = out[0, len(ids):].tolist()
    return tokenizer.decode(new, skip_special_tokens=True), len(new)


def metric_samples(server: ShoalProcess) -> list:
    text = httpx.get(f"{server.url}/metrics").text
    return [s for family in text_string_to_metric_families(text) for s in family.samples]


def metric(server: ShoalProcess, name: str, **labels: str) -> float:
    return sum(s.value for s in metric_samples(server)
               if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))


def test_models(client: openai.OpenAI) -> None:
    assert sorted(m.id for m in client.models.list()) == ["chat", "embed", "plain"]
    assert client.models.retrieve("chat").id == "chat"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("identity")


def test_greedy_completion_equals_generate_streamed_or_not(client: openai.OpenAI, reference) -> None:
    ids = reference[1](PROMPT)["input_ids"]
    expected, count = generate(reference, ids, 20)
    completion = client.completions.create(model="chat", prompt=PROMPT, max_tokens=20, temperature=0)
    choice = completion.choices[0]
    assert completion.id.startswith("cmpl-") and completion.object == "text_completion"
    assert choice.text == expected and choice.index == 0
    assert choice.finish_reason == ("length" if count == 20 else "stop")
    assert completion.usage.prompt_tokens == len(ids)
    assert completion.usage.completion_tokens == count
    assert completion.usage.total_tokens == len(ids) + count

    chunks = list(client.completions.create(model="chat", prompt=PROMPT, max_tokens=20, temperature=0,
                                            stream=True, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == expected
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == count
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == choice.finish_reason

    by_ids = client.completions.create(model="chat", prompt=ids, max_tokens=20, temperature=0)
    assert by_ids.choices[0].text == expected


def test_seeded_sampling_equals_generate_and_repeats(client: openai.OpenAI, reference) -> None:
    ids = reference[1](PROMPT)["input_ids"]
    expected, _ = generate(reference, ids, 16, seed=1234)
    first = client.completions.create(model="chat", prompt=PROMPT, max_tokens=16, seed=1234)
    again = client.completions.create(model="chat", prompt=PROMPT, max_tokens=16, seed=1234)
    assert first.choices[0].text == again.choices[0].text == expected
    two = client.completions.create(model="chat", prompt=PROMPT, max_tokens=16, seed=1234, n=2)
    assert [c.index for c in two.choices] == [0, 1]
    assert two.choices[0].text == expected != two.choices[1].text  # each choice its own seed
    assert two.usage.prompt_tokens == len(ids)


def test_chat_streamed_or_not(client: openai.OpenAI, reference) -> None:
    _, tokenizer = reference
    text = tokenizer.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    expected, count = generate(reference, ids, 12)
    chat = client.chat.completions.create(model="chat", messages=MESSAGES, max_completion_tokens=12,
                                          temperature=0)
    assert chat.id.startswith("chatcmpl-") and chat.object == "chat.completion"
    assert chat.choices[0].message.role == "assistant"
    assert chat.choices[0].message.content == expected
    assert chat.usage.prompt_tokens == len(ids) and chat.usage.completion_tokens == count

    chunks = list(client.chat.completions.create(model="chat", messages=MESSAGES, max_tokens=12,
                                                 temperature=0, stream=True,
                                                 stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == expected
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == chat.choices[0].finish_reason and not any(finishes[:-1])
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens == len(ids) + count
    assert len({c.id for c in chunks}) == 1


def test_stop_strings(client: openai.OpenAI, reference) -> None:
    full = client.completions.create(model="chat", prompt=PROMPT, max_tokens=20, temperature=0)
    text = full.choices[0].text
    stop = text[5:7]
    assert stop and text.index(stop) >= 1
    stopped = client.completions.create(model="chat", prompt=PROMPT, max_tokens=20, temperature=0,
                                        stop=[stop, "never-there"])
    assert stopped.choices[0].text == text[: text.index(stop)]
    assert stopped.choices[0].finish_reason == "stop"
    streamed = client.completions.create(model="chat", prompt=PROMPT, max_tokens=20, temperature=0,
                                         stop=stop, stream=True)
    assert "".join(c.choices[0].text for c in streamed) == text[: text.index(stop)]


def test_logprobs(client: openai.OpenAI) -> None:
    completion = client.completions.create(model="chat", prompt=PROMPT, max_tokens=6, temperature=0,
                                           logprobs=3)
    logprobs = completion.choices[0].logprobs
    assert len(logprobs.tokens) == len(logprobs.token_logprobs) == completion.usage.completion_tokens
    assert all(lp <= 0 for lp in logprobs.token_logprobs)
    assert all(1 <= len(top) <= 3 for top in logprobs.top_logprobs)
    # Greedy: the chosen token is the most likely one.
    assert all(abs(max(top.values()) - lp) < 1e-5 for top, lp in zip(logprobs.top_logprobs, logprobs.token_logprobs))
    chat = client.chat.completions.create(model="chat", messages=MESSAGES, max_tokens=6, temperature=0,
                                          logprobs=True, top_logprobs=2)
    content = chat.choices[0].logprobs.content
    assert len(content) == chat.usage.completion_tokens
    assert all(len(t.top_logprobs) == 2 and t.logprob <= 0 for t in content)


def test_embeddings_are_mean_pooled_hidden_states(client: openai.OpenAI, repository: Path) -> None:
    import torch
    from transformers import AutoModel, AutoTokenizer

    texts = ["Hello world", "The quick brown fox jumps over the lazy dog."]
    tokenizer = AutoTokenizer.from_pretrained(repository / "embed")
    model = AutoModel.from_pretrained(repository / "embed").eval()
    encoded = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.inference_mode():
        states = model(**encoded).last_hidden_state
    mask = encoded["attention_mask"].unsqueeze(-1).float()
    expected = ((states * mask).sum(1) / mask.sum(1)).numpy()

    for encoding in ("base64", "float"):  # the client asks for base64 unless told
        kwargs = {"encoding_format": encoding} if encoding == "float" else {}
        response = client.embeddings.create(model="embed", input=texts, **kwargs)
        got = np.array([d.embedding for d in response.data], dtype=np.float32)
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
        assert [d.index for d in response.data] == [0, 1]
        assert response.usage.prompt_tokens == int(encoded["attention_mask"].sum())
    single = client.embeddings.create(model="embed", input="Hello world", encoding_format="float")
    np.testing.assert_allclose(single.data[0].embedding, expected[0], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(("call", "error", "status", "code", "words"), [
    (lambda c: c.completions.create(model="nope", prompt="x"), openai.NotFoundError, 404,
     "model_not_found", "does not exist"),
    (lambda c: c.completions.create(model="identity", prompt="x"), openai.NotFoundError, 404,
     "model_not_found", "not served by the OpenAI API"),
    (lambda c: c.chat.completions.create(model="plain", messages=MESSAGES), openai.BadRequestError, 400,
     "no_chat_template", "no chat template"),
    (lambda c: c.embeddings.create(model="chat", input="x"), openai.BadRequestError, 400,
     "model_not_supported", "feature-extraction"),
    (lambda c: c.completions.create(model="embed", prompt="x"), openai.BadRequestError, 400,
     "model_not_supported", "text-generation"),
    (lambda c: c.completions.create(model="chat", prompt="x", frequency_penalty=0.5),
     openai.BadRequestError, 400, "unsupported_parameter", "frequency_penalty"),
    (lambda c: c.chat.completions.create(model="chat", messages=MESSAGES, response_format={
        "type": "json_schema", "json_schema": {"name": "x", "schema": {}}}),
     openai.BadRequestError, 400, "unsupported_parameter", "response_format"),
    (lambda c: c.chat.completions.create(model="chat", messages=MESSAGES, tools=[
        {"type": "function", "function": {"name": "f", "parameters": {}}}]),
     openai.BadRequestError, 400, "unsupported_parameter", "tools"),
    (lambda c: c.completions.create(model="chat", prompt="x", max_tokens=100000),
     openai.BadRequestError, 400, None, "max_num_tokens"),
    (lambda c: c.completions.create(model="chat", prompt="x", temperature=5),
     openai.BadRequestError, 400, None, "temperature"),
])
def test_errors(client: openai.OpenAI, call, error, status: int, code: str | None, words: str) -> None:
    with pytest.raises(error) as caught:
        call(client)
    assert caught.value.status_code == status
    body = caught.value.response.json()
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["code"] == code and words in body["error"]["message"]


def test_disconnect_mid_stream_cancels_the_sequence(server: ShoalProcess, client: openai.OpenAI) -> None:
    cancelled = metric(server, "shoal_llm_requests_finished_total", model="chat", reason="cancelled")
    body = {"model": "chat", "prompt": "Numbers like", "max_tokens": 480, "temperature": 1.0, "seed": 3,
            "stream": True}
    with httpx.Client(timeout=30) as http:
        with http.stream("POST", f"{server.url}/openai/v1/completions", json=body) as response:
            assert response.status_code == 200
            lines = response.iter_lines()
            assert next(lines).startswith("data: {")
        # leaving the block closes the connection mid-stream
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if (metric(server, "shoal_llm_requests_finished_total", model="chat", reason="cancelled") > cancelled
                and metric(server, "shoal_llm_running_sequences", model="chat") == 0):
            break
        time.sleep(0.02)
    else:
        pytest.fail("the sequence of a client that went away is still running")
    assert metric(server, "shoal_requests_total", model="chat", protocol="openai", outcome="cancelled") >= 1
    after = client.completions.create(model="chat", prompt=PROMPT, max_tokens=4, temperature=0)
    assert after.usage.completion_tokens >= 1  # served as before


def test_16_concurrent_greedy_streams_equal_each_alone(server: ShoalProcess, client: openai.OpenAI) -> None:
    alone = [client.chat.completions.create(model="chat", messages=[{"role": "user", "content": p}],
                                            max_tokens=24, temperature=0).choices[0].message.content
             for p in PROMPTS]

    async def together() -> list[str]:
        async_client = openai.AsyncOpenAI(base_url=f"{server.url}/openai/v1", api_key="unused",
                                          max_retries=0)

        async def one(prompt: str) -> str:
            stream = await async_client.chat.completions.create(
                model="chat", messages=[{"role": "user", "content": prompt}], max_tokens=24,
                temperature=0, stream=True)
            return "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])

        try:
            return list(await asyncio.gather(*(one(p) for p in PROMPTS)))
        finally:
            await async_client.close()

    assert asyncio.run(together()) == alone


def test_metrics(server: ShoalProcess, client: openai.OpenAI) -> None:
    client.completions.create(model="chat", prompt=PROMPT, max_tokens=8, temperature=0)
    names = {s.name for s in metric_samples(server)}
    for name in ("shoal_llm_time_to_first_token_seconds_count", "shoal_llm_inter_token_latency_seconds_count",
                 "shoal_llm_prompt_tokens_total", "shoal_llm_generation_tokens_total",
                 "shoal_llm_requests_finished_total", "shoal_llm_running_sequences",
                 "shoal_llm_waiting_sequences", "shoal_llm_kv_cache_usage_ratio"):
        assert name in names, name
    assert metric(server, "shoal_llm_generation_tokens_total", model="chat", version="1") >= 8
    assert metric(server, "shoal_llm_time_to_first_token_seconds_count", model="chat") >= 1
    assert metric(server, "shoal_llm_inter_token_latency_seconds_count", model="chat") >= 7
    assert metric(server, "shoal_llm_running_sequences", model="chat") == 0
    assert metric(server, "shoal_llm_kv_cache_usage_ratio", model="chat") == 0
    assert metric(server, "shoal_requests_total", model="chat", protocol="openai", outcome="success") >= 1


def test_http_workers_metrics_add_up(tmp_path: Path) -> None:
    """Under --http-workers every process runs its own engine; /metrics (multiprocess files)
    adds their counters up and its gauges stay per model."""
    tiny_gpt2(tmp_path / "chat")
    process = ShoalProcess(tmp_path, "--http-workers", "2")
    try:
        process.wait_ready(120)
        client = openai.OpenAI(base_url=f"{process.url}/openai/v1", api_key="unused", max_retries=0)
        for _ in range(6):  # new connections: the kernel spreads them over both processes
            chunks = list(client.completions.create(model="chat", prompt=PROMPT, max_tokens=5,
                                                    temperature=0, stream=True))
            assert chunks[-1].choices[0].finish_reason in ("stop", "length")
        assert metric(process, "shoal_llm_requests_finished_total", model="chat") == 6
        assert metric(process, "shoal_llm_time_to_first_token_seconds_count", model="chat") == 6
        assert metric(process, "shoal_requests_total", model="chat", protocol="openai") == 6
        assert metric(process, "shoal_llm_running_sequences", model="chat") == 0
        assert metric(process, "shoal_llm_kv_cache_usage_ratio", model="chat") == 0
    finally:
        process.stop()


def test_chat_default_max_tokens_is_the_rest_of_the_context(client: openai.OpenAI, reference) -> None:
    """OpenAI's chat default: generate until the context ends (the tiny GPT-2 has 512
    positions), not 16 tokens; completions keep OpenAI's 16."""
    _, tokenizer = reference
    text = tokenizer.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    expected, count = generate(reference, ids, 512 - len(ids))
    chat = client.chat.completions.create(model="chat", messages=MESSAGES, temperature=0)
    assert chat.choices[0].message.content == expected
    assert chat.usage.completion_tokens == count and count > 16
    completion = client.completions.create(model="chat", prompt=PROMPT, temperature=0)
    assert completion.usage.completion_tokens <= 16


def test_a_prompt_over_the_context_and_too_many_sequences_are_400(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.completions.create(model="chat", prompt=[5] * 600, max_tokens=1)
    assert caught.value.response.json()["error"]["code"] == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError) as caught:
        client.completions.create(model="chat", prompt=[[5]] * 20000, n=128, max_tokens=1)
    assert "at most 256" in caught.value.response.json()["error"]["message"]


def test_logprob_bytes_are_each_tokens_own_bytes(client: openai.OpenAI) -> None:
    """Byte-level tokens that hold part of a UTF-8 character give that part, so the bytes of
    all the tokens are the text's UTF-8 (a decoded part would be U+FFFD's bytes)."""
    chat = client.chat.completions.create(model="chat", messages=MESSAGES, max_tokens=48, temperature=1.0,
                                          seed=11, n=4, logprobs=True)
    for choice in chat.choices:
        content = choice.logprobs.content
        if choice.finish_reason == "stop":  # the end-of-sequence token: no text
            content = content[:-1]
        raw = b"".join(bytes(t.bytes) for t in content)
        assert raw.decode("utf-8", errors="replace") == choice.message.content


def test_sigterm_drain_lets_a_stream_end_with_done_and_max_inflight_applies(tmp_path: Path) -> None:
    tiny_gpt2(tmp_path / "chat")
    (tmp_path / "chat" / "model.yaml").write_text("max_inflight: 1\n")
    process = ShoalProcess(tmp_path)
    try:
        process.wait_ready(120)
        client = openai.OpenAI(base_url=f"{process.url}/openai/v1", api_key="unused", max_retries=0)
        body = {"model": "chat", "prompt": "Numbers like", "max_tokens": 480, "temperature": 1.0,
                "seed": 3, "stream": True}
        with httpx.Client(timeout=30) as http:
            with http.stream("POST", f"{process.url}/openai/v1/completions", json=body) as response:
                assert response.status_code == 200
                lines = (line for line in response.iter_lines() if line)
                assert next(lines).startswith("data: {")
                with pytest.raises(openai.RateLimitError) as caught:  # max_inflight: 1
                    client.completions.create(model="chat", prompt="x", max_tokens=2)
                assert caught.value.response.headers["retry-after"] == "1"
                process.proc.send_signal(signal.SIGTERM)
                rest = list(lines)
        assert rest[-1] == "data: [DONE]", rest[-3:]
        assert not any('"error"' in line for line in rest)
        assert process.proc.wait(30) == 0
        events = [e.get("event") for e in process.log_events()]
        assert "shutting_down" in events and "drain_timeout" not in events
    finally:
        process.stop()


def test_a_stream_past_the_drain_timeout_ends_with_an_error_event(tmp_path: Path) -> None:
    """The stream (2,000 greedy tokens, seconds even on a fast machine) outlives
    --drain-timeout 0.2: it is cut off by the drain with OpenAI's error event, not dropped
    without one when uvicorn gives up a second later. Greedy, so that whether an
    end-of-sequence token cuts it short is a property of the weights, not of a draw (this
    model's greedy text for this prompt runs to the length limit)."""
    tiny_gpt2(tmp_path / "chat", n_positions=2048)
    process = ShoalProcess(tmp_path, "--drain-timeout", "0.2")
    try:
        process.wait_ready(120)
        body = {"model": "chat", "prompt": "Numbers like", "max_tokens": 2000, "temperature": 0,
                "stream": True}
        with httpx.Client(timeout=30) as http:
            with http.stream("POST", f"{process.url}/openai/v1/completions", json=body) as response:
                lines = (line for line in response.iter_lines() if line)
                assert next(lines).startswith("data: {")
                process.proc.send_signal(signal.SIGTERM)
                rest = list(lines)
        last = json.loads(rest[-1][len("data: "):])
        assert last["error"]["code"] == "service_unavailable", rest[-2:]
        assert "shutting down" in last["error"]["message"]
        assert process.proc.wait(30) == 0
    finally:
        process.stop()
