"""Run by :mod:`shoal.runtimes.native_check` in a throwaway process: read one model file with
the framework and predict one row of zeros.

It runs as ``python -I -S native_check_child.py FRAMEWORK WHERE FILE``. For XGBoost and
LightGBM, WHERE is the framework's shared library, called through ctypes with the standard
library only, so the check starts in about 30 ms instead of importing the framework's Python
package (and pandas, scikit-learn...). CatBoost has no C library in its wheel: WHERE is the
server's module search path, and the check imports catboost (about 0.4 s).

Exit status 0: read and predicted. 3: the framework reported an error (printed on stderr), which
the server's own load reports too. What the parent looks for is a death by a signal or a hang.
"""

from __future__ import annotations

import ctypes
import json
import os
import sys

#: Exit status when the framework raised an error instead of crashing.
ORDINARY_FAILURE = 3


def read_lightgbm(lib: ctypes.CDLL, path: str) -> None:
    lib.LGBM_GetLastError.restype = ctypes.c_char_p
    handle = ctypes.c_void_p()
    iterations = ctypes.c_int()
    if lib.LGBM_BoosterCreateFromModelfile(path.encode(), ctypes.byref(iterations), ctypes.byref(handle)):
        raise RuntimeError(lib.LGBM_GetLastError())
    features = ctypes.c_int()
    lib.LGBM_BoosterGetNumFeature(handle, ctypes.byref(features))
    length = ctypes.c_int64()
    lib.LGBM_BoosterCalcNumPredict(handle, 1, 0, 0, -1, ctypes.byref(length))
    row = (ctypes.c_double * max(features.value, 1))()
    result = (ctypes.c_double * max(length.value, 1))()
    written = ctypes.c_int64()
    # data_type 1 = float64, row-major, predict_type 0 = normal, all iterations, 1 thread.
    lib.LGBM_BoosterPredictForMat(
        handle, row, 1, 1, features.value, 1, 0, 0, -1, b"num_threads=1",
        ctypes.byref(written), result,
    )


def read_xgboost(lib: ctypes.CDLL, path: str) -> None:
    lib.XGBGetLastError.restype = ctypes.c_char_p
    handle = ctypes.c_void_p()
    lib.XGBoosterCreate(None, ctypes.c_uint64(0), ctypes.byref(handle))
    lib.XGBoosterSetParam(handle, b"nthread", b"1")
    if lib.XGBoosterLoadModel(handle, path.encode()):
        raise RuntimeError(lib.XGBGetLastError())
    features = ctypes.c_uint64()
    lib.XGBoosterGetNumFeature(handle, ctypes.byref(features))
    row = (ctypes.c_float * max(features.value, 1))()
    array = {"data": [ctypes.addressof(row), False], "shape": [1, features.value],
             "typestr": "<f4", "version": 3}
    config = {"type": 0, "training": False, "iteration_begin": 0, "iteration_end": 0,
              "strict_shape": False, "missing": float("nan"), "cache_id": 0}
    shape = ctypes.POINTER(ctypes.c_uint64)()
    dims = ctypes.c_uint64()
    result = ctypes.POINTER(ctypes.c_float)()
    if lib.XGBoosterPredictFromDense(
        handle, json.dumps(array).encode(), json.dumps(config).encode(), None,
        ctypes.byref(shape), ctypes.byref(dims), ctypes.byref(result),
    ):
        raise RuntimeError(lib.XGBGetLastError())


def read_catboost(search_path: str, path: str) -> None:
    sys.path[:0] = search_path.split(os.pathsep)
    import catboost
    import numpy

    model = catboost.CatBoost()
    model.load_model(path)
    shape = (1, len(model.feature_names_))
    if model.get_cat_feature_indices() or model.get_text_feature_indices():
        row = numpy.full(shape, "0", dtype=object)
    else:
        row = numpy.zeros(shape, dtype=numpy.float32)
    model.predict(row, thread_count=1)


if __name__ == "__main__":
    framework, where, artifact = sys.argv[1:4]
    try:
        if framework == "catboost":
            read_catboost(where, artifact)
        else:
            reader = {"lightgbm": read_lightgbm, "xgboost": read_xgboost}[framework]
            reader(ctypes.CDLL(where), artifact)
    except Exception as exc:  # noqa: BLE001 - an ordinary failure: the server's load reports it
        print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
        sys.exit(ORDINARY_FAILURE)
