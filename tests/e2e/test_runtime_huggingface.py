"""Hugging Face folders end to end: one real ``shoal serve`` with a model of every task.

The tiny models are built here (tests/e2e/hf_models.py); what transformers answers in this
process (its pipelines, ``model.generate``) is what V2 REST (JSON and binary), V2 gRPC and V1
must return. Incomplete folders and wrong settings sit in the same repository: they fail to
load with a reason while the rest serve.
"""

from __future__ import annotations

import json
import shutil
import textwrap
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
import torch

from shoal.client import Client, ShoalClientError
from shoal.protocol.grpc_gen import grpc_service_pb2 as pb
from shoal.protocol.grpc_gen import grpc_service_pb2_grpc as pb_grpc

from .hf_models import tiny_bert, tiny_gpt2, tiny_t5
from .process import ShoalProcess

TEXTS = ["Alice lives in Paris.", "The quick brown fox jumps over the lazy dog, and Bob lives in Berlin."]
MASKED = ["Alice lives in [MASK].", "The quick brown [MASK] jumps over the lazy dog."]
PROMPTS = ["Hello world", "The quick brown fox jumps", "Alice", "What is the capital of France?"]
NEW_TOKENS = 10

#: Model -> the outputs V2 metadata must declare.
METADATA = {
    "chat": [{"name": "text_output", "datatype": "BYTES", "shape": [-1]}],
    "t5": [{"name": "text_output", "datatype": "BYTES", "shape": [-1]}],
    "classify": [{"name": "label", "datatype": "BYTES", "shape": [-1]},
                 {"name": "score", "datatype": "FP32", "shape": [-1]},
                 {"name": "scores", "datatype": "FP32", "shape": [-1, 2]}],
    "entities": [{"name": "entities", "datatype": "BYTES", "shape": [-1]}],
    "embed": [{"name": "embedding", "datatype": "FP32", "shape": [-1, 32]}],
    "mask": [{"name": "token_str", "datatype": "BYTES", "shape": [-1, 5]},
             {"name": "score", "datatype": "FP32", "shape": [-1, 5]},
             {"name": "sequence", "datatype": "BYTES", "shape": [-1, 5]}],
}
BROKEN = {
    "config-only": "config-only/ is not a complete Hugging Face model folder: it lacks weights",
    "no-tokenizer": "no-tokenizer/ is not a complete Hugging Face model folder: it lacks a tokenizer",
    "wrong-task": "parameters.task is 'text-generation', but config.json's architecture "
                  "'BertForSequenceClassification' is a text-classification model",
    "typo": "unknown parameters in model.yaml for runtime 'huggingface': 'max_token'",
    # The generation engine batches requests within the server process only.
    "chat-workers": "model 'chat-workers' is a text-generation model, which runs in the server process only",
    "chat-beams": "chat-beams/generation_config.json sets num_beams=2, which Shoal's generation engine does "
                  "not apply",
}


@dataclass
class Served:
    process: ShoalProcess
    root: Path
    inputs: dict[str, list[str]]
    expected: dict[str, dict[str, Any]]  # model -> output name -> what transformers gives


def write(path: Path, text: str) -> None:
    path.write_text(textwrap.dedent(text).lstrip())


def build(root: Path) -> None:
    tiny_gpt2(root / "chat")
    write(root / "chat" / "model.yaml", "max_batch_size: 4\nparameters: {max_new_tokens: 10}\n")
    tiny_t5(root / "t5")
    for name, task in (("classify", "text-classification"), ("entities", "token-classification"),
                       ("embed", "feature-extraction"), ("mask", "fill-mask")):
        tiny_bert(root / name, task)
    write(root / "classify" / "model.yaml", "max_batch_size: 8\nmax_batch_delay_ms: 2\n")
    (root / "config-only").mkdir()
    shutil.copy(root / "classify" / "config.json", root / "config-only" / "config.json")
    write(root / "config-only" / "model.yaml", "runtime: huggingface\n")
    (root / "no-tokenizer").mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(root / "classify" / name, root / "no-tokenizer" / name)
    shutil.copytree(root / "classify", root / "wrong-task")
    write(root / "wrong-task" / "model.yaml", "parameters: {task: text-generation}\n")
    shutil.copytree(root / "embed", root / "typo")
    write(root / "typo" / "model.yaml", "parameters: {max_token: 3}\n")
    shutil.copytree(root / "chat", root / "chat-workers")
    write(root / "chat-workers" / "model.yaml", "workers: 1\n")
    shutil.copytree(root / "chat", root / "chat-beams")
    (root / "chat-beams" / "model.yaml").unlink()
    settings = json.loads((root / "chat-beams" / "generation_config.json").read_text())
    (root / "chat-beams" / "generation_config.json").write_text(json.dumps({**settings, "num_beams": 2}))


def expectations(root: Path) -> tuple[dict[str, list[str]], dict[str, dict[str, Any]]]:
    """What transformers answers in this process for each model's inputs."""
    from transformers import (
        AutoModelForCausalLM,
        AutoModelForSeq2SeqLM,
        AutoTokenizer,
        pipeline,
    )

    inputs = {"chat": PROMPTS, "t5": TEXTS, "classify": TEXTS, "entities": TEXTS, "embed": TEXTS, "mask": MASKED}
    expected: dict[str, dict[str, Any]] = {}
    model, tokenizer = AutoModelForCausalLM.from_pretrained(root / "chat"), AutoTokenizer.from_pretrained(root / "chat")
    texts = []
    for prompt in PROMPTS:
        ids = tokenizer(prompt, return_tensors="pt")
        out = model.generate(**ids, max_new_tokens=NEW_TOKENS, do_sample=False, pad_token_id=tokenizer.eos_token_id)
        texts.append(tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True))
    expected["chat"] = {"text_output": texts}
    seq2seq, tokenizer = AutoModelForSeq2SeqLM.from_pretrained(root / "t5"), AutoTokenizer.from_pretrained(root / "t5")
    texts = []
    for text in TEXTS:
        out = seq2seq.generate(**tokenizer(text, return_tensors="pt"), max_new_tokens=16, do_sample=False)
        texts.append(tokenizer.decode(out[0], skip_special_tokens=True))
    expected["t5"] = {"text_output": texts}
    classify = pipeline("text-classification", model=str(root / "classify"), top_k=None)
    labels = classify.model.config.id2label
    rows = [{e["label"]: e["score"] for e in row} for row in classify(TEXTS)]
    scores = np.array([[row[labels[i]] for i in range(len(labels))] for row in rows], np.float32)
    expected["classify"] = {"label": [labels[int(i)] for i in scores.argmax(1)], "score": scores.max(1), "scores": scores}
    entities = pipeline("token-classification", model=str(root / "entities"), aggregation_strategy="simple")
    expected["entities"] = {"entities": [
        [{"entity": e["entity_group"], "score": float(e["score"]), "start": e["start"], "end": e["end"],
          "word": e["word"]} for e in row] for row in entities(TEXTS)
    ]}
    embed = pipeline("feature-extraction", model=str(root / "embed"))
    expected["embed"] = {"embedding": np.stack([np.array(embed(t)[0]).mean(0) for t in TEXTS]).astype(np.float32)}
    mask = pipeline("fill-mask", model=str(root / "mask"))
    rows = mask(MASKED)
    expected["mask"] = {
        "token_str": [[e["token_str"] for e in row] for row in rows],
        "score": np.array([[e["score"] for e in row] for row in rows], np.float32),
        "sequence": [[e["sequence"] for e in row] for row in rows],
    }
    return inputs, expected


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("hf-repository")
    build(root)
    inputs, expected = expectations(root)
    process = ShoalProcess(root)
    try:
        process.wait_ready(timeout=120)
        yield Served(process, root, inputs, expected)
    finally:
        process.stop()


@pytest.fixture(scope="module")
def server(served: Served) -> ShoalProcess:
    return served.process


def check(model: str, got: dict[str, Any], served: Served) -> None:
    """``got``: output name -> decoded values (strings, or numbers) as nested lists/arrays."""
    expected = served.expected[model]
    assert sorted(got) == sorted(expected), model
    for name, want in expected.items():
        value = got[name]
        if model == "entities":
            rows = [json.loads(v) for v in value]
            assert [[{k: e[k] for k in ("entity", "start", "end", "word")} for e in row] for row in rows] == [
                [{k: e[k] for k in ("entity", "start", "end", "word")} for e in row] for row in want]
            np.testing.assert_allclose([e["score"] for row in rows for e in row],
                                       [e["score"] for row in want for e in row], atol=1e-5)
        elif isinstance(want, np.ndarray):
            np.testing.assert_allclose(np.asarray(value, np.float32), want, atol=1e-5, err_msg=f"{model}.{name}")
        else:
            assert np.asarray(value, dtype=object).tolist() == want, f"{model}.{name}"


def rest_json(server: ShoalProcess, model: str, texts: list[str], **extra: Any) -> httpx.Response:
    body = {"inputs": [{"name": "text_input", "datatype": "BYTES", "shape": [len(texts)], "data": texts}], **extra}
    return httpx.post(f"{server.url}/v2/models/{model}/infer", json=body, timeout=60)


def json_outputs(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    got = {}
    for output in response.json()["outputs"]:
        data = np.array(output["data"], dtype=object if output["datatype"] == "BYTES" else np.float32)
        got[output["name"]] = data.reshape(output["shape"])
    return got


MODELS = sorted(METADATA)


@pytest.mark.parametrize("model", MODELS)
def test_metadata_declares_each_task(server: ShoalProcess, model: str) -> None:
    meta = httpx.get(f"{server.url}/v2/models/{model}").json()
    assert meta["platform"] == "huggingface"
    assert meta["inputs"] == [{"name": "text_input", "datatype": "BYTES", "shape": [-1]}]
    assert meta["outputs"] == METADATA[model]
    with grpc.insecure_channel(server.grpc_target) as channel:
        answer = pb_grpc.GRPCInferenceServiceStub(channel).ModelMetadata(pb.ModelMetadataRequest(name=model), timeout=30)
    assert answer.platform == "huggingface"
    assert [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in answer.outputs] == METADATA[model]


@pytest.mark.parametrize("model", MODELS)
def test_v2_rest_json(served: Served, model: str) -> None:
    check(model, json_outputs(rest_json(served.process, model, served.inputs[model])), served)


@pytest.mark.parametrize("model", MODELS)
def test_v2_rest_binary(served: Served, model: str) -> None:
    with Client(served.process.url) as client:  # binary tensors both ways
        result = client.infer(model, np.array(served.inputs[model], dtype=object))
    check(model, result.outputs, served)


@pytest.mark.parametrize("model", MODELS)
def test_v2_grpc(served: Served, model: str) -> None:
    with Client(grpc=served.process.grpc_target) as client:  # raw_input_contents
        result = client.infer(model, np.array(served.inputs[model], dtype=object))
    check(model, result.outputs, served)


def test_v2_grpc_bytes_contents(served: Served) -> None:
    request = pb.ModelInferRequest(model_name="chat")
    tensor = request.inputs.add(name="prompt", datatype="BYTES", shape=[len(PROMPTS)])
    tensor.contents.bytes_contents.extend(p.encode() for p in PROMPTS)
    with grpc.insecure_channel(served.process.grpc_target) as channel:
        response = pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=60)
    [output] = response.outputs
    assert output.name == "text_output"
    texts = [b.decode() for b in output.contents.bytes_contents] or _raw_strings(response.raw_output_contents[0])
    assert texts == served.expected["chat"]["text_output"]


def _raw_strings(raw: bytes) -> list[str]:
    texts, offset = [], 0
    while offset < len(raw):
        size = int.from_bytes(raw[offset:offset + 4], "little")
        texts.append(raw[offset + 4:offset + 4 + size].decode())
        offset += 4 + size
    return texts


@pytest.mark.parametrize("model", MODELS)
def test_v1_instances(served: Served, model: str) -> None:
    texts = served.inputs[model]
    response = httpx.post(f"{served.process.url}/v1/models/{model}:predict", json={"instances": texts}, timeout=60)
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    names = list(served.expected[model])
    if len(names) == 1:
        got = {names[0]: predictions}
    else:
        got = {name: [row[name] for row in predictions] for name in names}
    check(model, got, served)
    named = httpx.post(f"{served.process.url}/v1/models/{model}:predict",
                       json={"instances": [{"text_input": t} for t in texts]}, timeout=60)
    assert named.json() == response.json()


def test_generation_with_a_seed_equals_generate_and_repeats(served: Served) -> None:
    server = served.process
    greedy = json_outputs(rest_json(server, "chat", PROMPTS, parameters={"seed": 7}))
    assert greedy["text_output"].tolist() == served.expected["chat"]["text_output"]
    sampled = {"temperature": 0.9, "top_p": 0.95, "seed": 11, "max_new_tokens": 12}
    first = json_outputs(rest_json(server, "chat", PROMPTS, parameters=sampled))["text_output"].tolist()
    again = json_outputs(rest_json(server, "chat", PROMPTS, parameters=sampled))["text_output"].tolist()
    assert first == again
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(served.root / "chat")
    tokenizer = AutoTokenizer.from_pretrained(served.root / "chat")
    ids = tokenizer(PROMPTS[1], return_tensors="pt")
    torch.manual_seed(11)
    out = model.generate(**ids, max_new_tokens=12, do_sample=True, top_k=0, temperature=0.9, top_p=0.95,
                         pad_token_id=tokenizer.eos_token_id)
    assert first[1] == tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)


def test_concurrent_generation_requests_each_equal_generate(served: Served) -> None:
    """The engine runs the rows of concurrent requests together; each answer is still its own."""
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(12)]
    with ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(lambda p: rest_json(served.process, "chat", [p]), prompts))
    expected = dict(zip(PROMPTS, served.expected["chat"]["text_output"]))
    assert [json_outputs(a)["text_output"].tolist() for a in answers] == [[expected[p]] for p in prompts]


def test_generation_models_get_no_adaptive_batcher(server: ShoalProcess) -> None:
    chat = httpx.get(f"{server.url}/v2/models/chat/config").json()
    classify = httpx.get(f"{server.url}/v2/models/classify/config").json()
    assert chat["max_batch_size"] == 0  # model.yaml's 4 bounds the engine instead
    assert classify["max_batch_size"] == 8


@pytest.mark.parametrize(
    ("model", "parameters", "message"),
    [
        ("chat", {"temperature": -0.5}, "temperature must be 0 or more, got -0.5"),
        ("chat", {"max_new_tokens": "many"}, "max_new_tokens must be an integer"),
        ("chat", {"top_p": 0}, "top_p must be above 0 and at most 1"),
        ("chat", {"stop": 5}, "stop must be a string or a list of strings"),
        ("chat", {"max_tokens": 5}, ("model 'chat' (text-generation) does not take request parameter(s) "
                                     "max_tokens; it takes max_new_tokens, temperature, top_p, stop, seed, ignore_eos")),
        ("t5", {"beams": 2}, "model 't5' (text2text-generation) does not take request parameter(s) beams"),
        ("classify", {"temperature": 1}, "model 'classify' (text-classification) takes no request parameters"),
    ],
)
def test_wrong_request_parameters_are_400(server: ShoalProcess, model: str, parameters: dict, message: str) -> None:
    response = rest_json(server, model, TEXTS[:1], parameters=parameters)
    assert response.status_code == 400, response.text
    assert message in response.json()["error"]
    with Client(grpc=server.grpc_target) as client, pytest.raises(ShoalClientError) as info:
        client.infer(model, np.array(TEXTS[:1], dtype=object), parameters=parameters)
    assert info.value.status == 400 and message in str(info.value)


def test_stop_and_max_new_tokens(served: Served) -> None:
    full = served.expected["chat"]["text_output"][0]
    stop = full[4:6]
    got = json_outputs(rest_json(served.process, "chat", PROMPTS[:1], parameters={"stop": stop}))
    assert got["text_output"].tolist() == [full[: full.index(stop)]]
    short = json_outputs(rest_json(served.process, "chat", PROMPTS[:1], parameters={"max_new_tokens": 3}))
    assert full.startswith(short["text_output"][0])


def test_wrong_inputs_are_400(server: ShoalProcess) -> None:
    response = httpx.post(f"{server.url}/v2/models/classify/infer", timeout=30, json={
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1.0]}]})
    assert response.status_code == 400 and "expects BYTES" in response.json()["error"]
    response = httpx.post(f"{server.url}/v2/models/mask/infer", timeout=30, json={
        "inputs": [{"name": "x", "datatype": "BYTES", "shape": [1], "data": ["no mask"]}]})
    assert response.status_code == 400
    assert "text row 0 holds 0 mask tokens ([MASK]); model 'mask' fills exactly one" in response.json()["error"]


def test_a_request_of_too_many_texts_is_400(server: ShoalProcess) -> None:
    for model in ("embed", "chat", "t5"):
        response = rest_json(server, model, ["hello"] * 2049)
        assert response.status_code == 400, response.text[:300]
        assert f"the request holds 2049 texts; model '{model}' takes at most 2048" in response.json()["error"]


def test_many_rows_run_in_micro_batches_in_order(served: Served) -> None:
    texts = [" ".join(["Alice lives in Paris"] * (1 + i % 7)) for i in range(70)]
    alone = [json_outputs(rest_json(served.process, "classify", [t]))["scores"][0] for t in texts[:7]]
    got = json_outputs(rest_json(served.process, "classify", texts))["scores"]
    np.testing.assert_allclose(got, [alone[i % 7] for i in range(70)], atol=1e-5)


def test_incomplete_folders_and_wrong_settings_fail_with_a_reason(served: Served) -> None:
    index = {row["name"]: row for row in httpx.post(f"{served.process.url}/v2/repository/index").json()}
    for name, reason in BROKEN.items():
        assert index[name]["state"] == "UNAVAILABLE", index[name]
        assert reason in index[name]["reason"], index[name]
    for name in MODELS:
        assert index[name]["state"] == "READY", index[name]
