"""Autoscaling's two targets (issue 14), with the benchmark's LogisticRegression.

**Cold start.** One server (pinned to CPU 0, as benchmarks/run.py does) serves the model twice:
``cold``, autoscaled with ``min_replicas: 0`` and a 1 s idle time, and ``plain``, the same
artifact in one worker process (``workers: 1``: a process started and the model loaded into it,
which is what a replica is). Once ``cold`` has scaled to zero, one request is timed from send to
answer. Target: at most 1.5x ``plain``'s load time (its ``model_loaded`` seconds) plus one
request to it.

**Bursty load.** One server serves the model autoscaled (``min_replicas: 0``,
``max_replicas: 4``, ``target_concurrency: 8``; short windows so a run takes a minute:
``stable_window: 10s``, ``panic_window: 2s``, ``scale_to_zero_after: 15s``). It idles at zero
replicas, then h2load (CPU 1) sends 32 clients' V2 REST requests for 20 s, then nothing.
Targets: of the latency of the requests that started after the burst's first 5 s, at most 1 %
is time spent held waiting for a replica (``shoal_replica_wait_seconds_total`` between the 5 s
mark and the end, over the summed latencies from h2load's per-request log); and the server's
memory (RSS of its process tree) back to the idle baseline once it has scaled to zero again.

Usage: .venv/bin/python benchmarks/autoscaling.py [--rounds 3] [--skip-burst]
(needs h2load, from Debian's nghttp2-client, and benchmarks/make_models.py run once).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import run as bench  # noqa: E402  (same folder: the servers, payloads and h2load runner)

MiB = 1024 * 1024


def build(root: Path, models: dict[str, str]) -> None:
    artifact = bench.MODELS / "_artifacts" / "logreg.joblib"
    if not artifact.exists():
        raise SystemExit("run benchmarks/make_models.py first")
    for name, config in models.items():
        (root / name).mkdir(parents=True)
        shutil.copy(artifact, root / name / "model.joblib")
        (root / name / "model.yaml").write_text(config)


def start(name: str, models: Path, tmp: Path, ready: tuple[str, ...]) -> bench.Running:
    spec = bench.ServerSpec(
        name,
        lambda p: [str(bench.SHOAL_VENV / "bin" / "shoal"), "serve", str(models),
                   "--http-port", str(p.http), "--grpc-port", str(p.grpc)],
        models=ready,
    )
    server = bench.Running(spec, tmp / f"server-{name}.log")
    server.wait_ready(90)
    return server


def get_json(port: int, path: str, method: str = "GET") -> Any:
    status, _, body = bench.http_request(port, method, path, timeout=10)
    if status != 200:
        raise RuntimeError(f"{method} {path}: {status} {body[:200]!r}")
    return json.loads(body)


def wait_scaled_to_zero(port: int, model: str, timeout: float) -> float:
    began = time.monotonic()
    while time.monotonic() - began < timeout:
        if get_json(port, f"/v2/models/{model}/replicas")["versions"][0]["scaled_to_zero"]:
            return time.monotonic() - began
        time.sleep(0.1)
    raise RuntimeError(f"{model} did not scale to zero within {timeout:.0f} s")


def timed_request(port: int, request: bench.Payload) -> float:
    began = time.perf_counter()
    status, _, body = bench.http_request(port, "POST", request.path, request.body,
                                         request.headers, timeout=60)
    if status != 200:
        raise RuntimeError(f"inference failed: {status} {body[:200]!r}")
    return time.perf_counter() - began


def loaded_seconds(log_path: Path, model: str) -> float:
    for line in log_path.read_text(errors="replace").splitlines():
        if line.startswith("{") and '"model_loaded"' in line:
            event = json.loads(line)
            if event.get("model") == model:
                return float(event["seconds"])
    raise RuntimeError(f"no model_loaded event for {model}")


def metric(port: int, name: str, model: str) -> float:
    _, _, body = bench.http_request(port, "GET", "/metrics", timeout=10)
    pattern = rf'^{re.escape(name)}{{model="{re.escape(model)}"}} ([0-9.e+-]+)$'
    found = re.search(pattern, body.decode(), re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def cold_start_round(tmp: Path) -> dict[str, float]:
    models = tmp / "models"
    build(models, {
        "cold": "autoscaling: {min_replicas: 0, max_replicas: 1, stable_window: 1s, "
                "panic_window: 1s, scale_to_zero_after: 1s}\n",
        "plain": "workers: 1\n",
    })
    server = start("cold-start", models, tmp, ("plain",))
    try:
        row = bench.feature_row()
        wait_scaled_to_zero(server.ports.http, "cold", 60)
        cold = timed_request(server.ports.http, bench.payload("v2-json", "cold", row))
        plain_request = min(timed_request(server.ports.http, bench.payload("v2-json", "plain", row))
                            for _ in range(3))
        plain_load = loaded_seconds(server.log_path, "plain")
    finally:
        server.stop()
    return {"cold_s": cold, "plain_load_s": plain_load, "plain_request_s": plain_request,
            "ratio": cold / (plain_load + plain_request)}


def burst_round(tmp: Path, clients: int, seconds: float) -> dict[str, float]:
    models = tmp / "models"
    build(models, {"logreg": "autoscaling: {min_replicas: 0, max_replicas: 4, "
                             "target_concurrency: 8, stable_window: 10s, panic_window: 2s, "
                             "scale_to_zero_after: 15s}\n"})
    server = start("burst", models, tmp, ())
    port = server.ports.http
    try:
        wait_scaled_to_zero(port, "logreg", 60)
        time.sleep(1)
        idle_kib, _ = bench.rss_kib(server.proc.pid)
        request = bench.payload("v2-json", "logreg", bench.feature_row())
        body_file = tmp / "body.bin"
        body_file.write_bytes(request.body)
        log_file = tmp / "requests.log"
        command = ["taskset", "-c", bench.LOADGEN_CPU, "h2load", "--h1", "-t", "1",
                   "-c", str(clients), "-m", "1", "-D", f"{seconds:g}", "-d", str(body_file),
                   f"--log-file={log_file}"]
        for key, value in request.headers.items():
            command += ["-H", f"{key}: {value}"]
        command.append(f"http://127.0.0.1:{port}{request.path}")
        marks: dict[str, float] = {}
        peak = {"replicas": 0}

        def watch() -> None:
            time.sleep(5)
            marks["wait_at_5s"] = metric(port, "shoal_replica_wait_seconds_total", "logreg")
            while "done" not in marks:
                status = get_json(port, "/v2/models/logreg/replicas")["versions"][0]
                peak["replicas"] = max(peak["replicas"], status["ready"])
                time.sleep(0.5)

        began = time.time()
        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        done = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 120)
        marks["done"] = 1
        watcher.join()
        wait_end = metric(port, "shoal_replica_wait_seconds_total", "logreg")
        cold = metric(port, "shoal_cold_start_seconds_sum", "logreg")
        codes = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", done.stdout)
        rows = np.loadtxt(log_file, dtype=np.int64, ndmin=2, usecols=(0, 1, 2))
        after_5s = rows[rows[:, 0] >= int((began + 5) * 1e6)]
        latency_s = after_5s[:, 2].sum() / 1e6
        waited = wait_end - marks.get("wait_at_5s", 0.0)
        to_zero = wait_scaled_to_zero(port, "logreg", 120)
        time.sleep(1)
        after_kib, _ = bench.rss_kib(server.proc.pid)
    finally:
        server.stop()
    return {
        "requests_2xx": float(codes.group(1)) if codes else float("nan"),
        "non_2xx": float(sum(int(codes.group(i)) for i in (2, 3, 4))) if codes else float("nan"),
        "peak_replicas": float(peak["replicas"]),
        # Held time is counted when a request stops waiting: a cold start longer than 5 s
        # puts its whole wait after the mark (the target assumes it ends before).
        "cold_start_s": cold,
        "waited_s_after_5s": waited,
        "latency_s_after_5s": latency_s,
        "wait_share_pct": 100 * waited / latency_s if latency_s else float("nan"),
        "to_zero_s": to_zero,
        "idle_rss_mib": idle_kib / 1024,
        "after_rss_mib": after_kib / 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--skip-burst", action="store_true")
    args = parser.parse_args()
    if shutil.which("h2load") is None and not args.skip_burst:
        raise SystemExit("h2load is missing: apt-get install nghttp2-client")
    cold, burst = [], []
    for index in range(args.rounds):
        with tempfile.TemporaryDirectory(prefix="shoal-autoscale-") as folder:
            cold.append(cold_start_round(Path(folder)))
        print(f"cold start round {index + 1}: " + json.dumps({k: round(v, 4) for k, v in cold[-1].items()}))
        if not args.skip_burst:
            with tempfile.TemporaryDirectory(prefix="shoal-autoscale-") as folder:
                burst.append(burst_round(Path(folder), args.clients, args.seconds))
            print(f"burst round {index + 1}: " + json.dumps({k: round(v, 4) for k, v in burst[-1].items()}))
    ratios = [r["ratio"] for r in cold]
    print(f"\ncold start / (plain load + one request): {min(ratios):.2f}x-{max(ratios):.2f}x "
          f"(median {statistics.median(ratios):.2f}x; target <= 1.5x); cold first answer "
          f"{min(r['cold_s'] for r in cold):.3f}-{max(r['cold_s'] for r in cold):.3f} s")
    if burst:
        shares = [r["wait_share_pct"] for r in burst]
        print(f"bursty load: wait share after the first 5 s {min(shares):.3f}%-{max(shares):.3f}% "
              f"(target <= 1%); non-2xx {sum(r['non_2xx'] for r in burst):.0f}; peak replicas "
              f"{min(r['peak_replicas'] for r in burst):.0f}-{max(r['peak_replicas'] for r in burst):.0f}; "
              "server RSS idle -> after scale to zero: " + ", ".join(
                  f"{r['idle_rss_mib']:.0f}->{r['after_rss_mib']:.0f} MiB" for r in burst))


if __name__ == "__main__":
    main()
