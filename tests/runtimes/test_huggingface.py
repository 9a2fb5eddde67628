"""The huggingface runtime in process: folders, tasks, parameters, and answers equal to
transformers' own (pipelines, ``model.generate``) on tiny models built here."""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

TESTS = Path(__file__).resolve().parents[1]
if str(TESTS) not in sys.path:  # the tiny-model builders live with the end-to-end helpers
    sys.path.insert(0, str(TESTS))

from e2e.hf_models import BERT_TASKS, CHAT_TEMPLATE, tiny_bert, tiny_gpt2, tiny_t5

from shoal.errors import InvalidInput, LoadError
from shoal.llm.tasks import TASKS, architecture_task, resolve_task
from shoal.repository.config import ModelConfig
from shoal.runtimes import create_model, detect_runtime
from shoal.types import InferenceRequest, Tensor

TEXTS = ["Alice lives in Paris.", "The quick brown fox jumps over the lazy dog, and Bob lives in Berlin."]
MASKED = ["Alice lives in [MASK].", "The quick brown [MASK] jumps over the lazy dog."]
PROMPTS = ["Hello world", "The quick brown fox jumps", "Alice"]


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hf")
    built = {task: tiny_bert(root / task, task) for task in BERT_TASKS}
    built["text-generation"] = tiny_gpt2(root / "gpt2")
    built["plain-gpt2"] = tiny_gpt2(root / "plain-gpt2", chat_template=False)
    built["text2text-generation"] = tiny_t5(root / "t5")
    return built


def create(folder: Path, **config: object):
    return create_model(folder.name, "1", folder, folder, ModelConfig(**config))


def loaded(folder: Path, **config: object):
    model = create(folder, **config)
    model.load()
    return model


def request(texts: list[str], **parameters: object) -> InferenceRequest:
    return InferenceRequest([Tensor.from_numpy("text_input", np.array(texts, dtype=object))],
                            parameters=dict(parameters))


def outputs(tensors: list[Tensor]) -> dict[str, np.ndarray]:
    return {t.name: t.data.reshape(t.shape) for t in tensors}


def strings(array: np.ndarray) -> list:
    return np.vectorize(lambda b: b.decode(), otypes=[object])(array).tolist()


# --- folders ----------------------------------------------------------------------------


def test_the_builders_are_deterministic(tmp_path: Path) -> None:
    for name in ("a", "b"):
        tiny_gpt2(tmp_path / name)
    for file in (tmp_path / "a").iterdir():
        assert file.read_bytes() == (tmp_path / "b" / file.name).read_bytes(), file.name
    assert (tmp_path / "a" / "chat_template.jinja").read_text() == CHAT_TEMPLATE or (
        CHAT_TEMPLATE in (tmp_path / "a" / "tokenizer_config.json").read_text()
    )


def test_a_folder_with_weights_is_detected(folders: dict[str, Path]) -> None:
    for folder in folders.values():
        assert detect_runtime(folder, folder) == "huggingface"


def copy_without(source: Path, target: Path, *dropped: str) -> Path:
    shutil.copytree(source, target)
    for name in dropped:
        (target / name).unlink()
    return target


@pytest.mark.parametrize(
    ("dropped", "named"),
    [
        (("model.safetensors", "tokenizer.json", "tokenizer_config.json"),
         ["weights (model.safetensors or", "a tokenizer (tokenizer.json"]),
        (("tokenizer.json",), ["lacks a tokenizer (tokenizer.json, or tokenizer_config.json with"]),
        (("config.json",), ["lacks config.json (the model's architecture)"]),
        (("model.safetensors",), ["lacks weights (model.safetensors or model.safetensors.index.json"]),
    ],
)
def test_an_incomplete_folder_names_what_is_missing(
    folders: dict[str, Path], tmp_path: Path, dropped: tuple[str, ...], named: list[str]
) -> None:
    folder = copy_without(folders["text-classification"], tmp_path / "partial", *dropped)
    with pytest.raises(LoadError) as info:
        loaded(folder, runtime="huggingface")
    message = str(info.value)
    assert message.startswith("partial/ is not a complete Hugging Face model folder: it lacks ")
    for words in named:
        assert words in message, message
    assert "never downloads" in message


def test_a_config_without_weights_is_named_without_model_yaml(folders: dict[str, Path], tmp_path: Path) -> None:
    folder = copy_without(folders["text-classification"], tmp_path / "unsaved", "model.safetensors")
    with pytest.raises(LoadError, match="^unsaved/ is not a complete Hugging Face model folder: it lacks weights"):
        create(folder)


def test_a_config_needing_remote_code_is_refused(folders: dict[str, Path], tmp_path: Path) -> None:
    folder = copy_without(folders["text-classification"], tmp_path / "remote")
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoModel": "modeling_custom.CustomModel"}
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(LoadError, match=r"config.json's auto_map \(AutoModel\) names custom modelling code; "
                                        r"Shoal does not run code from model folders \(trust_remote_code\)"):
        loaded(folder)


def test_an_unknown_model_type_is_refused(folders: dict[str, Path], tmp_path: Path) -> None:
    folder = copy_without(folders["text-classification"], tmp_path / "odd")
    config = json.loads((folder / "config.json").read_text())
    config["model_type"] = "no-such-architecture"
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(LoadError, match="model_type 'no-such-architecture' is not an architecture transformers"):
        loaded(folder)


def test_pickled_weights_in_a_world_writable_folder_are_refused(folders: dict[str, Path], tmp_path: Path) -> None:
    folder = copy_without(folders["text-classification"], tmp_path / "pickled", "model.safetensors")
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(folders["text-classification"])
    torch.save(model.state_dict(), folder / "pytorch_model.bin")
    served = loaded(folder)  # a private folder: read (transformers uses weights_only=True)
    expected = loaded(folders["text-classification"]).predict(request(TEXTS))
    np.testing.assert_allclose(outputs(served.predict(request(TEXTS)))["scores"], outputs(expected)["scores"], atol=1e-6)
    folder.chmod(0o777)
    try:
        with pytest.raises(LoadError, match="refusing to unpickle pytorch_model.bin: .* is world-writable"):
            loaded(folder)
    finally:
        folder.chmod(0o755)


def test_loading_never_touches_the_network(folders: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"network access: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    for task in ("text-classification", "text2text-generation", "text-generation"):
        model = loaded(folders[task])
        model.unload()


def test_the_missing_extra_is_named(folders: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(sys.modules, "shoal.runtimes.huggingface", raising=False)
    monkeypatch.setitem(sys.modules, "transformers", None)  # import transformers fails
    with pytest.raises(LoadError) as info:
        create(folders["text-classification"])
    assert str(info.value) == (
        "runtime 'huggingface' is not installed (transformers): pip install 'shoal[huggingface]'"
    )


# --- tasks ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("architecture", "encoder_decoder", "task"),
    [
        ("GPT2LMHeadModel", False, "text-generation"),
        ("LlamaForCausalLM", False, "text-generation"),
        ("T5ForConditionalGeneration", True, "text2text-generation"),
        ("BartForConditionalGeneration", True, "text2text-generation"),
        ("BertForSequenceClassification", False, "text-classification"),
        ("DistilBertForTokenClassification", False, "token-classification"),
        ("RobertaForMaskedLM", False, "fill-mask"),
        ("BertModel", False, "feature-extraction"),
        ("LlavaForConditionalGeneration", False, None),
        ("BertForQuestionAnswering", False, None),
    ],
)
def test_the_architecture_says_the_task(architecture: str, encoder_decoder: bool, task: str | None) -> None:
    assert architecture_task(architecture, {"is_encoder_decoder": encoder_decoder}) == task


def test_each_tiny_model_loads_as_its_task(folders: dict[str, Path]) -> None:
    for task in TASKS:
        model = loaded(folders[task])
        assert model.task == task
        assert type(model).__name__ == ("TextGenerationModel" if task == "text-generation" else "HuggingFaceModel")
        assert [s.to_dict() for s in model.inputs] == [{"name": "text_input", "datatype": "BYTES", "shape": [-1]}]
        model.unload()


def test_a_task_that_contradicts_the_architecture_fails_the_load(folders: dict[str, Path]) -> None:
    with pytest.raises(LoadError) as info:
        loaded(folders["text-classification"], parameters={"task": "text-generation"})
    assert str(info.value) == (
        "parameters.task is 'text-generation', but config.json's architecture "
        "'BertForSequenceClassification' is a text-classification model; drop parameters.task or "
        "set it to 'text-classification'"
    )
    with pytest.raises(LoadError, match="parameters.task 'chat' is not a task; one of: text-generation"):
        loaded(folders["text-classification"], parameters={"task": "chat"})


def test_any_encoder_serves_feature_extraction(folders: dict[str, Path]) -> None:
    model = loaded(folders["fill-mask"], parameters={"task": "feature-extraction"})
    assert model.task == "feature-extraction"
    assert outputs(model.predict(request(TEXTS)))["embedding"].shape == (2, 32)


def test_no_architecture_needs_the_task(folders: dict[str, Path], tmp_path: Path) -> None:
    folder = copy_without(folders["text-generation"], tmp_path / "bare")
    config = json.loads((folder / "config.json").read_text())
    del config["architectures"]
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(LoadError, match="config.json: it names no architectures; set parameters.task"):
        loaded(folder)
    with pytest.raises(LoadError, match="transformers has no fill-mask model for model_type 'gpt2'"):
        loaded(folder, parameters={"task": "fill-mask"})
    model = loaded(folder, parameters={"task": "text-generation"})
    assert model.engine is not None
    model.unload()


def test_resolve_task_without_anything() -> None:
    with pytest.raises(LoadError, match="its architecture 'Thing' does not say which task"):
        resolve_task({"architectures": ["Thing"]}, None)
    assert resolve_task({"architectures": ["Thing"]}, "fill-mask") == "fill-mask"


# --- parameters -------------------------------------------------------------------------


def test_an_unknown_parameter_fails_the_load(folders: dict[str, Path]) -> None:
    with pytest.raises(LoadError) as info:
        create(folders["text-generation"], parameters={"max_tokens": 8})
    assert str(info.value) == (
        "unknown parameters in model.yaml for runtime 'huggingface': 'max_tokens' (did you mean "
        "'max_num_tokens'?); it accepts: device, dtype, ignore_generation_config, max_new_tokens, "
        "max_num_tokens, normalize, pooling, task, top_k"
    )


@pytest.mark.parametrize(
    ("task", "parameters", "message"),
    [
        ("text-classification", {"dtype": "float64"}, "parameters.dtype 'float64': one of float32, float16, bfloat16, auto"),
        ("text-classification", {"device": "tpu"}, "parameters.device 'tpu'"),
        ("text-classification", {"top_k": 3}, "parameters.top_k applies to fill-mask models; this one serves text-classification"),
        ("fill-mask", {"top_k": 0}, "parameters.top_k must be a whole number of at least 1, not 0"),
        ("feature-extraction", {"pooling": "max"}, "parameters.pooling 'max': one of mean, cls"),
        ("feature-extraction", {"normalize": "yes"}, "parameters.normalize must be true or false"),
        ("text2text-generation", {"max_num_tokens": 100}, "parameters.max_num_tokens applies to text-generation models"),
    ],
)
def test_wrong_parameter_values_fail_the_load(
    folders: dict[str, Path], task: str, parameters: dict, message: str
) -> None:
    with pytest.raises(LoadError, match=message.replace("(", r"\(").replace(")", r"\)")):
        loaded(folders[task], parameters=parameters)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a CPU-only torch")
def test_cuda_without_cuda_is_a_load_error(folders: dict[str, Path]) -> None:
    with pytest.raises(LoadError, match="parameters.device is 'cuda' but CUDA is not available"):
        loaded(folders["feature-extraction"], parameters={"device": "cuda"})


# --- encoder tasks: equal to transformers' pipelines -------------------------------------


@pytest.fixture(scope="module")
def pipelines(folders: dict[str, Path]):
    from transformers import pipeline

    return {
        "text-classification": pipeline("text-classification", model=str(folders["text-classification"]), top_k=None),
        "token-classification": pipeline("token-classification", model=str(folders["token-classification"]),
                                         aggregation_strategy="simple"),
        "feature-extraction": pipeline("feature-extraction", model=str(folders["feature-extraction"])),
        "fill-mask": pipeline("fill-mask", model=str(folders["fill-mask"])),
    }


def test_text_classification_equals_the_pipeline(folders: dict[str, Path], pipelines) -> None:
    model = loaded(folders["text-classification"])
    got = outputs(model.predict(request(TEXTS)))
    labels = model.config.id2label
    for row, expected in enumerate(pipelines["text-classification"](TEXTS)):
        by_label = {e["label"]: e["score"] for e in expected}
        np.testing.assert_allclose(got["scores"][row], [by_label[labels[i]] for i in range(len(labels))], atol=1e-6)
        best = max(expected, key=lambda e: e["score"])
        assert got["label"][row] == best["label"].encode()
        assert got["score"][row] == pytest.approx(best["score"], abs=1e-6)
    assert got["score"].dtype == np.float32 and got["scores"].shape == (2, 2)


def test_token_classification_equals_the_pipeline(folders: dict[str, Path], pipelines) -> None:
    model = loaded(folders["token-classification"])
    got = outputs(model.predict(request(TEXTS)))["entities"]
    for row, expected in enumerate(pipelines["token-classification"](TEXTS)):
        entities = json.loads(got[row])
        assert [(e["entity"], e["word"], e["start"], e["end"]) for e in entities] == [
            (e["entity_group"], e["word"], e["start"], e["end"]) for e in expected
        ]
        np.testing.assert_allclose([e["score"] for e in entities], [float(e["score"]) for e in expected], atol=1e-6)


def test_feature_extraction_is_the_mean_over_tokens(folders: dict[str, Path], pipelines) -> None:
    model = loaded(folders["feature-extraction"])
    got = outputs(model.predict(request(TEXTS)))["embedding"]
    expected = [np.array(pipelines["feature-extraction"](text)[0]).mean(axis=0) for text in TEXTS]
    np.testing.assert_allclose(got, np.stack(expected), atol=1e-5)
    normalized = outputs(loaded(folders["feature-extraction"], parameters={"normalize": True})
                         .predict(request(TEXTS)))["embedding"]
    np.testing.assert_allclose(np.linalg.norm(normalized, axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(normalized, got / np.linalg.norm(got, axis=1, keepdims=True), atol=1e-6)
    vectors, counts = asyncio.run(model.embed(TEXTS))
    np.testing.assert_array_equal(vectors, got)
    assert counts == [len(model.tokenizer(t)["input_ids"]) for t in TEXTS]


def test_fill_mask_equals_the_pipeline(folders: dict[str, Path], pipelines) -> None:
    model = loaded(folders["fill-mask"])
    got = outputs(model.predict(request(MASKED)))
    assert got["token_str"].shape == got["score"].shape == got["sequence"].shape == (2, 5)
    for row, expected in enumerate(pipelines["fill-mask"](MASKED)):
        assert strings(got["token_str"][row]) == [e["token_str"] for e in expected]
        assert strings(got["sequence"][row]) == [e["sequence"] for e in expected]
        np.testing.assert_allclose(got["score"][row], [e["score"] for e in expected], atol=1e-6)
    with pytest.raises(InvalidInput, match=r"text row 1 holds 0 mask tokens \(\[MASK\]\); model 'fill-mask' fills exactly one"):
        model.predict(request([MASKED[0], "no mask here"]))
    three = loaded(folders["fill-mask"], parameters={"top_k": 3})
    assert [s.shape for s in three.outputs] == [(-1, 3)] * 3


def test_encoder_requests_are_checked(folders: dict[str, Path]) -> None:
    model = loaded(folders["text-classification"])
    with pytest.raises(InvalidInput, match=r"model 'text-classification' \(text-classification\) takes no request parameters; got temperature"):
        model.predict(request(TEXTS, temperature=1.0))
    model.predict(request(TEXTS, binary_data_output=True))  # the protocol's own: ignored
    with pytest.raises(InvalidInput, match="text row 0 is .* tokens; model 'text-classification' takes at most 128"):
        model.predict(request([" ".join(["word"] * 200)]))
    bad = InferenceRequest([Tensor("text_input", "BYTES", (1,), np.array([b"\xff"], dtype=object))])
    with pytest.raises(InvalidInput, match="row 0 is not UTF-8 text"):
        model.predict(bad)
    empty = outputs(model.predict(request([])))
    assert empty["scores"].shape == (0, 2) and empty["label"].shape == (0,)


# --- generation ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def reference(folders: dict[str, Path]):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = folders["text-generation"]
    return AutoModelForCausalLM.from_pretrained(folder).eval(), AutoTokenizer.from_pretrained(folder)


def generate(reference, prompt: str, max_new_tokens: int, seed: int | None = None, **options) -> str:
    model, tokenizer = reference
    ids = tokenizer(prompt, return_tensors="pt")
    if seed is not None:
        torch.manual_seed(seed)
        options = {"do_sample": True, "top_k": 0, **options}
    else:
        options = {"do_sample": False, **options}
    with torch.inference_mode():
        out = model.generate(**ids, max_new_tokens=max_new_tokens, pad_token_id=tokenizer.eos_token_id, **options)
    return tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)


async def run(model, texts: list[str], **parameters: object) -> list[str]:
    return strings((await model.predict(request(texts, **parameters)))[0].data)


def test_greedy_and_seeded_generation_equal_generate(folders: dict[str, Path], reference) -> None:
    model = loaded(folders["text-generation"], max_batch_size=4)
    try:
        assert model.max_batch_size == 4 and model.engine is not None
        greedy = asyncio.run(run(model, PROMPTS, max_new_tokens=12))
        assert greedy == [generate(reference, p, 12) for p in PROMPTS]
        # A seed changes nothing when greedy.
        assert asyncio.run(run(model, PROMPTS, max_new_tokens=12, seed=5)) == greedy
        sampled = asyncio.run(run(model, PROMPTS, max_new_tokens=10, seed=3, temperature=0.8, top_p=0.9))
        assert sampled == [generate(reference, p, 10, seed=3, temperature=0.8, top_p=0.9) for p in PROMPTS]
        assert asyncio.run(run(model, PROMPTS, max_new_tokens=10, seed=3, temperature=0.8, top_p=0.9)) == sampled
        assert model.max_new_tokens == 16  # no parameters.max_new_tokens, none in generation_config
        assert asyncio.run(run(model, PROMPTS[:1])) == [generate(reference, PROMPTS[0], 16)]
    finally:
        model.unload()


def test_stop_strings_cut_the_text(folders: dict[str, Path], reference) -> None:
    model = loaded(folders["text-generation"])
    try:
        full = generate(reference, PROMPTS[0], 12)
        stop = full[5:7]
        [text] = asyncio.run(run(model, PROMPTS[:1], max_new_tokens=12, stop=stop))
        assert text == full[: full.index(stop)]
        [text] = asyncio.run(run(model, PROMPTS[:1], max_new_tokens=12, stop=["zzzz", stop]))
        assert text == full[: full.index(stop)]
    finally:
        model.unload()


@pytest.mark.parametrize(
    ("parameters", "message"),
    [
        ({"max_new_tokens": 0}, "max_new_tokens must be at least 1, got 0"),
        ({"temperature": -1}, "temperature must be 0 or more"),
        ({"top_p": 2}, "top_p must be above 0 and at most 1"),
        ({"stop": 3}, "stop must be a string or a list of strings"),
        ({"seed": "x"}, "seed must be an integer"),
        ({"max_tokens": 3}, "does not take request parameter(s) max_tokens; it takes max_new_tokens, temperature"),
        ({"max_new_tokens": 600}, "takes at most 512 tokens"),
    ],
)
def test_generation_parameters_are_checked(folders: dict[str, Path], parameters: dict, message: str) -> None:
    model = loaded(folders["text-generation"])
    try:
        with pytest.raises(InvalidInput) as info:
            asyncio.run(run(model, PROMPTS, **parameters))
        assert message in str(info.value)
    finally:
        model.unload()


def test_text2text_equals_generate(folders: dict[str, Path]) -> None:
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    folder = folders["text2text-generation"]
    model = loaded(folder)
    reference, tokenizer = AutoModelForSeq2SeqLM.from_pretrained(folder).eval(), AutoTokenizer.from_pretrained(folder)
    expected = []
    for text in TEXTS:
        out = reference.generate(**tokenizer(text, return_tensors="pt"), max_new_tokens=8, do_sample=False)
        expected.append(tokenizer.decode(out[0], skip_special_tokens=True))
    got = strings(outputs(model.predict(request(TEXTS, max_new_tokens=8)))["text_output"])
    assert got == expected
    seeded = strings(outputs(model.predict(request(TEXTS, max_new_tokens=8, seed=1, temperature=1.0)))["text_output"])
    torch.manual_seed(1)
    out = reference.generate(**tokenizer(TEXTS[1], return_tensors="pt"), max_new_tokens=8, do_sample=True, temperature=1.0)
    assert seeded[1] == tokenizer.decode(out[0], skip_special_tokens=True)
    with pytest.raises(InvalidInput, match="top_p must be above 0"):
        model.predict(request(TEXTS, top_p=0))


def test_chat_template_and_prompts(folders: dict[str, Path]) -> None:
    model = loaded(folders["text-generation"])
    plain = loaded(folders["plain-gpt2"])
    try:
        messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there!"}]
        rendered = model.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        assert rendered == "<|system|>Be brief.\n<|user|>Hi there!\n<|assistant|>"
        assert model.apply_chat_template(messages) == model.tokenizer(rendered)["input_ids"]
        assert model.chat_template == CHAT_TEMPLATE and plain.chat_template is None
        with pytest.raises(InvalidInput, match="model 'plain-gpt2' has no chat template"):
            plain.apply_chat_template(messages)
        ids = model.encode_prompt("Hello world")
        assert model.decode(ids) == "Hello world"
        assert model.encode_prompt("") == [model.tokenizer.eos_token_id]  # GPT-2's BOS
        assert model.eos_token_ids() == {model.tokenizer.eos_token_id}
    finally:
        model.unload()
        plain.unload()


def test_the_example_builds_a_chat_model_that_serves(tmp_path: Path) -> None:
    script = TESTS.parent / "examples" / "llm" / "build_tiny_model.py"
    done = subprocess.run([sys.executable, str(script), str(tmp_path / "models" / "chat")],
                          check=False, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "shoal serve" in done.stdout
    folder = tmp_path / "models" / "chat"
    assert detect_runtime(folder, folder) == "huggingface"
    from shoal.repository.config import read_config

    model = create_model("chat", "1", folder, folder, read_config(folder))
    model.load()
    try:
        assert model.task == "text-generation" and model.max_batch_size == 16 and model.max_new_tokens == 32
        ids = model.apply_chat_template([{"role": "user", "content": "hi"}])
        assert model.decode(ids) == "<|user|>hi\n<|assistant|>"
        [text] = asyncio.run(run(model, ["Hello"], max_new_tokens=5))
        assert isinstance(text, str)
    finally:
        model.unload()


# --- review fixes -------------------------------------------------------------------------

WORDS = ["the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog", "and", "alice", "lives", "in", "paris"]


def varied_texts(count: int, seed: int = 0) -> list[str]:
    """``count`` texts of 1 to 30 words, in no particular order of length."""
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=int(rng.integers(1, 31)))) for _ in range(count)]


def forward_sizes(module: torch.nn.Module) -> tuple[list[tuple[int, int]], object]:
    """(rows, width) of each forward pass of ``module``, and the hook's handle."""
    sizes: list[tuple[int, int]] = []

    def record(_module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        sizes.append(tuple(ids.shape))

    return sizes, module.register_forward_pre_hook(record, with_kwargs=True)


def test_encoder_rows_run_in_length_sorted_micro_batches(folders: dict[str, Path]) -> None:
    texts = varied_texts(70)
    for task in ("text-classification", "token-classification", "feature-extraction"):
        model = loaded(folders[task])
        alone = [outputs(model.predict(request([t]))) for t in texts]
        sizes, hook = forward_sizes(model.model)
        got = outputs(model.predict(request(texts)))
        hook.remove()
        assert [rows for rows, _ in sizes] == [32, 32, 6], task
        lengths = sorted(len(model.tokenizer(t)["input_ids"]) for t in texts)
        assert [width for _, width in sizes] == [lengths[31], lengths[63], lengths[69]], task
        for name, values in got.items():
            expected = np.concatenate([a[name] for a in alone])
            if values.dtype == object:
                if task == "token-classification":
                    for g, e in zip(values, expected):
                        g, e = json.loads(g), json.loads(e)
                        assert [(x["entity"], x["start"], x["end"]) for x in g] == [
                            (x["entity"], x["start"], x["end"]) for x in e]
                else:
                    assert values.tolist() == expected.tolist(), (task, name)
            else:
                np.testing.assert_allclose(values, expected, atol=1e-5, err_msg=f"{task}.{name}")
    model = loaded(folders["fill-mask"])
    masked = [t.replace("fox", "[MASK]", 1) if "fox" in t else t + " [MASK]" for t in texts[:40]]
    alone = [outputs(model.predict(request([t]))) for t in masked]
    sizes, hook = forward_sizes(model.model)
    got = outputs(model.predict(request(masked)))
    hook.remove()
    assert [rows for rows, _ in sizes] == [32, 8]
    assert got["token_str"].tolist() == np.concatenate([a["token_str"] for a in alone]).tolist()
    assert got["sequence"].tolist() == np.concatenate([a["sequence"] for a in alone]).tolist()
    np.testing.assert_allclose(got["score"], np.concatenate([a["score"] for a in alone]), atol=1e-5)


def test_text2text_rows_run_in_micro_batches(folders: dict[str, Path]) -> None:
    model = loaded(folders["text2text-generation"])
    texts = varied_texts(40, seed=1)
    alone = [strings(outputs(model.predict(request([t], max_new_tokens=4)))["text_output"])[0] for t in texts]
    calls: list[int] = []
    generate = model.model.generate
    model.model.generate = lambda **kw: calls.append(len(kw["input_ids"])) or generate(**kw)
    got = strings(outputs(model.predict(request(texts, max_new_tokens=4)))["text_output"])
    assert calls == [32, 8]
    assert got == alone


def test_a_request_holds_at_most_2048_texts(folders: dict[str, Path]) -> None:
    texts = ["hello"] * 2049
    for task in ("text-classification", "feature-extraction", "text2text-generation"):
        model = loaded(folders[task])
        with pytest.raises(InvalidInput, match=f"the request holds 2049 texts; model '{model.name}' takes at most 2048"):
            model.predict(request(texts))
    model = loaded(folders["feature-extraction"])
    with pytest.raises(InvalidInput, match="holds 2049 texts"):
        asyncio.run(model.embed(texts))
    assert outputs(model.predict(request(texts[:2048])))["embedding"].shape == (2048, 32)
    generator = loaded(folders["text-generation"])
    try:
        with pytest.raises(InvalidInput, match="holds 2049 texts"):
            asyncio.run(run(generator, texts))
    finally:
        generator.unload()


def test_embed_runs_on_the_models_threads_and_stops_when_cancelled(folders: dict[str, Path]) -> None:
    import threading

    model = loaded(folders["feature-extraction"])
    texts = varied_texts(100, seed=2)  # 4 micro-batches
    expected = outputs(model.predict(request(texts)))["embedding"]
    threads: list[str] = []
    entered, release = threading.Event(), threading.Event()

    def hold(_module, _args):
        threads.append(threading.current_thread().name)
        entered.set()
        release.wait(10)

    vectors, counts = asyncio.run(model.embed(texts))  # unhindered: equal to predict
    np.testing.assert_allclose(vectors, expected, atol=1e-6)
    assert counts == [len(model.tokenizer(t)["input_ids"]) for t in texts]
    hook = model.model.register_forward_pre_hook(hold)

    async def cancel_midway() -> None:
        task = asyncio.ensure_future(model.embed(texts))
        while not entered.is_set():
            await asyncio.sleep(0.01)
        task.cancel()
        release.set()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.sleep(0.3)  # a next micro-batch would have started by now

    try:
        asyncio.run(cancel_midway())
    finally:
        release.set()
        hook.remove()
    assert len(threads) == 1 and threads[0].startswith("shoal-hf-feature-extraction")
    model.unload()


def with_generation_config(source: Path, target: Path, **settings: object) -> Path:
    folder = copy_without(source, target)
    config = json.loads((folder / "generation_config.json").read_text())
    config.update(settings)
    (folder / "generation_config.json").write_text(json.dumps(config))
    return folder


def _sampling_fields() -> set[str]:
    import dataclasses

    from shoal.llm.params import SamplingParams

    return {f.name for f in dataclasses.fields(SamplingParams)}


def test_generation_config_top_k_and_repetition_penalty(folders: dict[str, Path], reference, tmp_path: Path) -> None:
    folder = with_generation_config(folders["text-generation"], tmp_path / "topk", top_k=5, repetition_penalty=1.3)
    missing = sorted({"top_k", "repetition_penalty"} - _sampling_fields())
    if missing:  # until the engine applies them: refused, by name
        with pytest.raises(LoadError) as info:
            loaded(folder)
        assert "which Shoal's generation engine does not apply" in str(info.value)
        for name in missing:
            assert f"{name}=" in str(info.value)
        return
    model = loaded(folder)
    try:
        assert (model.default_sampling.top_k, model.default_sampling.repetition_penalty) == (5, 1.3)
        assert asyncio.run(run(model, PROMPTS, max_new_tokens=8)) == [
            generate(reference, p, 8, repetition_penalty=1.3) for p in PROMPTS]
        sampled = asyncio.run(run(model, PROMPTS, max_new_tokens=8, seed=2, temperature=0.9))
        assert sampled == [generate(reference, p, 8, seed=2, temperature=0.9, top_k=5, repetition_penalty=1.3)
                           for p in PROMPTS]
    finally:
        model.unload()


def test_generation_config_settings_the_engine_lacks_fail_the_load(folders: dict[str, Path], tmp_path: Path) -> None:
    folder = with_generation_config(folders["text-generation"], tmp_path / "beams",
                                    num_beams=2, no_repeat_ngram_size=3, min_new_tokens=0, max_length=50)
    with pytest.raises(LoadError) as info:
        loaded(folder)
    assert str(info.value).startswith(
        "beams/generation_config.json sets no_repeat_ngram_size=3, num_beams=2, which Shoal's "
        "generation engine does not apply")
    assert "parameters.ignore_generation_config" in str(info.value)
    with pytest.raises(LoadError, match="sets num_beams=2, which"):
        loaded(folder, parameters={"ignore_generation_config": ["no_repeat_ngram_size"]})
    for ignore in (["no_repeat_ngram_size", "num_beams"], True):
        model = loaded(folder, parameters={"ignore_generation_config": ignore})
        assert model.ignored_generation_config == {"no_repeat_ngram_size": 3, "num_beams": 2}
        model.unload()
    with pytest.raises(LoadError, match="ignore_generation_config names 'no_repeat', not generation_config settings"):
        loaded(folder, parameters={"ignore_generation_config": ["no_repeat"]})
    with pytest.raises(LoadError, match="must be true, false or a list"):
        loaded(folder, parameters={"ignore_generation_config": "num_beams"})
    # model.generate applies a text2text model's generation_config itself, less what is ignored.
    t5 = with_generation_config(folders["text2text-generation"], tmp_path / "t5-beams", num_beams=2)
    assert loaded(t5)._generation_config is None
    assert loaded(t5, parameters={"ignore_generation_config": True})._generation_config.num_beams is None


def test_text2text_max_new_tokens_is_bounded(folders: dict[str, Path], tmp_path: Path) -> None:
    model = loaded(folders["text2text-generation"])
    assert model.max_output_tokens == 1024  # T5: no fixed positions
    with pytest.raises(InvalidInput, match="max_new_tokens is 5000; model 't5' generates at most 1024"):
        model.predict(request(TEXTS, max_new_tokens=5000))
    with pytest.raises(LoadError, match="parameters.max_new_tokens is 5000, but model .* generates at most 1024"):
        loaded(folders["text2text-generation"], parameters={"max_new_tokens": 5000})
    big = loaded(with_generation_config(folders["text2text-generation"], tmp_path / "t5-long", max_new_tokens=100000))
    assert big.max_new_tokens == 1024


def test_a_default_max_new_tokens_is_cut_to_what_fits(folders: dict[str, Path], reference, tmp_path: Path) -> None:
    folder = with_generation_config(folders["text-generation"], tmp_path / "long", max_new_tokens=1000)
    model = loaded(folder, parameters={"max_num_tokens": 40})
    try:
        assert model.max_new_tokens == 39
        prompt_tokens = len(model.encode_prompt(PROMPTS[1]))
        [text] = asyncio.run(run(model, PROMPTS[1:2], ignore_eos=True))
        assert text == generate(reference, PROMPTS[1], 40 - prompt_tokens)
        with pytest.raises(InvalidInput, match="max_num_tokens"):  # asked for: not cut
            asyncio.run(run(model, PROMPTS[1:2], max_new_tokens=39))
    finally:
        model.unload()


def test_long_prompts_are_refused_or_tokenized_off_the_loop(folders: dict[str, Path]) -> None:
    import threading

    model = loaded(folders["text-generation"])
    try:
        most = 512 * model.max_chars_per_token
        with pytest.raises(InvalidInput, match=f"text row 0 is {most + 1} characters, more than 512 tokens can hold"):
            asyncio.run(run(model, ["a" * (most + 1)]))
        with pytest.raises(InvalidInput, match="prompt 0 is .* characters"):
            model.encode_prompt("a" * (most + 1))
        threads: list[str] = []
        encode = model._encode_prompts
        model._encode_prompts = lambda texts: threads.append(threading.current_thread().name) or encode(texts)
        asyncio.run(run(model, PROMPTS[:1], max_new_tokens=2))
        with pytest.raises(InvalidInput, match="tokens"):  # too long, once tokenized
            asyncio.run(run(model, ["Hello world " * 500]))
        assert threads[0] == threading.current_thread().name  # short: inline
        assert threads[1].startswith("shoal-hf-gpt2")
    finally:
        model.unload()


def test_a_cancelled_generation_is_unavailable_not_a_short_text(folders: dict[str, Path]) -> None:
    from shoal.errors import Unavailable

    model = loaded(folders["text-generation"])

    async def unload_midway() -> None:
        task = asyncio.ensure_future(run(model, PROMPTS[:1], max_new_tokens=400, ignore_eos=True))
        while model.engine.running == 0:
            await asyncio.sleep(0.005)
        await asyncio.to_thread(model.unload)
        with pytest.raises(Unavailable, match="the generation was cancelled"):
            await task

    asyncio.run(unload_midway())
    with pytest.raises(Unavailable, match="model 'gpt2' is unloaded"):
        asyncio.run(run(model, PROMPTS[:1]))


def test_every_sampled_text2text_generate_takes_the_rng_lock(folders: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    import shoal.runtimes.huggingface as hf

    taken: list[bool] = []

    class Recording:
        def __enter__(self):
            taken.append(True)

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr(hf, "_SEEDED", Recording())
    model = loaded(folders["text2text-generation"])
    model.predict(request(TEXTS, max_new_tokens=3))
    assert taken == []  # greedy draws nothing
    model.predict(request(TEXTS, max_new_tokens=3, temperature=1.0))
    assert taken == [True]
    model.predict(request(TEXTS, max_new_tokens=3, temperature=1.0, seed=2))
    assert taken == [True] * 3  # row by row


def test_every_shard_of_pickled_weights_is_checked(folders: dict[str, Path], tmp_path: Path) -> None:
    from transformers import AutoModelForSequenceClassification

    folder = copy_without(folders["text-classification"], tmp_path / "shards", "model.safetensors")
    state = AutoModelForSequenceClassification.from_pretrained(folders["text-classification"]).state_dict()
    names = sorted(state)
    files = {"pytorch_model-00001-of-00002.bin": names[: len(names) // 2],
             "pytorch_model-00002-of-00002.bin": names[len(names) // 2:]}
    for file, keys in files.items():
        torch.save({k: state[k] for k in keys}, folder / file)
    index = {"metadata": {}, "weight_map": {k: file for file, keys in files.items() for k in keys}}
    (folder / "pytorch_model.bin.index.json").write_text(json.dumps(index))
    expected = outputs(loaded(folders["text-classification"]).predict(request(TEXTS)))["scores"]
    np.testing.assert_allclose(outputs(loaded(folder).predict(request(TEXTS)))["scores"], expected, atol=1e-6)
    shard = folder / "pytorch_model-00002-of-00002.bin"
    shard.chmod(0o666)
    try:
        with pytest.raises(LoadError, match="refusing to unpickle pytorch_model-00002-of-00002.bin: .* is world-writable"):
            loaded(folder)
    finally:
        shard.chmod(0o644)
    index["weight_map"][names[0]] = "../elsewhere.bin"
    (folder / "pytorch_model.bin.index.json").write_text(json.dumps(index))
    with pytest.raises(LoadError, match="names shard '../elsewhere.bin', which is not in the folder"):
        loaded(folder)


def test_text_generation_refuses_worker_processes(folders: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    import multiprocessing

    monkeypatch.setattr(multiprocessing, "parent_process", lambda: object())
    monkeypatch.setattr(multiprocessing.current_process(), "name", "shoal-worker-3")
    with pytest.raises(LoadError, match="model 'gpt2' is a text-generation model, which runs in the server "
                                        "process only .* set workers: 0"):
        loaded(folders["text-generation"])
    loaded(folders["text-classification"]).unload()  # other tasks run in workers
