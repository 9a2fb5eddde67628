"""The worker wire format: round trips, and large tensors through shared memory."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest

from shoal.serving.workers import wire
from shoal.types import InferenceRequest, InferenceResponse, RequestedOutput, Tensor


def _shm_files() -> set[str]:
    return {p.name for p in wire.SHM_DIR.glob(f"{wire.shm_prefix()}*")}


def test_request_round_trip_keeps_everything_but_the_client_probe() -> None:
    request = InferenceRequest(
        [Tensor.from_numpy("x", np.arange(6, dtype=np.float32).reshape(2, 3)),
         Tensor.from_numpy("s", np.array([b"a", b"bc"], dtype=object))],
        id="r1", parameters={"p": 1}, outputs=[RequestedOutput("y", {"binary_data": True})],
        model_name="m", model_version="2", client_gone=lambda: False,
    )
    back = wire.unpack_request(pickle.loads(pickle.dumps(wire.pack_request(request))))
    assert back.id == "r1" and back.parameters == {"p": 1}
    assert back.outputs == [RequestedOutput("y", {"binary_data": True})]
    assert (back.model_name, back.model_version, back.client_gone) == ("m", "2", None)
    np.testing.assert_array_equal(back.inputs[0].data, request.inputs[0].data)
    assert back.inputs[1].data.tolist() == [b"a", b"bc"]


@pytest.mark.skipif(not wire.SHM_DIR.is_dir(), reason="no /dev/shm")
def test_large_tensors_cross_through_shared_memory_and_leave_no_file() -> None:
    big = np.random.default_rng(0).random((300, 100))  # 240 KB
    before = _shm_files()
    packed = wire.pack_response(InferenceResponse([Tensor.from_numpy("y", big)], "m"))
    assert isinstance(packed[0][0][3], wire.ShmArray)
    assert len(pickle.dumps(packed)) < 1000  # the data is not in the message
    assert len(_shm_files() - before) == 1
    back = wire.unpack_response(pickle.loads(pickle.dumps(packed)))
    np.testing.assert_array_equal(back.outputs[0].data, big)
    assert _shm_files() == before  # the receiver unlinked it on mapping


def test_small_tensors_travel_in_the_message() -> None:
    packed = wire.pack_tensor(Tensor.from_numpy("x", np.ones(10)))
    assert isinstance(packed[3], np.ndarray)


@pytest.mark.skipif(not wire.SHM_DIR.is_dir(), reason="no /dev/shm")
def test_discard_and_sweep_remove_unclaimed_files() -> None:
    before = _shm_files()
    packed = [wire.pack_tensor(Tensor.from_numpy("x", np.zeros(20_000)))]
    wire.discard(wire.shm_names(packed))
    assert _shm_files() == before
    wire.pack_tensor(Tensor.from_numpy("x", np.zeros(20_000)))
    wire.sweep(os.getpid())
    assert not _shm_files()
