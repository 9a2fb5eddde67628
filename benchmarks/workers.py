"""Worker processes: throughput of a GIL-bound model, and memory with many models.

    .venv/bin/python benchmarks/workers.py [--duration 10] [--only throughput,memory]

Needs `benchmarks/setup.sh` (MLServer's venv, h2load) and `benchmarks/make_models.py` (the
LogisticRegression artifact). Unlike run.py, servers here may use both cores (that is what
workers are for), and h2load shares them.

- throughput: a pure-Python CPU-bound model (a loop of about 5 ms per request, holding the
  GIL), V2 REST JSON, c=8. Shoal in-process (--workers 0), with --workers 1 and 2; MLServer
  with parallel_workers 1 and 2 running an equivalent custom MLModel.
- memory: 20 LogisticRegression models. Total RSS (and PSS, which counts shared pages once)
  of the server's whole process tree once ready and after one request to each model: Shoal
  with --workers 2 and in-process, MLServer with parallel_workers 2.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import run  # noqa: E402  (same folder: server start/stop, h2load, process trees)

LAYOUTS = run.WORK / "models" / "workers"
MODELS = 20
SPIN_LOOPS = 150_000  # about 5 ms of pure-Python arithmetic here

SHOAL_SPIN = f'''
import numpy as np
from shoal import Model


class Spin(Model):
    def predict(self, request):
        x = request.as_numpy()
        total = 0
        for i in range({SPIN_LOOPS}):
            total += i % 7
        return {{"y": x * 2}}
'''

MLSERVER_SPIN = f'''
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceResponse


class Spin(MLModel):
    async def load(self):
        return True

    async def predict(self, payload):
        x = NumpyCodec.decode_input(payload.inputs[0])
        total = 0
        for i in range({SPIN_LOOPS}):
            total += i % 7
        return InferenceResponse(model_name=self.name, outputs=[NumpyCodec.encode_output("y", x * 2)])
'''


def build() -> None:
    shutil.rmtree(LAYOUTS, ignore_errors=True)
    spin = LAYOUTS / "shoal-spin" / "spin"
    spin.mkdir(parents=True)
    (spin / "model.py").write_text(SHOAL_SPIN)
    (spin / "model.yaml").write_text("runtime: custom\n")
    for workers in (1, 2):
        root = LAYOUTS / f"mlserver-spin-{workers}"
        (root / "spin").mkdir(parents=True)
        (root / "spin" / "spin_model.py").write_text(MLSERVER_SPIN)
        (root / "spin" / "model-settings.json").write_text(json.dumps(
            {"name": "spin", "implementation": "spin_model.Spin"}))
        (root / "settings.json").write_text(json.dumps({"debug": False, "parallel_workers": workers}))
    artifact = run.MODELS / "_artifacts" / "logreg.joblib"
    if not artifact.is_file():
        raise SystemExit("run benchmarks/make_models.py first")
    for i in range(MODELS):
        name = f"logreg{i:02d}"
        for layout in ("shoal-many", "mlserver-many"):
            folder = LAYOUTS / layout / name
            folder.mkdir(parents=True)
            shutil.copyfile(artifact, folder / "model.joblib")
        (LAYOUTS / "mlserver-many" / name / "model-settings.json").write_text(json.dumps(
            {"name": name, "implementation": "mlserver_sklearn.SKLearnModel",
             "parameters": {"uri": "./model.joblib", "version": "1"}}))
    (LAYOUTS / "mlserver-many" / "settings.json").write_text(
        json.dumps({"debug": False, "parallel_workers": 2}))


def shoal(layout: str, *args: str) -> run.ServerSpec:
    return run.ServerSpec(
        f"shoal {' '.join(args)}".strip(),
        lambda p: [str(run.SHOAL_VENV / "bin" / "shoal"), "serve", str(LAYOUTS / layout),
                   "--http-port", str(p.http), "--grpc-port", str(p.grpc), *args],
        models=(),
    )


def mlserver(layout: str, label: str) -> run.ServerSpec:
    return run.ServerSpec(
        label, lambda p: [str(run.WORK / "venv-mlserver" / "bin" / "mlserver"), "start", str(LAYOUTS / layout)],
        env=run.mlserver_env, models=(),
    )


def row_body(model: str) -> run.Payload:
    if model == "spin":
        tensor = {"name": "x", "datatype": "FP64", "shape": [1, 4], "data": [1.0, 2.0, 3.0, 4.0]}
    else:
        tensor = {"name": "input-0", "datatype": "FP64", "shape": [1, run.feature_row().size],
                  "data": [float(v) for v in run.feature_row().ravel()]}
    return run.Payload(f"/v2/models/{model}/infer", json.dumps({"inputs": [tensor]}).encode(),
                       {"Content-Type": "application/json"})


def wait_models(server: run.Running, names: list[str], timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    for name in names:
        while True:
            try:
                if run.http_request(server.ports.http, "GET", f"/v2/models/{name}/ready")[0] == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{server.spec.name}: {name} not ready")
            time.sleep(0.05)


def pss_kib(pid: int) -> int:
    total = 0
    for proc in run.descendants(pid):
        try:
            for line in Path(f"/proc/{proc}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total


def throughput(args: argparse.Namespace, failures: list[str]) -> list[str]:
    rows = []
    specs = [shoal("shoal-spin", "--workers", "0"), shoal("shoal-spin", "--workers", "1"),
             shoal("shoal-spin", "--workers", "2"), mlserver("mlserver-spin-1", "mlserver parallel_workers=1"),
             mlserver("mlserver-spin-2", "mlserver parallel_workers=2")]
    rates: dict[str, float] = {}
    for spec in specs:
        with run.started(spec, run.LOGS / "workers.log", failures, timeout=180) as server:
            wait_models(server, ["spin"])
            request = row_body("spin")
            status, _, body = run.http_request(server.ports.http, "POST", request.path, request.body,
                                               request.headers)
            if status != 200 or json.loads(body)["outputs"][0]["data"] != [2.0, 4.0, 6.0, 8.0]:
                failures.append(f"{spec.name}: bad answer {status} {body[:200]!r}")
                continue
            with tempfile.TemporaryDirectory() as tmp:
                m = run.h2load("v2-json", server.ports.http, request, 8, args.duration, args.warmup,
                               len(body), Path(tmp))
            rates[spec.name] = m.rps or 0.0
            rows.append(f"| {spec.name} | {run.fmt(m.rps, 0)} | {run.fmt(m.p50_ms, 1)} | "
                        f"{run.fmt(m.p99_ms, 1)} | {m.errors} |")
    w1, w2 = rates.get("shoal --workers 1"), rates.get("shoal --workers 2")
    m2 = rates.get("mlserver parallel_workers=2")
    lines = ["### GIL-bound model (pure-Python loop, ~5 ms), V2 REST JSON, c=8, both cores", "",
             "| server | req/s | p50 ms | p99 ms | errors |", "|---|---:|---:|---:|---:|", *rows, "",
             "| ratio | value |", "|---|---:|",
             run.ratio_line("Shoal --workers 2 / --workers 1", w2, w1),
             run.ratio_line("Shoal --workers 2 / MLServer parallel_workers=2", w2, m2)]
    return lines


def memory(args: argparse.Namespace, failures: list[str]) -> list[str]:
    names = [f"logreg{i:02d}" for i in range(MODELS)]
    rows = []
    results: dict[str, int] = {}
    specs = [shoal("shoal-many", "--workers", "2"), shoal("shoal-many", "--workers", "0"),
             mlserver("mlserver-many", "mlserver parallel_workers=2")]
    for spec in specs:
        with run.started(spec, run.LOGS / "workers.log", failures, timeout=300) as server:
            wait_models(server, names)
            for name in names:
                request = row_body(name)
                status, _, body = run.http_request(server.ports.http, "POST", request.path,
                                                   request.body, request.headers)
                if status != 200:
                    failures.append(f"{spec.name}: {name} answered {status}: {body[:200]!r}")
            time.sleep(1.0)
            rss, processes = run.rss_kib(server.proc.pid)
            pss = pss_kib(server.proc.pid)
            results[spec.name] = rss
            rows.append(f"| {spec.name} | {processes} | {rss / 1024:.0f} | {pss / 1024:.0f} |")
    lines = [f"### {MODELS} LogisticRegression models: memory of the whole process tree", "",
             "| server | processes | RSS MiB | PSS MiB |", "|---|---:|---:|---:|", *rows, "",
             "| ratio | value |", "|---|---:|",
             run.ratio_line("RSS Shoal --workers 2 / MLServer parallel_workers=2",
                            results.get("shoal --workers 2"), results.get("mlserver parallel_workers=2"))]
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--only", default="throughput,memory")
    args = parser.parse_args()
    run.SERVER_CPU = run.LOADGEN_CPU = "0,1"  # workers exist to use more than one core
    run.LOGS.mkdir(parents=True, exist_ok=True)
    build()
    failures: list[str] = []
    out: list[str] = []
    if "throughput" in args.only:
        out += throughput(args, failures) + [""]
    if "memory" in args.only:
        out += memory(args, failures)
    text = "\n".join(out)
    print(text)
    (run.RESULTS / "workers.md").write_text(text + "\n")
    for failure in failures:
        print("FAILED:", failure, file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
