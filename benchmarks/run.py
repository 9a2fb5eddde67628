"""Shoal vs MLServer vs KServe (and two bare baselines) on one-row scikit-learn requests.

    benchmarks/setup.sh                               # venvs + h2load, once
    .venv/bin/python benchmarks/make_models.py        # the two models, once
    .venv/bin/python benchmarks/run.py [--quick] [--only shoal,mlserver] [--duration 5]

Each server runs alone, pinned to CPU 0 (``taskset -c 0``), on free loopback ports; h2load
drives it from CPU 1 (``taskset -c 1 h2load``) and this script keeps itself on CPU 1 too.
For every server, model, protocol and concurrency it records successful requests per second
and p50/p99 latency (from h2load's per-request ``--log-file``), and counts failures: non-2xx
statuses, failed streams, and for gRPC, responses without a message (a gRPC error has HTTP
status 200 but no body, so each successful response must carry exactly the bytes of the
verified answer). Before any load a protocol is checked with one request from Python (http.client
or grpcio) that must return the model's correct prediction; a protocol a server does not
offer is reported n/a with the reason. Results: a markdown table on stdout and in
benchmarks/results/latest.md (plus latest.json).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import http.client
import json
import os
import re
import shlex
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import joblib
import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
WORK = HERE / ".work"
MODELS = WORK / "models"
LOGS = WORK / "logs"
RESULTS = HERE / "results"
SHOAL_VENV = Path(os.environ.get("SHOAL_VENV", ROOT / ".venv"))

sys.path.insert(0, str(HERE))
import make_models  # noqa: E402  (same folder: the data the models were trained on)

try:
    import grpc

    from shoal.protocol.grpc_gen import grpc_service_pb2 as pb
    from shoal.protocol.grpc_gen import grpc_service_pb2_grpc as pb_grpc
except ImportError as exc:  # pragma: no cover - run with Shoal's venv
    raise SystemExit(f"run this with Shoal's venv (.venv/bin/python): {exc}") from None

SHOAL_ARGS: list[str] = []  # extra `shoal serve` options (--shoal-args)
SERVER_CPU = "0"
LOADGEN_CPU = "1"
MODEL_NAMES = ("logreg", "forest")
PROTOCOLS = ("v2-json", "v2-binary", "v2-grpc", "v1")
PROTOCOL_LABELS = {
    "v2-json": "V2 REST JSON", "v2-binary": "V2 REST binary", "v2-grpc": "V2 gRPC", "v1": "V1 REST",
}
GRPC_PATH = "/inference.GRPCInferenceService/ModelInfer"
HEADER_LENGTH = "Inference-Header-Content-Length"
CEILING_BATCHES = (1, 32)  # rows per in-process predict call for the model ceiling
NP_TYPES = {"INT64": "<i8", "INT32": "<i4", "FP64": "<f8", "FP32": "<f4", "BOOL": "?", "UINT8": "u1"}


# --------------------------------------------------------------------------- servers


@dataclasses.dataclass
class Ports:
    http: int
    grpc: int
    metrics: int


@dataclasses.dataclass
class ServerSpec:
    name: str
    command: Callable[[Ports], list[str]]
    env: Callable[[Ports], dict[str, str]] = lambda ports: {}
    protocols: tuple[str, ...] = PROTOCOLS
    models: tuple[str, ...] = MODEL_NAMES  # ("-",) for a baseline that has no model
    ready: str = "http"  # "http": /v2/health/ready + each model's ready; "grpc": ServerReady
    baseline: bool = False
    batch_metrics: bool = False  # Shoal: read shoal_batch_size from /metrics around each row
    notes: str = ""


def shoal_python() -> str:
    return str(SHOAL_VENV / "bin" / "python")


def shoal_command(layout: str) -> Callable[[Ports], list[str]]:
    return lambda p: [str(SHOAL_VENV / "bin" / "shoal"), "serve", str(MODELS / layout),
                      "--http-port", str(p.http), "--grpc-port", str(p.grpc), *SHOAL_ARGS]


def mlserver_command(layout: str) -> Callable[[Ports], list[str]]:
    return lambda p: [str(WORK / "venv-mlserver" / "bin" / "mlserver"), "start", str(MODELS / layout)]


def mlserver_env(p: Ports) -> dict[str, str]:
    return {"MLSERVER_HTTP_PORT": str(p.http), "MLSERVER_GRPC_PORT": str(p.grpc),
            "MLSERVER_METRICS_PORT": str(p.metrics), "MLSERVER_HOST": "127.0.0.1"}


CEILING = "model-ceiling"  # not a server: the estimator's own predict, in-process (ceiling.py)


SERVERS: dict[str, ServerSpec] = {
    spec.name: spec
    for spec in (
        ServerSpec(
            "shoal",
            shoal_command("shoal"),
            batch_metrics=True,  # nothing to read unless --shoal-args turns batching on
            notes="defaults (info log level: no per-request log lines; no batching)",
        ),
        ServerSpec(
            "shoal-batch",
            shoal_command("shoal-batch"),
            batch_metrics=True,
            notes="defaults plus adaptive batching in each model.yaml: max_batch_size 32, max_batch_delay_ms 2",
        ),
        ServerSpec(
            "mlserver",
            mlserver_command("mlserver"), env=mlserver_env,
            notes="defaults: parallel_workers=1 (inference in one worker process), metrics on; no batching",
        ),
        ServerSpec(
            "mlserver-batch",
            mlserver_command("mlserver-batch"), env=mlserver_env,
            notes="defaults plus adaptive batching in each model-settings.json: max_batch_size 32, "
                  "max_batch_time 0.002 (s)",
        ),
        ServerSpec(
            "kserve",
            lambda p: [str(WORK / "venv-kserve" / "bin" / "python"), str(HERE / "servers" / "kserve_sklearn.py"),
                       "--model_dir", str(MODELS / "kserve"),
                       "--http_port", str(p.http), "--grpc_port", str(p.grpc)],
            notes="kserve.ModelServer defaults: 1 uvicorn worker, per-request access + latency log lines",
        ),
        ServerSpec(
            "baseline-uvicorn",
            lambda p: [shoal_python(), str(HERE / "baselines" / "uvicorn_fixed.py"), "--port", str(p.http)],
            protocols=("v2-json",), models=("-",), baseline=True,
            notes="bare ASGI app on uvicorn+httptools+uvloop, fixed JSON response",
        ),
        ServerSpec(
            "baseline-grpc",
            lambda p: [shoal_python(), str(HERE / "baselines" / "grpc_fixed.py"), "--port", str(p.grpc)],
            protocols=("v2-grpc",), models=("-",), ready="grpc", baseline=True,
            notes="bare grpc.aio servicer on asyncio's default loop, fixed ModelInferResponse",
        ),
        ServerSpec(
            "baseline-grpc-uvloop",
            lambda p: [shoal_python(), str(HERE / "baselines" / "grpc_fixed.py"), "--port", str(p.grpc), "--uvloop"],
            protocols=("v2-grpc",), models=("-",), ready="grpc", baseline=True,
            notes="the same bare grpc.aio servicer on uvloop (Shoal runs its gRPC server on uvloop)",
        ),
    )
}
RUN_ORDER = (CEILING, *SERVERS)  # the default full run, in this order


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def descendants(pid: int) -> list[int]:
    """pid and every process below it, from /proc (parent links)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(children.get(current, []))
    return found


def rss_kib(pid: int) -> tuple[int, int]:
    """Summed VmRSS (KiB) of pid and its descendants, and how many processes that is."""
    total, count = 0, 0
    for proc in descendants(pid):
        try:
            for line in Path(f"/proc/{proc}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
                    count += 1
                    break
        except OSError:
            continue
    return total, count


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of pid and its descendants (all their threads)."""
    total = 0.0
    for proc in descendants(pid):
        try:
            fields = Path(f"/proc/{proc}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


class Running:
    """One started server: its ports, process and log."""

    def __init__(self, spec: ServerSpec, log_path: Path) -> None:
        self.spec = spec
        self.ports = Ports(free_port(), free_port(), free_port())
        self.log_path = log_path
        env = {**os.environ, **spec.env(self.ports), "PYTHONUNBUFFERED": "1"}
        self.log = open(log_path, "ab")
        self.started = time.perf_counter()
        self.proc = subprocess.Popen(
            ["taskset", "-c", SERVER_CPU, *spec.command(self.ports)],
            stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, cwd=ROOT,
        )
        self.startup_s: float | None = None
        self.startup_cpu_s: float | None = None  # CPU time of the process tree when it got ready

    def wait_ready(self, timeout: float) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.spec.name} exited with {self.proc.returncode}; "
                                   f"log tail:\n{self.log_tail()}")
            if self._is_ready():
                self.startup_s = time.perf_counter() - self.started
                self.startup_cpu_s = cpu_seconds(self.proc.pid)
                return self.startup_s
            time.sleep(0.01)
        raise RuntimeError(f"{self.spec.name} not ready after {timeout:.0f}s; log tail:\n{self.log_tail()}")

    def _is_ready(self) -> bool:
        if self.spec.ready == "grpc":
            try:
                with grpc.insecure_channel(f"127.0.0.1:{self.ports.grpc}") as channel:
                    stub = pb_grpc.GRPCInferenceServiceStub(channel)
                    return stub.ServerReady(pb.ServerReadyRequest(), timeout=0.5).ready
            except grpc.RpcError:
                return False
        paths = ["/v2/health/ready"] + [f"/v2/models/{m}/ready" for m in self.spec.models if m != "-"]
        for path in paths:
            try:
                status, _, _ = http_request(self.ports.http, "GET", path, timeout=0.5)
            except OSError:
                return False
            if status != 200:
                return False
        return True

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM to the server's PID, then SIGKILL to it and to any child left behind."""
        if self.proc.poll() is None:
            family = descendants(self.proc.pid)
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            for pid in family[1:]:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        self.log.close()

    def log_tail(self, lines: int = 15) -> str:
        self.log.flush()
        text = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])


@contextlib.contextmanager
def started(spec: ServerSpec, log_path: Path, failures: list[str], attempts: int = 2,
            timeout: float = 90.0) -> Iterator[Running]:
    """A ready server; a start that fails or never gets ready is recorded and retried once."""
    for attempt in range(attempts):
        running = Running(spec, log_path)
        try:
            running.wait_ready(timeout)
        except RuntimeError as exc:
            running.stop()
            failures.append(str(exc).splitlines()[0])
            if attempt == attempts - 1:
                raise
            continue
        try:
            yield running
        finally:
            running.stop()
        return


# --------------------------------------------------------------------------- requests


def http_request(port: int, method: str, path: str, body: bytes | None = None,
                 headers: dict[str, str] | None = None, timeout: float = 10.0) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


@dataclasses.dataclass
class Payload:
    """One request, as h2load sends it and as the Python check sends it."""
    path: str
    body: bytes
    headers: dict[str, str]


def feature_row() -> np.ndarray:
    x, _ = make_models.data()
    return np.round(x[0], 6).astype(np.float64)


def payload(protocol: str, model: str, row: np.ndarray) -> Payload:
    name = "logreg" if model == "-" else model
    values = [float(v) for v in row]
    tensor = {"name": "input-0", "shape": [1, len(values)], "datatype": "FP64"}
    if protocol == "v2-json":
        body = json.dumps({"inputs": [{**tensor, "data": values}]}).encode()
        return Payload(f"/v2/models/{name}/infer", body, {"content-type": "application/json"})
    if protocol == "v2-binary":
        raw = row.astype("<f8").tobytes()
        header = json.dumps({
            "inputs": [{**tensor, "parameters": {"binary_data_size": len(raw)}}],
            "parameters": {"binary_data_output": True},
        }).encode()
        return Payload(f"/v2/models/{name}/infer", header + raw,
                       {"content-type": "application/octet-stream", HEADER_LENGTH: str(len(header))})
    if protocol == "v1":
        body = json.dumps({"instances": [values]}).encode()
        return Payload(f"/v1/models/{name}:predict", body, {"content-type": "application/json"})
    if protocol == "v2-grpc":
        message = grpc_request(name, row)
        serialized = message.SerializeToString()
        framed = b"\x00" + struct.pack(">I", len(serialized)) + serialized
        return Payload(GRPC_PATH, framed, {"content-type": "application/grpc", "te": "trailers"})
    raise ValueError(protocol)


def grpc_request(name: str, row: np.ndarray) -> Any:
    return pb.ModelInferRequest(
        model_name=name,
        inputs=[pb.ModelInferRequest.InferInputTensor(name="input-0", datatype="FP64", shape=[1, len(row)])],
        raw_input_contents=[row.astype("<f8").tobytes()],
    )


class CheckFailed(Exception):
    pass


def first_value(data: Any) -> Any:
    while isinstance(data, list):
        if not data:
            raise CheckFailed("empty output")
        data = data[0]
    return data


def decode_v2_output(outputs: list[dict[str, Any]], binary: bytes) -> Any:
    if not outputs:
        raise CheckFailed("no outputs in the response")
    output = outputs[0]
    size = (output.get("parameters") or {}).get("binary_data_size")
    if size is not None:
        dtype = NP_TYPES.get(output["datatype"])
        if dtype is None:
            raise CheckFailed(f"unexpected datatype {output['datatype']}")
        return np.frombuffer(binary[:size], dtype=dtype)[0].item()
    return first_value(output.get("data"))


def check(protocol: str, port: int, request: Payload, grpc_port: int) -> tuple[Any, int]:
    """One request from Python: (the predicted value, bytes h2load will count per response)."""
    if protocol == "v2-grpc":
        with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            message = pb.ModelInferRequest.FromString(request.body[5:])
            try:
                response, call = stub.ModelInfer.with_call(message, timeout=10)
            except grpc.RpcError as exc:
                raise CheckFailed(f"grpc {exc.code().name}: {exc.details()}") from None
            if call.code() != grpc.StatusCode.OK:
                raise CheckFailed(f"grpc-status {call.code().name}")
        if not response.outputs:
            raise CheckFailed("no outputs in the response")
        output = response.outputs[0]
        if response.raw_output_contents:
            dtype = NP_TYPES.get(output.datatype)
            if dtype is None:
                raise CheckFailed(f"unexpected datatype {output.datatype}")
            value = np.frombuffer(response.raw_output_contents[0], dtype=dtype)[0].item()
        else:
            contents = output.contents
            field = next((f for f in ("int64_contents", "int_contents", "fp64_contents", "fp32_contents",
                                      "uint64_contents", "uint_contents", "bool_contents")
                          if len(getattr(contents, f))), None)
            if field is None:
                raise CheckFailed("the output has no contents")
            value = getattr(contents, field)[0]
        return value, response.ByteSize() + 5
    status, headers, body = http_request(port, "POST", request.path, request.body, request.headers)
    if not 200 <= status < 300:
        raise CheckFailed(f"HTTP {status}: {body[:160].decode(errors='replace').strip()}")
    try:
        if protocol == "v1":
            return first_value(json.loads(body)["predictions"]), len(body)
        json_length = headers.get(HEADER_LENGTH.lower())
        if json_length is not None:
            header = json.loads(body[: int(json_length)])
            return decode_v2_output(header["outputs"], body[int(json_length):]), len(body)
        return decode_v2_output(json.loads(body)["outputs"], b""), len(body)
    except (ValueError, KeyError, TypeError, IndexError) as exc:
        raise CheckFailed(f"unreadable response ({type(exc).__name__}: {exc}): {body[:120]!r}") from None


# --------------------------------------------------------------------------- load


@dataclasses.dataclass
class Measurement:
    server: str
    model: str
    protocol: str
    concurrency: int
    rps: float | None = None
    p50_ms: float | None = None
    p99_ms: float | None = None
    ok: int = 0
    errors: int = 0
    note: str = ""
    batch_mean: float | None = None  # rows per predict in the measured window (shoal_batch_size)
    batches: int | None = None  # predict calls in the measured window
    # Shoal with batching on (one model execution at a time; without batching, executions in
    # several model threads overlap and their summed time means little):
    busy: float | None = None  # model compute time / wall time in the measured window (Shoal's stats)
    predict_ms: float | None = None  # mean model compute time per execution in the window


def h2load(protocol: str, port: int, request: Payload, concurrency: int, duration: float, warmup: float,
           expected_bytes: int, tmp: Path, before_measure: Callable[[], None] | None = None) -> Measurement:
    body_file = tmp / "body.bin"
    body_file.write_bytes(request.body)
    log_file = tmp / "requests.log"
    log_file.unlink(missing_ok=True)
    base = ["taskset", "-c", LOADGEN_CPU, "h2load", "-t", "1", "-c", str(concurrency), "-m", "1",
            "-d", str(body_file)]
    if protocol != "v2-grpc":
        base.append("--h1")
    for key, value in request.headers.items():
        base += ["-H", f"{key}: {value}"]
    url = f"http://127.0.0.1:{port}{request.path}"
    result = Measurement("", "", protocol, concurrency)
    # A warm-up run for `warmup` seconds, then a measured run of a fixed number of requests
    # (the warm-up rate x `duration`): with -n every request started also finishes, so the
    # response-byte check below is exact (with -D, responses still in flight at the end are
    # in the byte total but not in the request counts).
    requests = max(10 * concurrency, int(200 * duration))
    if warmup > 0:
        done = run_h2load(base + ["-D", f"{warmup:g}", url], warmup + 60)
        if isinstance(done, str):
            result.note = done
            return result
        rate = re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", done.stdout)
        if rate:
            requests = max(10 * concurrency, int(float(rate.group(1)) * duration))
    if before_measure is not None:
        before_measure()
    done = run_h2load(base + ["-n", str(requests), f"--log-file={log_file}", url], 20 * duration + 60)
    if isinstance(done, str):
        result.note = done
        return result
    out = done.stdout
    elapsed = parse_duration(re.search(r"finished in ([\d.]+\w+),", out).group(1))
    counts = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, "
                       r"(\d+) failed, (\d+) errored, (\d+) timeout", out)
    codes = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out)
    traffic = re.search(r"traffic: .*?\((\d+)\) total, .*?\((\d+)\) headers .*?, .*?\((\d+)\) data", out)
    if not (counts and codes and traffic):
        result.note = "cannot parse h2load's summary"
        return result
    status_2xx = int(codes.group(1))
    data_bytes = int(traffic.group(3))

    # A 2xx response must carry exactly the verified answer's bytes: a gRPC error travels in
    # trailers with HTTP status 200 and no message at all.
    missing = 0
    if expected_bytes > 0 and data_bytes != status_2xx * expected_bytes:
        shortfall = status_2xx * expected_bytes - data_bytes
        missing = max(1, round(shortfall / expected_bytes)) if shortfall > 0 else 0
        result.note = f"response bytes {data_bytes:,} != {status_2xx:,} x {expected_bytes}"
        if protocol == "v2-grpc" and shortfall > 0:
            result.note = f"~{missing} responses without a message (grpc-status != 0)"
    ok = max(0, status_2xx - missing)
    result.ok = ok
    result.errors = max(0, requests - ok)  # every request not answered with the right body
    result.rps = ok / elapsed if elapsed > 0 else None

    latencies = read_latencies(log_file)
    if latencies.size:
        result.p50_ms = float(np.percentile(latencies, 50)) / 1000
        result.p99_ms = float(np.percentile(latencies, 99)) / 1000
    return result


def run_h2load(command: list[str], timeout: float) -> subprocess.CompletedProcess[str] | str:
    """h2load's finished run, or why it did not finish."""
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return "h2load timed out"
    if done.returncode != 0 or "finished in" not in done.stdout:
        return f"h2load failed ({done.returncode}): {(done.stderr or done.stdout).strip()[-200:]}"
    return done


def parse_duration(text: str) -> float:
    """h2load's '5.00s' / '812.31ms' / '950us'."""
    number = re.match(r"[\d.]+", text).group(0)
    return float(number) * {"s": 1.0, "ms": 1e-3, "us": 1e-6}[text[len(number):]]


def read_latencies(log_file: Path) -> np.ndarray:
    """Latencies (µs) of the 2xx requests in h2load's log."""
    if not log_file.exists() or not log_file.stat().st_size:
        return np.empty(0)
    rows = np.loadtxt(log_file, dtype=np.int64, ndmin=2, usecols=(0, 1, 2))
    statuses, latencies = rows[:, 1], rows[:, 2]
    return latencies[(statuses >= 200) & (statuses < 300)].astype(np.float64)


# --------------------------------------------------------------------------- batching and ceiling


def batch_counts(port: int, model: str) -> tuple[float, float] | None:
    """(count, sum) of Shoal's shoal_batch_size histogram for one model, from GET /metrics."""
    try:
        status, _, body = http_request(port, "GET", "/metrics", timeout=5)
    except OSError:
        return None
    if status != 200:
        return None
    count = total = 0.0
    for line in body.decode(errors="replace").splitlines():
        match = re.match(r'shoal_batch_size_(count|sum)\{([^}]*)\} (\S+)$', line)
        if match and f'model="{model}"' in match.group(2):
            if match.group(1) == "count":
                count += float(match.group(3))
            else:
                total += float(match.group(3))
    return count, total


def model_stats(port: int, model: str) -> dict[str, float] | None:
    """Shoal's Triton statistics for one model (``GET /v2/models/{m}/stats``), summed over its
    versions, with the time they were read: executions, inferences and the per-execution
    stage times (``batch_stats``: one ``compute_infer`` per model call, whatever its rows)."""
    try:
        status, _, body = http_request(port, "GET", f"/v2/models/{model}/stats", timeout=5)
    except OSError:
        return None
    read_at = time.perf_counter()
    if status != 200:
        return None
    try:
        versions = json.loads(body)["model_stats"]
    except (ValueError, KeyError, TypeError):
        return None
    totals = {"t": read_at, "executions": 0.0, "inferences": 0.0, "infer_ns": 0.0}
    for version in versions:
        totals["executions"] += version.get("execution_count", 0)
        totals["inferences"] += version.get("inference_count", 0)
        for batch in version.get("batch_stats", []):
            totals["infer_ns"] += batch["compute_infer"]["ns"]
    return totals


def busy_fractions(before: dict[str, float] | None,
                   after: dict[str, float] | None) -> tuple[float, float | None] | None:
    """(model compute / wall, mean compute ms per execution) between two ``model_stats``
    readings."""
    if before is None or after is None or after["t"] <= before["t"]:
        return None
    wall_ns = (after["t"] - before["t"]) * 1e9
    infer = after["infer_ns"] - before["infer_ns"]
    executions = after["executions"] - before["executions"]
    return infer / wall_ns, (infer / executions / 1e6 if executions else None)


def measure_ceiling(args: argparse.Namespace, say: Callable[[str], None]) -> list[dict[str, Any]]:
    """The estimator's own predict, in a subprocess pinned to the server CPU (ceiling.py)."""
    models = [m for m in MODEL_NAMES if not args.models or m in args.models]
    command = ["taskset", "-c", SERVER_CPU, shoal_python(), str(HERE / "ceiling.py"),
               "--models", ",".join(models), "--batch", ",".join(str(b) for b in CEILING_BATCHES),
               "--duration", f"{args.duration:g}", "--warmup", f"{max(args.warmup, 0.5):g}"]
    timeout = len(models) * len(CEILING_BATCHES) * (args.duration + args.warmup + 5) + 60
    done = subprocess.run(command, check=False, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"ceiling.py failed ({done.returncode}): {done.stderr.strip()[-300:]}")
    results = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    for r in results:
        say(f"  {r['model']} predict on {r['batch']} row(s): {r['rows_per_s']:,.0f} rows/s, "
            f"p50 {r['p50_us']:.0f} us, p99 {r['p99_us']:.0f} us per call")
    return results


# --------------------------------------------------------------------------- run


@dataclasses.dataclass
class Startup:
    server: str
    startup_s: list[float]
    startup_cpu_s: list[float] = dataclasses.field(default_factory=list)  # CPU to ready, per start
    rss_ready_kib: int = 0
    rss_after_kib: int = 0
    processes: int = 0
    failures: list[str] = dataclasses.field(default_factory=list)  # starts that never got ready


def expected_predictions(row: np.ndarray) -> dict[str, Any]:
    expected = {}
    for name in MODEL_NAMES:
        estimator = joblib.load(MODELS / "_artifacts" / f"{name}.joblib")
        expected[name] = estimator.predict(row.reshape(1, -1))[0].item()
    return expected


def run_server(spec: ServerSpec, args: argparse.Namespace, row: np.ndarray, expected: dict[str, Any],
               tmp: Path, say: Callable[[str], None]) -> tuple[list[Measurement], Startup]:
    log_path = LOGS / f"{spec.name}.log"
    log_path.write_bytes(b"")
    startup = Startup(spec.name, [])
    # Extra start/stop cycles for the startup time only (the first start pays cold caches).
    for _ in range(max(0, args.startup_runs - 1)):
        with started(spec, log_path, startup.failures) as running:
            startup.startup_s.append(running.startup_s)
            startup.startup_cpu_s.append(running.startup_cpu_s)
        time.sleep(0.5)
    measurements: list[Measurement] = []
    with started(spec, log_path, startup.failures) as running:
        startup.startup_s.append(running.startup_s)
        startup.startup_cpu_s.append(running.startup_cpu_s)
        time.sleep(0.5)  # let startup work (GC, lazy imports) settle before reading memory
        startup.rss_ready_kib, startup.processes = rss_kib(running.proc.pid)
        say(f"{spec.name}: ready in {running.startup_s:.2f}s, RSS {startup.rss_ready_kib / 1024:.0f} MiB "
            f"in {startup.processes} process(es)")
        for model in spec.models:
            if args.models and model != "-" and model not in args.models:
                continue
            for protocol in spec.protocols:
                if args.protocols and protocol not in args.protocols:
                    continue
                request = payload(protocol, model, row)
                port = running.ports.grpc if protocol == "v2-grpc" else running.ports.http
                try:
                    value, size = check(protocol, running.ports.http, request, running.ports.grpc)
                    if not spec.baseline and value != expected[model]:
                        raise CheckFailed(f"wrong prediction {value!r}, expected {expected[model]!r}")
                except (CheckFailed, OSError) as exc:
                    note = f"n/a: {exc}"
                    say(f"  {model} {protocol}: {note}")
                    measurements.append(Measurement(spec.name, model, protocol, 0, note=note))
                    continue
                for concurrency in args.concurrency:
                    before: list[Any] = []
                    hook = None
                    if spec.batch_metrics:
                        def hook(before=before, port=running.ports.http, model=model) -> None:
                            before.append(batch_counts(port, model))
                            before.append(model_stats(port, model))
                    m = h2load(protocol, port, request, concurrency, args.duration, args.warmup, size, tmp, hook)
                    m.server, m.model = spec.name, model
                    if spec.batch_metrics and before:
                        stats_after = model_stats(running.ports.http, model)
                        after = batch_counts(running.ports.http, model)
                        if before[0] is not None and after is not None and after[0] > before[0][0]:
                            m.batches = int(after[0] - before[0][0])
                            m.batch_mean = (after[1] - before[0][1]) / (after[0] - before[0][0])
                        busy = busy_fractions(before[1], stats_after)
                        if busy is not None and m.batch_mean is not None:  # batching on
                            m.busy, m.predict_ms = busy
                    measurements.append(m)
                    batching = f", {m.batch_mean:.1f} rows/predict" if m.batch_mean is not None else ""
                    if m.busy is not None:
                        batching += f", model busy {100 * m.busy:.0f}% ({fmt(m.predict_ms, 2)} ms per predict)"
                    say(f"  {model} {protocol} c={concurrency}: {fmt(m.rps, 0)} req/s, p50 {fmt(m.p50_ms, 2)} ms, "
                        f"p99 {fmt(m.p99_ms, 2)} ms{batching}, {m.errors} errors {m.note}")
                try:  # still answering correctly after the load?
                    check(protocol, running.ports.http, request, running.ports.grpc)
                except (CheckFailed, OSError) as exc:
                    measurements[-1].note += f" (check after load failed: {exc})"
        startup.rss_after_kib, _ = rss_kib(running.proc.pid)
    return measurements, startup


# --------------------------------------------------------------------------- report


def fmt(value: float | None, digits: int) -> str:
    return "n/a" if value is None else f"{value:,.{digits}f}"


def find(results: list[Measurement], server: str, model: str, protocol: str, concurrency: int) -> Measurement | None:
    for m in results:
        if (m.server, m.model, m.protocol, m.concurrency) == (server, model, protocol, concurrency):
            return m
    return None


def ratio_line(label: str, a: float | None, b: float | None, unit: str = "x") -> str:
    if a is None or b is None or b == 0:
        return f"| {label} | n/a (not measured) |"
    return f"| {label} | {a / b:.2f}{unit} |"


def report(results: list[Measurement], startups: list[Startup], args: argparse.Namespace,
           ceiling: list[dict[str, Any]] | None = None, context: dict[str, str] | None = None,
           checked: list[Goal] | None = None) -> str:
    ceiling = ceiling or []
    context = context or {}
    revision = context.get("shoal_before", "unknown")
    if context.get("shoal_after", revision) != revision:
        revision += f" at the start, {context['shoal_after']} at the end (Shoal's source changed during the run)"
    lines = [
        "# Shoal benchmark results", "",
        f"{time.strftime('%Y-%m-%d %H:%M:%S %Z')} · {machine()} · servers on CPU {SERVER_CPU}, "
        f"h2load on CPU {LOADGEN_CPU} · {args.warmup:g}s warm-up + {args.duration:g}s per row · "
        "one-row FP64 requests, shape [1, 20]", "",
        (f"Shoal at {revision}. Load average (1/5/15 min) before the run {context.get('load_before', 'unknown')}, "
         f"after it {context.get('load_after', 'unknown')}."), "",
        ("req/s counts successful responses only; errors = non-2xx, failed streams, and gRPC responses "
         "without a message. p50/p99 are over successful requests in the measured window. rows/predict: "
         "mean rows per model execution in the measured window, from Shoal's shoal_batch_size histogram "
         "(Shoal with batching only; MLServer exposes no batch-size metric). model busy (Shoal): the model's "
         "compute time (the summed compute_infer of /v2/models/{m}/stats batch_stats, one per predict call) "
         "over the wall time of the measured window; 100% means the server spent the whole row inside "
         "predict. model-ceiling rows: the estimator's "
         f"`predict` called in-process on CPU {SERVER_CPU} (benchmarks/ceiling.py); req/s there is rows/s and "
         "p50/p99 are per `predict` call."), "",
        "| server | model | protocol | concurrency | req/s | p50 ms | p99 ms | rows/predict | model busy | errors |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in ceiling:
        lines.append(f"| {CEILING} | {r['model']} | in-process predict, {r['batch']} row{'s' if r['batch'] > 1 else ''} "
                     f"| - | {r['rows_per_s']:,.0f} | {r['p50_us'] / 1000:.2f} | {r['p99_us'] / 1000:.2f} | "
                     f"{r['batch']} | 100% | - |")
    for m in results:
        label = PROTOCOL_LABELS[m.protocol]
        if m.concurrency == 0:
            lines.append(f"| {m.server} | {m.model} | {label} | - | n/a | n/a | n/a | | | "
                         f"{m.note.removeprefix('n/a: ')} |")
            continue
        errors = str(m.errors) + (f" ({m.note.strip()})" if m.note.strip() else "")
        batch = f"{m.batch_mean:.1f}" if m.batch_mean is not None else ""
        busy = f"{100 * m.busy:.0f}%" if m.busy is not None else ""
        lines.append(f"| {m.server} | {m.model} | {label} | {m.concurrency} | {fmt(m.rps, 0)} | "
                     f"{fmt(m.p50_ms, 2)} | {fmt(m.p99_ms, 2)} | {batch} | {busy} | {errors} |")

    lines += ["", "## Startup and memory", "",
              f"Startup: process start until /v2/health/ready and every model's ready endpoint answer 200 "
              f"(gRPC baseline: ServerReady), median of {args.startup_runs} start(s); CPU s to ready: user + system "
              "CPU of the server's processes at that moment (other load on the machine stretches the wall time, "
              "much less the CPU time). RSS: VmRSS summed over "
              "the server and its child processes.", "",
              "| server | startup to ready s (median) | runs s | CPU s to ready (median) | RSS after ready MiB | "
              "RSS after load MiB | processes |",
              "| --- | ---: | --- | ---: | ---: | ---: | ---: |"]
    for s in startups:
        if not s.startup_s:
            lines.append(f"| {s.server} | n/a | | n/a | n/a | n/a | |")
            continue
        runs = ", ".join(f"{v:.2f}" for v in s.startup_s)
        cpu = f"{statistics.median(s.startup_cpu_s):.2f}" if s.startup_cpu_s else "n/a"
        lines.append(f"| {s.server} | {statistics.median(s.startup_s):.2f} | {runs} | {cpu} | "
                     f"{s.rss_ready_kib / 1024:.0f} | {s.rss_after_kib / 1024:.0f} | {s.processes} |")
    failed_starts = [(s.server, f) for s in startups for f in s.failures]
    if failed_starts:
        lines += ["", "Failed starts (retried once; not counted in the startup times):", ""]
        lines += [f"- {server}: {failure}" for server, failure in failed_starts]

    def rps(server: str, model: str, protocol: str, c: int) -> float | None:
        m = find(results, server, model, protocol, c)
        return m.rps if m else None

    def p99(server: str, model: str, protocol: str, c: int) -> float | None:
        m = find(results, server, model, protocol, c)
        return m.p99_ms if m else None

    def ceiling_of(model: str, batch: int) -> float | None:
        return next((r["rows_per_s"] for r in ceiling if r["model"] == model and r["batch"] == batch), None)

    c = max(args.concurrency)
    by_server = {s.server: s for s in startups if s.startup_s}

    def startup_of(name: str) -> float | None:
        return statistics.median(by_server[name].startup_s) if name in by_server else None

    def startup_cpu_of(name: str) -> float | None:
        s = by_server.get(name)
        return statistics.median(s.startup_cpu_s) if s is not None and s.startup_cpu_s else None

    def rss_of(name: str) -> float | None:
        return by_server[name].rss_ready_kib if name in by_server else None

    lines += ["", "## Ratios", "", "| comparison | ratio |", "| --- | ---: |",
              ratio_line(f"Shoal / MLServer throughput, V2 REST JSON, logreg, c={c}",
                         rps("shoal", "logreg", "v2-json", c), rps("mlserver", "logreg", "v2-json", c)),
              ratio_line(f"Shoal / MLServer throughput, V2 REST JSON, forest, c={c}",
                         rps("shoal", "forest", "v2-json", c), rps("mlserver", "forest", "v2-json", c)),
              ratio_line(f"Shoal / MLServer throughput, V2 gRPC, logreg, c={c}",
                         rps("shoal", "logreg", "v2-grpc", c), rps("mlserver", "logreg", "v2-grpc", c)),
              ratio_line(f"Shoal / MLServer throughput, V2 gRPC, forest, c={c}",
                         rps("shoal", "forest", "v2-grpc", c), rps("mlserver", "forest", "v2-grpc", c)),
              ratio_line(f"Shoal / KServe throughput, V2 REST JSON, logreg, c={c}",
                         rps("shoal", "logreg", "v2-json", c), rps("kserve", "logreg", "v2-json", c)),
              ratio_line(f"Shoal / KServe throughput, V2 gRPC, logreg, c={c}",
                         rps("shoal", "logreg", "v2-grpc", c), rps("kserve", "logreg", "v2-grpc", c)),
              ratio_line(f"Shoal gRPC (logreg) / bare grpc.aio baseline throughput, c={c}",
                         rps("shoal", "logreg", "v2-grpc", c), rps("baseline-grpc", "-", "v2-grpc", c)),
              ratio_line(f"Shoal V2 REST JSON (logreg) / bare uvicorn baseline throughput, c={c}",
                         rps("shoal", "logreg", "v2-json", c), rps("baseline-uvicorn", "-", "v2-json", c)),
              ratio_line("Shoal / KServe startup to ready (lower is better)", startup_of("shoal"), startup_of("kserve")),
              ratio_line("Shoal / MLServer startup to ready (lower is better)", startup_of("shoal"), startup_of("mlserver")),
              ratio_line("Shoal / KServe CPU time to ready (lower is better; steadier than wall time on a busy "
                         "machine)", startup_cpu_of("shoal"), startup_cpu_of("kserve")),
              ratio_line("Shoal / KServe RSS after ready (lower is better)", rss_of("shoal"), rss_of("kserve")),
              ratio_line("Shoal / MLServer RSS after ready (lower is better)", rss_of("shoal"), rss_of("mlserver")),
              ]
    lines += ["", "### With adaptive batching (max batch size 32, max delay 2 ms)", "",
              "| comparison | ratio |", "| --- | ---: |",
              ratio_line(f"shoal-batch / mlserver-batch throughput, V2 REST JSON, forest, c={c}",
                         rps("shoal-batch", "forest", "v2-json", c), rps("mlserver-batch", "forest", "v2-json", c)),
              ratio_line(f"shoal-batch / mlserver-batch throughput, V2 REST JSON, logreg, c={c}",
                         rps("shoal-batch", "logreg", "v2-json", c), rps("mlserver-batch", "logreg", "v2-json", c)),
              ratio_line(f"shoal-batch / mlserver-batch throughput, V2 gRPC, forest, c={c}",
                         rps("shoal-batch", "forest", "v2-grpc", c), rps("mlserver-batch", "forest", "v2-grpc", c)),
              ratio_line(f"shoal-batch / mlserver-batch throughput, V2 gRPC, logreg, c={c}",
                         rps("shoal-batch", "logreg", "v2-grpc", c), rps("mlserver-batch", "logreg", "v2-grpc", c)),
              ratio_line(f"shoal-batch / mlserver-batch p99 latency, V2 REST JSON, forest, c={c} (lower is better)",
                         p99("shoal-batch", "forest", "v2-json", c), p99("mlserver-batch", "forest", "v2-json", c)),
              ratio_line(f"shoal-batch forest V2 REST JSON c={c} / model ceiling (predict on 32 rows)",
                         rps("shoal-batch", "forest", "v2-json", c), ceiling_of("forest", 32)),
              ratio_line(f"mlserver-batch forest V2 REST JSON c={c} / model ceiling (predict on 32 rows)",
                         rps("mlserver-batch", "forest", "v2-json", c), ceiling_of("forest", 32)),
              ratio_line(f"shoal forest V2 REST JSON c={c} (no batching) / model ceiling (predict on 1 row)",
                         rps("shoal", "forest", "v2-json", c), ceiling_of("forest", 1)),
              ratio_line(f"shoal-batch / shoal throughput, V2 REST JSON, forest, c={c}",
                         rps("shoal-batch", "forest", "v2-json", c), rps("shoal", "forest", "v2-json", c)),
              ratio_line(f"shoal-batch V2 REST JSON (logreg) / bare uvicorn baseline throughput, c={c}",
                         rps("shoal-batch", "logreg", "v2-json", c), rps("baseline-uvicorn", "-", "v2-json", c)),
              ratio_line(f"shoal-batch gRPC (logreg) / bare grpc.aio baseline throughput, c={c}",
                         rps("shoal-batch", "logreg", "v2-grpc", c), rps("baseline-grpc", "-", "v2-grpc", c)),
              ]
    lines += goal_lines(checked if checked is not None else goals(results, startups, ceiling, c))
    lines += ["", "## Server settings", ""]
    for name in args.only:
        if name == CEILING:
            lines.append(f"- **{CEILING}**: `taskset -c {SERVER_CPU} python benchmarks/ceiling.py`: joblib-loaded "
                         f"estimator, `predict` in a loop on the first 1 / 32 training rows, {args.duration:g}s "
                         "measured after a warm-up")
            continue
        extra = f" (with `{' '.join(SHOAL_ARGS)}`)" if name.startswith("shoal") and SHOAL_ARGS else ""
        lines.append(f"- **{name}**: {SERVERS[name].notes}{extra}")
    errors = sum(m.errors for m in results)
    lines += ["", f"Total errored requests: {errors}.", ""]
    return "\n".join(lines)


@dataclasses.dataclass
class Goal:
    """One of issue 19's goals: a ratio of two numbers measured in the same run."""
    name: str
    ratio: float | None  # None: one side was not measured in this run
    bound: float
    lower_is_better: bool = False
    missing: str = ""  # what was not run, when ratio is None
    rounds: list[float | None] = dataclasses.field(default_factory=list)  # with --rounds: each round's ratio

    @property
    def met(self) -> bool | None:
        if self.ratio is None:
            return None
        return self.ratio <= self.bound if self.lower_is_better else self.ratio >= self.bound

    def line(self) -> str:
        want = f"{'<=' if self.lower_is_better else '>='} {self.bound:g}x"
        each = (f" {', '.join('n/a' if r is None else f'{r:.2f}x' for r in self.rounds)} |"
                if len(self.rounds) > 1 else "")
        if self.ratio is None:
            return f"| {self.name} | {want} |{each} n/a | not checked ({self.missing}) |"
        return f"| {self.name} | {want} |{each} {self.ratio:.2f}x | {'met' if self.met else '**MISSED**'} |"


def goals(results: list[Measurement], startups: list[Startup], ceiling: list[dict[str, Any]],
          concurrency: int) -> list[Goal]:
    """Issue 19's goals, each as a ratio of two figures of this run (at the highest concurrency)."""
    c = concurrency

    def rps(server: str, model: str, protocol: str) -> tuple[float | None, str]:
        m = find(results, server, model, protocol, c)
        if m is None or m.rps is None:
            return None, f"no {server}{'' if model == '-' else ' ' + model} {PROTOCOL_LABELS[protocol]} c={c} row"
        return m.rps, ""

    def startup(server: str) -> tuple[float | None, str]:
        for s in startups:
            if s.server == server and s.startup_s:
                return statistics.median(s.startup_s), ""
        return None, f"no {server} startup"

    def ceiling_rows(model: str, batch: int) -> tuple[float | None, str]:
        for r in ceiling:
            if r["model"] == model and r["batch"] == batch:
                return r["rows_per_s"], ""
        return None, f"no {CEILING} {model} {batch}-row figure"

    def goal(name: str, a: tuple[float | None, str], b: tuple[float | None, str], bound: float,
             lower_is_better: bool = False) -> Goal:
        if a[0] is None or b[0] is None or b[0] == 0:
            return Goal(name, None, bound, lower_is_better, "; ".join(x for x in (a[1], b[1]) if x) or "zero")
        return Goal(name, a[0] / b[0], bound, lower_is_better)

    return [
        goal(f"shoal V2 gRPC logreg / baseline-grpc, c={c}",
             rps("shoal", "logreg", "v2-grpc"), rps("baseline-grpc", "-", "v2-grpc"), 0.7),
        goal(f"shoal-batch V2 REST JSON logreg / baseline-uvicorn, c={c}",
             rps("shoal-batch", "logreg", "v2-json"), rps("baseline-uvicorn", "-", "v2-json"), 0.4),
        goal(f"shoal-batch / mlserver-batch, V2 REST JSON forest, c={c}",
             rps("shoal-batch", "forest", "v2-json"), rps("mlserver-batch", "forest", "v2-json"), 3.0),
        goal(f"shoal-batch V2 REST JSON forest, c={c} / model ceiling (predict on 32 rows)",
             rps("shoal-batch", "forest", "v2-json"), ceiling_rows("forest", 32), 0.6),
        goal("shoal / kserve startup to ready (median)", startup("shoal"), startup("kserve"), 0.5,
             lower_is_better=True),
    ]


def median_goals(per_round: list[list[Goal]]) -> list[Goal]:
    """Each goal with its median ratio over the rounds that measured it (one round: as it is),
    and every round's ratio kept in ``rounds``."""
    merged = []
    for versions in zip(*per_round):
        first = versions[0]
        ratios = [g.ratio for g in versions if g.ratio is not None]
        merged.append(dataclasses.replace(
            first, ratio=statistics.median(ratios) if ratios else None,
            rounds=[g.ratio for g in versions]))
    return merged


def goal_lines(checked: list[Goal]) -> list[str]:
    rounds = max((len(g.rounds) for g in checked), default=1)
    if rounds <= 1:
        return ["", "## Goals (issue 19)", "",
                "Ratios of figures measured in this run; `--check` exits 1 when one is missed.", "",
                "| goal | wanted | measured | result |", "| --- | ---: | ---: | --- |",
                *(g.line() for g in checked)]
    return ["", "## Goals (issue 19)", "",
            f"Ratios of figures measured in the same round, over {rounds} rounds run one after the "
            "other; the result is the median's. `--check` exits 1 when a median misses its goal.", "",
            "| goal | wanted | each round | median | result |", "| --- | ---: | --- | ---: | --- |",
            *(g.line() for g in checked)]


def shoal_revision() -> str:
    """Shoal's commit, and whether src/ differs from it (the servers import src/ when they start)."""
    try:
        commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], check=True,
                                capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--", "src"], check=True,
                               capture_output=True, text=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    return commit + (" with uncommitted changes in src/" if dirty else "")


def load_average() -> str:
    with contextlib.suppress(OSError):
        return " / ".join(Path("/proc/loadavg").read_text().split()[:3])
    return "unknown"


def machine() -> str:
    model = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"{os.cpu_count()} CPUs ({model}), Python {sys.version.split()[0]}"


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=5.0, help="measured seconds per row (default 5)")
    parser.add_argument("--warmup", type=float, default=2.0, help="warm-up seconds per row (default 2)")
    parser.add_argument("--concurrency", default="1,8,32", help="comma-separated client counts (default 1,8,32)")
    parser.add_argument("--only", default=",".join(RUN_ORDER),
                        help=f"comma-separated servers to run (default all: {','.join(RUN_ORDER)}; "
                             f"{CEILING} is the in-process predict ceiling, not a server)")
    parser.add_argument("--models", default="", help="comma-separated models (default logreg,forest)")
    parser.add_argument("--protocols", default="", help=f"comma-separated protocols ({','.join(PROTOCOLS)})")
    parser.add_argument("--startup-runs", type=int, default=3, help="starts per server for startup time (default 3)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 1s warm-up, 2s per row, concurrency 1,32, one start per server")
    parser.add_argument("--shoal-args", default="",
                        help="extra `shoal serve` options, e.g. --shoal-args='--model-threads 1'")
    parser.add_argument("--rounds", type=int, default=1,
                        help="run everything this many times, one round after the other (default 1); "
                             "the report's tables are the last round's, each goal's ratio is the median "
                             "over the rounds, with every round's ratio beside it")
    parser.add_argument("--output", type=Path, default=RESULTS / "latest.md", help="markdown report path")
    parser.add_argument("--check", action="store_true",
                        help="exit 1 (naming each one) when a goal of issue 19 is missed in this run: "
                             "gRPC vs baseline-grpc >= 0.7x, batched logreg V2 JSON vs baseline-uvicorn "
                             ">= 0.4x, batched forest vs mlserver-batch >= 3x and vs the 32-row model "
                             "ceiling >= 0.6x, startup vs KServe <= 0.5x; goals whose servers were not "
                             "run are reported as not checked")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    if args.quick:
        args.duration, args.warmup, args.startup_runs = 2.0, 1.0, 1
        if args.concurrency == "1,8,32":
            args.concurrency = "1,32"
    SHOAL_ARGS[:] = shlex.split(args.shoal_args)
    args.concurrency = [int(c) for c in args.concurrency.split(",") if c]
    args.only = [s for s in args.only.split(",") if s]
    args.models = [m for m in args.models.split(",") if m]
    args.protocols = [p for p in args.protocols.split(",") if p]
    for name in args.only:
        if name not in RUN_ORDER:
            parser.error(f"unknown server {name!r}; choose from {', '.join(RUN_ORDER)}")
    for name in args.models:
        if name not in MODEL_NAMES:
            parser.error(f"unknown model {name!r}; choose from {', '.join(MODEL_NAMES)}")
    for name in args.protocols:
        if name not in PROTOCOLS:
            parser.error(f"unknown protocol {name!r}; choose from {', '.join(PROTOCOLS)}")
    return args


def preflight(args: argparse.Namespace) -> None:
    problems = []
    if shutil.which("h2load") is None:
        problems.append("h2load is missing: run benchmarks/setup.sh")
    if shutil.which("taskset") is None:
        problems.append("taskset is missing (util-linux)")
    if len(os.sched_getaffinity(0)) < 2 and int(LOADGEN_CPU) not in os.sched_getaffinity(0):
        problems.append("needs CPUs 0 and 1 (server on one, load generator on the other)")
    if not (MODELS / "_artifacts" / "logreg.joblib").is_file():
        problems.append("no models: run .venv/bin/python benchmarks/make_models.py")
    for name in args.only:
        if name in SERVERS and not SERVERS[name].baseline and not (MODELS / name).is_dir():
            problems.append(f"no {MODELS / name}: run .venv/bin/python benchmarks/make_models.py")
    for names, path in ((("mlserver", "mlserver-batch"), WORK / "venv-mlserver" / "bin" / "mlserver"),
                        (("kserve",), WORK / "venv-kserve" / "bin" / "python")):
        if set(names) & set(args.only) and not path.exists():
            problems.append(f"{path} is missing: run benchmarks/setup.sh")
    if problems:
        raise SystemExit("cannot run:\n  " + "\n  ".join(problems))


def precompile_shoal(say: Callable[[str], None]) -> None:
    """Write the bytecode of Shoal's source (``src/shoal``), as installing a wheel does.

    Shoal runs from its source tree (an editable install); where ``PYTHONDONTWRITEBYTECODE`` is
    set (these machines set it) no server start would write it, so every start would compile
    about 120 modules again, while KServe and MLServer load the bytecode pip wrote into their
    venvs. Hash-checked bytecode: a source file changed since is compiled again, never run stale."""
    done = subprocess.run([shoal_python(), "-m", "compileall", "-q", "--invalidation-mode", "checked-hash",
                           str(ROOT / "src" / "shoal")], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        say(f"compileall failed ({done.returncode}); Shoal starts without bytecode: {done.stderr.strip()[-200:]}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    preflight(args)
    os.sched_setaffinity(0, {int(LOADGEN_CPU)})  # keep this script off the server's CPU
    LOGS.mkdir(parents=True, exist_ok=True)
    RESULTS.mkdir(parents=True, exist_ok=True)

    def say(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    if any(name.startswith("shoal") for name in args.only):
        precompile_shoal(say)
    row = feature_row()
    expected = expected_predictions(row)
    began = time.monotonic()
    context = {"shoal_before": shoal_revision(), "load_before": load_average()}
    ceiling_failed = False
    #: Each round's goals; the tables below are the last round's.
    per_round: list[list[Goal]] = []
    every_result: list[Measurement] = []  # all rounds', for the failure check
    every_startup: list[Startup] = []
    with tempfile.TemporaryDirectory(prefix="shoal-bench-") as tmp:
        for round_index in range(args.rounds):
            if args.rounds > 1:
                say(f"round {round_index + 1} of {args.rounds}")
            results: list[Measurement] = []
            startups: list[Startup] = []
            ceiling: list[dict[str, Any]] = []
            for name in args.only:
                if name == CEILING:
                    say(f"{CEILING}: the estimators' own predict, in-process on CPU {SERVER_CPU}")
                    try:
                        ceiling = measure_ceiling(args, say)
                    except (RuntimeError, subprocess.TimeoutExpired) as exc:
                        say(f"{CEILING}: FAILED: {exc}")
                        ceiling_failed = True
                    continue
                spec = SERVERS[name]
                try:
                    measurements, startup = run_server(spec, args, row, expected, Path(tmp), say)
                except RuntimeError as exc:
                    say(f"{name}: FAILED: {exc}")
                    startups.append(Startup(name, [], failures=[str(exc).splitlines()[0]]))
                    continue
                results += measurements
                startups.append(startup)
            per_round.append(goals(results, startups, ceiling, max(args.concurrency)))
            every_result += results
            every_startup += startups
    checked = median_goals(per_round)
    context.update(shoal_after=shoal_revision(), load_after=load_average())
    text = report(results, startups, args, ceiling, context, checked)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text)
    args.output.with_suffix(".json").write_text(json.dumps({
        "measurements": [dataclasses.asdict(m) for m in results],
        "startup": [dataclasses.asdict(s) for s in startups],
        "goals": [{**dataclasses.asdict(g), "met": g.met} for g in checked],
        "model_ceiling": ceiling,
        "context": context,
        "settings": {"duration": args.duration, "warmup": args.warmup, "concurrency": args.concurrency,
                     "startup_runs": args.startup_runs, "rounds": args.rounds, "machine": machine()},
    }, indent=1))
    print(text)
    say(f"wrote {args.output} ({time.monotonic() - began:.0f}s)")
    failed = (any(m.errors for m in every_result) or any(not s.startup_s for s in every_startup)
              or ceiling_failed)
    if args.check:
        for g in checked:
            if g.met is None:
                say(f"check: not checked: {g.name} ({g.missing})")
            elif g.met:
                say(f"check: met: {g.name}: {g.ratio:.2f}x (goal {'<=' if g.lower_is_better else '>='} {g.bound:g}x)")
        missed = [g for g in checked if g.met is False]
        for g in missed:
            say(f"check: MISSED: {g.name}: {g.ratio:.2f}x (goal {'<=' if g.lower_is_better else '>='} {g.bound:g}x)")
        if missed:
            say(f"check: {len(missed)} goal(s) missed")
            failed = True
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
