"""What an explanation costs through Shoal, against the two ways people explain today.

1. Tree SHAP on the benchmark's 100-tree RandomForest, one row: Shoal's
   ``POST /v2/models/forest/explain`` (HTTP round trip included) against calling
   ``shap.TreeExplainer(forest).shap_values(row)`` directly in-process (the explainer built
   once, as a server would). Goal: at most 2x.
2. Permutation SHAP on the benchmark's LogisticRegression (20 features), one row, the same
   background (100 rows) and ``max_evals``: Shoal's explain route, which runs the explainer
   in-process and sends its model calls through the model's endpoint, against the KServe /
   Seldon way: the same ``shap.PermutationExplainer`` in a separate process whose prediction
   function sends each evaluation batch to the same server as one V2 REST request. Goal:
   Shoal at least 5x faster.

The server runs on CPU 0 (as benchmarks/run.py does); the clients and the in-process
baseline on CPU 1. Median of ``--requests`` explanations after a warm-up.

Usage: .venv/bin/python benchmarks/explain_overhead.py [--requests 30]
(needs benchmarks/make_models.py run once, and the explain extra).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import joblib
import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import run as bench  # noqa: E402  (same folder: the server runner and the models' data)

MAX_EVALS = 500
BACKGROUND_ROWS = 100


def build(root: Path, background: np.ndarray) -> None:
    for name in ("forest", "logreg"):
        artifact = bench.MODELS / "_artifacts" / f"{name}.joblib"
        if not artifact.exists():
            raise SystemExit("run benchmarks/make_models.py first")
        (root / name).mkdir(parents=True)
        shutil.copy(artifact, root / name / "model.joblib")
    np.save(root / "logreg" / "background.npy", background)
    (root / "logreg" / "model.yaml").write_text(
        "parameters: {method: predict_proba}\n"
        f"explainer: {{method: permutation, background: background.npy, max_evals: {MAX_EVALS}}}\n"
    )


def timed(call, count: int) -> float:
    """Median seconds of ``call`` over ``count`` runs, after three warm-up runs."""
    for _ in range(3):
        call()
    samples = []
    for _ in range(count):
        started = time.perf_counter()
        call()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


def v2_body(row: np.ndarray) -> bytes:
    return json.dumps({"inputs": [{"name": "x", "datatype": "FP64", "shape": [1, len(row)],
                                   "data": [float(v) for v in row]}]}).encode()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=30)
    args = parser.parse_args()
    os.sched_setaffinity(0, {int(bench.LOADGEN_CPU)})
    import shap

    x, _ = bench.make_models.data()
    row = np.round(x[0], 6).astype(np.float64)
    background = x[1 : BACKGROUND_ROWS + 1].astype(np.float64)
    forest = joblib.load(bench.MODELS / "_artifacts" / "forest.joblib")
    logreg = joblib.load(bench.MODELS / "_artifacts" / "logreg.joblib")
    with tempfile.TemporaryDirectory(prefix="shoal-explain-bench-") as tmp_name:
        tmp = Path(tmp_name)
        build(tmp / "models", background)
        spec = bench.ServerSpec(
            "shoal", lambda p: [str(bench.SHOAL_VENV / "bin" / "shoal"), "serve", str(tmp / "models"),
                                "--http-port", str(p.http), "--grpc-port", str(p.grpc)],
            models=("forest", "logreg"),
        )
        server = bench.Running(spec, tmp / "server.log")
        try:
            server.wait_ready(120)
            port = server.ports.http

            def explain(model: str) -> None:
                status, _, body = bench.http_request(port, "POST", f"/v2/models/{model}/explain",
                                                     v2_body(row), {"content-type": "application/json"},
                                                     timeout=120)
                if status != 200:
                    raise SystemExit(f"explain {model}: {status} {body[:300]!r}")

            # 1. tree SHAP
            direct_tree = shap.TreeExplainer(forest)
            tree_direct = timed(lambda: direct_tree.shap_values(row.reshape(1, -1)), args.requests)
            tree_shoal = timed(lambda: explain("forest"), args.requests)

            # 2. permutation: in Shoal, and with one HTTP call per evaluation batch
            def over_http(batch: np.ndarray) -> np.ndarray:
                body = json.dumps({
                    "inputs": [{"name": "x", "datatype": "FP64", "shape": list(batch.shape),
                                "data": batch.ravel().tolist()}],
                    "outputs": [{"name": "predict_proba"}],
                }).encode()
                status, _, answer = bench.http_request(port, "POST", "/v2/models/logreg/infer", body,
                                                       {"content-type": "application/json"})
                if status != 200:
                    raise SystemExit(f"infer: {status} {answer[:200]!r}")
                output = json.loads(answer)["outputs"][0]
                return np.asarray(output["data"]).reshape(output["shape"])

            remote = shap.PermutationExplainer(over_http, shap.maskers.Independent(background, BACKGROUND_ROWS))
            permutation_http = timed(lambda: remote(row.reshape(1, -1), max_evals=MAX_EVALS), max(5, args.requests // 3))
            permutation_shoal = timed(lambda: explain("logreg"), args.requests)
            direct_permutation = shap.PermutationExplainer(
                logreg.predict_proba, shap.maskers.Independent(background, BACKGROUND_ROWS))
            permutation_local = timed(lambda: direct_permutation(row.reshape(1, -1), max_evals=MAX_EVALS),
                                      args.requests)
        finally:
            server.stop()
    print("| measure | median ms | ratio | goal |")
    print("|---|---:|---:|---|")
    print(f"| tree SHAP, 100-tree forest, 1 row: shap.TreeExplainer in-process | {tree_direct * 1000:.2f} | | |")
    print(f"| tree SHAP through Shoal's /explain (HTTP included) | {tree_shoal * 1000:.2f} | "
          f"{tree_shoal / tree_direct:.2f}x the direct call | <= 2x |")
    print(f"| permutation SHAP, LogisticRegression (20 features), 1 row: in-process, no server | "
          f"{permutation_local * 1000:.2f} | | |")
    print(f"| permutation through Shoal's /explain | {permutation_shoal * 1000:.2f} | | |")
    print(f"| permutation, one HTTP call per evaluation batch (KServe-style) | {permutation_http * 1000:.2f} | "
          f"Shoal {permutation_http / permutation_shoal:.1f}x faster | >= 5x |")


if __name__ == "__main__":
    main()
