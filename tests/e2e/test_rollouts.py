"""Rollouts through real servers and real clients: the canary split (chi-square), stickiness,
live changes, the variant reported over every protocol, variants that are other models and
graphs, validation, a failing canary, batching and worker processes, the admin token and the
rollout metrics.

One server (``server``) carries most tests; each test sets the rollout it needs first, so the
order does not matter. Batching, ``--workers`` and ``--admin-token`` get servers of their own.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.http as httpclient
import yaml
from prometheus_client.parser import text_string_to_metric_families
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression

from shoal.protocol.grpc_gen import grpc_service_pb2 as pb
from shoal.protocol.grpc_gen import grpc_service_pb2_grpc as pb_grpc

from .models import BOOM, IDENTITY, custom, sklearn_iris, write
from .process import ShoalProcess

#: Critical value of chi-square with one degree of freedom at p = 0.001: a correct split
#: fails the test once in a thousand runs.
CHI2_CRITICAL = 10.83
STICKY = 'headers."x-user-id"'
TOKEN = "s3cret"
#: Rows where the versions (and iris-b) predict different labels: an answer's labels alone
#: say which of them served it.
ROWS = load_iris().data[[0, 50, 51, 77, 110]].astype(np.float64)

Refs = dict[tuple[str, str], LogisticRegression]


# -- helpers ------------------------------------------------------------------------------------


def chi_square(observed_canary: int, total: int, percent: float) -> float:
    expected_canary = total * percent / 100
    expected_stable = total - expected_canary
    observed_stable = total - observed_canary
    return ((observed_canary - expected_canary) ** 2 / expected_canary
            + (observed_stable - expected_stable) ** 2 / expected_stable)


def graph(root: Path, name: str, nodes: dict[str, Any]) -> None:
    write(root / name / "graph.yaml", yaml.safe_dump({"nodes": nodes}))


def v2_body(rows: np.ndarray = ROWS, outputs: tuple[str, ...] = ("predict_proba",)) -> dict[str, Any]:
    body: dict[str, Any] = {"inputs": [{"name": "input-0", "datatype": "FP64", "shape": list(rows.shape),
                                        "data": rows.reshape(-1).tolist()}]}
    if outputs:
        body["outputs"] = [{"name": name} for name in outputs]
    return body


def binary_request(rows: np.ndarray, binary_outputs: tuple[str, ...] = ()) -> tuple[bytes, dict[str, str]]:
    """A V2 binary-extension body as Triton's clients build it, by hand."""
    header: dict[str, Any] = {"inputs": [{
        "name": "input-0", "datatype": "FP64", "shape": list(rows.shape),
        "parameters": {"binary_data_size": rows.nbytes},
    }]}
    if binary_outputs:
        header["outputs"] = [{"name": n, "parameters": {"binary_data": True}} for n in binary_outputs]
    encoded = json.dumps(header).encode()
    return encoded + rows.astype("<f8").tobytes(), {
        "Inference-Header-Content-Length": str(len(encoded)),
        "Content-Type": "application/octet-stream",
    }


def put(client: httpx.Client, model: str, spec: Any, **kwargs: Any) -> httpx.Response:
    if isinstance(spec, (bytes, str)):
        return client.put(f"/v2/models/{model}/rollout", content=spec, **kwargs)
    return client.put(f"/v2/models/{model}/rollout", json=spec, **kwargs)


def set_rollout(client: httpx.Client, model: str, spec: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    reply = put(client, model, spec, **kwargs)
    assert reply.status_code == 200, reply.text
    return reply.json()


def infer(client: httpx.Client, model: str = "iris", rows: np.ndarray = ROWS, **kwargs: Any) -> httpx.Response:
    return client.post(f"/v2/models/{model}/infer", json=v2_body(rows), **kwargs)


def assert_served_by(refs: Refs, answer: dict[str, Any], rows: np.ndarray = ROWS) -> None:
    """The answer's probabilities are those of the model and version it says served it."""
    reference = refs[answer["model_name"], answer["model_version"]]
    output = next(o for o in answer["outputs"] if o["name"] == "predict_proba")
    proba = np.array(output["data"]).reshape(output["shape"])
    np.testing.assert_allclose(proba, reference.predict_proba(rows), rtol=1e-9, atol=1e-12)


def samples(client: httpx.Client, prefix: str = "shoal_") -> dict[tuple[str, frozenset], float]:
    text = client.get("/metrics").text
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.startswith(prefix):
                found[sample.name, frozenset(sample.labels.items())] = sample.value
    return found


def value(found: dict[tuple[str, frozenset], float], name: str, **labels: str) -> float:
    return found.get((name, frozenset(labels.items())), 0.0)


def grpc_request(model: str = "iris", rows: np.ndarray = ROWS, version: str = "") -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=model, model_version=version)
    tensor = request.inputs.add(name="input-0", datatype="FP64", shape=list(rows.shape))
    tensor.contents.fp64_contents.extend(rows.reshape(-1).tolist())
    request.outputs.add(name="predict_proba")
    return request


def grpc_proba(response: pb.ModelInferResponse) -> np.ndarray:
    output = response.outputs[0]
    return np.array(output.contents.fp64_contents).reshape(tuple(output.shape))


def grpc_variant(response: pb.ModelInferResponse) -> str | None:
    if "shoal-variant" not in response.parameters:
        return None
    return response.parameters["shoal-variant"].string_param


# -- the shared server ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def refs() -> Refs:
    return {}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, refs: Refs) -> Iterator[ShoalProcess]:
    root = tmp_path_factory.mktemp("rollouts")
    for version, c in (("1", 0.05), ("2", 1.0), ("3", 20.0), ("4", 5.0)):
        refs["iris", version] = sklearn_iris(root / "iris" / version, c=c)
    del refs["iris", "4"]  # on disk, never loaded: the policy names 1-3
    write(root / "iris" / "model.yaml", "version_policy: {specific: [1, 2, 3]}\n")
    refs["iris-b", "1"] = sklearn_iris(root / "iris-b" / "1", c=0.01)
    sklearn_iris(root / "iris-c" / "1", c=0.5)  # unloaded by the validation test
    custom(root / "boom", BOOM)
    custom(root / "identity", IDENTITY)
    graph(root, "ga", {"root": {"kind": "splitter", "branches": [{"node": "m1", "weight": 50},
                                                                 {"node": "m2", "weight": 50}]},
                       "m1": {"kind": "model", "model": "iris", "version": "1"},
                       "m2": {"kind": "model", "model": "iris", "version": "1"}})
    graph(root, "gb", {"root": {"kind": "model", "model": "iris", "version": "3"}})
    graph(root, "gcall", {"root": {"kind": "sequence", "steps": ["m"]},
                          "m": {"kind": "model", "model": "iris"}})  # unversioned: the rollout's
    # The three versions must tell themselves apart on ROWS, or "which version served" is moot.
    labels = [refs[key].predict(ROWS) for key in sorted(refs)]
    assert all((a != b).any() for i, a in enumerate(labels) for b in labels[i + 1:])
    process = ShoalProcess(root, "--state-dir", str(tmp_path_factory.mktemp("state")))
    try:
        process.wait_ready()
        yield process
    finally:
        process.stop()


@pytest.fixture(scope="module")
def client(server: ShoalProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=30) as http:
        yield http


@pytest.fixture(scope="module")
def stub(server: ShoalProcess) -> Iterator[pb_grpc.GRPCInferenceServiceStub]:
    with grpc.insecure_channel(server.grpc_target) as channel:
        yield pb_grpc.GRPCInferenceServiceStub(channel)


# -- 1. the split --------------------------------------------------------------------------------


def test_split_is_within_a_chi_square_bound(client: httpx.Client) -> None:
    set_rollout(client, "iris", {"stable": "2", "canary": {"variant": "3", "percent": 30}})
    body, headers = binary_request(ROWS[:1])
    total, counts = 2000, Counter()
    for _ in range(total):
        reply = client.post("/v2/models/iris/infer", content=body, headers=headers)
        assert reply.status_code == 200, reply.text
        variant = reply.headers["shoal-variant"]
        answer = reply.json()
        assert answer["parameters"]["shoal-variant"] == variant
        assert (variant, answer["model_name"], answer["model_version"]) in {
            ("stable", "iris", "2"), ("canary", "iris", "3")}
        counts[variant] += 1
    statistic = chi_square(counts["canary"], total, 30)
    assert statistic < CHI2_CRITICAL, (counts, statistic)

    # The status counts the same requests (its window started with the PUT).
    status = client.get("/v2/models/iris/rollout").json()
    assert status["variants"]["canary"]["requests"] == counts["canary"]
    assert status["variants"]["stable"]["requests"] == counts["stable"]


@pytest.mark.parametrize(("percent", "only"), [(0, "stable"), (100, "canary")])
def test_zero_and_hundred_percent(client: httpx.Client, percent: int, only: str) -> None:
    set_rollout(client, "iris", {"stable": "2", "canary": {"variant": "3", "percent": percent}})
    body, headers = binary_request(ROWS[:1])
    seen = Counter()
    for _ in range(300):
        reply = client.post("/v2/models/iris/infer", content=body, headers=headers)
        assert reply.status_code == 200, reply.text
        seen[reply.headers["shoal-variant"], reply.json()["model_version"]] += 1
    assert seen == Counter({(only, "2" if only == "stable" else "3"): 300})


# -- 2. stickiness -------------------------------------------------------------------------------


def test_sticky_keys_keep_their_variant(
    client: httpx.Client, stub: pb_grpc.GRPCInferenceServiceStub
) -> None:
    set_rollout(client, "iris", {"stable": "2", "canary": {"variant": "3", "percent": 30, "sticky": STICKY}})
    keys = [f"user-{i}" for i in range(100)]
    first: dict[str, str] = {}
    for _ in range(3):  # interleaved rounds: the same key comes back between other keys
        for key in keys:
            reply = infer(client, rows=ROWS[:1], headers={"x-user-id": key})
            assert reply.status_code == 200, reply.text
            variant = reply.headers["shoal-variant"]
            assert first.setdefault(key, variant) == variant, key
            assert reply.json()["model_version"] == ("3" if variant == "canary" else "2")
    on_canary = sum(v == "canary" for v in first.values())
    assert chi_square(on_canary, len(keys), 30) < CHI2_CRITICAL, on_canary

    # The key is read the same way from gRPC metadata: one key, one variant, any protocol.
    for key in keys[:20]:
        response = stub.ModelInfer(grpc_request(rows=ROWS[:1]), metadata=(("x-user-id", key),), timeout=10)
        assert grpc_variant(response) == first[key], key

    # Without the header the split is random per request, and every request is answered.
    seen = Counter()
    for _ in range(300):
        reply = infer(client, rows=ROWS[:1])
        assert reply.status_code == 200, reply.text
        seen[reply.headers["shoal-variant"]] += 1
    assert seen["canary"] > 0 and seen["stable"] > 0
    assert chi_square(seen["canary"], 300, 30) < CHI2_CRITICAL, seen

    # Raising the percentage only moves keys onto the canary, never off it.
    set_rollout(client, "iris", {"stable": "2", "canary": {"variant": "3", "percent": 60, "sticky": STICKY}})
    for key in keys:
        variant = infer(client, rows=ROWS[:1], headers={"x-user-id": key}).headers["shoal-variant"]
        if first[key] == "canary":
            assert variant == "canary", key


# -- 3. live changes -----------------------------------------------------------------------------


def test_a_change_applies_to_the_very_next_request(
    server: ShoalProcess, client: httpx.Client, stub: pb_grpc.GRPCInferenceServiceStub, refs: Refs
) -> None:
    pid = server.proc.pid
    for percent, variant, version in [(100, "canary", "3"), (0, "stable", "2")] * 3:
        set_rollout(client, "iris", {"stable": "2", "canary": {"variant": "3", "percent": percent}})
        reply = infer(client)
        assert reply.headers["shoal-variant"] == variant
        assert reply.json()["model_version"] == version
        assert_served_by(refs, reply.json())
        response = stub.ModelInfer(grpc_request(), timeout=10)
        assert grpc_variant(response) == variant and response.model_version == version

    # A new canary (another model) at once, then another version.
    set_rollout(client, "iris", {"stable": "2", "canary": {"variant": "iris-b", "percent": 100}})
    answer = infer(client).json()
    assert (answer["model_name"], answer["model_version"]) == ("iris-b", "1")
    assert_served_by(refs, answer)
    set_rollout(client, "iris", {"stable": "2", "canary": {"variant": "1", "percent": 100}})
    answer = infer(client).json()
    assert (answer["model_name"], answer["model_version"]) == ("iris", "1")
    assert_served_by(refs, answer)

    # Without a stable, the rollout pins where unversioned requests go now: the live
    # rollout's stable, or without a rollout the newest version.
    status = set_rollout(client, "iris", {"canary": {"variant": "1", "percent": 0}})
    assert status["spec"]["stable"] == "2"
    assert client.delete("/v2/models/iris/rollout").status_code == 200
    status = set_rollout(client, "iris", {"canary": {"variant": "1", "percent": 0}})
    assert status["spec"]["stable"] == "3"
    answer = infer(client).json()
    assert (answer["model_version"], answer["parameters"]["shoal-variant"]) == ("3", "stable")

    # DELETE: no rollout, no variant, the newest version again.
    assert client.delete("/v2/models/iris/rollout").status_code == 200
    reply = infer(client)
    assert "shoal-variant" not in reply.headers
    assert "shoal-variant" not in reply.json().get("parameters", {})
    assert reply.json()["model_version"] == "3"
    assert client.get("/v2/models/iris/rollout").json()["state"] == "none"
    assert server.proc.poll() is None and server.proc.pid == pid  # no restart


# -- 4. every protocol reports the variant -------------------------------------------------------


@dataclass
class Answer:
    variant: str | None
    model_name: str | None
    model_version: str | None
    labels: np.ndarray


@dataclass
class Clients:
    server: ShoalProcess
    http: httpx.Client
    stub: pb_grpc.GRPCInferenceServiceStub


def ask_v2_json(c: Clients, version: str | None) -> Answer:
    path = f"/v2/models/iris/versions/{version}/infer" if version else "/v2/models/iris/infer"
    reply = c.http.post(path, json=v2_body(outputs=("predict",)))
    assert reply.status_code == 200, reply.text
    body = reply.json()
    parameter = body.get("parameters", {}).get("shoal-variant")
    assert parameter == reply.headers.get("shoal-variant")
    return Answer(parameter, body["model_name"], body["model_version"], np.array(body["outputs"][0]["data"]))


def ask_v2_binary(c: Clients, version: str | None) -> Answer:
    path = f"/v2/models/iris/versions/{version}/infer" if version else "/v2/models/iris/infer"
    content, headers = binary_request(ROWS, binary_outputs=("predict",))
    reply = c.http.post(path, content=content, headers=headers)
    assert reply.status_code == 200, reply.text
    length = int(reply.headers["inference-header-content-length"])
    header = json.loads(reply.content[:length])
    assert header["outputs"][0]["parameters"]["binary_data_size"] == 8 * len(ROWS)
    labels = np.frombuffer(reply.content[length:], dtype="<i8")
    parameter = header.get("parameters", {}).get("shoal-variant")
    assert parameter == reply.headers.get("shoal-variant")
    return Answer(parameter, header["model_name"], header["model_version"], labels)


def ask_tritonclient_http(c: Clients, version: str | None) -> Answer:
    triton = httpclient.InferenceServerClient(f"127.0.0.1:{c.server.http_port}")
    try:
        tensor = httpclient.InferInput("input-0", list(ROWS.shape), "FP64")
        tensor.set_data_from_numpy(ROWS, binary_data=True)
        output = httpclient.InferRequestedOutput("predict", binary_data=True)
        result = triton.infer("iris", [tensor], outputs=[output], model_version=version or "")
    finally:
        triton.close()
    response = result.get_response()
    return Answer(response.get("parameters", {}).get("shoal-variant"), response["model_name"],
                  response["model_version"], result.as_numpy("predict"))


def ask_v2_grpc(c: Clients, version: str | None) -> Answer:
    request = grpc_request(version=version or "")
    del request.outputs[:]
    request.outputs.add(name="predict")
    response = c.stub.ModelInfer(request, timeout=10)
    labels = np.array(response.outputs[0].contents.int64_contents)
    return Answer(grpc_variant(response), response.model_name, response.model_version, labels)


def ask_v1(c: Clients, version: str | None) -> Answer:
    path = f"/v1/models/iris/versions/{version}:predict" if version else "/v1/models/iris:predict"
    reply = c.http.post(path, json={"instances": ROWS.tolist()})
    assert reply.status_code == 200, reply.text
    return Answer(reply.headers.get("shoal-variant"), None, None, np.array(reply.json()["predictions"]))


def ask_tfs_grpc(c: Clients, version: str | None) -> Answer:
    import tensorflow as tf  # about 5 s: only this protocol pays for it
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    request = predict_pb2.PredictRequest()
    request.model_spec.name = "iris"
    if version:
        request.model_spec.version.value = int(version)
    request.inputs["input-0"].CopyFrom(tf.make_tensor_proto(ROWS))
    request.output_filter.append("predict")
    with grpc.insecure_channel(c.server.grpc_target) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        response, call = stub.Predict.with_call(request, timeout=10)
    trailing = dict(call.trailing_metadata() or ())
    return Answer(trailing.get("shoal-variant"), response.model_spec.name,
                  str(response.model_spec.version.value), tf.make_ndarray(response.outputs["predict"]))


def ask_seldon(c: Clients, version: str | None) -> Answer | None:
    if version:
        return None  # the Seldon protocol has no versions
    reply = c.http.post("/api/v1.0/predictions", headers={"Seldon-Model": "iris"},
                        json={"data": {"ndarray": ROWS.tolist()}})
    assert reply.status_code == 200, reply.text
    return Answer(reply.headers.get("shoal-variant"), None, None, np.array(reply.json()["data"]["ndarray"]))


PROTOCOLS: dict[str, Callable[[Clients, str | None], Answer | None]] = {
    "v2-rest-json": ask_v2_json,
    "v2-rest-binary": ask_v2_binary,
    "tritonclient-http": ask_tritonclient_http,
    "v2-grpc": ask_v2_grpc,
    "v1-rest": ask_v1,
    "tfs-grpc": ask_tfs_grpc,
    "seldon-rest": ask_seldon,
}


@pytest.mark.parametrize("protocol", list(PROTOCOLS))
def test_every_protocol_reports_the_variant(
    server: ShoalProcess, client: httpx.Client, stub: pb_grpc.GRPCInferenceServiceStub, refs: Refs,
    protocol: str,
) -> None:
    ask = PROTOCOLS[protocol]
    clients = Clients(server, client, stub)
    for percent, variant, version in [(100, "canary", "3"), (0, "stable", "2")]:
        set_rollout(client, "iris", {"stable": "2", "canary": {"variant": "3", "percent": percent}})
        answer = ask(clients, None)
        assert answer is not None
        assert answer.variant == variant
        if answer.model_name is not None:
            assert (answer.model_name, answer.model_version) == ("iris", version)
        np.testing.assert_array_equal(answer.labels.reshape(-1), refs["iris", version].predict(ROWS))

    # A versioned request bypasses the rollout: the version asked for, no variant.
    set_rollout(client, "iris", {"stable": "2", "canary": {"variant": "3", "percent": 100}})
    pinned = ask(clients, "1")
    if pinned is not None:
        assert pinned.variant is None
        if pinned.model_version is not None:
            assert pinned.model_version == "1"
        np.testing.assert_array_equal(pinned.labels.reshape(-1), refs["iris", "1"].predict(ROWS))


# -- 5. variants that are other models and graphs ------------------------------------------------


def test_canary_that_is_another_model(
    client: httpx.Client, stub: pb_grpc.GRPCInferenceServiceStub, refs: Refs
) -> None:
    set_rollout(client, "iris", {"stable": "2", "canary": {"variant": "iris-b", "percent": 50}})
    seen = Counter()
    for _ in range(60):
        reply = infer(client)
        assert reply.status_code == 200, reply.text
        answer = reply.json()
        expected = ("iris-b", "1") if reply.headers["shoal-variant"] == "canary" else ("iris", "2")
        assert (answer["model_name"], answer["model_version"]) == expected
        assert_served_by(refs, answer)
        seen[answer["model_name"]] += 1
    assert seen["iris-b"] > 0 and seen["iris"] > 0
    set_rollout(client, "iris", {"stable": "2", "canary": {"variant": "iris-b:1", "percent": 100}})
    response = stub.ModelInfer(grpc_request(), timeout=10)
    assert (response.model_name, response.model_version) == ("iris-b", "1")
    assert grpc_variant(response) == "canary"
    np.testing.assert_allclose(grpc_proba(response), refs["iris-b", "1"].predict_proba(ROWS))


def test_rollout_of_a_graph_to_another_graph(
    client: httpx.Client, stub: pb_grpc.GRPCInferenceServiceStub, refs: Refs
) -> None:
    # A graph answers with the outputs its nodes produce (iris's default: predict).
    status = set_rollout(client, "ga", {"canary": {"variant": "gb", "percent": 100}})
    assert status["spec"]["stable"] == "1"
    reply = client.post("/v2/models/ga/infer", json=v2_body(outputs=()))
    assert reply.status_code == 200, reply.text
    answer = reply.json()
    assert reply.headers["shoal-variant"] == "canary" == answer["parameters"]["shoal-variant"]
    assert answer["model_name"] == "gb"
    np.testing.assert_array_equal(answer["outputs"][0]["data"], refs["iris", "3"].predict(ROWS))
    v1 = client.post("/v1/models/ga:predict", json={"instances": ROWS.tolist()})
    assert v1.status_code == 200, v1.text
    assert v1.headers["shoal-variant"] == "canary"
    assert v1.json()["predictions"] == refs["iris", "3"].predict(ROWS).tolist()
    request = grpc_request("ga")
    del request.outputs[:]
    response = stub.ModelInfer(request, timeout=10)
    assert response.model_name == "gb" and grpc_variant(response) == "canary"

    set_rollout(client, "ga", {"canary": {"variant": "gb", "percent": 0}})
    reply = client.post("/v2/models/ga/infer", json=v2_body(outputs=()))
    answer = reply.json()
    assert reply.headers["shoal-variant"] == "stable" and answer["model_name"] == "ga"
    np.testing.assert_array_equal(answer["outputs"][0]["data"], refs["iris", "1"].predict(ROWS))
    assert client.delete("/v2/models/ga/rollout").status_code == 200


def test_a_graph_under_a_rollout_answers_as_a_graph(client: httpx.Client) -> None:
    """What a graph's answer carries besides its outputs (the routing its routers took, the
    request id that V1 bodies cannot hold, Seldon's meta.routing) and the routes a client pins
    must not depend on whether the graph has a rollout: compare with the same graph without
    one. (ga's splitter takes m1 or m2, both iris version 1.)"""
    seldon_body = {"data": {"ndarray": ROWS.tolist()}, "meta": {"routing": {"root": 1}}}

    def check(rollout: bool) -> list[str]:
        problems = []
        pinned = client.post("/v2/models/ga/infer", json={**v2_body(outputs=()), "parameters": {"routing": "root=m2"}})
        assert pinned.status_code == 200, pinned.text
        assert pinned.json()["parameters"]["routing"] == pinned.headers["shoal-routing"] == "root=m2"
        v1 = client.post("/v1/models/ga:predict", json={"instances": ROWS.tolist()})
        assert v1.status_code == 200, v1.text
        assert v1.headers["shoal-routing"] in ("root=m1", "root=m2")
        if len(v1.headers.get("shoal-request-id", "")) != 32:
            problems.append(f"V1 answer has no Shoal-Request-Id header: {dict(v1.headers)}")
        for _ in range(8):  # the client pins branch 1 (m2): never m1
            seldon = client.post("/api/v1.0/predictions", headers={"Seldon-Model": "ga"}, json=seldon_body)
            assert seldon.status_code == 200, seldon.text
            if rollout:
                assert seldon.headers["shoal-variant"] == "stable"
            if seldon.json()["meta"].get("routing") != {"root": 1}:
                problems.append(f"Seldon meta.routing is {seldon.json()['meta'].get('routing')}, "
                                "not the pinned {'root': 1}")
            if seldon.headers.get("shoal-routing") != "root=m2":
                problems.append(f"Seldon request pinned to m2 took {seldon.headers.get('shoal-routing')}")
        for reply in (pinned, v1):
            assert (reply.headers.get("shoal-variant") == "stable") is rollout
        return sorted(set(problems))

    client.delete("/v2/models/ga/rollout")  # 404 when it has none: either way, none now
    assert check(rollout=False) == []  # the baseline
    set_rollout(client, "ga", {"canary": {"variant": "gb", "percent": 0}})
    try:
        problems = check(rollout=True)
    finally:
        client.delete("/v2/models/ga/rollout")
    assert not problems, problems


def test_a_graph_calling_a_model_with_a_rollout_keeps_its_own_answer(
    client: httpx.Client, stub: pb_grpc.GRPCInferenceServiceStub, refs: Refs
) -> None:
    for percent, version in [(100, "3"), (0, "2")]:
        set_rollout(client, "iris", {"stable": "2", "canary": {"variant": "3", "percent": percent}})
        before = samples(client, "shoal_rollout_requests")
        reply = client.post("/v2/models/gcall/infer", json=v2_body(outputs=()))
        assert reply.status_code == 200, reply.text
        answer = reply.json()
        assert answer["model_name"] == "gcall"
        assert "shoal-variant" not in answer.get("parameters", {})
        assert "shoal-variant" not in reply.headers
        # ... but the inner call did go through iris's rollout.
        expected = refs["iris", version].predict(ROWS).tolist()
        assert answer["outputs"][0]["data"] == expected
        v1 = client.post("/v1/models/gcall:predict", json={"instances": ROWS.tolist()})
        assert v1.status_code == 200, v1.text
        assert "shoal-variant" not in v1.headers and v1.json()["predictions"] == expected
        request = grpc_request("gcall")
        del request.outputs[:]
        response = stub.ModelInfer(request, timeout=10)
        assert grpc_variant(response) is None
        assert list(response.outputs[0].contents.int64_contents) == expected
        after = samples(client, "shoal_rollout_requests")
        role = "canary" if percent == 100 else "stable"
        labels = {"model": "iris", "variant": role, "outcome": "success"}
        assert (value(after, "shoal_rollout_requests_total", **labels)
                - value(before, "shoal_rollout_requests_total", **labels)) == 3


# -- 6. validation -------------------------------------------------------------------------------


GOOD = {"stable": "2", "canary": {"variant": "3", "percent": 25, "sticky": STICKY}}

INVALID = [
    pytest.param({"stable": "2", "canary": {"variant": "nosuch", "percent": 10}}, "canary.variant", id="unknown-model"),
    pytest.param({"stable": "2", "canary": {"variant": "9", "percent": 10}}, "canary.variant", id="unknown-version"),
    pytest.param({"stable": "2", "canary": {"variant": "4", "percent": 10}}, "canary.variant", id="version-not-loaded"),
    pytest.param({"stable": "2", "canary": {"variant": "iris-c", "percent": 10}}, "canary.variant", id="model-unloaded"),
    pytest.param({"stable": "9", "canary": {"variant": "3", "percent": 10}}, "stable", id="unknown-stable"),
    pytest.param({"stable": "2", "canary": {"variant": "nosuch:1", "percent": 10}}, "canary.variant", id="unknown-model-version"),
    pytest.param({"stable": "2", "canary": {"variant": "../iris", "percent": 10}}, "canary.variant", id="not-a-variant"),
    pytest.param({"stable": "2", "canary": {"variant": "http://127.0.0.1:9", "percent": 10}}, "canary.variant", id="remote-canary"),
    pytest.param({"stable": "2", "canary": {"variant": "3", "percent": 150}}, "canary.percent", id="percent-150"),
    pytest.param({"stable": "2", "canary": {"variant": "3", "percent": -1}}, "canary.percent", id="percent-negative"),
    pytest.param({"stable": "2", "canary": {"variant": "3"}}, "canary", id="no-percent"),
    pytest.param({"stable": "2", "canary": {"variant": "3", "percent": 10}, "colour": "red"}, "colour", id="unknown-field"),
    pytest.param({"stable": "2", "canary": {"variant": "3", "percent": 10, "weight": 5}}, "canary.weight", id="unknown-nested-field"),
    pytest.param({"stable": "2", "shadow": {"variant": "2"}}, "shadow.variant", id="shadow-is-stable"),
    pytest.param({"stable": "2", "shadow": {"variant": "iris:2"}}, "shadow.variant", id="shadow-is-stable-by-name"),
    pytest.param({"stable": "2", "canary": {"variant": "3", "percent": 10}, "shadow": {"variant": "3"}}, "shadow.variant", id="shadow-is-canary"),
    pytest.param({"stable": "2", "shadow": {"variant": "1", "percent": 101}}, "shadow.percent", id="shadow-percent"),
    pytest.param({"stable": "2", "canary": {"variant": "2", "percent": 10}}, "canary.variant", id="canary-is-stable"),
    pytest.param({"stable": "2", "canary": {"variant": "iris:2", "percent": 10}}, "canary.variant", id="canary-is-stable-by-name"),
    pytest.param({"stable": "2", "canary": {"variant": "3", "percent": 10, "sticky": 'headers."x-user-id'}}, "canary.sticky", id="sticky-does-not-parse"),
    pytest.param({"stable": "2", "canary": {"variant": "3", "percent": 10, "sticky": "parameters.("}}, "canary.sticky", id="sticky-does-not-parse-2"),
    pytest.param(b"{not json", None, id="not-json"),
    pytest.param(b"[1, 2]", None, id="json-array"),
    pytest.param(b"", None, id="empty-body"),
]


@pytest.fixture(scope="module")
def iris_c_unloaded(client: httpx.Client) -> None:
    reply = client.post("/v2/repository/models/iris-c/unload")
    assert reply.status_code == 200, reply.text


@pytest.mark.parametrize(("spec", "field"), INVALID)
def test_invalid_spec_is_400_naming_the_field_and_changes_nothing(
    client: httpx.Client, iris_c_unloaded: None, spec: Any, field: str | None
) -> None:
    before = set_rollout(client, "iris", GOOD)
    reply = put(client, "iris", spec)
    assert reply.status_code == 400, reply.text
    error = reply.json()["error"]
    assert error
    if field is not None:
        assert f"{field}:" in error, error
    after = client.get("/v2/models/iris/rollout").json()
    for key in ("spec", "state", "canary_percent", "since"):
        assert after[key] == before[key], key
    served = infer(client, rows=ROWS[:1], headers={"x-user-id": "someone"})
    assert served.status_code == 200 and served.headers["shoal-variant"] in ("stable", "canary")


def test_unknown_model_and_actions_without_a_rollout(client: httpx.Client) -> None:
    for method, path in [("GET", ""), ("PUT", ""), ("DELETE", ""), ("POST", "/promote"),
                         ("POST", "/rollback"), ("POST", "/pause"), ("POST", "/resume")]:
        reply = client.request(method, f"/v2/models/nosuch/rollout{path}",
                               json=GOOD if method == "PUT" else None)
        assert reply.status_code == 404, (method, path, reply.text)
        assert "error" in reply.json()
    # iris-b is served and has no rollout: GET says none, every action is 404.
    assert client.get("/v2/models/iris-b/rollout").json() == {"model": "iris-b", "state": "none"}
    for method, path in [("DELETE", ""), ("POST", "/promote"), ("POST", "/rollback"),
                         ("POST", "/pause"), ("POST", "/resume")]:
        reply = client.request(method, f"/v2/models/iris-b/rollout{path}")
        assert reply.status_code == 404, (method, path, reply.text)


def test_promote_and_rollback_need_a_canary(client: httpx.Client, refs: Refs) -> None:
    set_rollout(client, "iris", {"stable": "2"})
    for action in ("promote", "rollback"):
        reply = client.post(f"/v2/models/iris/rollout/{action}")
        assert reply.status_code == 400, reply.text
        assert "canary" in reply.json()["error"]
    assert client.get("/v2/models/iris/rollout").json()["spec"] == {"stable": "2"}
    reply = infer(client)
    assert reply.headers["shoal-variant"] == "stable" and reply.json()["model_version"] == "2"

    # With a canary: rollback sends everything to stable; promote makes the canary stable.
    set_rollout(client, "iris", {"stable": "2", "canary": {"variant": "3", "percent": 50}})
    status = client.post("/v2/models/iris/rollout/rollback").json()
    assert (status["state"], status["canary_percent"]) == ("rolled_back", 0.0)
    assert {infer(client, rows=ROWS[:1]).headers["shoal-variant"] for _ in range(30)} == {"stable"}
    set_rollout(client, "iris", {"stable": "2", "canary": {"variant": "3", "percent": 50}})
    status = client.post("/v2/models/iris/rollout/promote").json()
    assert status["state"] == "promoted" and status["spec"]["stable"] == "3"
    assert "canary" not in status["spec"]
    for _ in range(10):
        answer = infer(client).json()
        assert (answer["parameters"]["shoal-variant"], answer["model_version"]) == ("stable", "3")
        assert_served_by(refs, answer)
    assert client.post("/v2/models/iris/rollout/promote").status_code == 400  # nothing left to promote


# -- 7. a canary that fails ----------------------------------------------------------------------


def test_a_failing_canary_fails_only_its_own_requests(
    client: httpx.Client, stub: pb_grpc.GRPCInferenceServiceStub, refs: Refs
) -> None:
    set_rollout(client, "iris", {"stable": "2", "canary": {"variant": "boom", "percent": 50}})
    seen = Counter()
    for _ in range(120):
        reply = infer(client)
        variant = reply.headers.get("shoal-variant")
        if variant == "canary":
            assert reply.status_code == 500, reply.text
            assert "kaboom" in reply.json()["error"]
        else:
            assert variant == "stable"
            assert reply.status_code == 200, reply.text
            assert reply.json()["model_version"] == "2"
            assert_served_by(refs, reply.json())
        seen[variant] += 1
    assert seen["canary"] > 0 and seen["stable"] > 0
    status = client.get("/v2/models/iris/rollout").json()
    assert status["variants"]["canary"]["errors"] == seen["canary"]
    assert status["variants"]["stable"]["errors"] == 0
    assert status["variants"]["stable"]["requests"] == seen["stable"]

    # Over gRPC: INTERNAL with the variant in the trailing metadata; stable keeps answering.
    codes = Counter()
    for _ in range(40):
        try:
            response = stub.ModelInfer(grpc_request(), timeout=10)
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.INTERNAL
            assert dict(exc.trailing_metadata() or ()).get("shoal-variant") == "canary"
            codes["failed"] += 1
        else:
            assert grpc_variant(response) == "stable" and response.model_version == "2"
            codes["ok"] += 1
    assert codes["failed"] > 0 and codes["ok"] > 0
    assert client.get("/v2/health/ready").status_code == 200
    assert client.get("/v2/models/iris/ready").status_code == 200


# -- 10. metrics ---------------------------------------------------------------------------------


def test_metrics_count_what_was_sent(client: httpx.Client) -> None:
    set_rollout(client, "iris", {"stable": "2", "canary": {"variant": "boom", "percent": 40}})
    before = samples(client, "shoal_rollout_")
    seen = Counter()
    for _ in range(150):
        reply = infer(client, rows=ROWS[:1])
        seen[reply.headers["shoal-variant"], reply.status_code] += 1
    for _ in range(7):  # versioned: not the rollout's
        assert client.post("/v2/models/iris/versions/3/infer", json=v2_body(ROWS[:1])).status_code == 200
    after = samples(client, "shoal_rollout_")

    def delta(variant: str, outcome: str) -> float:
        labels = {"model": "iris", "variant": variant, "outcome": outcome}
        return (value(after, "shoal_rollout_requests_total", **labels)
                - value(before, "shoal_rollout_requests_total", **labels))

    assert delta("stable", "success") == seen["stable", 200]
    assert delta("canary", "500") == seen["canary", 500]
    assert delta("canary", "success") == 0 and delta("stable", "500") == 0
    assert seen["stable", 200] + seen["canary", 500] == 150
    for role in ("stable", "canary"):
        count = "shoal_rollout_request_duration_seconds_count"
        labels = {"model": "iris", "variant": role}
        assert value(after, count, **labels) - value(before, count, **labels) == sum(
            n for (variant, _), n in seen.items() if variant == role)
    assert value(after, "shoal_rollout_canary_percent", model="iris") == 40
    assert value(after, "shoal_rollout_state", model="iris", state="progressing") == 1
    assert value(after, "shoal_rollout_state", model="iris", state="rolled_back") == 0

    client.post("/v2/models/iris/rollout/rollback").raise_for_status()
    now = samples(client, "shoal_rollout_")
    assert value(now, "shoal_rollout_canary_percent", model="iris") == 0
    assert value(now, "shoal_rollout_state", model="iris", state="rolled_back") == 1
    assert value(now, "shoal_rollout_state", model="iris", state="progressing") == 0
    assert value(now, "shoal_rollout_rollbacks_total", model="iris", guard="manual") >= 1

    assert client.post("/v2/models/iris/rollout/pause").status_code == 400  # rolled back: nothing to pause
    set_rollout(client, "iris", {"stable": "2", "canary": {"variant": "3", "percent": 10}})
    client.post("/v2/models/iris/rollout/pause").raise_for_status()
    now = samples(client, "shoal_rollout_")
    assert value(now, "shoal_rollout_state", model="iris", state="paused") == 1
    assert value(now, "shoal_rollout_canary_percent", model="iris") == 10
    client.post("/v2/models/iris/rollout/resume").raise_for_status()
    client.post("/v2/models/iris/rollout/promote").raise_for_status()
    now = samples(client, "shoal_rollout_")
    assert value(now, "shoal_rollout_state", model="iris", state="promoted") == 1
    assert value(now, "shoal_rollout_state", model="iris", state="paused") == 0

    client.delete("/v2/models/iris/rollout").raise_for_status()
    now = samples(client, "shoal_rollout_")
    assert all(value(now, "shoal_rollout_state", model="iris", state=s) == 0
               for s in ("progressing", "paused", "promoted", "rolled_back"))


# -- 8. batching and worker processes ------------------------------------------------------------


@pytest.fixture(scope="module", params=[
    pytest.param(("--max-batch-size", "8", "--max-batch-delay-ms", "2"), id="batching"),
    pytest.param(("--workers", "1"), id="workers"),
])
def variant_server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
                   ) -> Iterator[tuple[ShoalProcess, Refs, tuple[str, ...]]]:
    root = tmp_path_factory.mktemp("rollout-flags")
    own: Refs = {}
    for version, c in (("2", 1.0), ("3", 20.0)):
        own["iris", version] = sklearn_iris(root / "iris" / version, c=c)
    write(root / "iris" / "model.yaml", "version_policy: all\n")
    own["iris-b", "1"] = sklearn_iris(root / "iris-b" / "1", c=0.01)
    process = ShoalProcess(root, "--state-dir", str(tmp_path_factory.mktemp("state")), *request.param)
    try:
        process.wait_ready(timeout=60)
        yield process, own, request.param
    finally:
        process.stop()


def test_split_with_batching_and_workers(variant_server: tuple[ShoalProcess, Refs, tuple[str, ...]]) -> None:
    process, own, flags = variant_server
    data = load_iris().data.astype(np.float64)
    with httpx.Client(base_url=process.url, timeout=30,
                      limits=httpx.Limits(max_connections=8, max_keepalive_connections=8)) as http:
        before = samples(http, "shoal_batch_size_sum")
        set_rollout(http, "iris", {"stable": "2", "canary": {"variant": "3", "percent": 50}})

        def one(i: int) -> tuple[str, int]:
            rows = data[[(i * 7) % 150, (i * 13 + 5) % 150][: 1 + i % 2]]
            reply = http.post("/v2/models/iris/infer", json=v2_body(rows, ("predict_proba", "predict")))
            assert reply.status_code == 200, reply.text
            answer = reply.json()
            variant = reply.headers["shoal-variant"]
            assert answer["model_version"] == ("3" if variant == "canary" else "2")
            assert_served_by(own, answer, rows)
            predict = next(o for o in answer["outputs"] if o["name"] == "predict")
            np.testing.assert_array_equal(predict["data"], own["iris", answer["model_version"]].predict(rows))
            return variant, len(rows)

        total = 240
        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(one, range(total)))
        canary = sum(variant == "canary" for variant, _ in results)
        assert 0 < canary < total
        assert chi_square(canary, total, 50) < CHI2_CRITICAL, canary

        # Another model as the canary, through the same batching / worker machinery.
        set_rollout(http, "iris", {"stable": "2", "canary": {"variant": "iris-b", "percent": 100}})
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda _: http.post("/v2/models/iris/infer", json=v2_body()).json(), range(24)))
        for answer in answers:
            assert (answer["model_name"], answer["parameters"]["shoal-variant"]) == ("iris-b", "canary")
            assert_served_by(own, answer)

        if "--max-batch-size" in flags:  # every row of iris went through the batcher
            after = samples(http, "shoal_batch_size_sum")
            rows_batched = sum(v for (_, labels), v in after.items() if ("model", "iris") in labels) - sum(
                v for (_, labels), v in before.items() if ("model", "iris") in labels)
            assert rows_batched == sum(n for _, n in results)


# -- 9. the admin token --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ShoalProcess]:
    root = tmp_path_factory.mktemp("guarded")
    sklearn_iris(root / "iris" / "1", c=0.1)
    sklearn_iris(root / "iris" / "2")
    write(root / "iris" / "model.yaml", "version_policy: all\n")
    custom(root / "spare", IDENTITY)
    process = ShoalProcess(root, "--state-dir", str(tmp_path_factory.mktemp("state")),
                           "--admin-token", TOKEN)
    try:
        process.wait_ready()
        yield process
    finally:
        process.stop()


def test_admin_token_guards_changes_not_reads(guarded: ShoalProcess) -> None:
    good = {"Authorization": f"Bearer {TOKEN}"}
    spec = {"stable": "1", "canary": {"variant": "2", "percent": 100}}
    with httpx.Client(base_url=guarded.url, timeout=30) as http:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN},
                        {"Authorization": f"Basic {TOKEN}"}):
            reply = put(http, "iris", spec, headers=headers)
            assert reply.status_code == 401, (headers, reply.text)
            assert reply.headers["www-authenticate"].lower().startswith("bearer")
        assert http.get("/v2/models/iris/rollout").json()["state"] == "none"  # GET is open
        assert "shoal-variant" not in infer(http).headers

        set_rollout(http, "iris", spec, headers=good)
        status = http.get("/v2/models/iris/rollout")
        assert status.status_code == 200 and status.json()["canary_percent"] == 100
        reply = infer(http)  # inference is open
        assert reply.status_code == 200 and reply.headers["shoal-variant"] == "canary"

        for path in ("/rollback", "/promote", "/pause", "/resume", ""):
            method = "DELETE" if not path else "POST"
            reply = http.request(method, f"/v2/models/iris/rollout{path}")
            assert reply.status_code == 401, (path, reply.text)
        assert http.get("/v2/models/iris/rollout").json()["state"] == "progressing"
        assert http.post("/v2/models/iris/rollout/rollback", headers=good).status_code == 200
        assert http.delete("/v2/models/iris/rollout", headers=good).status_code == 200

        for action in ("unload", "load"):
            reply = http.post(f"/v2/repository/models/spare/{action}")
            assert reply.status_code == 401, reply.text
            assert http.post(f"/v2/repository/models/spare/{action}",
                             headers={"Authorization": "Bearer nope"}).status_code == 401
            assert http.get("/v2/models/spare/ready").status_code == 200  # nothing happened
        assert http.post("/v2/repository/models/spare/unload", headers=good).status_code == 200
        assert http.get("/v2/models/spare/ready").status_code != 200
        assert http.post("/v2/repository/models/spare/load", headers=good).status_code == 200
        assert http.get("/v2/models/spare/ready").status_code == 200
        assert http.post("/v2/repository/index").status_code == 200  # the index is a read

    with grpc.insecure_channel(guarded.grpc_target) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        for metadata in ((), (("authorization", "Bearer wrong"),)):
            for rpc, message in ((stub.RepositoryModelLoad, pb.RepositoryModelLoadRequest),
                                 (stub.RepositoryModelUnload, pb.RepositoryModelUnloadRequest)):
                with pytest.raises(grpc.RpcError) as caught:
                    rpc(message(model_name="spare"), metadata=metadata, timeout=30)
                assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
        def spare_ready() -> bool:
            try:
                return stub.ModelReady(pb.ModelReadyRequest(name="spare"), timeout=10).ready
            except grpc.RpcError as exc:  # unloaded: not served at all
                assert exc.code() == grpc.StatusCode.NOT_FOUND
                return False

        assert spare_ready()
        token = (("authorization", f"Bearer {TOKEN}"),)
        stub.RepositoryModelUnload(pb.RepositoryModelUnloadRequest(model_name="spare"), metadata=token, timeout=30)
        assert not spare_ready()
        stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="spare"), metadata=token, timeout=30)
        assert spare_ready()
        assert stub.ModelInfer(grpc_request(), timeout=10).model_version == "2"  # inference is open


# -- stickiness and state across server processes and a restart ----------------------------------

PID = """
    import os
    import numpy as np
    from shoal import Model

    class Pid(Model):
        def predict(self, request):
            return {"pid": np.full(1, os.getpid(), dtype=np.int64)}
"""


def test_rollout_is_shared_by_http_workers_and_survives_a_restart(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    root = tmp_path_factory.mktemp("rollout-processes")
    for version, c in (("1", 0.05), ("2", 20.0)):
        sklearn_iris(root / "iris" / version, c=c)
    write(root / "iris" / "model.yaml", "version_policy: all\n")
    custom(root / "pid", PID)
    state = tmp_path_factory.mktemp("state")
    keys = [f"key-{i}" for i in range(24)]
    pid_body = {"inputs": [{"name": "x", "datatype": "FP64", "shape": [1], "data": [1]}]}

    def fresh(url: str, key: str | None) -> tuple[int, str]:
        """Which process answered (a new connection: the kernel picks one) and the variant."""
        with httpx.Client(base_url=url, timeout=30) as http:
            pid = http.post("/v2/models/pid/infer", json=pid_body).json()["outputs"][0]["data"][0]
            reply = infer(http, rows=ROWS[:1], headers={"x-user-id": key} if key else {})
            assert reply.status_code == 200, reply.text
            return pid, reply.headers["shoal-variant"]

    spec = {"stable": "1", "canary": {"variant": "2", "percent": 40, "sticky": STICKY}}
    process = ShoalProcess(root, "--state-dir", str(state), "--http-workers", "2")
    try:
        process.wait_ready(timeout=60)
        control = httpx.Client(base_url=process.url, timeout=30)
        set_rollout(control, "iris", spec)
        mapping: dict[str, str] = {}
        pids = set()
        for _ in range(2):
            for key in keys:
                pid, variant = fresh(process.url, key)
                pids.add(pid)
                assert mapping.setdefault(key, variant) == variant, (key, pid)
        assert len(pids) == 2  # both processes answered, with one mapping
        assert 0 < sum(v == "canary" for v in mapping.values()) < len(keys)
        control.close()
    finally:
        assert process.stop() == 0

    process = ShoalProcess(root, "--state-dir", str(state))
    try:
        process.wait_ready()
        status = httpx.get(f"{process.url}/v2/models/iris/rollout").json()
        assert status["state"] == "progressing" and status["canary_percent"] == 40
        assert status["spec"] == spec | {"canary": {**spec["canary"], "percent": 40.0}}
        for key in keys:  # the same keys on the same variants after the restart
            assert fresh(process.url, key)[1] == mapping[key], key
    finally:
        process.stop()
