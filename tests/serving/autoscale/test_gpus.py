"""GPU placement with a given device list (no GPU on this machine)."""

from __future__ import annotations

import pytest

from shoal.errors import LoadError
from shoal.serving.autoscale.gpus import GpuAllocator, parse_devices


def test_one_gpu_replicas_are_refused_beyond_the_devices_unless_shared() -> None:
    gpus = GpuAllocator(["0", "1"])
    taken = [gpus.take(1, share=1) for _ in range(4)]
    assert taken == [["0"], ["1"], None, None]
    shared = GpuAllocator(["0", "1"])
    assert [shared.take(1, share=2) for _ in range(5)] == [["0"], ["1"], ["0"], ["1"], None]


def test_a_device_is_shared_only_if_every_replica_on_it_allows_it() -> None:
    gpus = GpuAllocator(["0"])
    assert gpus.take(1, share=1) == ["0"]
    assert gpus.take(1, share=4) is None  # the first replica wants the device to itself
    gpus.give_back(["0"], share=1)
    assert gpus.take(1, share=4) == ["0"]
    assert gpus.take(1, share=1) is None  # one is on it already


def test_multi_gpu_replicas_take_distinct_least_used_devices() -> None:
    gpus = GpuAllocator(["0", "1", "2"])
    assert gpus.take(2, share=1) == ["0", "1"]
    assert gpus.take(2, share=1) is None
    assert gpus.take(1, share=1) == ["2"]
    gpus.give_back(["0", "1"], share=1)
    assert gpus.usage() == {"0": 0, "1": 0, "2": 1}


def test_a_model_asking_for_more_gpus_than_exist_fails_saying_so() -> None:
    with pytest.raises(LoadError, match=r"asks for 3 GPU\(s\) per replica, but this server has 2"):
        GpuAllocator(["0", "1"]).check("big", 3)
    GpuAllocator([]).check("cpu-only", 0)  # no GPU asked for: fine without devices


def test_http_worker_processes_split_the_devices() -> None:
    assert GpuAllocator(["0", "1", "2", "3"], part=(1, 2)).devices == ["1", "3"]


def test_parse_devices() -> None:
    assert parse_devices("0,1") == ["0", "1"]
    assert parse_devices("none") == []
    with pytest.raises(ValueError, match="distinct"):
        parse_devices("0,0")
