"""What crosses between the server and its worker processes.

Messages are length-prefixed pickles over a socket pair. Tensors of at least
:data:`SHM_MIN_BYTES` go through shared memory instead: the sender writes the array once into
a file under ``/dev/shm`` and sends its name; the receiver maps it and unlinks it at once, so
the array reaches the other process with one copy and no pickling, and the file disappears
when the last mapping does. Object (BYTES) tensors and small ones travel in the pickle.
"""

from __future__ import annotations

import itertools
import mmap
import os
import pickle
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ...types import InferenceRequest, InferenceResponse, RequestedOutput, Tensor

SHM_DIR = Path("/dev/shm")
SHM_MIN_BYTES = 64 * 1024
HEADER = struct.Struct("<Q")

_counter = itertools.count()


def shm_prefix(pid: int | None = None) -> str:
    """Every shared-memory file a process creates starts with this, so it can be swept."""
    return f"shoal-{pid or os.getpid()}-"


def dumps(message: Any) -> bytes:
    body = pickle.dumps(message, protocol=5)
    return HEADER.pack(len(body)) + body


loads = pickle.loads


@dataclass(frozen=True, slots=True)
class ShmArray:
    """A numeric array waiting in a shared-memory file."""

    name: str
    dtype: str
    shape: tuple[int, ...]


def _export(array: np.ndarray) -> ShmArray:
    array = np.ascontiguousarray(array)
    name = f"{shm_prefix()}{next(_counter)}"
    fd = os.open(SHM_DIR / name, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
    try:
        os.ftruncate(fd, array.nbytes)
        mapping = mmap.mmap(fd, array.nbytes)
    finally:
        os.close(fd)
    view = np.frombuffer(mapping, array.dtype, array.size).reshape(array.shape)
    view[...] = array
    del view
    mapping.close()
    return ShmArray(name, array.dtype.str, array.shape)


def _attach(ref: ShmArray) -> np.ndarray:
    path = SHM_DIR / ref.name
    fd = os.open(path, os.O_RDWR)
    try:
        size = os.fstat(fd).st_size
        mapping = mmap.mmap(fd, size)
    finally:
        os.close(fd)
        path.unlink()  # the mapping keeps the memory until the array is gone
    dtype = np.dtype(ref.dtype)
    return np.frombuffer(mapping, dtype, size // dtype.itemsize).reshape(ref.shape)


def _shareable(data: np.ndarray) -> bool:
    return data.dtype != object and data.nbytes >= SHM_MIN_BYTES and SHM_DIR.is_dir()


def pack_tensor(tensor: Tensor) -> tuple[Any, ...]:
    data: Any = _export(tensor.data) if _shareable(tensor.data) else tensor.data
    return tensor.name, tensor.datatype, tensor.shape, data, tensor.parameters


def unpack_tensor(packed: tuple[Any, ...]) -> Tensor:
    name, datatype, shape, data, parameters = packed
    if isinstance(data, ShmArray):
        data = _attach(data)
    return Tensor(name, datatype, shape, data, parameters)


def shm_names(packed_tensors: list[tuple[Any, ...]]) -> list[str]:
    return [p[3].name for p in packed_tensors if isinstance(p[3], ShmArray)]


def discard(names: list[str]) -> None:
    """Remove shared-memory files whose receiver never mapped them (it failed or died)."""
    for name in names:
        try:
            (SHM_DIR / name).unlink()
        except FileNotFoundError:
            pass


def sweep(pid: int) -> None:
    """Remove every shared-memory file a (dead or exiting) process left behind."""
    if SHM_DIR.is_dir():
        discard([p.name for p in SHM_DIR.glob(f"{shm_prefix(pid)}*")])


def pack_request(request: InferenceRequest) -> tuple[Any, ...]:
    outputs = None if request.outputs is None else [(o.name, o.parameters) for o in request.outputs]
    return (
        [pack_tensor(t) for t in request.inputs], request.id, request.parameters, outputs,
        request.model_name, request.model_version,
    )


def unpack_request(packed: tuple[Any, ...]) -> InferenceRequest:
    inputs, request_id, parameters, outputs, model_name, model_version = packed
    return InferenceRequest(
        [unpack_tensor(t) for t in inputs], request_id, parameters,
        None if outputs is None else [RequestedOutput(n, p) for n, p in outputs],
        model_name, model_version,
    )


def pack_response(response: InferenceResponse) -> tuple[Any, ...]:
    return (
        [pack_tensor(t) for t in response.outputs], response.model_name, response.model_version,
        response.id, response.parameters,
    )


def unpack_response(packed: tuple[Any, ...]) -> InferenceResponse:
    outputs, model_name, model_version, response_id, parameters = packed
    return InferenceResponse(
        [unpack_tensor(t) for t in outputs], model_name, model_version, response_id, parameters
    )
