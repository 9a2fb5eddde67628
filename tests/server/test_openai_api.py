"""The OpenAI-compatible routes in process: request parsing, the response shapes, errors in
OpenAI's body, and how the routes drive an engine (a scripted fake here; the real engine and
the official client are tests/e2e/test_openai_client.py)."""

from __future__ import annotations

import asyncio
import base64
import json
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import httpx
import numpy as np
import pytest
from starlette.applications import Starlette

from shoal.errors import InvalidInput, Overloaded, Unavailable
from shoal.model import Model
from shoal.observe.metrics import Metrics
from shoal.protocol import openai as oa
from shoal.server import openai_routes
from shoal.serving.dataplane import DataPlane
from shoal.serving.endpoint import ModelEndpoint, ModelState
from shoal.serving.limits import Limits
from shoal.serving.registry import Registry, VersionEntry

# -- parsing ------------------------------------------------------------------------------


def error_of(call: Any, *args: Any) -> oa.OpenAIError:
    with pytest.raises(oa.OpenAIError) as caught:
        call(*args)
    return caught.value


def test_completion_defaults_follow_openai() -> None:
    parsed = oa.parse_completion({"model": "m", "prompt": "hi"})
    assert parsed.prompts == ["hi"] and parsed.n == 1 and not parsed.stream
    assert parsed.sampling == oa.Sampling(None, 1.0, 1.0, (), None, None)


def test_completion_prompt_forms() -> None:
    assert oa.parse_completion({"model": "m", "prompt": ["a", "b"]}).prompts == ["a", "b"]
    assert oa.parse_completion({"model": "m", "prompt": [1, 2]}).prompts == [[1, 2]]
    assert oa.parse_completion({"model": "m", "prompt": [[1], [2, 3]]}).prompts == [[1], [2, 3]]
    for bad in ([], [[]], [1, "a"], 3, {"x": 1}, [True]):
        assert error_of(oa.parse_completion, {"model": "m", "prompt": bad}).param == "prompt"
    assert error_of(oa.parse_completion, {"model": "m"}).param == "prompt"


def test_completion_parameters() -> None:
    parsed = oa.parse_completion({
        "model": "m", "prompt": "x", "max_tokens": 5, "temperature": 0, "top_p": 0.5, "n": 3,
        "stop": "\n", "seed": 7, "logprobs": 2, "stream": True,
        "stream_options": {"include_usage": True}, "user": "u", "frequency_penalty": 0,
        "presence_penalty": 0.0, "best_of": 1, "echo": False, "logit_bias": {}, "suffix": None,
    })
    assert parsed.sampling == oa.Sampling(5, 0.0, 0.5, ("\n",), 7, 2)
    assert parsed.n == 3 and parsed.stream and parsed.include_usage


@pytest.mark.parametrize(("extra", "param"), [
    ({"best_of": 2}, "best_of"),
    ({"echo": True}, "echo"),
    ({"suffix": "end"}, "suffix"),
    ({"frequency_penalty": 0.5}, "frequency_penalty"),
    ({"presence_penalty": -1}, "presence_penalty"),
    ({"logit_bias": {"50256": -100}}, "logit_bias"),
    ({"temperature": 2.5}, "temperature"),
    ({"temperature": "hot"}, "temperature"),
    ({"top_p": 0}, "top_p"),
    ({"n": 0}, "n"),
    ({"n": 1.5}, "n"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ({"stop": [""]}, "stop"),
    ({"stop": 3}, "stop"),
    ({"seed": "x"}, "seed"),
    ({"logprobs": 21}, "logprobs"),
    ({"stream_options": {"include_usage": True}}, "stream_options"),
    ({"stream": "yes"}, "stream"),
    ({"top_k": 5}, "top_k"),
    ({"model": ""}, "model"),
])
def test_completion_refusals_name_the_parameter(extra: dict, param: str) -> None:
    error = error_of(oa.parse_completion, {"model": "m", "prompt": "x", **extra})
    assert error.status == 400 and error.type == "invalid_request_error"
    assert error.param == param and param in error.message


def test_chat_parsing() -> None:
    parsed = oa.parse_chat({
        "model": "m", "max_completion_tokens": 9, "logprobs": True, "top_logprobs": 3,
        "messages": [
            {"role": "developer", "content": "be brief"},
            {"role": "user", "content": [{"type": "text", "text": "hi "}, {"type": "text", "text": "there"}]},
            {"role": "assistant", "content": None},
        ],
        "response_format": {"type": "text"}, "tool_choice": "none", "tools": [], "store": False,
    })
    assert parsed.messages == [{"role": "system", "content": "be brief"},
                               {"role": "user", "content": "hi there"},
                               {"role": "assistant", "content": ""}]
    assert parsed.sampling.max_tokens == 9 and parsed.sampling.logprobs == 3
    assert parsed.logprobs and parsed.top_logprobs == 3
    assert oa.parse_chat({"model": "m", "messages": [{"role": "user", "content": "x"}]}).sampling.logprobs is None


@pytest.mark.parametrize(("extra", "param"), [
    ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
    ({"tool_choice": "required"}, "tool_choice"),
    ({"response_format": {"type": "json_schema", "json_schema": {}}}, "response_format"),
    ({"response_format": {"type": "json_object"}}, "response_format"),
    ({"top_logprobs": 2}, "top_logprobs"),
    ({"logprobs": 3}, "logprobs"),
    ({"max_tokens": 3, "max_completion_tokens": 4}, "max_completion_tokens"),
    ({"messages": []}, "messages"),
    ({"messages": [{"role": "robot", "content": "x"}]}, "messages[0].role"),
    ({"messages": [{"role": "tool", "content": "x", "tool_call_id": "1"}]}, "messages[0].role"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
     "messages[0].content[0].type"),
    ({"messages": [{"role": "user", "content": 3}]}, "messages[0].content"),
    ({"audio": {"voice": "x"}}, "audio"),
    ({"modalities": ["text", "audio"]}, "modalities"),
    ({"functions": [{"name": "f"}]}, "functions"),
])
def test_chat_refusals_name_the_parameter(extra: dict, param: str) -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "x"}], **extra}
    error = error_of(oa.parse_chat, body)
    assert error.status == 400 and error.param == param, error.message


def test_embeddings_parsing() -> None:
    parsed = oa.parse_embeddings({"model": "m", "input": "x"})
    assert parsed.inputs == ["x"] and parsed.encoding_format == "float"
    assert oa.parse_embeddings({"model": "m", "input": ["a", "b"], "encoding_format": "base64"}).inputs == ["a", "b"]
    for body, param in (({"model": "m"}, "input"), ({"model": "m", "input": []}, "input"),
                        ({"model": "m", "input": [1, 2]}, "input"),
                        ({"model": "m", "input": ""}, "input"),
                        ({"model": "m", "input": "x", "encoding_format": "int8"}, "encoding_format"),
                        ({"model": "m", "input": "x", "nope": 1}, "nope")):
        assert error_of(oa.parse_embeddings, body).param == param


def test_seeded_choices_differ_but_the_first_is_the_request_alone() -> None:
    sampling = oa.Sampling(seed=5)
    assert sampling.for_choice(0) is sampling
    assert sampling.for_choice(1).seed == 6
    assert oa.Sampling(seed=(1 << 64) - 1).for_choice(1).seed == 0
    assert oa.Sampling().for_choice(3).seed is None


def test_embeddings_body_base64_is_little_endian_float32() -> None:
    vectors = np.array([[1.0, -2.5], [0.25, 3.0]], dtype=np.float32)
    body = oa.embeddings_body("m", vectors, [3, 4], "base64")
    decoded = np.frombuffer(base64.b64decode(body["data"][1]["embedding"]), dtype="<f4")
    assert decoded.tolist() == [0.25, 3.0]
    assert body["usage"] == {"prompt_tokens": 7, "total_tokens": 7}
    assert oa.embeddings_body("m", vectors, [3, 4], "float")["data"][0]["embedding"] == [1.0, -2.5]


def test_completion_logprobs_offsets() -> None:
    texts = {1: "ab", 2: "c", 3: "dd"}
    entries = [oa.TokenLogprob(1, -0.5, [(1, -0.5), (3, -1.0)]), oa.TokenLogprob(2, -0.1, [(2, -0.1)])]
    body = oa.completion_logprobs(entries, texts.__getitem__, 2, 10)
    assert body == {"tokens": ["ab", "c"], "token_logprobs": [-0.5, -0.1],
                    "top_logprobs": [{"ab": -0.5, "dd": -1.0}, {"c": -0.1}], "text_offset": [10, 12]}
    assert oa.completion_logprobs(entries, texts.__getitem__, 0, 0)["top_logprobs"] is None


# -- the routes, over a scripted engine ----------------------------------------------------


@dataclass
class Event:
    token_id: int
    text: str
    logprob: float | None = None
    top_logprobs: list | None = None
    finish_reason: str | None = None


class FakeStream:
    def __init__(self, prompt: list[int], params: Any, script: list[tuple[int, str]], finish: str,
                 gate: asyncio.Event | None) -> None:
        self.prompt_tokens = len(prompt)
        self.completion_tokens = 0
        self.finish_reason: str | None = None
        self.params = params
        self.script = script[: params.max_new_tokens]
        self.finish = finish if len(self.script) == len(script) else "length"
        self.gate = gate
        self.cancelled = False

    async def __aiter__(self):
        for position, (token, text) in enumerate(self.script):
            if self.cancelled:
                return
            if self.gate is not None and position == 1:
                await self.gate.wait()
            await asyncio.sleep(0)
            if self.cancelled:
                return
            self.completion_tokens += 1
            last = position == len(self.script) - 1
            if last:
                self.finish_reason = self.finish
            top = [(token, -0.5), (99, -2.0)][: self.params.logprobs or 0]
            yield Event(token, text, -0.5 if self.params.logprobs is not None else None,
                        top if self.params.logprobs else None, self.finish if last else None)

    def cancel(self) -> None:
        self.cancelled = True
        self.finish_reason = "cancelled"


class FakeEngine:
    def __init__(self) -> None:
        self.submitted: list[FakeStream] = []
        self.script = [(10, "Hel"), (11, ""), (12, "lo"), (13, " world")]
        self.finish = "stop"
        self.gate: asyncio.Event | None = None

    def submit(self, prompt: list[int], params: Any) -> FakeStream:
        if not prompt:
            raise InvalidInput("the prompt is empty")
        stream = FakeStream(prompt, params, self.script, self.finish, self.gate)
        self.submitted.append(stream)
        return stream


class FakeHF(Model):
    """Stands in for shoal.runtimes.huggingface.HuggingFaceModel."""

    platform = "huggingface"

    def __init__(self, task: str = "text-generation", chat_template: str | None = "t",
                 name: str = "x", version: str = "1") -> None:
        super().__init__(name, version)
        self.task = task
        self.context_length: int | None = None
        self.embedded: list[list[str]] = []
        self.embed_gate: asyncio.Event | None = None
        self.engine = FakeEngine() if task == "text-generation" else None
        self.chat_template = chat_template
        self.max_new_tokens = 16
        self.tokenizer = list(range(100))  # len() is the vocabulary

    def encode_prompt(self, text: str) -> list[int]:
        return [ord(c) % 100 for c in text]

    def apply_chat_template(self, messages: list[dict]) -> list[int]:
        if self.chat_template is None:
            raise InvalidInput("model has no chat template")
        return [1] + [ord(c) % 100 for m in messages for c in m["content"]]

    def decode(self, ids: list[int]) -> str:
        return "".join(f"<{i}>" for i in ids)

    async def embed(self, texts: list[str]) -> tuple[np.ndarray, list[int]]:
        self.embedded.append(list(texts))
        if self.embed_gate is not None:
            await self.embed_gate.wait()
        return np.array([[len(t), 1.0] for t in texts], dtype=np.float32), [len(t) for t in texts]


def endpoint_of(model: Any, name: str, limits: Limits | None = None) -> Any:
    """A real ModelEndpoint (in-flight accounting, limits) for a fake Hugging Face model."""
    if isinstance(model, FakeHF):
        model.name = name
        return ModelEndpoint(model, None, limits=limits or Limits())  # type: ignore[arg-type]
    return Endpoint(model)


class Endpoint:
    def __init__(self, model: Any, version: str = "1") -> None:
        self.model = model
        self.version = version
        self.name = "x"
        self.ready = True


@pytest.fixture
def models(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    monkeypatch.setattr(openai_routes, "_is_huggingface", lambda model: isinstance(model, FakeHF))
    return {
        "gen": FakeHF(),
        "plain": FakeHF(chat_template=None),
        "emb": FakeHF("feature-extraction"),
        "iris": SimpleNamespace(platform="sklearn"),
        "remote": SimpleNamespace(platform="huggingface"),  # a worker-process proxy
    }


def run(models: dict[str, Any], scenario: Any) -> Any:
    registry = Registry()
    for name, model in models.items():
        registry.set(name, VersionEntry("1", ModelState.READY, "", endpoint_of(model, name)))
    registry.set("loading", VersionEntry("1", ModelState.LOADING))
    dataplane = DataPlane(registry, None, Metrics())  # type: ignore[arg-type]
    app = Starlette(routes=openai_routes.openai_routes(dataplane, 1 << 20))

    async def main() -> Any:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t/openai/v1") as client:
            return await scenario(client)

    return asyncio.run(main())


def events(text: str) -> list[Any]:
    assert text.endswith("data: [DONE]\n\n"), text
    chunks = [part for part in text.split("\n\n") if part]
    assert all(c.startswith("data: ") for c in chunks)
    return [json.loads(c[len("data: "):]) for c in chunks[:-1]]


def test_completion_response_shape(models: dict[str, Any]) -> None:
    async def scenario(client: httpx.AsyncClient) -> Any:
        return await client.post("/completions", json={"model": "gen", "prompt": "abc", "max_tokens": 3,
                                                       "logprobs": 1})

    response = run(models, scenario)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["id"].startswith("cmpl-") and body["object"] == "text_completion"
    assert body["model"] == "gen" and isinstance(body["created"], int)
    assert body["choices"] == [{
        "index": 0, "text": "Hello", "finish_reason": "length",
        "logprobs": {"tokens": ["<10>", "<11>", "<12>"], "token_logprobs": [-0.5] * 3,
                     "top_logprobs": [{"<10>": -0.5}, {"<11>": -0.5}, {"<12>": -0.5}],
                     "text_offset": [0, 4, 8]},
    }]
    assert body["usage"] == {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6}
    params = models["gen"].engine.submitted[0].params
    assert params.max_new_tokens == 3 and params.temperature == 1.0 and params.logprobs == 1


def test_n_choices_and_prompts(models: dict[str, Any]) -> None:
    async def scenario(client: httpx.AsyncClient) -> Any:
        return await client.post("/completions", json={"model": "gen", "prompt": ["ab", "cde"], "n": 2,
                                                       "seed": 3, "temperature": 0.7})

    body = run(models, scenario).json()
    assert [c["index"] for c in body["choices"]] == [0, 1, 2, 3]
    assert all(c["text"] == "Hello world" and c["finish_reason"] == "stop" for c in body["choices"])
    assert body["usage"] == {"prompt_tokens": 5, "completion_tokens": 16, "total_tokens": 21}
    seeds = [s.params.seed for s in models["gen"].engine.submitted]
    assert seeds == [3, 4, 3, 4]


def test_completion_stream(models: dict[str, Any]) -> None:
    async def scenario(client: httpx.AsyncClient) -> Any:
        return await client.post("/completions", json={
            "model": "gen", "prompt": "abc", "stream": True, "stream_options": {"include_usage": True}})

    response = run(models, scenario)
    assert response.headers["content-type"].startswith("text/event-stream")
    chunks = events(response.text)
    assert "".join(c["choices"][0]["text"] for c in chunks[:-1]) == "Hello world"
    assert [c["choices"][0]["finish_reason"] for c in chunks[:-1]] == [None, None, "stop"]
    assert all(c["usage"] is None and c["object"] == "text_completion" for c in chunks[:-1])
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 4
    assert len({c["id"] for c in chunks}) == 1


def test_chat_and_its_stream(models: dict[str, Any]) -> None:
    async def scenario(client: httpx.AsyncClient) -> Any:
        messages = [{"role": "user", "content": "hi"}]
        plain = await client.post("/chat/completions", json={"model": "gen", "messages": messages,
                                                             "logprobs": True, "top_logprobs": 2})
        streamed = await client.post("/chat/completions", json={"model": "gen", "messages": messages,
                                                                "stream": True, "n": 2})
        return plain, streamed

    plain, streamed = run(models, scenario)
    body = plain.json()
    assert body["id"].startswith("chatcmpl-") and body["object"] == "chat.completion"
    choice = body["choices"][0]
    assert choice["message"] == {"role": "assistant", "content": "Hello world", "refusal": None}
    assert choice["finish_reason"] == "stop"
    first = choice["logprobs"]["content"][0]
    assert first == {"token": "<10>", "logprob": -0.5, "bytes": list(b"<10>"),
                     "top_logprobs": [{"token": "<10>", "logprob": -0.5, "bytes": list(b"<10>")},
                                      {"token": "<99>", "logprob": -2.0, "bytes": list(b"<99>")}]}
    assert body["usage"]["prompt_tokens"] == 3
    chunks = events(streamed.text)
    assert all(c["object"] == "chat.completion.chunk" and "usage" not in c for c in chunks)
    for index in (0, 1):
        mine = [c["choices"][0] for c in chunks if c["choices"][0]["index"] == index]
        assert mine[0]["delta"] == {"role": "assistant", "content": ""}
        assert "".join(c["delta"].get("content", "") for c in mine) == "Hello world"
        assert [c["finish_reason"] for c in mine][-1] == "stop"
        assert all(c["finish_reason"] is None for c in mine[:-1])


def test_embeddings(models: dict[str, Any]) -> None:
    async def scenario(client: httpx.AsyncClient) -> Any:
        return (await client.post("/embeddings", json={"model": "emb", "input": ["ab", "cde"]}),
                await client.post("/embeddings", json={"model": "emb", "input": "ab", "dimensions": 3}))

    response, dimensions = run(models, scenario)
    body = response.json()
    assert body["object"] == "list" and body["model"] == "emb"
    assert [d["embedding"] for d in body["data"]] == [[2.0, 1.0], [3.0, 1.0]]
    assert [d["index"] for d in body["data"]] == [0, 1] and body["data"][0]["object"] == "embedding"
    assert body["usage"] == {"prompt_tokens": 5, "total_tokens": 5}
    assert dimensions.status_code == 400 and dimensions.json()["error"]["param"] == "dimensions"


def test_models(models: dict[str, Any]) -> None:
    async def scenario(client: httpx.AsyncClient) -> Any:
        return (await client.get("/models"), await client.get("/models/emb"),
                await client.get("/models/iris"))

    listing, one, other = run(models, scenario)
    assert [m["id"] for m in listing.json()["data"]] == ["emb", "gen", "plain"]
    assert listing.json()["object"] == "list"
    assert one.json() == {"id": "emb", "object": "model", "created": one.json()["created"], "owned_by": "shoal"}
    assert other.status_code == 404 and other.json()["error"]["code"] == "model_not_found"


@pytest.mark.parametrize(("path", "body", "status", "code", "words"), [
    ("/completions", {"model": "nope", "prompt": "x"}, 404, "model_not_found", "does not exist"),
    ("/completions", {"model": "iris", "prompt": "x"}, 404, "model_not_found", "not served by the OpenAI API"),
    ("/completions", {"model": "remote", "prompt": "x"}, 400, "model_not_supported", "worker processes"),
    ("/completions", {"model": "loading", "prompt": "x"}, 503, "service_unavailable", "loading"),
    ("/completions", {"model": "emb", "prompt": "x"}, 400, "model_not_supported", "feature-extraction"),
    ("/completions", {"model": "gen", "prompt": ""}, 400, None, "empty"),
    ("/completions", {"model": "gen", "prompt": [5, 100]}, 400, None, "vocabulary"),
    ("/chat/completions", {"model": "plain", "messages": [{"role": "user", "content": "x"}]},
     400, "no_chat_template", "no chat template"),
    ("/embeddings", {"model": "gen", "input": "x"}, 400, "model_not_supported", "feature-extraction"),
    ("/completions", {"model": "gen", "prompt": "x", "tools": []}, 400, "unknown_parameter", "tools"),
])
def test_errors_in_openai_shape(models: dict[str, Any], path: str, body: dict, status: int,
                                code: str | None, words: str) -> None:
    async def scenario(client: httpx.AsyncClient) -> Any:
        return await client.post(path, json=body)

    response = run(models, scenario)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == code and words in error["message"]
    assert error["type"] == ("server_error" if status >= 500 else "invalid_request_error")


def test_unknown_routes_and_methods(models: dict[str, Any]) -> None:
    async def scenario(client: httpx.AsyncClient) -> Any:
        return (await client.get("/completions"), await client.post("/nothing"),
                await client.post("/completions", content=b"{"))

    wrong_method, unknown, bad_json = run(models, scenario)
    assert wrong_method.status_code == 405 and wrong_method.headers["allow"] == "POST"
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "unknown_url"
    assert bad_json.status_code == 400 and "not valid JSON" in bad_json.json()["error"]["message"]


def test_engine_cancellation_is_an_error_event(models: dict[str, Any]) -> None:
    models["gen"].engine.finish = "cancelled"

    async def scenario(client: httpx.AsyncClient) -> Any:
        return (await client.post("/completions", json={"model": "gen", "prompt": "x"}),
                await client.post("/completions", json={"model": "gen", "prompt": "x", "stream": True}))

    plain, streamed = run(models, scenario)
    assert plain.status_code == 503 and plain.json()["error"]["code"] == "service_unavailable"
    last = [part for part in streamed.text.split("\n\n") if part][-1]
    assert json.loads(last[len("data: "):])["error"]["code"] == "service_unavailable"


def test_a_refused_submit_cancels_the_sequences_already_submitted(models: dict[str, Any]) -> None:
    async def scenario(client: httpx.AsyncClient) -> Any:
        return await client.post("/completions", json={"model": "gen", "prompt": ["ab", "cd", ""]})

    # "" encodes to no tokens: the fake engine refuses it after two were submitted.
    response = run(models, scenario)
    assert response.status_code == 400
    submitted = models["gen"].engine.submitted
    assert len(submitted) == 2 and all(s.cancelled for s in submitted)


def test_requests_are_counted(models: dict[str, Any]) -> None:
    metrics: list[Metrics] = []
    original = DataPlane.__init__

    def keep(self: DataPlane, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        metrics.append(self.metrics)

    async def scenario(client: httpx.AsyncClient) -> Any:
        await client.post("/completions", json={"model": "gen", "prompt": "x"})
        await client.post("/completions", json={"model": "gen", "prompt": "x", "stream": True})
        await client.post("/completions", json={"model": "gen", "prompt": [500]})

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(DataPlane, "__init__", keep)
        run(models, scenario)
    text = metrics[0].exposition().decode()
    assert 'shoal_requests_total{model="gen",outcome="success",protocol="openai",version="1"} 2.0' in text
    assert 'shoal_requests_in_flight{model="gen"} 0.0' in text


class RawClient:
    """One POST to ``path`` as raw ASGI: the body is received whole, then ``receive`` waits
    until ``gone`` is set and says the client disconnected."""

    def __init__(self, path: str, body: bytes) -> None:
        self.body = body
        self.gone = asyncio.Event()
        self._received = 0
        self.scope = {"type": "http", "method": "POST", "path": path, "raw_path": b"",
                      "query_string": b"", "headers": [(b"content-type", b"application/json")],
                      "root_path": "", "scheme": "http", "server": ("t", 80),
                      "http_version": "1.1"}

    async def receive(self) -> dict:
        self._received += 1
        if self._received == 1:
            return {"type": "http.request", "body": self.body, "more_body": False}
        await self.gone.wait()
        return {"type": "http.disconnect"}


@pytest.mark.parametrize("stream", [True, False])
def test_a_client_that_goes_away_cancels_its_sequences_at_once(models: dict[str, Any], stream: bool) -> None:
    """The disconnect is awaited beside the generation: the sequences are cancelled while the
    engine has nothing to send (the fake stalls after its first token until the end)."""
    registry = Registry()
    registry.set("gen", VersionEntry("1", ModelState.READY, "", endpoint_of(models["gen"], "gen")))
    app = Starlette(routes=openai_routes.openai_routes(DataPlane(registry, None, Metrics()), 1 << 20))  # type: ignore[arg-type]
    engine = models["gen"].engine
    body = json.dumps({"model": "gen", "prompt": "abc", "n": 2, "stream": stream}).encode()
    sent: list[dict] = []

    async def main() -> None:
        engine.gate = asyncio.Event()  # never set: every sequence stalls after its first token
        client = RawClient("/openai/v1/completions", body)

        async def send(message: dict) -> None:
            sent.append(message)

        call = asyncio.ensure_future(app(client.scope, client.receive, send))
        for _ in range(50):
            await asyncio.sleep(0)
        assert len(engine.submitted) == 2 and not any(s.cancelled for s in engine.submitted)
        assert not call.done()
        client.gone.set()
        await asyncio.wait_for(call, 1)

    asyncio.run(main())
    assert all(s.cancelled for s in engine.submitted)
    if stream:
        chunks = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
        assert chunks.startswith(b"data: {") and b"[DONE]" not in chunks


def test_a_trailing_slash_is_not_a_wrong_method(models: dict[str, Any]) -> None:
    async def scenario(client: httpx.AsyncClient) -> Any:
        return (await client.get("/models/"), await client.post("/models/gen"))

    slash, post = run(models, scenario)
    assert slash.status_code == 404 and slash.json()["error"]["code"] == "unknown_url"
    assert post.status_code == 405 and post.headers["allow"] == "GET"


# -- bounds, admission, limits, drain, rollouts ---------------------------------------------


@pytest.fixture(autouse=True)
def fake_models_are_hugging_face(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(openai_routes, "_is_huggingface", lambda model: isinstance(model, FakeHF))


async def until(condition: Any) -> None:
    for _ in range(10000):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("never happened")


def serve(registry: Registry, scenario: Any, dataplane: DataPlane | None = None) -> Any:
    dataplane = dataplane or DataPlane(registry, None, Metrics())  # type: ignore[arg-type]
    app = Starlette(routes=openai_routes.openai_routes(dataplane, 1 << 20))

    async def main() -> Any:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t/openai/v1") as client:
            return await scenario(client, dataplane)

    return asyncio.run(main())


def one_model(model: FakeHF, limits: Limits | None = None, name: str = "gen") -> tuple[Registry, Any]:
    registry = Registry()
    endpoint = endpoint_of(model, name, limits)
    registry.set(name, VersionEntry("1", ModelState.READY, "", endpoint))
    return registry, endpoint


def last_event(text: str) -> dict:
    last = [part for part in text.split("\n\n") if part][-1]
    assert last != "data: [DONE]", text
    return json.loads(last[len("data: "):])


def test_sequences_per_request_are_bounded(models: dict[str, Any]) -> None:
    async def scenario(client: httpx.AsyncClient) -> Any:
        return (await client.post("/completions", json={"model": "gen", "prompt": [[5]] * 20000, "n": 128}),
                await client.post("/completions", json={"model": "gen", "prompt": ["a"] * 129, "n": 2}),
                await client.post("/completions", json={"model": "gen", "prompt": ["a"] * 128, "n": 2}))

    huge, over, fits = run(models, scenario)
    for response in (huge, over):
        assert response.status_code == 400, response.text
        error = response.json()["error"]
        assert error["param"] == "prompt" and str(oa.MAX_SEQUENCES) in error["message"]
    assert fits.status_code == 200 and len(fits.json()["choices"]) == 256
    assert len(models["gen"].engine.submitted) == 256  # the refused ones submitted nothing


def test_a_prompt_longer_than_the_context_is_refused_before_submission(models: dict[str, Any]) -> None:
    models["gen"].context_length = 8

    async def scenario(client: httpx.AsyncClient) -> Any:
        return (await client.post("/completions", json={"model": "gen", "prompt": [5] * 100000}),
                await client.post("/completions", json={"model": "gen", "prompt": "abcdefgh"}),
                await client.post("/chat/completions", json={
                    "model": "gen", "messages": [{"role": "user", "content": "x" * 50}]}))

    for response in run(models, scenario):
        assert response.status_code == 400, response.text
        error = response.json()["error"]
        assert error["code"] == "context_length_exceeded" and "at most 8 tokens" in error["message"]
    assert models["gen"].engine.submitted == []


@pytest.mark.parametrize(("error", "status", "code"), [
    (Overloaded("the engine's queue is full"), 429, "rate_limit_exceeded"),
    (Unavailable("the generation engine is stopped"), 503, "service_unavailable"),
])
def test_an_engine_that_refuses_is_429_or_503(models: dict[str, Any], error: Exception, status: int,
                                              code: str) -> None:
    engine = models["gen"].engine
    submit = engine.submit

    def refuse_the_second(prompt: list[int], params: Any) -> Any:
        if engine.submitted:
            raise error
        return submit(prompt, params)

    engine.submit = refuse_the_second

    async def scenario(client: httpx.AsyncClient) -> Any:
        return await client.post("/completions", json={"model": "gen", "prompt": "x", "n": 2})

    response = run(models, scenario)
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code
    if status == 429:
        assert response.headers["retry-after"] == "1"
    assert len(engine.submitted) == 1 and engine.submitted[0].cancelled


@pytest.mark.parametrize("stream", [True, False])
def test_max_inflight_applies_and_is_released(stream: bool) -> None:
    model = FakeHF()
    registry, endpoint = one_model(model, Limits(max_inflight=1))
    model.engine.gate = asyncio.Event()
    body = {"model": "gen", "prompt": "abc", "stream": stream}

    async def scenario(client: httpx.AsyncClient, dataplane: DataPlane) -> Any:
        first = asyncio.ensure_future(client.post("/completions", json=body))
        await until(lambda: model.engine.submitted)
        assert endpoint._in_flight == 1
        refused = await client.post("/completions", json=body)
        model.engine.gate.set()
        return refused, await first

    refused, first = serve(registry, scenario)
    assert refused.status_code == 429 and refused.headers["retry-after"] == "1"
    assert refused.json()["error"]["code"] == "rate_limit_exceeded"
    assert "1 requests in flight" in refused.json()["error"]["message"]
    assert first.status_code == 200
    assert endpoint._in_flight == 0 and endpoint._idle.is_set()


def test_an_unload_waits_for_the_stream() -> None:
    """manager._release: state UNLOADING, then ``await endpoint.drained()`` before the
    engine stops: a running stream ends normally first."""
    model = FakeHF()
    registry, endpoint = one_model(model)
    model.engine.gate = asyncio.Event()

    async def scenario(client: httpx.AsyncClient, dataplane: DataPlane) -> Any:
        streaming = asyncio.ensure_future(client.post("/completions", json={
            "model": "gen", "prompt": "abc", "stream": True}))
        await until(lambda: model.engine.submitted)
        endpoint.state = ModelState.UNLOADING
        drained = asyncio.ensure_future(endpoint.drained())
        for _ in range(20):
            await asyncio.sleep(0)
        assert not drained.done()  # the stream is still running
        model.engine.gate.set()
        response = await streaming
        await asyncio.wait_for(drained, 1)
        return response

    response = serve(registry, scenario)
    assert response.text.endswith("data: [DONE]\n\n")


@pytest.mark.parametrize("where", ["model.yaml", "header"])
def test_the_time_limit_applies(where: str) -> None:
    model = FakeHF()
    limits = Limits(timeout=0.05) if where == "model.yaml" else Limits(timeout=60)
    registry, endpoint = one_model(model, limits)
    model.engine.gate = asyncio.Event()  # never set: every sequence stalls
    headers = {"Shoal-Timeout": "0.05"} if where == "header" else {}

    async def scenario(client: httpx.AsyncClient, dataplane: DataPlane) -> Any:
        return (await client.post("/completions", json={"model": "gen", "prompt": "a"}, headers=headers),
                await client.post("/chat/completions", headers=headers, json={
                    "model": "gen", "messages": [{"role": "user", "content": "x"}], "stream": True}))

    plain, streamed = asyncio.run(asyncio.wait_for(asyncio.to_thread(serve, registry, scenario), 5))
    assert plain.status_code == 504, plain.text
    assert plain.json()["error"]["code"] == "timeout" and "0.05 s" in plain.json()["error"]["message"]
    assert streamed.status_code == 200
    assert last_event(streamed.text)["error"]["code"] == "timeout"
    assert all(s.cancelled for s in model.engine.submitted) and len(model.engine.submitted) == 2
    assert endpoint._in_flight == 0


def test_a_bad_timeout_header_is_a_400(models: dict[str, Any]) -> None:
    async def scenario(client: httpx.AsyncClient) -> Any:
        return await client.post("/completions", json={"model": "gen", "prompt": "a"},
                                 headers={"Shoal-Timeout": "soon"})

    response = run(models, scenario)
    assert response.status_code == 400 and "Shoal-Timeout" in response.json()["error"]["message"]


def test_the_sigterm_drain_waits_for_streams_and_cuts_them_with_an_error_event() -> None:
    model = FakeHF()
    registry, endpoint = one_model(model)
    model.engine.gate = asyncio.Event()

    async def scenario(client: httpx.AsyncClient, dataplane: DataPlane) -> Any:
        streaming = asyncio.ensure_future(client.post("/completions", json={
            "model": "gen", "prompt": "abc", "stream": True}))
        plain = asyncio.ensure_future(client.post("/completions", json={"model": "gen", "prompt": "abc"}))
        await until(lambda: len(model.engine.submitted) == 2)
        dataplane.draining = True  # what server/app.py does on SIGTERM
        assert not await dataplane.drained(0.05)  # the drain waits for both
        late = await client.post("/completions", json={"model": "gen", "prompt": "abc"})
        assert dataplane.abort_in_flight() == 2  # the drain timeout passed
        return await streaming, await plain, late

    streamed, plain, late = serve(registry, scenario)
    assert streamed.status_code == 200
    assert last_event(streamed.text)["error"]["code"] == "service_unavailable"
    assert plain.status_code == 503 and "shutting down" in plain.json()["error"]["message"]
    assert late.status_code == 503
    assert all(s.cancelled for s in model.engine.submitted)
    assert endpoint._in_flight == 0


def test_the_sigterm_drain_lets_a_stream_end_with_done() -> None:
    model = FakeHF()
    registry, _ = one_model(model)
    model.engine.gate = asyncio.Event()

    async def scenario(client: httpx.AsyncClient, dataplane: DataPlane) -> Any:
        streaming = asyncio.ensure_future(client.post("/completions", json={
            "model": "gen", "prompt": "abc", "stream": True}))
        await until(lambda: model.engine.submitted)
        dataplane.draining = True
        asyncio.get_running_loop().call_later(0.02, model.engine.gate.set)
        assert await dataplane.drained(5)
        return await streaming

    assert serve(registry, scenario).text.endswith("data: [DONE]\n\n")


def test_a_rollout_splits_openai_requests() -> None:
    from prometheus_client import CollectorRegistry

    from shoal.rollout.endpoint import Plan, RolloutEndpoint
    from shoal.rollout.metrics import RolloutMetrics
    from shoal.rollout.spec import Variant

    stable, canary = FakeHF(name="gen", version="1"), FakeHF(name="gen", version="2")
    registry = Registry()
    registry.set("gen", VersionEntry("1", ModelState.READY, "", endpoint_of(stable, "gen")))
    registry.set("gen", VersionEntry("2", ModelState.READY, "", endpoint_of(canary, "gen")))
    rollout_metrics = RolloutMetrics(CollectorRegistry())
    rollout = RolloutEndpoint("gen", registry, rollout_metrics,
                              Plan(Variant("1", "gen", "1"), Variant("2", "gen", "2"), 100.0))
    registry.rollout_for = lambda name: rollout if name == "gen" else None

    async def scenario(client: httpx.AsyncClient, dataplane: DataPlane) -> Any:
        canary_answer = await client.post("/completions", json={"model": "gen", "prompt": "a"})
        rollout.plan = Plan(Variant("1", "gen", "1"), Variant("2", "gen", "2"), 0.0)
        stable_answer = await client.post("/chat/completions", json={
            "model": "gen", "messages": [{"role": "user", "content": "x"}], "stream": True})
        return canary_answer, stable_answer

    to_canary, to_stable = serve(registry, scenario)
    assert to_canary.status_code == 200 and to_canary.headers["shoal-variant"] == "canary"
    assert to_stable.headers["shoal-variant"] == "stable"
    assert len(canary.engine.submitted) == 1 and len(stable.engine.submitted) == 1
    counted = {(s.labels["variant"], s.labels["outcome"]): s.value
               for family in rollout_metrics.registry.collect() for s in family.samples
               if s.name == "shoal_rollout_requests_total"}
    assert counted == {("canary", "success"): 1.0, ("stable", "success"): 1.0}


def test_chat_defaults_to_the_rest_of_the_context_completions_to_16(models: dict[str, Any]) -> None:
    models["gen"].context_length = 64
    models["gen"].engine.max_num_tokens = 1000

    async def scenario(client: httpx.AsyncClient) -> Any:
        await client.post("/chat/completions", json={"model": "gen", "messages": [{"role": "user", "content": "hi"}]})
        models["gen"].engine.max_num_tokens = 40
        await client.post("/chat/completions", json={"model": "gen", "messages": [{"role": "user", "content": "hi"}]})
        await client.post("/completions", json={"model": "gen", "prompt": "hi"})

    run(models, scenario)
    # [1] + "hi": 3 prompt tokens.
    assert [s.params.max_new_tokens for s in models["gen"].engine.submitted] == [61, 37, 16]


def test_a_failed_send_does_not_leak_the_in_flight_count() -> None:
    model = FakeHF()
    registry, endpoint = one_model(model)
    dataplane = DataPlane(registry, None, Metrics())  # type: ignore[arg-type]
    app = Starlette(routes=openai_routes.openai_routes(dataplane, 1 << 20))
    body = json.dumps({"model": "gen", "prompt": "abc", "stream": True}).encode()

    async def main() -> None:
        client = RawClient("/openai/v1/completions", body)  # never gone: the send fails

        async def send(message: dict) -> None:
            if message["type"] == "http.response.body" and message.get("body"):
                raise OSError("connection reset")

        with pytest.raises(OSError):
            await asyncio.wait_for(app(client.scope, client.receive, send), 1)

    asyncio.run(main())
    text = dataplane.metrics.exposition().decode()
    assert 'shoal_requests_in_flight{model="gen"} 0.0' in text
    assert endpoint._in_flight == 0 and not dataplane._running
    assert all(s.cancelled or s.finish_reason for s in model.engine.submitted)


def test_logprob_bytes_are_the_tokens_raw_bytes() -> None:
    from tokenizers import decoders

    tokens = {5: "âĢ", 6: "Ļ", 7: "Ġhi"}  # GPT-2's byte-level alphabet: ’ is e2 80 99
    tokenizer = SimpleNamespace(backend_tokenizer=SimpleNamespace(decoder=decoders.ByteLevel()),
                                convert_ids_to_tokens=tokens.__getitem__)
    model = SimpleNamespace(tokenizer=tokenizer)
    text_of = {5: "\ufffd", 6: "\ufffd", 7: " hi"}.__getitem__
    bytes_of = openai_routes._token_bytes(model, text_of)
    assert bytes_of(5) == b"\xe2\x80" and bytes_of(6) == b"\x99" and bytes_of(7) == b" hi"
    body = oa.chat_logprobs([oa.TokenLogprob(5, -1.0, [(6, -2.0)])], text_of, 1, bytes_of)
    assert body["content"][0]["bytes"] == [0xE2, 0x80]
    assert body["content"][0]["top_logprobs"][0]["bytes"] == [0x99]
    # Byte-fallback tokens (sentencepiece): the byte; other tokens: their text's UTF-8.
    fallback = SimpleNamespace(tokenizer=SimpleNamespace(
        backend_tokenizer=SimpleNamespace(decoder=decoders.ByteFallback()),
        convert_ids_to_tokens={1: "<0xE2>", 2: "▁hi"}.__getitem__))
    of = openai_routes._token_bytes(fallback, {1: "\ufffd", 2: " hi"}.__getitem__)
    assert of(1) == b"\xe2" and of(2) == b" hi"


def test_a_client_gone_during_embeddings_stops_the_work() -> None:
    model = FakeHF("feature-extraction")
    registry, endpoint = one_model(model, name="emb")
    model.embed_gate = asyncio.Event()
    dataplane = DataPlane(registry, None, Metrics())  # type: ignore[arg-type]
    app = Starlette(routes=openai_routes.openai_routes(dataplane, 1 << 20))
    body = json.dumps({"model": "emb", "input": ["text"] * 100}).encode()

    async def main() -> None:
        client = RawClient("/openai/v1/embeddings", body)

        async def send(message: dict) -> None:
            pass

        call = asyncio.ensure_future(app(client.scope, client.receive, send))
        await until(lambda: model.embedded)
        client.gone.set()
        await asyncio.wait_for(call, 1)
        model.embed_gate.set()
        for _ in range(20):
            await asyncio.sleep(0)

    asyncio.run(main())
    assert len(model.embedded) == 1 and len(model.embedded[0]) == openai_routes.EMBED_CHUNK
    assert endpoint._in_flight == 0


def test_embeddings_in_chunks_equal_one_call(models: dict[str, Any]) -> None:
    texts = [f"t{'x' * i}" for i in range(70)]

    async def scenario(client: httpx.AsyncClient) -> Any:
        return await client.post("/embeddings", json={"model": "emb", "input": texts})

    body = run(models, scenario).json()
    assert [d["embedding"][0] for d in body["data"]] == [float(len(t)) for t in texts]
    assert [d["index"] for d in body["data"]] == list(range(70))
    assert body["usage"]["prompt_tokens"] == sum(len(t) for t in texts)
