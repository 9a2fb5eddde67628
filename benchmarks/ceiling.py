"""The model's own ceiling: rows per second of the estimator's ``predict`` called in-process.

    taskset -c 0 .venv/bin/python benchmarks/ceiling.py [--models logreg,forest] [--batch 1,32]

No server, no protocol, no encoding: load the benchmark artifact with joblib and call
``predict`` in a loop on a fixed batch of rows (the first N rows of the training data, rounded
as the benchmark's request row is), for ``--warmup`` seconds unmeasured and then ``--duration``
seconds measured, timing each call with ``perf_counter``. ``run.py`` starts this in a
subprocess pinned to the server CPU so the ceiling is measured on the same core the servers get.
Prints one JSON object per line: model, batch, calls, seconds, rows_per_s, p50_us, p99_us.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import joblib
import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import make_models


def measure(estimator: object, rows: np.ndarray, duration: float, warmup: float) -> dict[str, float]:
    predict = estimator.predict  # type: ignore[attr-defined]
    end = time.perf_counter() + warmup
    while time.perf_counter() < end:
        predict(rows)
    times: list[float] = []
    began = time.perf_counter()
    end = began + duration
    now = began
    while now < end:
        start = now
        predict(rows)
        now = time.perf_counter()
        times.append(now - start)
    seconds = now - began
    calls = len(times)
    per_call = np.asarray(times) * 1e6
    return {
        "calls": calls,
        "seconds": seconds,
        "rows_per_s": calls * len(rows) / seconds,
        "p50_us": float(np.percentile(per_call, 50)),
        "p99_us": float(np.percentile(per_call, 99)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="logreg,forest")
    parser.add_argument("--batch", default="1,32", help="rows per predict call (comma-separated)")
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--artifacts", type=Path, default=make_models.MODELS / "_artifacts")
    args = parser.parse_args()
    x, _ = make_models.data()
    x = np.round(x, 6).astype(np.float64)
    for name in [m for m in args.models.split(",") if m]:
        estimator = joblib.load(args.artifacts / f"{name}.joblib")
        for batch in [int(b) for b in args.batch.split(",") if b]:
            rows = np.ascontiguousarray(x[:batch])
            result = measure(estimator, rows, args.duration, args.warmup)
            print(json.dumps({"model": name, "batch": batch, **result}), flush=True)


if __name__ == "__main__":
    main()
