"""Where Shoal's CPU goes per request, stage by stage, under each benchmark row's load.

    .venv/bin/pip install py-spy                      # once
    .venv/bin/python benchmarks/make_models.py        # the models, once (as for run.py)
    .venv/bin/python benchmarks/stages.py [--rows all] [--duration 8] [--rate 250]

For each row (below) the server starts as ``run.py`` starts it (``taskset -c 0``, the same
model layouts and options), gets the row's load from h2load on CPU 1 (one-row requests, the
row's protocol and concurrency) and, once warmed up, is sampled by ``py-spy record --format
raw --nonblocking`` for ``--duration`` seconds while h2load keeps the load on. Every sampled
stack (all threads: the event loop and the model threads) is put in the stage of the first
frame, from the innermost out, that a rule below recognises (numpy, typing and other helper
frames are looked through to their caller); a stack none recognises is "event loop/other".

    stage share   = samples in the stage / samples (py-spy counts a thread only while it runs)
    µs / request  = stage share x server CPU seconds in the window / requests answered in it

Server CPU seconds are the process's utime + stime (``/proc/PID/stat``, all threads) over
the window, so the µs column adds up to the server's CPU per request. py-spy's sampling
runs on CPU 1 and does not stop the server (``--nonblocking``); the load is still a little
lower than in ``run.py``. Profiles (the raw stacks) go to benchmarks/.work/profiles/; the
table goes to stdout and benchmarks/results/stages.md.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import run  # same folder: servers, payloads, checks

PROFILES = run.WORK / "profiles"
PY_SPY = Path(sys.executable).with_name("py-spy")

#: (name, server, model, protocol, concurrency): the rows of issue 19's table.
ROWS = {
    "grpc": ("shoal", "logreg", "v2-grpc", 32),
    "json": ("shoal", "logreg", "v2-json", 32),
    "batch-logreg": ("shoal-batch", "logreg", "v2-json", 32),
    "batch-forest": ("shoal-batch", "forest", "v2-json", 32),
}

STAGES = (
    "HTTP parse", "gRPC transport", "body read", "decode", "validation", "routing/dataplane",
    "queue/batch", "executor hand-off", "predict", "encode", "metrics", "event loop/other",
)
#: What each stage holds, for the report.
STAGE_NOTES = {
    "HTTP parse": "uvicorn's httptools protocol: request line, headers, the ASGI scope, writing the answer",
    "gRPC transport": "grpc.aio and Shoal's servicer glue (server/grpc.py), in Python frames",
    "body read": "ASGI receive of the request body",
    "decode": "JSON / protobuf to tensors (shoal/protocol, the decode step of the REST glue)",
    "validation": "inputs checked against the model's metadata, types' checks",
    "routing/dataplane": "path matching, dataplane and endpoint bookkeeping, starlette",
    "queue/batch": "the adaptive batcher: queueing, merging rows, splitting results",
    "executor hand-off": "model threads: taking a job, waking, handing the result back to the loop "
                         "(py-spy counts a thread waking for a job as running)",
    "predict": "the runtime's predict and scikit-learn (in a model thread)",
    "encode": "tensors to the JSON / protobuf answer",
    "metrics": "prometheus counters and histograms, Triton statistics, payload log / tracing hooks",
    "event loop/other": "uvloop's own C code (sockets, scheduling) with no Python frame, and the rest",
}

#: Frames looked through: a stack whose innermost frame is one of these is put where its
#: caller belongs (numpy's Python helpers run for whoever called them).
TRANSPARENT = ("numpy/", "/typing.py", "/abc.py", "/functools.py", "/contextlib.py", "/enum.py",
               "/dataclasses.py", "/copy.py", "/_weakrefset.py", "/weakref.py", "(<string>")

#: Functions of shoal/protocol/ (and the REST and gRPC glue) that build answers; every other
#: function there reads requests (decode).
ENCODE_FUNCTIONS = ("encode_response", "response_fields", "json_data", "json_array", "_text", "_fallback",
                    "dumps", "_fill_contents", "_as_bytes", "requested_outputs", "wants_binary", "_encode_v2",
                    "_json_content", "error_body", "response")
#: Request checks against the model's metadata (dtypes, shapes, names).
VALIDATION_FUNCTIONS = ("conform", "check_", "_check", "validate")


def _function(frame: str) -> str:
    """The innermost name of a frame's function: ``InferenceASGI._v2.<locals>.decode`` -> ``decode``."""
    return frame.split(" (", 1)[0].rsplit(".", 1)[-1].lower()


def classify_frame(frame: str) -> str | None:
    """The stage one frame (``function (path:line)``) belongs to, or None if it does not say."""
    path = frame.rsplit(" (", 1)[-1]
    function = _function(frame)
    if any(p in path for p in ("/sklearn/", "sklearn/", "/scipy/", "joblib/", "threadpoolctl", "runtimes/")):
        return "predict"
    if any(p in path for p in ("prometheus_client/", "observe/metrics.py", "serving/stats.py", "observe/")):
        return "metrics"
    if "serving/batcher.py" in path:
        return "queue/batch"
    if any(p in path for p in ("serving/executor.py", "concurrent/futures", "/threading.py", "/queue.py")):
        return "executor hand-off"
    if any(p in path for p in ("pydantic", "shoal/types.py", "shoal/datatypes.py")) or any(
            function.startswith(f) for f in VALIDATION_FUNCTIONS):
        return "validation"
    if "protocol/" in path or "grpc_parsing.py" in path or "/json/" in path:
        return "encode" if any(function.startswith(f) for f in ENCODE_FUNCTIONS) else "decode"
    if "server/infer_asgi.py" in path or "starlette/requests.py" in path:
        if function in ("read_body", "body", "stream", "receive", "_client_gone", "gone"):
            return "body read"
        if any(function.startswith(f) for f in ENCODE_FUNCTIONS):
            return "encode"
        if function == "decode":
            return "decode"
        return "routing/dataplane"
    if any(p in path for p in ("httptools", "http_protocol.py", "uvicorn/protocols/http", "h11")):
        return "HTTP parse"
    if "grpc/" in path or "server/grpc.py" in path or "grpc_health" in path:
        return "gRPC transport"
    if any(p in path for p in ("serving/dataplane.py", "serving/endpoint.py", "server/rest.py", "starlette/",
                               "serving/registry.py", "serving/limits.py", "rollout/", "graph/")):
        return "routing/dataplane"
    return None


def classify(stack: str) -> str:
    """The stage of one sampled stack (frames from the outermost to the innermost, ';'-joined)."""
    frames = stack.split(";")
    for frame in reversed(frames):
        path = frame.rsplit(" (", 1)[-1]
        if any(p in path for p in TRANSPARENT):
            continue
        stage = classify_frame(frame)
        if stage is not None:
            return stage
    return "event loop/other"


def read_profile(path: Path) -> Counter[str]:
    """Samples per stage from py-spy's raw (collapsed-stack) output."""
    stages: Counter[str] = Counter()
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            stages[classify(stack)] += int(count)
    return stages


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def h2load_command(protocol: str, port: int, request: run.Payload, concurrency: int, seconds: float,
                   body: Path) -> list[str]:
    command = ["taskset", "-c", run.LOADGEN_CPU, "h2load", "-t", "1", "-c", str(concurrency), "-m", "1",
               "-d", str(body), "-D", f"{seconds:g}"]
    if protocol != "v2-grpc":
        command.append("--h1")
    for key, value in request.headers.items():
        command += ["-H", f"{key}: {value}"]
    return [*command, f"http://127.0.0.1:{port}{request.path}"]


def succeeded(output: str) -> int:
    match = re.search(r"requests: \d+ total, \d+ started, \d+ done, (\d+) succeeded", output)
    return int(match.group(1)) if match else 0


def profile_row(name: str, running: run.Running, args: argparse.Namespace, tmp: Path,
                say: Callable[[str], None]) -> dict[str, object] | None:
    server, model, protocol, concurrency = ROWS[name]
    request = run.payload(protocol, model, run.feature_row())
    port = running.ports.grpc if protocol == "v2-grpc" else running.ports.http
    try:
        run.check(protocol, running.ports.http, request, running.ports.grpc)
    except (run.CheckFailed, OSError) as exc:
        say(f"  {name}: n/a: {exc}")
        return None
    body = tmp / f"{name}.body"
    body.write_bytes(request.body)
    subprocess.run(h2load_command(protocol, port, request, concurrency, args.warmup, body),
                   capture_output=True, text=True, check=False, timeout=args.warmup + 60)
    out = PROFILES / f"{name}.txt"
    # The load runs a little longer than the profile on both sides, so py-spy sees only load.
    load = subprocess.Popen(h2load_command(protocol, port, request, concurrency, args.duration + 2, body),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    time.sleep(1.0)
    cpu_before, wall_before = cpu_seconds(running.proc.pid), time.perf_counter()
    done = subprocess.run(["taskset", "-c", run.LOADGEN_CPU, str(PY_SPY), "record", "--pid", str(running.proc.pid),
                           "--format", "raw", "--nonblocking", "--rate", str(args.rate),
                           "--duration", f"{args.duration:g}", "--output", str(out)],
                          capture_output=True, text=True, check=False, timeout=args.duration + 60)
    cpu_after, wall_after = cpu_seconds(running.proc.pid), time.perf_counter()
    output, _ = load.communicate(timeout=args.duration + 60)
    if done.returncode != 0 or not out.exists():
        say(f"  {name}: py-spy failed ({done.returncode}): {(done.stderr or done.stdout).strip()[-300:]}")
        return None
    total = succeeded(output)
    elapsed = re.search(r"finished in ([\d.]+\w+),", output)
    rps = total / run.parse_duration(elapsed.group(1)) if elapsed else None
    stages = read_profile(out)
    samples = sum(stages.values())
    cpu = cpu_after - cpu_before
    wall = wall_after - wall_before
    # Requests answered in the profiled window: h2load's rate times the window.
    requests = (rps or 0) * wall
    say(f"  {name}: {samples} samples, server CPU {cpu:.2f} s in {wall:.2f} s, ~{requests:,.0f} requests "
        f"({rps or 0:,.0f} req/s under the profiler)")
    return {"row": name, "server": server, "model": model, "protocol": protocol, "concurrency": concurrency,
            "stages": dict(stages), "samples": samples, "cpu_s": cpu, "wall_s": wall, "rps": rps,
            "requests": requests, "profile": str(out)}


def table(rows: list[dict[str, object]]) -> str:
    header = "| stage | " + " | ".join(
        f"{r['server']} {r['model']} {run.PROTOCOL_LABELS[r['protocol']]} c={r['concurrency']}" for r in rows) + " |"
    lines = [header, "| --- |" + " ---: |" * len(rows)]
    for stage in STAGES:
        cells = []
        for r in rows:
            share = r["stages"].get(stage, 0) / r["samples"] if r["samples"] else 0.0
            per_request = share * r["cpu_s"] / r["requests"] * 1e6 if r["requests"] else 0.0
            cells.append(f"{100 * share:.1f}% · {per_request:,.1f} µs")
        lines.append(f"| {stage} | " + " | ".join(cells) + " |")
    totals = [f"**{r['cpu_s'] / r['requests'] * 1e6:,.1f} µs** ({r['rps'] or 0:,.0f} req/s, "
              f"CPU {100 * r['cpu_s'] / r['wall_s']:.0f}%)" if r["requests"] else "n/a" for r in rows]
    lines.append("| server CPU per request | " + " | ".join(totals) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", default="all", help=f"comma-separated rows ({', '.join(ROWS)}) or all")
    parser.add_argument("--duration", type=float, default=8.0, help="profiled seconds per row (default 8)")
    parser.add_argument("--warmup", type=float, default=2.0, help="load before profiling (default 2 s)")
    parser.add_argument("--rate", type=int, default=250, help="py-spy samples per second (default 250)")
    parser.add_argument("--output", type=Path, default=run.RESULTS / "stages.md")
    args = parser.parse_args(argv)
    names = list(ROWS) if args.rows == "all" else [n for n in args.rows.split(",") if n]
    unknown = [n for n in names if n not in ROWS]
    if unknown:
        parser.error(f"unknown rows {unknown}; choose from {', '.join(ROWS)}")
    if not PY_SPY.exists() and shutil.which("py-spy") is None:
        raise SystemExit("py-spy is missing: .venv/bin/pip install py-spy")
    if shutil.which("h2load") is None:
        raise SystemExit("h2load is missing: run benchmarks/setup.sh")
    os.sched_setaffinity(0, {int(run.LOADGEN_CPU)})
    PROFILES.mkdir(parents=True, exist_ok=True)
    run.LOGS.mkdir(parents=True, exist_ok=True)

    def say(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    load_before = run.load_average()
    run.precompile_shoal(say)
    results: list[dict[str, object]] = []
    failures: list[str] = []
    by_server: dict[str, list[str]] = {}
    for name in names:
        by_server.setdefault(ROWS[name][0], []).append(name)
    with tempfile.TemporaryDirectory(prefix="shoal-stages-") as tmp:
        for server, rows in by_server.items():
            spec = run.SERVERS[server]
            log_path = run.LOGS / f"stages-{server}.log"
            say(f"{server}: rows {', '.join(rows)}")
            with run.started(spec, log_path, failures) as running:
                for name in rows:
                    result = profile_row(name, running, args, Path(tmp), say)
                    if result is not None:
                        results.append(result)
    if not results:
        say("nothing profiled")
        return 1
    text = "\n".join([
        "# Per-stage server CPU (benchmarks/stages.py)", "",
        (f"{time.strftime('%Y-%m-%d %H:%M:%S %Z')} · {run.machine()} · Shoal at {run.shoal_revision()} · "
         f"load average before {load_before}, after {run.load_average()} · py-spy {args.rate} Hz, "
         f"{args.duration:g} s per row"), "",
        "Each cell: the stage's share of the server's sampled CPU · its CPU µs per request.", "",
        table(results), "",
        *(f"- **{stage}**: {note}" for stage, note in STAGE_NOTES.items()), "",
    ])
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text)
    with contextlib.suppress(OSError):
        (args.output.with_suffix(".json")).write_text(__import__("json").dumps(results, indent=1))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
