"""Triton's statistics extension: a version's :class:`~shoal.serving.stats.ModelStats` in
the JSON shape of ``GET /v2/models[/{m}[/versions/{v}]]/stats``.

Every field Triton sends is present, ``cache_hit`` and ``cache_miss`` included (Shoal has no
response cache: they stay 0), because perf_analyzer reads each of them without checking.
The gRPC transport parses the same dict into ``ModelStatisticsResponse``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..serving.stats import ModelStats


def duration(count: int, ns: int) -> dict[str, int]:
    return {"count": count, "ns": ns}


def model_statistics(name: str, version: str, stats: ModelStats) -> dict[str, Any]:
    executed = stats.requests_executed
    return {
        "name": name,
        "version": version,
        "last_inference": stats.last_inference,
        "inference_count": stats.inference_count,
        "execution_count": stats.execution_count,
        "inference_stats": {
            "success": duration(stats.success_count, stats.success_ns),
            "fail": duration(stats.fail_count, stats.fail_ns),
            "queue": duration(executed, stats.queue_ns),
            "compute_input": duration(executed, stats.input_ns),
            "compute_infer": duration(executed, stats.infer_ns),
            "compute_output": duration(executed, stats.output_ns),
            "cache_hit": duration(0, 0),
            "cache_miss": duration(0, 0),
        },
        "batch_stats": [
            {
                "batch_size": size,
                "compute_input": duration(batch.count, batch.input_ns),
                "compute_infer": duration(batch.count, batch.infer_ns),
                "compute_output": duration(batch.count, batch.output_ns),
            }
            for size, batch in sorted(stats.batches.items())
        ],
    }
