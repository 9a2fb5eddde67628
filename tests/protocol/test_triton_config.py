"""Shoal metadata and statistics in Triton's shapes, and their proto form as tritonclient
decodes it with its own message definitions."""

from __future__ import annotations

import time
from typing import Any

import pytest
from google.protobuf import json_format
from tritonclient.grpc import model_config_pb2 as triton_config_pb2
from tritonclient.grpc import service_pb2 as triton_service_pb2

from shoal.protocol import triton_config, triton_stats
from shoal.protocol.grpc_gen import grpc_service_pb2 as pb
from shoal.repository.config import LatestPolicy, SpecificPolicy
from shoal.serving.stats import ModelStats

METADATA: dict[str, Any] = {
    "name": "m",
    "versions": ["1"],
    "platform": "sklearn",
    "inputs": [
        {"name": "x", "datatype": "FP32", "shape": [-1, 4]},
        {"name": "text", "datatype": "BYTES", "shape": [-1]},
    ],
    "outputs": [{"name": "y", "datatype": "INT64", "shape": [-1, 3, -1]}],
}


def test_batching_off_is_max_batch_size_0_with_whole_shapes() -> None:
    config = triton_config.model_config(METADATA)
    assert config["name"] == "m" and config["platform"] == config["backend"] == "sklearn"
    assert config["max_batch_size"] == 0
    assert [(i["name"], i["data_type"], i["dims"]) for i in config["input"]] == [
        ("x", "TYPE_FP32", [-1, 4]),
        ("text", "TYPE_STRING", [-1]),
    ]
    assert [(o["name"], o["data_type"], o["dims"]) for o in config["output"]] == [
        ("y", "TYPE_INT64", [-1, 3, -1]),
    ]
    assert "dynamic_batching" not in config
    assert config["version_policy"] == {"latest": {"num_versions": 1}}


def test_batching_on_drops_the_batch_axis_and_reports_the_delay() -> None:
    config = triton_config.model_config(METADATA, max_batch_size=32, max_batch_delay=0.0025)
    assert config["max_batch_size"] == 32
    assert [i["dims"] for i in config["input"]] == [[4], []]
    assert config["output"][0]["dims"] == [3, -1]
    assert config["dynamic_batching"]["max_queue_delay_microseconds"] == 2500


@pytest.mark.parametrize(
    "policy, expected",
    [
        ("all", {"all": {}}),
        (LatestPolicy(latest=2), {"latest": {"num_versions": 2}}),
        (SpecificPolicy(specific=[3, 1]), {"specific": {"versions": [1, 3]}}),
    ],
)
def test_version_policies(policy: Any, expected: dict[str, Any]) -> None:
    assert triton_config.model_config(METADATA, policy=policy)["version_policy"] == expected


def test_every_v2_datatype_has_a_triton_enum() -> None:
    from shoal.datatypes import DATATYPES

    names = set(triton_config_pb2.DataType.keys())
    assert {triton_config.data_type(d) for d in DATATYPES} <= names


def test_tritonclient_decodes_the_config_proto() -> None:
    config = triton_config.model_config(
        METADATA, max_batch_size=8, max_batch_delay=0.001, policy=SpecificPolicy(specific=[2])
    )
    ours = json_format.ParseDict(config, pb.ModelConfig())
    theirs = triton_config_pb2.ModelConfig.FromString(ours.SerializeToString())
    assert theirs.name == "m" and theirs.backend == "sklearn" and theirs.max_batch_size == 8
    assert [(i.name, i.data_type, list(i.dims)) for i in theirs.input] == [
        ("x", triton_config_pb2.TYPE_FP32, [4]),
        ("text", triton_config_pb2.TYPE_STRING, []),
    ]
    assert list(theirs.output[0].dims) == [3, -1]
    assert theirs.dynamic_batching.max_queue_delay_microseconds == 1000
    assert list(theirs.version_policy.specific.versions) == [2]
    # The JSON form and the proto agree field for field with Triton's own definitions.
    assert json_format.ParseDict(config, triton_config_pb2.ModelConfig()) == theirs


def test_statistics_shape_and_proto() -> None:
    stats = ModelStats()
    stats.executed(rows=8, requests=4, queue_ns=400, input_ns=1, infer_ns=100, output_ns=3)
    now = time.perf_counter_ns()
    for _ in range(4):
        stats.succeeded(now - 1000, now)
    stats.failed(0, 50)
    shaped = triton_stats.model_statistics("m", "2", stats)
    assert shaped["name"] == "m" and shaped["version"] == "2"
    assert (shaped["inference_count"], shaped["execution_count"]) == (8, 1)
    inference = shaped["inference_stats"]
    assert inference["success"] == {"count": 4, "ns": 4000}
    assert inference["fail"] == {"count": 1, "ns": 50}
    assert inference["queue"] == {"count": 4, "ns": 400}
    assert inference["compute_infer"] == {"count": 4, "ns": 400}
    assert inference["cache_hit"] == inference["cache_miss"] == {"count": 0, "ns": 0}
    assert shaped["batch_stats"] == [{
        "batch_size": 8,
        "compute_input": {"count": 1, "ns": 1},
        "compute_infer": {"count": 1, "ns": 100},
        "compute_output": {"count": 1, "ns": 3},
    }]
    ours = json_format.ParseDict({"model_stats": [shaped]}, pb.ModelStatisticsResponse())
    theirs = triton_service_pb2.ModelStatisticsResponse.FromString(ours.SerializeToString())
    (model,) = theirs.model_stats
    assert model.inference_count == 8 and model.execution_count == 1
    assert model.inference_stats.compute_infer.ns == 400
    assert model.batch_stats[0].batch_size == 8 and model.batch_stats[0].compute_infer.count == 1
    assert abs(model.last_inference - time.time() * 1000) < 1000
