"""XGBoost, LightGBM and CatBoost through a real server, over every protocol.

The repository holds small models trained here, plus three damaged files, one per framework.
The damaged LightGBM file is one its reader aborts the whole process on: the server must list
it as UNAVAILABLE with a reason and keep serving the rest.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import catboost
import grpc
import httpx
import lightgbm
import numpy as np
import pytest
import tritonclient.http as httpclient
import xgboost

from shoal.protocol.grpc_gen import grpc_service_pb2 as pb
from shoal.protocol.grpc_gen import grpc_service_pb2_grpc as pb_grpc

from .models import write
from .process import ShoalProcess

FEATURES = 10
RNG = np.random.default_rng(7)
X = RNG.normal(size=(300, FEATURES))
BINARY_Y = (X[:, 0] + X[:, 1] > 0).astype(int)
MULTI_Y = (X[:, 0] > 0).astype(int) + (X[:, 2] > 0)
ROWS = X[:4]


@dataclass
class Served:
    """One healthy model: its input datatype and what the framework itself predicts."""

    platform: str
    datatype: str
    outputs: dict[str, tuple[str, list[int]]]
    expected: dict[str, Callable[[np.ndarray], np.ndarray]]

    @property
    def dtype(self) -> type:
        return np.float32 if self.datatype == "FP32" else np.float64


def build(root: Path) -> dict[str, Served]:
    xgb = xgboost.XGBClassifier(n_estimators=10, max_depth=3).fit(X.astype(np.float32), BINARY_Y)
    (root / "xgb").mkdir(parents=True)
    xgb.save_model(root / "xgb" / "model.json")

    lgb = lightgbm.train({"objective": "binary", "num_leaves": 7, "verbose": -1},
                         lightgbm.Dataset(X, BINARY_Y), 10)
    (root / "lgb").mkdir()
    lgb.save_model(root / "lgb" / "model.txt")

    lgb_multi = lightgbm.LGBMClassifier(n_estimators=6, num_leaves=7, verbose=-1).fit(X, MULTI_Y)
    (root / "lgb-bst" / "1").mkdir(parents=True)
    lgb_multi.booster_.save_model(root / "lgb-bst" / "1" / "model.bst")
    write(root / "lgb-bst" / "model.yaml", "runtime: lightgbm\n")

    cb = catboost.CatBoostClassifier(iterations=10, depth=3, verbose=False, allow_writing_files=False).fit(X, MULTI_Y)
    (root / "cb").mkdir()
    cb.save_model(str(root / "cb" / "model.cbm"))
    write(root / "cb" / "model.yaml", "parameters: {method: [predict, predict_proba]}\n")

    damaged = {
        "xgb-broken": ("model.ubj", lambda data: data[: len(data) // 2]),
        "lgb-broken": ("model.txt", lambda data: data.replace(b"leaf_value=", b"leaf_valuX=", 1)),
        "cb-broken": ("model.cbm", lambda data: b"CBM1" + bytes(64)),
    }
    good = {"xgb-broken": (root / "xgb" / "model.json", xgb), "lgb-broken": (root / "lgb" / "model.txt", lgb),
            "cb-broken": (root / "cb" / "model.cbm", cb)}
    for name, (artifact, damage) in damaged.items():
        (root / name).mkdir()
        source, estimator = good[name]
        if artifact == "model.ubj":
            estimator.save_model(root / name / artifact)
        else:
            (root / name / artifact).write_bytes(source.read_bytes())
        (root / name / artifact).write_bytes(damage((root / name / artifact).read_bytes()))

    def f32(rows: np.ndarray) -> np.ndarray:
        return rows.astype(np.float32)

    return {
        "xgb": Served(
            "xgboost", "FP32",
            {"predict": ("INT64", [-1]), "predict_proba": ("FP32", [-1, 2]), "predict_raw": ("FP32", [-1])},
            {"predict": lambda r: xgb.predict(f32(r)), "predict_proba": lambda r: xgb.predict_proba(f32(r)),
             "predict_raw": lambda r: xgb.predict(f32(r), output_margin=True)},
        ),
        "lgb": Served(
            "lightgbm", "FP64",
            {"predict": ("FP64", [-1]), "predict_raw": ("FP64", [-1]),
             "predict_proba": ("FP64", [-1, 2]), "predict_class": ("INT64", [-1])},
            {"predict": lgb.predict, "predict_raw": lambda r: lgb.predict(r, raw_score=True),
             "predict_proba": lambda r: np.column_stack((1 - lgb.predict(r), lgb.predict(r))),
             "predict_class": lambda r: (lgb.predict(r) > 0.5).astype(np.int64)},
        ),
        "lgb-bst": Served(
            "lightgbm", "FP64",
            {"predict": ("FP64", [-1, 3]), "predict_raw": ("FP64", [-1, 3]),
             "predict_proba": ("FP64", [-1, 3]), "predict_class": ("INT64", [-1])},
            {"predict": lgb_multi.predict_proba, "predict_proba": lgb_multi.predict_proba,
             "predict_raw": lambda r: lgb_multi.predict(r, raw_score=True),
             "predict_class": lgb_multi.predict},
        ),
        "cb": Served(
            "catboost", "FP32",
            {"predict": ("INT64", [-1]), "predict_proba": ("FP64", [-1, 3]), "predict_raw": ("FP64", [-1, 3])},
            {"predict": lambda r: cb.predict(f32(r)).reshape(-1), "predict_proba": lambda r: cb.predict_proba(f32(r)),
             "predict_raw": lambda r: cb.predict(f32(r), prediction_type="RawFormulaVal")},
        ),
    }


DEFAULTS = {"xgb": ["predict"], "lgb": ["predict"], "lgb-bst": ["predict"], "cb": ["predict", "predict_proba"]}


@pytest.fixture(scope="module")
def trees(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Served]]:
    root = tmp_path_factory.mktemp("trees")
    return root, build(root)


@pytest.fixture(scope="module")
def served(trees: tuple[Path, dict[str, Served]]) -> dict[str, Served]:
    return trees[1]


@pytest.fixture(scope="module")
def server(trees: tuple[Path, dict[str, Served]]) -> Iterator[ShoalProcess]:
    """This module's own server (it overrides the shared one from conftest)."""
    process = ShoalProcess(trees[0])
    try:
        process.wait_ready(timeout=60)
        yield process
    finally:
        process.stop()


def check(served: Served, name: str, values: Any, rows: np.ndarray = ROWS) -> None:
    got = np.asarray(values)
    want = np.asarray(served.expected[name](rows))
    if got.dtype.kind in "iu":
        np.testing.assert_array_equal(got.reshape(want.shape), want)
    else:
        np.testing.assert_allclose(got.reshape(want.shape), want, rtol=1e-6, atol=1e-7)


def v2_body(model: Served, rows: np.ndarray = ROWS, outputs: list[str] | None = None) -> dict:
    body: dict[str, Any] = {"inputs": [{
        "name": "input-0", "datatype": model.datatype, "shape": list(rows.shape),
        "data": rows.astype(model.dtype).reshape(-1).tolist(),
    }]}
    if outputs is not None:
        body["outputs"] = [{"name": name} for name in outputs]
    return body


def test_damaged_artifacts_are_unavailable_with_a_reason(server: ShoalProcess) -> None:
    index = {row["name"]: row for row in httpx.post(f"{server.url}/v2/repository/index").json()}
    for name in ("xgb", "lgb", "lgb-bst", "cb"):
        assert index[name]["state"] == "READY", index[name]
    assert index["xgb-broken"]["state"] == "UNAVAILABLE"
    assert "model.ubj is not a complete UBJSON model" in index["xgb-broken"]["reason"]
    assert index["lgb-broken"]["state"] == "UNAVAILABLE"
    assert "LightGBM crashed (SIGABRT) reading model.txt" in index["lgb-broken"]["reason"]
    assert index["cb-broken"]["state"] == "UNAVAILABLE"
    assert "cannot read model.cbm" in index["cb-broken"]["reason"]
    response = httpx.post(f"{server.url}/v2/models/lgb-broken/infer", json={"inputs": []})
    assert response.status_code == 503
    assert server.proc.poll() is None


@pytest.mark.parametrize("name", ["xgb", "lgb", "lgb-bst", "cb"])
def test_metadata(server: ShoalProcess, served: dict[str, Served], name: str) -> None:
    model = served[name]
    meta = httpx.get(f"{server.url}/v2/models/{name}").json()
    assert meta["platform"] == model.platform
    assert meta["inputs"] == [{"name": "input-0", "datatype": model.datatype, "shape": [-1, FEATURES]}]
    assert {o["name"]: (o["datatype"], o["shape"]) for o in meta["outputs"]} == model.outputs


@pytest.mark.parametrize("name", ["xgb", "lgb", "lgb-bst", "cb"])
def test_v2_json_default_and_requested_outputs(server: ShoalProcess, served: dict[str, Served], name: str) -> None:
    model = served[name]
    response = httpx.post(f"{server.url}/v2/models/{name}/infer", json=v2_body(model))
    assert response.status_code == 200, response.text
    outputs = response.json()["outputs"]
    assert [o["name"] for o in outputs] == DEFAULTS[name]
    for output in outputs:
        check(model, output["name"], output["data"])
    wanted = list(reversed(model.outputs))
    response = httpx.post(f"{server.url}/v2/models/{name}/infer", json=v2_body(model, outputs=wanted))
    outputs = response.json()["outputs"]
    assert [o["name"] for o in outputs] == wanted
    for output in outputs:
        assert output["datatype"] == model.outputs[output["name"]][0]
        check(model, output["name"], output["data"])


@pytest.mark.parametrize("name", ["xgb", "lgb-bst", "cb"])
def test_v2_binary_with_tritonclient(server: ShoalProcess, served: dict[str, Served], name: str) -> None:
    model = served[name]
    client = httpclient.InferenceServerClient(f"127.0.0.1:{server.http_port}")
    tensor = httpclient.InferInput("input-0", list(ROWS.shape), model.datatype)
    tensor.set_data_from_numpy(ROWS.astype(model.dtype), binary_data=True)
    outputs = [httpclient.InferRequestedOutput(o, binary_data=True) for o in model.outputs]
    result = client.infer(name, [tensor], outputs=outputs)
    for output in model.outputs:
        check(model, output, result.as_numpy(output))


@pytest.mark.parametrize("name", ["xgb", "lgb", "lgb-bst", "cb"])
def test_v2_grpc(server: ShoalProcess, served: dict[str, Served], name: str) -> None:
    model = served[name]
    request = pb.ModelInferRequest(model_name=name, raw_input_contents=[ROWS.astype(model.dtype).tobytes()])
    request.inputs.add(name="input-0", datatype=model.datatype, shape=list(ROWS.shape))
    wanted = sorted(model.outputs)
    for output in wanted:
        request.outputs.add(name=output)
    with grpc.insecure_channel(server.grpc_target) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        response = stub.ModelInfer(request)
        meta = stub.ModelMetadata(pb.ModelMetadataRequest(name=name))
    assert [o.name for o in response.outputs] == wanted
    for output, raw in zip(response.outputs, response.raw_output_contents):
        dtype = {"INT64": "<i8", "FP32": "<f4", "FP64": "<f8"}[output.datatype]
        check(model, output.name, np.frombuffer(raw, dtype=dtype).reshape(tuple(output.shape)))
    assert list(meta.inputs[0].shape) == [-1, FEATURES] and meta.inputs[0].datatype == model.datatype


@pytest.mark.parametrize("name", ["xgb", "lgb", "lgb-bst", "cb"])
def test_v1_instances(server: ShoalProcess, served: dict[str, Served], name: str) -> None:
    model = served[name]
    rows = ROWS.astype(model.dtype)
    response = httpx.post(f"{server.url}/v1/models/{name}:predict", json={"instances": rows.tolist()})
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    if DEFAULTS[name] == ["predict"]:
        check(model, "predict", predictions, rows)
    else:  # several outputs: one object per row
        for output in DEFAULTS[name]:
            check(model, output, [row[output] for row in predictions], rows)


@pytest.mark.parametrize("name", ["xgb", "lgb", "lgb-bst", "cb"])
def test_wrong_shape_is_400_naming_the_shape(server: ShoalProcess, served: dict[str, Served], name: str) -> None:
    model = served[name]
    response = httpx.post(f"{server.url}/v2/models/{name}/infer", json=v2_body(model, ROWS[:, :7]))
    assert response.status_code == 400
    assert f"expects [-1, {FEATURES}]" in response.json()["error"]
    v1 = httpx.post(f"{server.url}/v1/models/{name}:predict", json={"instances": ROWS[:, :3].tolist()})
    assert v1.status_code == 400 and f"[-1, {FEATURES}]" in v1.json()["error"]


def test_datatypes_convert_only_without_loss(server: ShoalProcess, served: dict[str, Served]) -> None:
    xgb = served["xgb"]
    fp64 = v2_body(xgb)
    fp64["inputs"][0]["datatype"] = "FP64"
    fp64["inputs"][0]["data"] = ROWS.reshape(-1).tolist()  # FP64 values FP32 cannot hold exactly
    response = httpx.post(f"{server.url}/v2/models/xgb/infer", json=fp64)
    assert response.status_code == 400
    assert "is FP64 but model 'xgb' expects FP32" in response.json()["error"]
    fp32 = v2_body(served["lgb"])
    fp32["inputs"][0]["datatype"] = "FP32"
    fp32["inputs"][0]["data"] = ROWS.astype(np.float32).reshape(-1).tolist()
    response = httpx.post(f"{server.url}/v2/models/lgb/infer", json=fp32)
    assert response.status_code == 200, response.text
    check(served["lgb"], "predict", response.json()["outputs"][0]["data"], ROWS.astype(np.float32))
