"""Triton's model configuration and statistics extensions, read with tritonclient over HTTP
and gRPC after a known workload: unbatched requests, a merged batch, and failures."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from google.protobuf import json_format
from tritonclient.utils import InferenceServerException

from .models import BOOM, custom, iris_rows, sklearn_iris, write
from .process import ShoalProcess

PAIR = """
    from shoal import Model

    class Pair(Model):
        def predict(self, request):
            return {"y": request.as_numpy() * 2}
"""

# Batches of up to 8 rows that wait (up to 2 s) until full: 4 requests of 2 rows run as one.
PAIR_CONFIG = """
    runtime: custom
    max_batch_size: 8
    max_batch_delay_ms: 2000
    inputs: [{name: x, datatype: FP32, shape: [-1, 2]}]
    outputs: [{name: y, datatype: FP32, shape: [-1, 2]}]
"""

IRIS_REQUESTS = 3


def tensor_of(array: np.ndarray, name: str = "x") -> httpclient.InferInput:
    datatype = "FP32" if array.dtype == np.float32 else "FP64"
    tensor = httpclient.InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array)
    return tensor


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ShoalProcess]:
    """A server that has answered a known workload before any test reads its statistics."""
    root = tmp_path_factory.mktemp("triton-extensions")
    sklearn_iris(root / "iris" / "1")
    sklearn_iris(root / "iris" / "2")
    write(root / "iris" / "model.yaml", "version_policy: {specific: [1, 2]}\n")
    custom(root / "pair", PAIR, PAIR_CONFIG)
    custom(root / "boom", BOOM)
    (root / "broken").mkdir()
    (root / "broken" / "model.joblib").write_bytes(b"not a pickle")  # fails to load
    process = ShoalProcess(root)
    try:
        process.wait_ready()
        client = httpclient.InferenceServerClient(f"127.0.0.1:{process.http_port}", concurrency=4)
        for _ in range(IRIS_REQUESTS):
            client.infer("iris", [tensor_of(iris_rows(2), "input-0")], model_version="1")
        # 4 concurrent requests of 2 rows fill one batch of 8.
        pending = [client.async_infer("pair", [tensor_of(np.full((2, 2), i, np.float32))])
                   for i in range(4)]
        for i, call in enumerate(pending):
            assert np.array_equal(call.get_result().as_numpy("y"), np.full((2, 2), 2 * i))
        with pytest.raises(InferenceServerException):  # wrong shape: refused, counted as fail
            client.infer("pair", [tensor_of(np.ones((1, 3), np.float32))])
        with pytest.raises(InferenceServerException):  # the model raises
            client.infer("boom", [tensor_of(np.ones((1, 2), np.float32))])
        client.close()
        yield process
    finally:
        process.stop()


@pytest.fixture(params=["http", "grpc"])
def triton(request: pytest.FixtureRequest, served: ShoalProcess) -> Any:
    if request.param == "http":
        return httpclient.InferenceServerClient(f"127.0.0.1:{served.http_port}")
    return grpcclient.InferenceServerClient(served.grpc_target)


def config_of(triton: Any, model: str, version: str = "") -> dict[str, Any]:
    """The configuration as a dict whichever protocol (gRPC wraps it in ``config``)."""
    if isinstance(triton, httpclient.InferenceServerClient):
        return triton.get_model_config(model, version)
    answer = triton.get_model_config(model, version, as_json=True)
    return answer["config"]


def stats_of(triton: Any, model: str = "", version: str = "") -> list[dict[str, Any]]:
    """Model statistics with integers as integers (gRPC's JSON form writes uint64 as text)."""
    answer = triton.get_inference_statistics(model, version)
    if isinstance(triton, grpcclient.InferenceServerClient):
        answer = json_format.MessageToDict(
            answer, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
        )
        _integers(answer)
    return answer["model_stats"]


def _integers(value: Any) -> None:
    items = value.items() if isinstance(value, dict) else enumerate(value)
    for key, item in list(items):
        if isinstance(item, (dict, list)):
            _integers(item)
        elif isinstance(item, str) and item.isdigit() and key != "version":
            value[key] = int(item)


def test_extensions_are_advertised(triton: Any) -> None:
    meta = triton.get_server_metadata()
    extensions = meta["extensions"] if isinstance(meta, dict) else list(meta.extensions)
    assert {"model_configuration", "statistics"} <= set(extensions)


def test_config_of_an_unbatched_model(triton: Any) -> None:
    config = config_of(triton, "iris")
    assert config["name"] == "iris" and config["platform"] == "sklearn"
    assert config.get("max_batch_size", 0) == 0 and "dynamic_batching" not in config
    (tensor,) = config["input"]
    assert tensor["name"] == "input-0" and tensor["data_type"] == "TYPE_FP64"
    assert [int(d) for d in tensor["dims"]] == [-1, 4]  # the whole shape: no batch axis
    assert "predict" in [o["name"] for o in config["output"]]
    versions = config["version_policy"]["specific"]["versions"]
    assert [int(v) for v in versions] == [1, 2]
    assert config_of(triton, "iris", "1")["name"] == "iris"


def test_config_of_a_batched_model(triton: Any) -> None:
    config = config_of(triton, "pair")
    assert config["max_batch_size"] == 8
    assert [(t["name"], t["data_type"], [int(d) for d in t["dims"]]) for t in config["input"]] == [
        ("x", "TYPE_FP32", [2])
    ]
    assert [int(d) for d in config["output"][0]["dims"]] == [2]
    assert int(config["dynamic_batching"]["max_queue_delay_microseconds"]) == 2_000_000


def test_statistics_of_unbatched_requests(triton: Any) -> None:
    (stats,) = stats_of(triton, "iris", "1")
    assert (stats["name"], stats["version"]) == ("iris", "1")
    assert stats["inference_count"] == stats["execution_count"] == IRIS_REQUESTS
    inference = stats["inference_stats"]
    assert inference["success"]["count"] == IRIS_REQUESTS
    assert inference["fail"]["count"] == 0
    assert inference["compute_infer"]["count"] == IRIS_REQUESTS
    assert 0 < inference["compute_infer"]["ns"] < inference["success"]["ns"]
    assert stats["last_inference"] > 0
    assert stats["batch_stats"][0]["batch_size"] == 1
    # Version 2 answered nothing; both versions are listed without a version.
    by_version = {s["version"]: s for s in stats_of(triton, "iris")}
    assert sorted(by_version) == ["1", "2"]
    assert by_version["2"]["inference_count"] == 0


def test_statistics_of_a_merged_batch_and_a_refused_request(triton: Any) -> None:
    (stats,) = stats_of(triton, "pair")
    # 4 requests of 2 rows each ran as one execution of 8 inferences.
    assert (stats["inference_count"], stats["execution_count"]) == (8, 1)
    inference = stats["inference_stats"]
    assert inference["success"]["count"] == 4
    assert inference["fail"]["count"] == 1 and inference["fail"]["ns"] > 0
    assert inference["queue"]["count"] == 4 and inference["queue"]["ns"] > 0
    (batch,) = stats["batch_stats"]
    assert batch["batch_size"] == 8 and batch["compute_infer"]["count"] == 1


def test_a_model_failure_counts_as_fail(triton: Any) -> None:
    (stats,) = stats_of(triton, "boom")
    assert stats["inference_stats"]["fail"]["count"] == 1
    assert stats["inference_stats"]["success"]["count"] == 0
    assert stats["execution_count"] == stats["inference_count"] == 0


def test_statistics_of_every_model(triton: Any) -> None:
    listed = {(s["name"], s["version"]) for s in stats_of(triton)}
    assert listed == {("iris", "1"), ("iris", "2"), ("pair", "1"), ("boom", "1")}


@pytest.mark.parametrize("call", ["config", "stats"])
def test_unknown_model_is_not_found(triton: Any, call: str) -> None:
    with pytest.raises(InferenceServerException) as info:
        if call == "config":
            triton.get_model_config("nope")
        else:
            triton.get_inference_statistics("nope")
    assert info.value.status() in ("404", "StatusCode.NOT_FOUND")
    with pytest.raises(InferenceServerException) as info:  # an unknown version of a known model
        if call == "config":
            triton.get_model_config("iris", "9")
        else:
            triton.get_inference_statistics("iris", "9")
    assert info.value.status() in ("404", "StatusCode.NOT_FOUND")


@pytest.mark.parametrize("call", ["config", "stats"])
def test_a_model_that_failed_to_load_is_unavailable(triton: Any, call: str) -> None:
    with pytest.raises(InferenceServerException) as info:
        if call == "config":
            triton.get_model_config("broken")
        else:
            triton.get_inference_statistics("broken")
    assert info.value.status() in ("503", "StatusCode.UNAVAILABLE")


def test_rest_answers_are_plain_json_numbers(served: ShoalProcess) -> None:
    config = httpx.get(f"{served.url}/v2/models/pair/versions/1/config").json()
    assert config["input"][0]["dims"] == [2] and config["max_batch_size"] == 8
    stats = httpx.get(f"{served.url}/v2/models/pair/versions/1/stats").json()["model_stats"][0]
    assert isinstance(stats["inference_stats"]["success"]["ns"], int)
    missing = httpx.get(f"{served.url}/v2/models/nope/config")
    assert missing.status_code == 404 and "nope" in missing.json()["error"]
