"""What a live rollout costs: an active canary split, and a 100 % shadow.

One Shoal server (pinned to CPU 0; h2load on CPU 1, as benchmarks/run.py does) serves the
benchmark's LogisticRegression as versions 1 and 2 of ``logreg`` and as a second model
``logreg-shadow`` (the same artifact: the same cost). The same server is measured, in
alternating rounds, in three states set live through the rollout API:

- ``none``: no rollout;
- ``canary``: stable version 1, canary version 2 at 10 % (every request goes through the
  split and is counted per variant);
- ``shadow``: no canary, every request mirrored to ``logreg-shadow``.

Targets (issue 10): the canary split's V2 REST JSON throughput at c=32 at most 5 % below
``none``; with the shadow, the primary's p99 at c=8 at most 1.3x ``none``'s (on a one-core
server the shadow competes with the primary for the CPU: reported as measured).

Usage: .venv/bin/python benchmarks/rollout_overhead.py [--rounds 3] [--duration 8]
(needs h2load, from Debian's nghttp2-client, and benchmarks/make_models.py run once).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import run as bench  # noqa: E402  (same folder: the servers, payloads and h2load runner)

ROLLOUTS = {
    "none": None,
    "canary": {"stable": "1", "canary": {"variant": "2", "percent": 10}},
    "shadow": {"stable": "1", "shadow": {"variant": "logreg-shadow", "percent": 100}},
}


def build(root: Path) -> None:
    artifact = bench.MODELS / "_artifacts" / "logreg.joblib"
    if not artifact.exists():
        raise SystemExit("run benchmarks/make_models.py first")
    for folder in (root / "logreg" / "1", root / "logreg" / "2", root / "logreg-shadow"):
        folder.mkdir(parents=True)
        shutil.copy(artifact, folder / "model.joblib")
    (root / "logreg" / "model.yaml").write_text("version_policy: all\n")


def set_rollout(port: int, spec: dict | None) -> None:
    path = "/v2/models/logreg/rollout"
    if spec is None:
        status, _, body = bench.http_request(port, "DELETE", path)
        if status not in (200, 404):
            raise SystemExit(f"DELETE rollout: {status} {body!r}")
        return
    status, _, body = bench.http_request(port, "PUT", path, json.dumps(spec).encode(),
                                         {"content-type": "application/json"})
    if status != 200:
        raise SystemExit(f"PUT rollout: {status} {body!r}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--states", default=",".join(ROLLOUTS),
                        help="which of none,canary,shadow to measure (none is always measured)")
    args = parser.parse_args()
    states = ["none", *(s for s in args.states.split(",") if s in ROLLOUTS and s != "none")]
    row = bench.feature_row()
    request = bench.payload("v2-json", "logreg", row)
    with tempfile.TemporaryDirectory(prefix="shoal-rollout-bench-") as tmp_name:
        tmp = Path(tmp_name)
        build(tmp / "models")
        spec = bench.ServerSpec(
            "shoal", lambda p: [str(bench.SHOAL_VENV / "bin" / "shoal"), "serve", str(tmp / "models"),
                                "--http-port", str(p.http), "--grpc-port", str(p.grpc)],
            models=("logreg",),
        )
        server = bench.Running(spec, tmp / "server.log")  # pinned to the server CPU
        results: dict[tuple[str, int], list[bench.Measurement]] = {}
        try:
            server.wait_ready(60)
            bench.check("v2-json", server.ports.http, request, server.ports.grpc)
            for round_ in range(args.rounds):
                for state in states:
                    rollout = ROLLOUTS[state]
                    set_rollout(server.ports.http, rollout)
                    for concurrency in (32, 8):
                        m = bench.h2load("v2-json", server.ports.http, request, concurrency,
                                         args.duration, args.warmup, 0, tmp)
                        results.setdefault((state, concurrency), []).append(m)
                        print(f"round {round_ + 1} {state:7s} c={concurrency:2d}: "
                              f"{m.rps or 0:8,.0f} req/s  p50 {m.p50_ms or 0:.2f} ms  "
                              f"p99 {m.p99_ms or 0:.2f} ms  errors {m.errors} {m.note}", flush=True)
        finally:
            server.stop()
    report(results, args.rounds)


def report(results: dict[tuple[str, int], list[bench.Measurement]], rounds: int) -> None:
    def ratios(state: str, c: int, field: str) -> list[float]:
        if (state, c) not in results:
            return []
        return [getattr(a, field) / getattr(b, field)
                for a, b in zip(results[state, c], results["none", c])
                if getattr(a, field) and getattr(b, field)]

    print(f"\nper-round ratios against no rollout (same server, {rounds} rounds, alternating):")
    for label, values, goal in (
        ("canary split throughput, c=32", ratios("canary", 32, "rps"), ">= 0.95"),
        ("canary split p99, c=32", ratios("canary", 32, "p99_ms"), ""),
        ("100% shadow: primary p99, c=8", ratios("shadow", 8, "p99_ms"), "<= 1.3"),
        ("100% shadow: throughput, c=32", ratios("shadow", 32, "rps"), ""),
    ):
        if values:
            print(f"  {label}: {min(values):.2f}-{max(values):.2f} (median {statistics.median(values):.2f})"
                  + (f"  goal {goal}" if goal else ""))


if __name__ == "__main__":
    main()
