"""What OpenTelemetry tracing costs: the same server with tracing off and on.

Two Shoal servers (both pinned to CPU 0, as benchmarks/run.py pins one; h2load on CPU 1)
serve the benchmark's LogisticRegression as ``logreg``. Each is started by this script's own
launcher (``serve`` below), which calls ``shoal.server.app.run``: one with tracing off, one
with tracing configured through ``shoal.observe.tracing.configure`` with the SDK's
``InMemorySpanExporter`` (behind the BatchSpanProcessor that ``configure`` puts an exporter
behind, as a server's own exporters are; sampler: always on). They are measured in alternating
rounds with V2 REST JSON one-row requests that carry a ``traceparent`` header (the trace is
continued, as from an instrumented client).

Target (the tracing issue): with tracing on, at least 80 % of the throughput with tracing off
at c=32.

Usage: .venv/bin/python benchmarks/tracing_overhead.py [--rounds 3] [--duration 8]
(needs h2load, from Debian's nghttp2-client, and benchmarks/make_models.py run once).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import run as bench  # noqa: E402  (same folder: the servers, payloads and h2load runner)

STATES = ("off", "on")
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
#: Spans the in-memory exporter keeps (older ones are dropped): enough to look at, bounded.
KEPT_SPANS = 1_000


def build(root: Path) -> None:
    artifact = bench.MODELS / "_artifacts" / "logreg.joblib"
    if not artifact.exists():
        raise SystemExit("run benchmarks/make_models.py first")
    (root / "logreg").mkdir(parents=True)
    shutil.copy(artifact, root / "logreg" / "model.joblib")


def serve(repository: Path, http_port: int, grpc_port: int, state: str) -> None:
    """The launcher: a server process with tracing ``state``; with tracing on, it reports the
    spans it exported when it stops (to its log)."""
    from shoal.observe import tracing
    from shoal.server.app import exit_now, run
    from shoal.settings import ServerSettings

    exporter = None
    if state == "on":
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
            InMemorySpanExporter,
        )

        class Counting(InMemorySpanExporter):
            exported = 0

            def export(self, spans):  # type: ignore[no-untyped-def]
                self.exported += len(spans)
                return super().export(spans)

        exporter = Counting(max_spans=KEPT_SPANS)
        tracing.configure(exporter)
    run(ServerSettings(repository=repository, http_port=http_port, grpc_port=grpc_port))
    if exporter is not None:
        tracing.shutdown()  # exports what is still queued
        print(f"tracing: {exporter.exported} spans exported", file=sys.stderr, flush=True)
    exit_now()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--no-traceparent", action="store_true",
                        help="send no traceparent: every request starts a trace")
    args = parser.parse_args()
    request = bench.payload("v2-json", "logreg", bench.feature_row())
    if not args.no_traceparent:
        request.headers["traceparent"] = TRACEPARENT
    results: dict[str, list[bench.Measurement]] = {state: [] for state in STATES}
    with tempfile.TemporaryDirectory(prefix="shoal-tracing-bench-") as tmp_name:
        tmp = Path(tmp_name)
        build(tmp / "models")
        servers = {
            state: bench.Running(bench.ServerSpec(
                f"shoal-tracing-{state}",
                lambda p, state=state: [bench.shoal_python(), str(HERE / "tracing_overhead.py"), "serve",
                                        str(tmp / "models"), str(p.http), str(p.grpc), state],
                models=("logreg",),
            ), tmp / f"server-{state}.log")  # pinned to the server CPU
            for state in STATES
        }
        try:
            for server in servers.values():
                server.wait_ready(60)
                bench.check("v2-json", server.ports.http, request, server.ports.grpc)
            for round_ in range(args.rounds):
                for state in STATES:
                    m = bench.h2load("v2-json", servers[state].ports.http, request,
                                     args.concurrency, args.duration, args.warmup, 0, tmp)
                    results[state].append(m)
                    print(f"round {round_ + 1} tracing {state:3s} c={args.concurrency}: "
                          f"{m.rps or 0:8,.0f} req/s  p50 {m.p50_ms or 0:.2f} ms  "
                          f"p99 {m.p99_ms or 0:.2f} ms  errors {m.errors} {m.note}", flush=True)
        finally:
            for server in servers.values():
                server.stop()
            exported = [line for line in servers["on"].log_path.read_text().splitlines()
                        if line.startswith("tracing:")]
    if exported:
        print(f"\nthe traced server: {exported[-1].removeprefix('tracing: ')}")
    report(results, args.rounds, args.concurrency)


def report(results: dict[str, list[bench.Measurement]], rounds: int, concurrency: int) -> None:
    pairs = list(zip(results["on"], results["off"]))
    throughput = [on.rps / off.rps for on, off in pairs if on.rps and off.rps]
    p99 = [on.p99_ms / off.p99_ms for on, off in pairs if on.p99_ms and off.p99_ms]
    print(f"\nper-round ratios, tracing on / off (V2 REST JSON, c={concurrency}, {rounds} "
          "rounds, alternating):")
    for label, values, goal in (("throughput", throughput, "  goal >= 0.80"),
                                ("p99 latency", p99, "")):
        if values:
            print(f"  {label}: {min(values):.2f}-{max(values):.2f} "
                  f"(median {statistics.median(values):.2f}){goal}")


if __name__ == "__main__":
    if len(sys.argv) == 6 and sys.argv[1] == "serve":
        serve(Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5])
    else:
        main()
