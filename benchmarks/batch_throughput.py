"""Batch prediction throughput: ``shoal batch`` (local engine) against the model's own
``predict`` and against MLServer's batch processor.

    .venv/bin/python benchmarks/make_models.py            # the logreg and forest models
    .venv/bin/python benchmarks/batch_throughput.py       # about 13 minutes on 2 cores

Data: 1M rows (``--rows``) of 20 FP64 features and an int64 ``id`` column, one Parquet file
(row groups of 131,072 rows), seed 1, under ``benchmarks/.work/batch/``. Per model and run:

Every number is a wall-clock rate except the last column: CPU seconds the ceiling spent per
row over CPU seconds ``shoal batch`` spent per row on one core (all its threads), which other
work on the machine's cores disturbs much less than wall-clock time.

- **ceiling**: a fresh process joblib-loads the model, reads all rows into memory (not timed)
  and times ``predict`` over them in slices of ``--batch-size`` rows;
- **shoal batch, 1 core / 2 cores**: a fresh process imports scikit-learn and Shoal (as the
  ceiling's has), then times ``shoal.batch.run_batch`` (what the command runs: model load,
  reading, predicting, writing Parquet shards, manifest) with ``--batch-size``; pinned to one
  core with ``taskset -c 0``, then on both. Peak RSS is the process's ``ru_maxrss``; the
  baseline is its RSS after the imports;
- **shoal batch command**: ``shoal batch`` end to end (interpreter start and imports too);
- **MLServer batch processor**: ``mlserver infer`` (MLServer 1.7.1's batch processor, its
  defaults: 10 workers, V2 REST) sending the rows as V2 JSON requests micro-batched to
  ``--batch-size`` rows to ``mlserver start`` (its defaults) serving the same joblib file, over
  the first ``--mlserver-rows`` rows (JSON lines in, JSON lines out).

Every number is given as the range over ``--runs`` runs. Results: stdout and
``benchmarks/results/batch_throughput.md``. MLServer comes from ``benchmarks/setup.sh``'s venv
(``benchmarks/.work/venv-mlserver``); without it that column says so.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
WORK = HERE / ".work"
DATA = WORK / "batch"
MODELS = WORK / "models"
RESULTS = HERE / "results"
PYTHON = sys.executable
SHOAL = str(Path(PYTHON).with_name("shoal"))
MLSERVER = WORK / "venv-mlserver" / "bin" / "mlserver"
FEATURES = 20
GROUP_ROWS = 131_072


# -- children: each measurement in a fresh process ---------------------------------------------


def child_ceiling(model: str, data: str, batch_size: int) -> dict:
    import joblib
    import numpy as np
    import pyarrow.parquet as pq

    estimator = joblib.load(MODELS / "shoal" / model / "model.joblib")
    table = pq.read_table(data)
    x = np.stack([table[f"f{i}"].to_numpy() for i in range(FEATURES)], axis=1)
    del table
    estimator.predict(x[:batch_size])  # warm
    cpu, started = _cpu_seconds(), time.perf_counter()
    for start in range(0, len(x), batch_size):
        estimator.predict(x[start:start + batch_size])
    seconds = time.perf_counter() - started
    return {"rows": len(x), "seconds": seconds, "cpu": _cpu_seconds() - cpu}


def child_shoal(model: str, data: str, batch_size: int, out: str) -> dict:
    import sklearn.ensemble
    import sklearn.linear_model  # noqa: F401

    import shoal.batch.pipeline
    import shoal.repository.manager  # noqa: F401
    from shoal.batch import run_batch

    baseline = _rss_now_mib()
    cpu, started = _cpu_seconds(), time.perf_counter()
    summary = run_batch(str(MODELS / "shoal" / model), data, out, id_column="id",
                        batch_size=batch_size, overwrite=True, progress="none")
    seconds = time.perf_counter() - started
    return {"rows": summary.rows_ok, "seconds": seconds, "cpu": _cpu_seconds() - cpu,
            "baseline_mib": baseline,
            "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def child_read(data: str, batch_size: int) -> dict:
    """The floor of any Parquet scorer: reading the features into row-major batches."""
    import numpy as np
    import pyarrow.parquet as pq

    started = time.perf_counter()
    parquet = pq.ParquetFile(data, pre_buffer=False, buffer_size=64 * 1024)
    rows = 0
    for batch in parquet.iter_batches(batch_size=batch_size, columns=[f"f{i}" for i in range(FEATURES)]):
        rows += len(np.asarray(batch.to_tensor(row_major=True)))
    return {"rows": rows, "seconds": time.perf_counter() - started}


def _cpu_seconds() -> float:
    """CPU time of this process, all threads: what a run costs whoever else uses the cores."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _rss_now_mib() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def run_child(kind: str, *args: str, pin: str | None = None) -> dict:
    command = [PYTHON, __file__, "--child", kind, *args]
    if pin is not None:
        command = ["taskset", "-c", pin, *command]
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    if done.returncode != 0:
        raise RuntimeError(f"{kind} failed: {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def run_command(model: str, data: Path, batch_size: int, out: Path) -> dict:
    """``shoal batch`` end to end; peak RSS from the child's own rusage."""
    started = time.perf_counter()
    proc = subprocess.Popen(
        [SHOAL, "batch", str(MODELS / "shoal" / model), str(data), "-o", str(out), "--id-column",
         "id", "--batch-size", str(batch_size), "--overwrite", "--progress", "none"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - started
    line = proc.stdout.read() if proc.stdout else ""
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"shoal batch failed: {line}")
    rows = int(line.split("rows ok ")[1].split(", failed")[0].replace(",", ""))
    return {"rows": rows, "seconds": seconds, "peak_mib": usage.ru_maxrss / 1024}


# -- MLServer ------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class MLServer:
    def __init__(self) -> None:
        self.http, grpc, metrics = free_port(), free_port(), free_port()
        env = {**os.environ, "MLSERVER_HTTP_PORT": str(self.http), "MLSERVER_GRPC_PORT": str(grpc),
               "MLSERVER_METRICS_PORT": str(metrics), "MLSERVER_HOST": "127.0.0.1"}
        self.log = open(WORK / "batch" / "mlserver.log", "w")
        self.proc = subprocess.Popen([str(MLSERVER), "start", str(MODELS / "mlserver")],
                                     stdout=self.log, stderr=subprocess.STDOUT, env=env,
                                     start_new_session=True)

    def wait_ready(self, models: list[str], timeout: float = 180.0) -> None:
        import http.client

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mlserver exited; see {self.log.name}")
            try:
                ready = True
                for model in models:
                    conn = http.client.HTTPConnection("127.0.0.1", self.http, timeout=2)
                    conn.request("GET", f"/v2/models/{model}/ready")
                    ready = ready and conn.getresponse().status == 200
                    conn.close()
                if ready:
                    return
            except OSError:
                pass
            time.sleep(0.25)
        raise TimeoutError("mlserver did not become ready")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.log.close()


def mlserver_input(data: Path, rows: int) -> Path:
    path = DATA / f"mlserver-{rows}.jsonl"
    if not path.exists():
        run_child("mlserver-input", str(data), str(rows))
    return path


def child_mlserver_input(data: str, rows: int) -> dict:
    """The first ``rows`` rows as V2 JSON requests, one row each (the batch processor's input)."""
    path = DATA / f"mlserver-{rows}.jsonl"
    import pyarrow.parquet as pq

    table = pq.read_table(data).slice(0, rows)
    columns = [table[f"f{i}"].to_pylist() for i in range(FEATURES)]
    with open(path, "w") as handle:
        for index in range(rows):
            row = [columns[j][index] for j in range(FEATURES)]
            handle.write(json.dumps({"inputs": [{"name": "input-0", "datatype": "FP64",
                                                 "shape": [1, FEATURES], "data": row}]}) + "\n")
    return {"rows": rows}


def run_mlserver_infer(server: MLServer, model: str, requests: Path, rows: int, batch_size: int) -> dict:
    out = DATA / f"mlserver-out-{model}.jsonl"
    started = time.perf_counter()
    done = subprocess.run(
        [str(MLSERVER), "infer", "-u", f"127.0.0.1:{server.http}", "-m", model, "-i", str(requests),
         "-o", str(out), "-s", str(batch_size)],
        capture_output=True, text=True,
    )
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"mlserver infer failed: {done.stderr[-2000:]}")
    with open(out) as handle:
        answered = sum(1 for line in handle if '"outputs"' in line)
    if answered != rows:
        raise RuntimeError(f"mlserver infer answered {answered} of {rows} requests; see {out}")
    return {"rows": rows, "seconds": seconds}


# -- the run -------------------------------------------------------------------------------------


def make_data(rows: int) -> Path:
    """The input file, made in a child: this process stays small, so the children's peak RSS
    is their own (Linux carries a parent's peak over into a child's ru_maxrss)."""
    path = DATA / f"data-{rows}.parquet"
    if not path.exists():
        DATA.mkdir(parents=True, exist_ok=True)
        run_child("make-data", str(rows))
    return path


def child_make_data(rows: int) -> dict:
    path = DATA / f"data-{rows}.parquet"
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    DATA.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    with pq.ParquetWriter(path, pa.schema([("id", pa.int64())] + [(f"f{i}", pa.float64()) for i in range(FEATURES)])) as writer:
        for start in range(0, rows, GROUP_ROWS):
            count = min(GROUP_ROWS, rows - start)
            x = rng.standard_normal((count, FEATURES))
            writer.write_table(pa.table({"id": np.arange(start, start + count),
                                         **{f"f{i}": x[:, i] for i in range(FEATURES)}}))
    return {"rows": rows}


def spread(values: list[float], fmt: str = "{:,.0f}") -> str:
    low, high = min(values), max(values)
    return fmt.format(low) if fmt.format(low) == fmt.format(high) else f"{fmt.format(low)}–{fmt.format(high)}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument("--models", default="logreg,forest")
    parser.add_argument("--mlserver-rows", type=int, default=200_000)
    parser.add_argument("--no-mlserver", action="store_true")
    parser.add_argument("--scale-rows", type=int, default=4_000_000,
                        help="rows of the second input, to show that peak RSS does not grow with the input (0: skip)")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, *rest = args.child
        children = {
            "ceiling": lambda: child_ceiling(rest[0], rest[1], int(rest[2])),
            "shoal": lambda: child_shoal(rest[0], rest[1], int(rest[2]), rest[3]),
            "read": lambda: child_read(rest[0], int(rest[1])),
            "make-data": lambda: child_make_data(int(rest[0])),
            "mlserver-input": lambda: child_mlserver_input(rest[0], int(rest[1])),
        }
        print(json.dumps(children[kind]()))
        return
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop MLServer on the way out

    models = args.models.split(",")
    for model in models:
        if not (MODELS / "shoal" / model / "model.joblib").exists():
            sys.exit(f"no {model} model: run .venv/bin/python benchmarks/make_models.py first")
    data = make_data(args.rows)
    out = DATA / "out"
    results: dict[str, dict[str, list[dict]]] = {m: {} for m in models}
    server = None
    mlserver_note = ""
    if not args.no_mlserver:
        if MLSERVER.exists():
            server = MLServer()
            server.wait_ready(models)
            requests = mlserver_input(data, args.mlserver_rows)
        else:
            mlserver_note = f"not measured: {MLSERVER} is missing (benchmarks/setup.sh makes it)"
    try:
        for run in range(args.runs):
            for model in models:
                def record(kind: str, value: dict, model: str = model, run: int = run) -> None:
                    results[model].setdefault(kind, []).append(value)
                    print(f"run {run + 1} {model:7s} {kind:22s} {value['rows'] / value['seconds']:>12,.0f} rows/s"
                          + (f"  peak {value['peak_mib']:.0f} MiB" if "peak_mib" in value else ""), flush=True)

                record("parquet read alone", run_child("read", str(data), str(args.batch_size), pin="0"))
                record("ceiling", run_child("ceiling", model, str(data), str(args.batch_size), pin="0"))
                record("shoal batch, 1 core", run_child("shoal", model, str(data), str(args.batch_size), str(out), pin="0"))
                record("shoal batch, 2 cores", run_child("shoal", model, str(data), str(args.batch_size), str(out)))
                record("shoal batch command", run_command(model, data, args.batch_size, out))
                if server is not None:
                    record("mlserver infer", run_mlserver_infer(server, model, requests, args.mlserver_rows, args.batch_size))
    finally:
        if server is not None:
            server.stop()
    scale = None
    if args.scale_rows:
        big = make_data(args.scale_rows)
        scale = run_child("shoal", models[0], str(big), str(args.batch_size), str(out))
    report(args, models, results, mlserver_note, scale)


def report(args: argparse.Namespace, models: list[str], results: dict, mlserver_note: str, scale: dict | None) -> None:
    def rate(items: list[dict]) -> list[float]:
        return [i["rows"] / i["seconds"] for i in items]

    lines = [
        f"Batch prediction, {args.rows:,} rows x {FEATURES} FP64 features, Parquet in and out, "
        f"batch size {args.batch_size:,}, {args.runs} runs (ranges), "
        f"{time.strftime('%Y-%m-%d')}, {os.cpu_count()} CPUs",
        "",
        "| model | ceiling (predict, in memory, 1 core) | shoal batch, 1 core | shoal batch, 2 cores | "
        "shoal batch command (end to end) | MLServer batch processor | 1 core / ceiling | 2 cores / ceiling | "
        "shoal batch / MLServer | peak RSS (after imports) | model size | Parquet read alone, 1 core | "
        "CPU time: ceiling / shoal batch, 1 core |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for model in models:
        found = results[model]
        ceiling = rate(found["ceiling"])
        one, two = rate(found["shoal batch, 1 core"]), rate(found["shoal batch, 2 cores"])
        command = rate(found["shoal batch command"])
        ml = rate(found["mlserver infer"]) if "mlserver infer" in found else []
        ratio_one = [a / b for a, b in zip(one, ceiling)]
        ratio_two = [a / b for a, b in zip(two, ceiling)]
        ratio_ml = [a / b for a, b in zip(two, ml)] if ml else []
        peaks = [i["peak_mib"] for i in found["shoal batch, 2 cores"] + found["shoal batch, 1 core"]]
        bases = [i["baseline_mib"] for i in found["shoal batch, 2 cores"] + found["shoal batch, 1 core"]]
        size = (MODELS / "shoal" / model / "model.joblib").stat().st_size / 2**20
        lines.append(
            f"| {model} | {spread(ceiling)} | {spread(one)} | {spread(two)} | {spread(command)} | "
            f"{spread(ml) if ml else mlserver_note or 'skipped'} | {spread(ratio_one, '{:.2f}')} | "
            f"{spread(ratio_two, '{:.2f}')} | {spread(ratio_ml, '{:.1f}') if ml else 'n/a'} | "
            f"{spread(peaks, '{:.0f}')} MiB ({spread(bases, '{:.0f}')} MiB) | {size:.2f} MiB | "
            f"{spread(rate(found['parquet read alone']))} | "
            f"{spread([c['cpu'] / o['cpu'] for c, o in zip(found['ceiling'], found['shoal batch, 1 core'])], '{:.2f}')} |"
        )
    if scale is not None:
        lines += ["", f"Peak RSS with {args.scale_rows:,} rows ({models[0]}, 2 cores): "
                      f"{scale['peak_mib']:.0f} MiB ({scale['baseline_mib']:.0f} MiB after imports), "
                      f"{scale['rows'] / scale['seconds']:,.0f} rows/s."]
    text = "\n".join(lines)
    print()
    print(text)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "batch_throughput.md").write_text(text + "\n")


if __name__ == "__main__":
    main()
