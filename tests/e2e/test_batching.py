"""Adaptive batching end to end: concurrent requests over every protocol, merged and split back."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import httpx
import numpy as np
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression

from shoal.protocol.grpc_gen import grpc_service_pb2 as pb
from shoal.protocol.grpc_gen import grpc_service_pb2_grpc as pb_grpc

from .models import custom, sklearn_iris
from .process import ShoalProcess

# Doubles its input and reports, per row, how many rows the predict it ran in had.
# Any batch holding the poison value raises, so the server must rerun its neighbours alone.
DOUBLER = """
    import time
    import numpy as np
    from shoal import Model

    class Doubler(Model):
        def predict(self, request):
            x = request.as_numpy()
            time.sleep(0.02)
            if (x == -999).any():
                raise ValueError("poison in batch")
            return {"y": x * 2, "batch": np.full(len(x), len(x), dtype=np.int64)}
"""

DOUBLER_CONFIG = """
    runtime: custom
    max_batch_size: 8
    max_batch_delay_ms: 20
    inputs: [{name: x, datatype: FP64, shape: [-1, -1]}]
"""

# The same model with batching turned off in model.yaml, whatever the server flag says.
SOLO_CONFIG = """
    runtime: custom
    max_batch_size: 0
    inputs: [{name: x, datatype: FP64, shape: [-1, -1]}]
"""

NUMPY = {"FP64": "<f8", "INT64": "<i8", "FP32": "<f4", "INT32": "<i4"}


@dataclass
class Answer:
    status: int
    outputs: dict[str, np.ndarray] = field(default_factory=dict)
    text: str = ""


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ShoalProcess, LogisticRegression]]:
    root: Path = tmp_path_factory.mktemp("batching")
    iris = sklearn_iris(root / "iris" / "1")  # batching from --max-batch-size
    custom(root / "doubler", DOUBLER, DOUBLER_CONFIG)
    custom(root / "solo", DOUBLER, SOLO_CONFIG)
    process = ShoalProcess(root, "--max-batch-size", "16")
    try:
        process.wait_ready()
        yield process, iris
    finally:
        process.stop()


@pytest.fixture(scope="module")
def stub(served: tuple[ShoalProcess, LogisticRegression]) -> Iterator[pb_grpc.GRPCInferenceServiceStub]:
    with grpc.insecure_channel(served[0].grpc_target) as channel:
        yield pb_grpc.GRPCInferenceServiceStub(channel)


# -- one client per protocol ---------------------------------------------------------------

def _v2_outputs(outputs: list[dict]) -> dict[str, np.ndarray]:
    return {o["name"]: np.array(o["data"], dtype=NUMPY[o["datatype"]]).reshape(o["shape"])
            for o in outputs}


def v2_json(server: ShoalProcess, model: str, x: np.ndarray) -> Answer:
    body = {"inputs": [{"name": "x", "datatype": "FP64", "shape": list(x.shape),
                        "data": x.reshape(-1).tolist()}]}
    response = httpx.post(f"{server.url}/v2/models/{model}/infer", json=body, timeout=10)
    if response.status_code != 200:
        return Answer(response.status_code, text=response.text)
    return Answer(200, _v2_outputs(response.json()["outputs"]))


def v2_binary(server: ShoalProcess, model: str, x: np.ndarray, binary_output: bool) -> Answer:
    raw = np.ascontiguousarray(x, dtype="<f8").tobytes()
    header: dict = {"inputs": [{"name": "x", "datatype": "FP64", "shape": list(x.shape),
                                "parameters": {"binary_data_size": len(raw)}}]}
    if binary_output:
        header["parameters"] = {"binary_data_output": True}
    encoded = orjson.dumps(header)
    response = httpx.post(
        f"{server.url}/v2/models/{model}/infer", content=encoded + raw, timeout=10,
        headers={"Inference-Header-Content-Length": str(len(encoded)),
                 "Content-Type": "application/octet-stream"},
    )
    if response.status_code != 200:
        return Answer(response.status_code, text=response.text)
    length = int(response.headers.get("inference-header-content-length", len(response.content)))
    meta = orjson.loads(response.content[:length])
    outputs, offset = {}, length
    for output in meta["outputs"]:
        size = output.get("parameters", {}).get("binary_data_size")
        if size is None:
            outputs.update(_v2_outputs([output]))
            continue
        chunk = response.content[offset:offset + size]
        offset += size
        outputs[output["name"]] = np.frombuffer(chunk, dtype=NUMPY[output["datatype"]]).reshape(output["shape"])
    assert binary_output == (offset > length)
    return Answer(200, outputs)


GRPC_HTTP = {grpc.StatusCode.INVALID_ARGUMENT: 400, grpc.StatusCode.INTERNAL: 500,
             grpc.StatusCode.NOT_FOUND: 404, grpc.StatusCode.UNAVAILABLE: 503}


def grpc_raw(stub: pb_grpc.GRPCInferenceServiceStub, model: str, x: np.ndarray) -> Answer:
    request = pb.ModelInferRequest(model_name=model)
    request.inputs.add(name="x", datatype="FP64", shape=list(x.shape))
    request.raw_input_contents.append(np.ascontiguousarray(x, dtype="<f8").tobytes())
    try:
        response = stub.ModelInfer(request, timeout=10)
    except grpc.RpcError as error:
        return Answer(GRPC_HTTP.get(error.code(), 599), text=error.details() or "")
    outputs = {}
    for index, output in enumerate(response.outputs):
        dtype = NUMPY[output.datatype]
        if response.raw_output_contents:
            data = np.frombuffer(response.raw_output_contents[index], dtype=dtype)
        else:
            contents = output.contents
            data = np.array(contents.fp64_contents if output.datatype == "FP64" else contents.int64_contents,
                            dtype=dtype)
        outputs[output.name] = data.reshape(tuple(output.shape))
    return Answer(200, outputs)


def v1(server: ShoalProcess, model: str, x: np.ndarray) -> Answer:
    response = httpx.post(f"{server.url}/v1/models/{model}:predict", json={"inputs": x.tolist()},
                          timeout=10)
    if response.status_code != 200:
        return Answer(response.status_code, text=response.text)
    outputs = response.json()["outputs"]
    if not isinstance(outputs, dict):  # one output: V1 returns it bare
        outputs = {"predict": outputs}
    return Answer(200, {name: np.asarray(value) for name, value in outputs.items()})


def burst(calls: list[Callable[[], Answer]]) -> list[Answer]:
    """Run every call at once, each on its own thread, released together."""
    barrier = threading.Barrier(len(calls))

    def fire(call: Callable[[], Answer]) -> Answer:
        barrier.wait()
        return call()

    with ThreadPoolExecutor(len(calls)) as pool:
        return list(pool.map(fire, calls))


def metric_samples(server: ShoalProcess) -> dict[tuple[str, str], float]:
    """(sample name, model) -> value for the batching histograms (buckets keyed by le)."""
    found: dict[tuple[str, str], float] = {}
    for family in text_string_to_metric_families(httpx.get(f"{server.url}/metrics").text):
        if family.name not in ("shoal_batch_size", "shoal_batch_queue_delay_seconds"):
            continue
        for sample in family.samples:
            name = sample.name + (f"{{le={sample.labels['le']}}}" if "le" in sample.labels else "")
            key = (name, sample.labels["model"])
            found[key] = found.get(key, 0.0) + sample.value
    return found


def delta(before: dict, after: dict, name: str, model: str) -> float:
    return after.get((name, model), 0.0) - before.get((name, model), 0.0)


def features(rng: np.random.Generator, rows: int, width: int = 3) -> np.ndarray:
    # Quarter steps: exact in binary and JSON, and never the poison value.
    return rng.integers(-400, 400, size=(rows, width)) / 4


def iris_sample(rng: np.random.Generator, rows: int) -> np.ndarray:
    data = load_iris().data
    return data[rng.choice(len(data), size=rows, replace=False)].astype(np.float64)


# -- tests --------------------------------------------------------------------------------

def test_concurrent_requests_over_every_protocol_are_batched_and_split_correctly(
    served: tuple[ShoalProcess, LogisticRegression], stub: pb_grpc.GRPCInferenceServiceStub
) -> None:
    server, iris = served
    rng = np.random.default_rng(7)
    clients: list[Callable[[str, np.ndarray], Answer]] = [
        lambda m, x: v2_json(server, m, x),
        lambda m, x: v2_binary(server, m, x, binary_output=False),
        lambda m, x: v2_binary(server, m, x, binary_output=True),
        lambda m, x: grpc_raw(stub, m, x),
        lambda m, x: v1(server, m, x),
    ]
    jobs: list[tuple[str, str, np.ndarray, Callable[[], Answer]]] = []  # kind, model, x, call

    def add(kind: str, model: str, x: np.ndarray, client: Callable[[str, np.ndarray], Answer]) -> None:
        jobs.append((kind, model, x, lambda: client(model, x)))

    for i in range(15):  # doubler, width 3, 1 to 3 rows, every protocol
        add("double", "doubler", features(rng, int(rng.integers(1, 4))), clients[i % len(clients)])
    for i in range(2):  # a different trailing shape in the same burst
        add("double", "doubler", features(rng, 2, width=5), clients[i])
    for i in range(10):  # iris, batching from the server flag
        add("iris", "iris", iris_sample(rng, int(rng.integers(1, 5))), clients[i % len(clients)])
    for i in range(3):  # batching off in model.yaml
        add("solo", "solo", features(rng, 2), clients[i])
    add("bad", "doubler", np.arange(3.0), clients[0])  # rank 1: the model wants [-1, -1]
    add("bad", "iris", iris_sample(rng, 2)[:, :3], clients[3])  # 3 features, not 4

    before = metric_samples(server)
    answers = burst([call for *_, call in jobs])
    after = metric_samples(server)

    batch_sizes: list[int] = []
    for (kind, model, x, _), answer in zip(jobs, answers):
        where = f"{kind} {model} {x.shape}: {answer.text}"
        if kind == "bad":
            assert answer.status == 400, where
            continue
        assert answer.status == 200, where
        if kind == "iris":
            predicted = answer.outputs["predict"]
            assert predicted.shape == (len(x),), where
            np.testing.assert_array_equal(predicted, iris.predict(x))
            continue
        np.testing.assert_array_equal(answer.outputs["y"], x * 2)
        assert np.asarray(answer.outputs["y"]).shape == x.shape, where
        batch = np.asarray(answer.outputs["batch"])
        assert batch.shape == (len(x),) and len(set(batch.tolist())) == 1, where
        if kind == "solo":
            assert batch[0] == len(x), where  # never merged
        else:
            assert len(x) <= batch[0] <= 8, where
            batch_sizes.append(int(batch[0]))
    assert max(batch_sizes) > max(len(x) for kind, _, x, _ in jobs if kind == "double"), (
        f"nothing was merged: {batch_sizes}"
    )

    # Metrics: every queued request's wait, every predict's rows, for the batched models only.
    doubled = [x for kind, model, x, _ in jobs if kind == "double"]
    irises = [x for kind, model, x, _ in jobs if kind == "iris"]
    assert delta(before, after, "shoal_batch_size_sum", "doubler") == sum(len(x) for x in doubled)
    assert delta(before, after, "shoal_batch_queue_delay_seconds_count", "doubler") == len(doubled)
    runs = delta(before, after, "shoal_batch_size_count", "doubler")
    assert 0 < runs < len(doubled)
    assert delta(before, after, "shoal_batch_size_bucket{le=8.0}", "doubler") == runs  # none over 8
    assert delta(before, after, "shoal_batch_queue_delay_seconds_sum", "doubler") > 0
    assert delta(before, after, "shoal_batch_size_sum", "iris") == sum(len(x) for x in irises)
    assert delta(before, after, "shoal_batch_queue_delay_seconds_count", "iris") == len(irises)
    assert 0 < delta(before, after, "shoal_batch_size_count", "iris") <= len(irises)
    # solo has batching off: no batch histograms at all.
    assert not [key for key in after if key[1] == "solo"]


def test_a_poison_value_fails_only_its_own_request(
    served: tuple[ShoalProcess, LogisticRegression], stub: pb_grpc.GRPCInferenceServiceStub
) -> None:
    server, iris = served
    rng = np.random.default_rng(11)
    poison = features(rng, 1)
    poison[0, 1] = -999
    jobs: list[tuple[str, str, np.ndarray]] = [("poison", "doubler", poison)]
    jobs += [("neighbour", "doubler", features(rng, 1)) for _ in range(10)]  # may share its batch
    jobs += [("safe", "doubler", features(rng, 1, width=5)) for _ in range(3)]  # never can
    jobs += [("safe", "iris", iris_sample(rng, 2)) for _ in range(3)]
    calls = [
        (lambda m=model, x=x, i=i: v2_json(server, m, x) if i % 2 else grpc_raw(stub, m, x))
        for i, (_, model, x) in enumerate(jobs)
    ]
    answers = burst(calls)

    assert answers[0].status == 500 and "poison in batch" in answers[0].text, answers[0]
    for (kind, model, x), answer in zip(jobs[1:], answers[1:]):
        # A merged batch that fails is rerun one request at a time: neighbours still succeed.
        assert answer.status == 200, (kind, model, answer)
        if model == "iris":
            np.testing.assert_array_equal(answer.outputs["predict"], iris.predict(x))
        else:
            np.testing.assert_array_equal(answer.outputs["y"], x * 2)

    # The model keeps serving once the poisoned batch is gone.
    x = features(rng, 2)
    answer = v2_json(server, "doubler", x)
    assert answer.status == 200
    np.testing.assert_array_equal(answer.outputs["y"], x * 2)


def test_large_requests_run_alone(stub: pb_grpc.GRPCInferenceServiceStub) -> None:
    rng = np.random.default_rng(3)
    xs = [features(rng, 8), features(rng, 11), features(rng, 1), features(rng, 1)]
    answers = burst([lambda x=x: grpc_raw(stub, "doubler", x) for x in xs])
    for x, answer in zip(xs, answers):
        assert answer.status == 200, answer
        np.testing.assert_array_equal(answer.outputs["y"], x * 2)
    assert answers[0].outputs["batch"].tolist() == [8] * 8
    assert answers[1].outputs["batch"].tolist() == [11] * 11  # over max_batch_size: alone
    assert {int(a.outputs["batch"][0]) for a in answers[2:]} <= {1, 2}
