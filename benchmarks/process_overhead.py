"""What ``runtime: process`` adds per request: Shoal in front of a program vs the program alone.

The program is this script's ``--child`` mode: a bare V2 REST server (an ASGI app on uvicorn
with httptools and uvloop, as fast as a Python server gets here) serving a logistic
regression over the benchmark's 20 features, with JSON tensors. Two copies run, each pinned
to CPU 0 (``taskset -c 0``, as benchmarks/run.py pins servers; h2load runs on CPU 1):

- direct: the program alone, on a port of its own;
- Shoal: ``shoal serve`` with one process-runtime model whose ``command`` is the same
  program (it inherits Shoal's CPU 0: Shoal and its program share the core, as they share
  a machine).

Rounds alternate the two, one-row V2 REST JSON requests at c=8 (the issue's target: the
overhead, Shoal's p50 minus the program's, at most 0.3 ms) and at c=1 (the same without
queueing: what one request pays), each server checked once from Python for the right
prediction first. Prints the p50s side by side per round, and the median overheads.

Usage: .venv/bin/python benchmarks/process_overhead.py [--rounds 3] [--duration 5]
(needs h2load, from Debian's nghttp2-client).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

MODEL = "logreg"
CONCURRENCIES = (8, 1)
TARGET_MS = 0.3


# -- the program ------------------------------------------------------------------------------


def child(port: int) -> None:
    """A V2 REST server of one logistic regression, JSON tensors only (no binary extension)."""
    import orjson
    import uvicorn

    name = os.environ.get("SHOAL_MODEL_NAME", MODEL)
    weights = [((i % 7) - 3) / 10 for i in range(20)]
    metadata = orjson.dumps({
        "name": name, "versions": ["1"], "platform": "python-asgi",
        "inputs": [{"name": "input-0", "datatype": "FP64", "shape": [-1, 20]}],
        "outputs": [{"name": "predict", "datatype": "INT64", "shape": [-1]}],
    })
    routes = {
        ("GET", "/v2/health/ready"): b'{"ready":true}',
        ("GET", f"/v2/models/{name}/ready"): b'{"ready":true}',
        ("GET", f"/v2/models/{name}"): metadata,
        ("GET", "/v2"): b'{"name":"child","version":"1","extensions":[]}',
    }
    infer = f"/v2/models/{name}/infer"

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        chunks, more = [], True
        while more:
            message = await receive()
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        status, body = 404, b'{"error":"no such route"}'
        if scope["method"] == "POST" and scope["path"] == infer:
            tensor = orjson.loads(b"".join(chunks))["inputs"][0]
            data, rows = tensor["data"], tensor["shape"][0]
            width = len(data) // rows
            labels = [int(sum(w * x for w, x in zip(weights, data[r * width:(r + 1) * width])) > 0)
                      for r in range(rows)]
            status, body = 200, orjson.dumps({"model_name": name, "outputs": [
                {"name": "predict", "datatype": "INT64", "shape": [rows], "data": labels}]})
        elif (scope["method"], scope["path"]) in routes:
            status, body = 200, routes[scope["method"], scope["path"]]
        await send({"type": "http.response.start", "status": status, "headers": [
            (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    uvicorn.run(app, host="127.0.0.1", port=port, lifespan="off", log_level="warning",
                access_log=False, http="httptools", loop="uvloop", server_header=False)


# -- the measurement --------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.port or int(os.environ["PORT"]))
        return

    import run as bench  # same folder: servers, payloads and the h2load runner

    me = [sys.executable, str(Path(__file__).resolve()), "--child"]
    row = bench.feature_row()
    request = bench.payload("v2-json", MODEL, row)
    results: dict[tuple[str, int], list[bench.Measurement]] = {}
    with tempfile.TemporaryDirectory(prefix="shoal-process-bench-") as tmp_name:
        tmp = Path(tmp_name)
        (tmp / "models" / MODEL).mkdir(parents=True)
        (tmp / "models" / MODEL / "model.yaml").write_text(json.dumps({"command": me}))
        servers = {
            "direct": bench.Running(bench.ServerSpec(
                "direct", lambda p: [*me, "--port", str(p.http)], models=(MODEL,)),
                tmp / "direct.log"),
            "shoal": bench.Running(bench.ServerSpec(
                "shoal", lambda p: [str(bench.SHOAL_VENV / "bin" / "shoal"), "serve",
                                    str(tmp / "models"), "--http-port", str(p.http),
                                    "--grpc-port", str(p.grpc)], models=(MODEL,)),
                tmp / "shoal.log"),
        }
        try:
            expected = {}
            for name, server in servers.items():
                server.wait_ready(60)
                value, expected[name] = bench.check("v2-json", server.ports.http, request,
                                                    server.ports.grpc)
                print(f"{name}: ready, predicts {value}", flush=True)
            for round_ in range(args.rounds):
                for concurrency in CONCURRENCIES:
                    for name, server in servers.items():
                        m = bench.h2load("v2-json", server.ports.http, request, concurrency,
                                         args.duration, args.warmup, expected[name], tmp)
                        results.setdefault((name, concurrency), []).append(m)
                        print(f"round {round_ + 1} {name:6s} c={concurrency}: "
                              f"{m.rps or 0:8,.0f} req/s  p50 {m.p50_ms or 0:.3f} ms  "
                              f"p99 {m.p99_ms or 0:.3f} ms  errors {m.errors} {m.note}",
                              flush=True)
        finally:
            for server in servers.values():
                server.stop()
    report(results)


def report(results: dict) -> None:
    print("\none-row V2 REST JSON, p50 (ms): the program alone vs through Shoal")
    print("| c | round | program alone | through Shoal | overhead | req/s alone | req/s Shoal |")
    print("|---|---|---|---|---|---|---|")
    medians = {}
    for concurrency in CONCURRENCIES:
        overheads = []
        pairs = zip(results.get(("direct", concurrency), []), results.get(("shoal", concurrency), []))
        for i, (direct, shoal) in enumerate(pairs, 1):
            if direct.p50_ms is None or shoal.p50_ms is None:
                print(f"| {concurrency} | {i} | {direct.note or '-'} | {shoal.note or '-'} | - | - | - |")
                continue
            overheads.append(shoal.p50_ms - direct.p50_ms)
            print(f"| {concurrency} | {i} | {direct.p50_ms:.3f} | {shoal.p50_ms:.3f} | "
                  f"{overheads[-1]:+.3f} | {direct.rps or 0:,.0f} | {shoal.rps or 0:,.0f} |")
        if overheads:
            medians[concurrency] = statistics.median(overheads)
    for concurrency, median in medians.items():
        goal = f" (target <= {TARGET_MS} ms)" if concurrency == 8 else ""
        print(f"median overhead at p50, c={concurrency}: {median:+.3f} ms{goal}")


if __name__ == "__main__":
    main()
