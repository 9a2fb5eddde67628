"""Triton's model configuration extension: a Shoal model's metadata as Triton's ``ModelConfig``.

The result is the JSON form of Triton's ``model_config.proto`` message, as Triton's
``GET /v2/models/{m}/config`` answers it (proto field names, enum names such as
``TYPE_FP32``, every field of the messages it fills, integers as JSON numbers); the gRPC
transport parses the same dict into the proto message, so both protocols always agree.

Triton's ``max_batch_size`` says whether the model's first dimension is a batch axis: when it
is above 0, ``dims`` leave that axis out. Shoal reports its adaptive batching here: the
endpoint's ``max_batch_size`` when batching is on (the first dimension of every declared
shape is then the batch axis), 0 when it is off, with the declared shapes whole.
"""

from __future__ import annotations

from typing import Any

from ..repository.config import LatestPolicy, SpecificPolicy

VersionPolicy = Any  # ModelConfig.version_policy: "all" | LatestPolicy | SpecificPolicy


def data_type(datatype: str) -> str:
    """V2 datatype -> Triton's config enum name (BYTES is TYPE_STRING there)."""
    return "TYPE_STRING" if datatype == "BYTES" else f"TYPE_{datatype}"


def version_policy(policy: VersionPolicy) -> dict[str, Any]:
    if isinstance(policy, LatestPolicy):
        return {"latest": {"num_versions": policy.latest}}
    if isinstance(policy, SpecificPolicy):
        return {"specific": {"versions": sorted(policy.specific)}}
    if policy == "all":
        return {"all": {}}
    raise ValueError(f"unknown version policy {policy!r}")


def model_config(
    metadata: dict[str, Any],
    max_batch_size: int = 0,
    max_batch_delay: float = 0.0,
    policy: VersionPolicy = LatestPolicy(latest=1),
) -> dict[str, Any]:
    """``metadata`` is the V2 model metadata (name, platform, inputs, outputs);
    ``max_batch_size`` 0 means batching is off; ``max_batch_delay`` is in seconds."""
    skip = 1 if max_batch_size > 0 else 0
    config: dict[str, Any] = {
        "name": metadata["name"],
        "platform": metadata["platform"],
        "backend": metadata["platform"],
        "version_policy": version_policy(policy),
        "max_batch_size": max_batch_size,
        "input": [
            {
                "name": spec["name"],
                "data_type": data_type(spec["datatype"]),
                "format": "FORMAT_NONE",
                "dims": list(spec["shape"][skip:]),
                "is_shape_tensor": False,
                "allow_ragged_batch": False,
                "optional": False,
            }
            for spec in metadata["inputs"]
        ],
        "output": [
            {
                "name": spec["name"],
                "data_type": data_type(spec["datatype"]),
                "dims": list(spec["shape"][skip:]),
                "label_filename": "",
                "is_shape_tensor": False,
            }
            for spec in metadata["outputs"]
        ],
    }
    if max_batch_size > 0:
        config["dynamic_batching"] = {
            "preferred_batch_size": [],
            "max_queue_delay_microseconds": round(max_batch_delay * 1_000_000),
            "preserve_ordering": False,
        }
    return config
