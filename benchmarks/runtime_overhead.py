"""What Shoal adds per request, for each framework runtime.

    .venv/bin/python benchmarks/runtime_overhead.py [--requests 2000] [--only xgboost,onnx]

Each module in benchmarks/overhead/ builds a small real model of its framework and says how
to call it directly (see benchmarks/overhead/__init__.py). For each, this script measures:

- direct: p50 of the framework's own call on one row, in-process, on CPU 0, back to back;
- paced: the same call made once every millisecond instead, as requests arrive at a server:
  between two calls the CPU runs other code (or idles), and the framework's next call starts
  with cold caches. For Python-heavy calls (a ``torch.export`` module, a TensorFlow function)
  that alone costs 0.05 to 0.15 ms on a small VM, inside the framework's own call;
- Shoal: p50 latency of one-row V2 REST JSON requests at concurrency 1, from h2load on
  CPU 1, with Shoal pinned to CPU 0 serving all the models at once.

The overhead is Shoal minus direct (target: under 0.3 ms); Shoal minus paced is the part
that is not the framework running cold. Results: a markdown table on stdout and in
benchmarks/results/runtime_overhead.md.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import pkgutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import overhead  # noqa: E402
import run  # noqa: E402  (server start/stop, h2load)

TARGET_MS = 0.3


PACE_S = 0.001


def direct_p50_ms(call, requests: int, pace: float = 0.0) -> float:
    """p50 of ``call`` in ms, back to back, or with a call starting every ``pace`` seconds."""
    for _ in range(min(200, requests)):
        call()
    times = np.empty(requests)
    for i in range(requests):
        started = time.perf_counter()
        call()
        times[i] = time.perf_counter() - started
        if pace:
            time.sleep(max(0.0, pace - times[i]))
    return float(np.percentile(times, 50)) * 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--only", default="", help="comma-separated runtimes (module names)")
    args = parser.parse_args()
    wanted = {n for n in args.only.split(",") if n}
    names = sorted(m.name for m in pkgutil.iter_modules(overhead.__path__)
                   if not wanted or m.name in wanted)
    failures: list[str] = []
    repository = Path(tempfile.mkdtemp(prefix="shoal-overhead-"))
    cases = {}
    os.sched_setaffinity(0, {0})
    for name in names:
        try:
            module = importlib.import_module(f"overhead.{name}")
            (repository / name).mkdir()
            cases[name] = module.build(repository / name)
        except Exception as exc:  # a framework not installed, or a broken case
            failures.append(f"{name}: cannot build the case: {type(exc).__name__}: {exc}")
    direct = {name: direct_p50_ms(case.direct, args.requests) for name, case in cases.items()}
    paced = {name: direct_p50_ms(case.direct, max(1, args.requests // 2), PACE_S)
             for name, case in cases.items()}
    os.sched_setaffinity(0, {1})
    spec = run.ServerSpec(
        "shoal", lambda p: [str(run.SHOAL_VENV / "bin" / "shoal"), "serve", str(repository),
                            "--http-port", str(p.http), "--grpc-port", str(p.grpc)],
        models=tuple(cases),
    )
    rows = []
    run.LOGS.mkdir(parents=True, exist_ok=True)
    with run.started(spec, run.LOGS / "runtime_overhead.log", failures, timeout=300) as server:
        for name, case in cases.items():
            request = run.Payload(f"/v2/models/{name}/infer", json.dumps(case.body).encode(),
                                  {"Content-Type": "application/json"})
            status, _, body = run.http_request(server.ports.http, "POST", request.path,
                                               request.body, request.headers)
            if status != 200:
                failures.append(f"{name}: {status} {body[:200]!r}")
                continue
            with tempfile.TemporaryDirectory() as tmp:
                m = run.h2load("v2-json", server.ports.http, request, 1, 3.0, 1.0, len(body), Path(tmp))
            if m.p50_ms is None or m.errors:
                failures.append(f"{name}: {m.errors} errors {m.note}")
                continue
            extra = m.p50_ms - direct[name]
            verdict = "met" if extra < TARGET_MS else "not met"
            rows.append(f"| {name} | {direct[name]:.3f} | {paced[name]:.3f} | {m.p50_ms:.3f} | "
                        f"{extra:.3f} | {m.p50_ms - paced[name]:.3f} | "
                        f"{m.p50_ms / direct[name]:.2f}x | {verdict} |")
    lines = ["### Runtime overhead: one-row V2 REST JSON at c=1 vs the framework called directly", "",
             "| runtime | direct p50 ms | paced p50 ms | Shoal p50 ms | overhead ms "
             "| over paced ms | ratio | < 0.3 ms |",
             "|---|---:|---:|---:|---:|---:|---:|---|", *rows]
    text = "\n".join(lines)
    print(text)
    run.RESULTS.mkdir(exist_ok=True)
    (run.RESULTS / "runtime_overhead.md").write_text(text + "\n")
    for failure in failures:
        print("FAILED:", failure, file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
