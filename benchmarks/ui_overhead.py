"""What the dashboard costs when nobody looks at it: the UI on (its series sampled every
interval) against ``--no-ui``.

One Shoal server at a time (pinned to CPU 0; h2load on CPU 1, as benchmarks/run.py does)
serves the benchmark's LogisticRegression as ``logreg``, plus ``--extra-models`` copies of it
that each answered one request before the measurement (so the sampler has that many models'
series to read every interval, as on a server with many models). Rounds alternate between
the two settings, each on a freshly started server:

- ``ui``: the default, dashboard on, no page open;
- ``no-ui``: ``shoal serve --no-ui``.

Load: V2 REST JSON, one row, c=32. Target (issue 18): ``ui`` throughput equals ``no-ui``'s
within noise. ``--interval`` sets SHOAL_UI_SAMPLE_INTERVAL for the ``ui`` server (default:
the shipped 2 s); a short one shows what sampling would cost if it ran far more often.

Usage: .venv/bin/python benchmarks/ui_overhead.py [--rounds 3] [--duration 8]
(needs h2load, from Debian's nghttp2-client, and benchmarks/make_models.py run once).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import run as bench  # noqa: E402  (same folder: the servers, payloads and h2load runner)

SETTINGS = ("ui", "no-ui")


def build(root: Path, extra: int) -> list[str]:
    artifact = bench.MODELS / "_artifacts" / "logreg.joblib"
    if not artifact.exists():
        raise SystemExit("run benchmarks/make_models.py first")
    names = ["logreg", *(f"idle-{i:02d}" for i in range(extra))]
    for name in names:
        (root / name).mkdir(parents=True)
        shutil.copy(artifact, root / name / "model.joblib")
    return names


def start(setting: str, models: Path, tmp: Path, interval: float | None) -> bench.Running:
    ui_off = ["--no-ui"] if setting == "no-ui" else []
    env = {"SHOAL_UI_SAMPLE_INTERVAL": str(interval)} if interval and setting == "ui" else {}
    spec = bench.ServerSpec(
        setting,
        lambda p: [str(bench.SHOAL_VENV / "bin" / "shoal"), "serve", str(models),
                   "--http-port", str(p.http), "--grpc-port", str(p.grpc), *ui_off],
        env=lambda p: env,
        models=("logreg",),
    )
    return bench.Running(spec, tmp / f"server-{setting}.log")  # pinned to the server CPU


def touch(port: int, names: list[str], row: object) -> None:
    """One request to each model, so each has its metric series (what the sampler reads)."""
    for name in names:
        request = bench.payload("v2-json", name, row)
        status, _, body = bench.http_request(port, "POST", request.path, request.body,
                                             request.headers)
        if status != 200:
            raise SystemExit(f"{name}: {status} {body[:200]!r}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--extra-models", type=int, default=49,
                        help="idle models besides logreg (the sampler reads them all)")
    parser.add_argument("--interval", type=float, default=None,
                        help="SHOAL_UI_SAMPLE_INTERVAL for the ui server (default: 2 s)")
    args = parser.parse_args()
    row = bench.feature_row()
    request = bench.payload("v2-json", "logreg", row)
    results: dict[str, list[bench.Measurement]] = {s: [] for s in SETTINGS}
    with tempfile.TemporaryDirectory(prefix="shoal-ui-bench-") as tmp_name:
        tmp = Path(tmp_name)
        names = build(tmp / "models", args.extra_models)
        for round_ in range(args.rounds):
            # Alternate which goes first, so a drift of the machine hits both alike.
            order = SETTINGS if round_ % 2 == 0 else SETTINGS[::-1]
            for setting in order:
                server = start(setting, tmp / "models", tmp, args.interval)
                try:
                    server.wait_ready(120)
                    bench.check("v2-json", server.ports.http, request, server.ports.grpc)
                    touch(server.ports.http, names, row)
                    status, _, _ = bench.http_request(server.ports.http, "GET", "/ui/api/overview")
                    if status != (404 if setting == "no-ui" else 200):
                        raise SystemExit(f"{setting}: /ui/api/overview answered {status}")
                    m = bench.h2load("v2-json", server.ports.http, request, args.concurrency,
                                     args.duration, args.warmup, 0, tmp)
                finally:
                    server.stop()
                results[setting].append(m)
                print(f"round {round_ + 1} {setting:6s} c={args.concurrency}: "
                      f"{m.rps or 0:8,.0f} req/s  p50 {m.p50_ms or 0:.2f} ms  "
                      f"p99 {m.p99_ms or 0:.2f} ms  errors {m.errors} {m.note}", flush=True)
    report(results, args)


def report(results: dict[str, list[bench.Measurement]], args: argparse.Namespace) -> None:
    def ratios(field: str) -> list[float]:
        return [getattr(a, field) / getattr(b, field)
                for a, b in zip(results["ui"], results["no-ui"])
                if getattr(a, field) and getattr(b, field)]

    interval = args.interval or "2 (default)"
    print(f"\nper-round ratios, ui on but unused / --no-ui ({args.rounds} rounds, alternating; "
          f"{1 + args.extra_models} models; sample interval {interval} s):")
    for label, values, goal in (
        ("throughput", ratios("rps"), "1.00 within noise"),
        ("p50", ratios("p50_ms"), ""),
        ("p99", ratios("p99_ms"), ""),
    ):
        if values:
            print(f"  {label}: " + " ".join(f"{v:.3f}" for v in values)
                  + f"  (median {statistics.median(values):.3f})" + (f"  goal {goal}" if goal else ""))
    summary = {s: [m.rps for m in ms] for s, ms in results.items()}
    print("req/s per round: " + json.dumps(summary))


if __name__ == "__main__":
    if not shutil.which("h2load"):
        raise SystemExit("needs h2load (Debian: apt install nghttp2-client)")
    os.sched_setaffinity(0, {int(bench.LOADGEN_CPU)})  # keep this script off the server's CPU
    main()
