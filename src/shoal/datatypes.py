"""The Open Inference Protocol datatypes and their numpy equivalents."""

from __future__ import annotations

import numpy as np

from .errors import InvalidInput

#: V2 datatype name -> numpy dtype (little-endian, as the wire formats are).
NUMPY_DTYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
    "BYTES": np.dtype(object),
}

DATATYPES = frozenset(NUMPY_DTYPES)

_KIND_SIZE_TO_DATATYPE = {
    (dtype.kind, dtype.itemsize): name for name, dtype in NUMPY_DTYPES.items() if name != "BYTES"
}


def numpy_dtype(datatype: str) -> np.dtype:
    try:
        return NUMPY_DTYPES[datatype]
    except KeyError:
        raise InvalidInput(
            f"unknown datatype {datatype!r}; expected one of {', '.join(sorted(DATATYPES))}"
        ) from None


def datatype_of(array: np.ndarray) -> str:
    """The V2 datatype for a numpy array; strings and objects travel as BYTES."""
    kind = array.dtype.kind
    if kind in "OSU":
        return "BYTES"
    try:
        return _KIND_SIZE_TO_DATATYPE[(kind, array.dtype.itemsize)]
    except KeyError:
        raise InvalidInput(f"numpy dtype {array.dtype} has no V2 datatype") from None


def canonical(array: np.ndarray, datatype: str) -> np.ndarray:
    """``array`` with the very numpy dtype :data:`NUMPY_DTYPES` gives ``datatype``.

    numpy has several names for one layout (``numpy.longlong`` and ``numpy.int64`` are both
    8-byte integers on Linux). Runtimes return any of them, and serializers that dispatch on
    the exact type (orjson) know only one: the same bytes viewed under the canonical name cost
    nothing and encode everywhere. Another byte order is converted.
    """
    if datatype == "BYTES":
        return array
    target = NUMPY_DTYPES[datatype]
    dtype = array.dtype
    if dtype == target:
        return array if dtype.char == target.char else array.view(target)
    return array.astype(target)
