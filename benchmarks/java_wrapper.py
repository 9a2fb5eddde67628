"""The Java model wrapper alone: req/s of the example model at c=8 (issue 16's context row).

    .venv/bin/python benchmarks/java_wrapper.py [--runs 3] [--duration 5] [--warmup 3] [--concurrency 8]

Builds examples/languages/java-logreg (its build.py: trains the weights, compiles the wrapper
and the model) into benchmarks/.work/java/, starts the model's program as Shoal's ``runtime:
process`` would (``java -cp "lib/*" example.LogisticRegressionModel`` with ``$PORT``), pinned to
CPU 0, and drives it with h2load from CPU 1 (as benchmarks/run.py does: HTTP/1.1 keep-alive,
``-c C -m 1``), one-row requests ``features`` FP64 [1, 4]:

- V2 REST JSON: a JSON body, a JSON answer;
- V2 REST binary: the binary tensor extension both ways (what Shoal's process runtime sends).

Each protocol is measured ``--runs`` times (a warm-up of ``--warmup`` s before each, a longer
one once after the start so the JIT has compiled the request path); every answer must carry
exactly the bytes of the checked one. Results: a markdown table on stdout and in
benchmarks/results/java_wrapper.md. Needs h2load (Debian's nghttp2-client) and a JDK.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
import run as bench  # noqa: E402  (same folder: server start/stop, h2load)

EXAMPLE = ROOT / "examples" / "languages" / "java-logreg"
MODEL = "java-logreg"
ROW = [0.5, -1.2, 1.0, 0.3]


def build(repository: Path) -> Path:
    spec = importlib.util.spec_from_file_location("java_logreg_build", EXAMPLE / "build.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.build(repository)


def payloads() -> dict[str, bench.Payload]:
    path = f"/v2/models/{MODEL}/infer"
    tensor = {"name": "features", "datatype": "FP64", "shape": [1, len(ROW)]}
    json_body = json.dumps({"inputs": [{**tensor, "data": ROW}]}).encode()
    import numpy as np

    raw = np.array(ROW, dtype="<f8").tobytes()
    header = json.dumps({"inputs": [{**tensor, "parameters": {"binary_data_size": len(raw)}}],
                         "parameters": {"binary_data_output": True}}).encode()
    return {
        "v2-json": bench.Payload(path, json_body, {"content-type": "application/json"}),
        "v2-binary": bench.Payload(path, header + raw, {"content-type": "application/octet-stream",
                                                       bench.HEADER_LENGTH: str(len(header))}),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()

    version_dir = build(bench.WORK / "java" / "models")
    os.sched_setaffinity(0, {int(bench.LOADGEN_CPU)})
    spec = bench.ServerSpec(
        "java-wrapper",
        lambda p: ["java", "-cp", f"{version_dir}/lib/*", "example.LogisticRegressionModel"],
        env=lambda p: {"PORT": str(p.http), "SHOAL_MODEL_NAME": MODEL, "SHOAL_MODEL_VERSION": "1",
                       "WEIGHTS": str(version_dir / "weights.json")},
        models=(MODEL,),
    )
    failures: list[str] = []
    rows: list[str] = []
    summary: list[str] = []
    bench.LOGS.mkdir(parents=True, exist_ok=True)
    with bench.started(spec, bench.LOGS / "java_wrapper.log", failures) as server, \
            tempfile.TemporaryDirectory() as tmp:
        first = True
        for protocol, request in payloads().items():
            status, _, body = bench.http_request(server.ports.http, "POST", request.path,
                                                 request.body, request.headers)
            if status != 200:
                failures.append(f"{protocol}: {status} {body[:200]!r}")
                continue
            rates = []
            for attempt in range(1, args.runs + 1):
                warmup = args.warmup + (10.0 if first else 0.0)  # the JIT's first compilations
                first = False
                m = bench.h2load(protocol, server.ports.http, request, args.concurrency,
                                 args.duration, warmup, len(body), Path(tmp))
                if m.rps is None or m.errors:
                    failures.append(f"{protocol} run {attempt}: {m.errors} errors {m.note}")
                    continue
                rates.append(m.rps)
                rows.append(f"| {bench.PROTOCOL_LABELS[protocol]} | {attempt} | {m.rps:,.0f} | "
                            f"{m.p50_ms:.3f} | {m.p99_ms:.3f} |")
            if rates:
                summary.append(f"| {bench.PROTOCOL_LABELS[protocol]} | {statistics.median(rates):,.0f} | "
                               f"{min(rates):,.0f} | {max(rates):,.0f} |")
    lines = [
        (f"### Java wrapper alone: {MODEL}, one-row requests, c={args.concurrency} "
         f"(server on CPU 0, h2load on CPU 1)"), "",
        "| protocol | run | req/s | p50 ms | p99 ms |", "|---|---:|---:|---:|---:|", *rows, "",
        f"| protocol | median req/s over {args.runs} runs | min | max |", "|---|---:|---:|---:|", *summary,
    ]
    text = "\n".join(lines)
    print(text)
    bench.RESULTS.mkdir(exist_ok=True)
    (bench.RESULTS / "java_wrapper.md").write_text(text + "\n")
    for failure in failures:
        print("FAILED:", failure, file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
