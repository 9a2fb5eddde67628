"""What payload logging costs: every request and response logged, to files and to an HTTP
collector, against logging off.

One Shoal server at a time (pinned to CPU 0; h2load on CPU 1, as benchmarks/run.py does)
serves the benchmark's LogisticRegression; V2 REST JSON, one row, c=32. Three servers, started
in turn in each round: no ``--payload-log``; ``--payload-log file://DIR``; and
``--payload-log http://...`` to a bare uvicorn collector (``baselines/event_sink.py``, on
CPU 1 beside h2load: it takes a POST per event, two per request). Ratios are per round
against the no-logging server of the same round.

Targets (issue 11): file sink at least 85 % of the throughput with logging off; HTTP sink at
least 75 %.

Usage: .venv/bin/python benchmarks/payload_overhead.py [--rounds 3] [--duration 8]
(needs h2load, from Debian's nghttp2-client, and benchmarks/make_models.py run once).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import run as bench  # noqa: E402  (same folder: the servers, payloads and h2load runner)

STATES = ("off", "file", "http")
GOALS = {"file": 0.85, "http": 0.75}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    args = parser.parse_args()
    artifact = bench.MODELS / "_artifacts" / "logreg.joblib"
    if not artifact.exists():
        raise SystemExit("run benchmarks/make_models.py first")
    row = bench.feature_row()
    request = bench.payload("v2-json", "logreg", row)
    results: dict[str, list[bench.Measurement]] = {}
    with tempfile.TemporaryDirectory(prefix="shoal-payload-bench-") as tmp_name:
        tmp = Path(tmp_name)
        (tmp / "models" / "logreg").mkdir(parents=True)
        shutil.copy(artifact, tmp / "models" / "logreg" / "model.joblib")
        sink_port = bench.free_port()
        collector = subprocess.Popen(
            ["taskset", "-c", bench.LOADGEN_CPU, bench.shoal_python(),
             str(HERE / "baselines" / "event_sink.py"), str(sink_port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        try:
            wait_for_collector(sink_port)
            for round_ in range(args.rounds):
                for state in STATES:
                    m = measure(state, tmp, sink_port, request, args)
                    results.setdefault(state, []).append(m)
                    print(f"round {round_ + 1} {state:4s}: {m.rps or 0:8,.0f} req/s  "
                          f"p50 {m.p50_ms or 0:.2f} ms  p99 {m.p99_ms or 0:.2f} ms  "
                          f"errors {m.errors} {m.note}", flush=True)
            print(f"collector received {collected(sink_port):,} events")
        finally:
            collector.terminate()
            collector.wait()
    print(f"\nper-round throughput against logging off ({args.rounds} rounds, c=32):")
    for state, goal in GOALS.items():
        ratios = [a.rps / b.rps for a, b in zip(results[state], results["off"]) if a.rps and b.rps]
        if ratios:
            print(f"  {state} sink: {min(ratios):.2f}-{max(ratios):.2f} "
                  f"(median {statistics.median(ratios):.2f})  goal >= {goal}")


def measure(state: str, tmp: Path, sink_port: int, request: bench.Payload,
            args: argparse.Namespace) -> bench.Measurement:
    logging = {"off": [], "file": ["--payload-log", f"file://{tmp / 'log'}"],
               "http": ["--payload-log", f"http://127.0.0.1:{sink_port}/events"]}[state]
    spec = bench.ServerSpec(
        "shoal", lambda p: [str(bench.SHOAL_VENV / "bin" / "shoal"), "serve", str(tmp / "models"),
                            "--http-port", str(p.http), "--grpc-port", str(p.grpc),
                            "--state-dir", str(tmp / "state"), *logging],
        models=("logreg",),
    )
    server = bench.Running(spec, tmp / f"server-{state}.log")
    try:
        server.wait_ready(60)
        bench.check("v2-json", server.ports.http, request, server.ports.grpc)
        return bench.h2load("v2-json", server.ports.http, request, 32, args.duration,
                            args.warmup, 0, tmp)
    finally:
        server.stop()
        shutil.rmtree(tmp / "log", ignore_errors=True)


def wait_for_collector(port: int) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            collected(port)
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit("the collector did not start")


def collected(port: int) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/count", timeout=2) as reply:
        return int(reply.read())


if __name__ == "__main__":
    main()
