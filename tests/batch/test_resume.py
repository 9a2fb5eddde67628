"""Stopping and resuming: a job killed midway (SIGKILL) or interrupted (SIGINT) leaves only
whole shards; running it again completes the output, with every row exactly once and the
finished shards untouched. A rerun with another model, input or layout is refused."""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import joblib
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sklearn.linear_model import LogisticRegression

from shoal.batch import BatchFailed, run_batch
from shoal.batch.manifest import OutputRefused

from .helpers import FEATURES, read_output, shoal_batch, table, write_input

ROWS = 1000
CHUNK = 100
GATE_AT = 850


def gated_data(tmp_path: Path, fmt: str) -> tuple[Path, np.ndarray]:
    x = np.random.default_rng(9).standard_normal((ROWS, 4))
    x[:, 0] = np.arange(ROWS)  # the gate model stops at the row whose first value is GATE_AT
    path = tmp_path / f"data.{fmt}"
    write_input(pa.table({"id": np.arange(ROWS) + 10_000,
                          **{f: x[:, i] for i, f in enumerate(FEATURES)}}), path, fmt)
    return path, x


def start_gated(repository: Path, data: Path, out: Path, gate: Path) -> subprocess.Popen[str]:
    os.mkfifo(gate)
    return subprocess.Popen(
        [sys.executable, "-m", "shoal", "batch", str(repository), "--model", "gate", str(data),
         "-o", str(out), "--id-column", "id", "--chunk-rows", str(CHUNK), "--batch-size", "50"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "SHOAL_TEST_GATE": str(gate), "SHOAL_TEST_GATE_AT": str(GATE_AT)},
    )


def wait_for_gate(proc: subprocess.Popen[str], gate: Path) -> None:
    """Block until the model has reached the gate row (it writes to the FIFO then)."""
    fd = os.open(gate, os.O_RDONLY | os.O_NONBLOCK)
    try:
        while True:
            ready, _, _ = select.select([fd], [], [], 1.0)
            if ready and os.read(fd, 1):
                return
            if proc.poll() is not None:
                raise AssertionError(f"the job ended before the gate: {proc.communicate()}")
    finally:
        os.close(fd)


def shards(out: Path) -> dict[str, tuple[int, int]]:
    """Visible shard files -> (mtime_ns, inode)."""
    return {str(p.relative_to(out)): (p.stat().st_mtime_ns, p.stat().st_ino)
            for p in out.rglob("*") if p.is_file() and not p.name.startswith((".", "_"))}


def recorded(out: Path) -> dict[str, dict]:
    return json.loads((out / "_manifest.json").read_text())["shards"]


def check_complete(out: Path, x: np.ndarray, fmt: str = "parquet") -> None:
    table_ = read_output(out, fmt)
    ids = table_["id"].to_numpy().astype(np.int64)  # a CSV input's ids are strings
    assert len(ids) == ROWS and np.array_equal(np.sort(ids), np.arange(ROWS) + 10_000)  # each once
    order = np.argsort(ids)
    assert np.allclose(table_["total"].to_numpy()[order], x.sum(axis=1))


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_killed_midway_then_resumed(repository: Path, tmp_path: Path, fmt: str) -> None:
    data, x = gated_data(tmp_path, fmt)
    out = tmp_path / "out"
    proc = start_gated(repository, data, out, tmp_path / "gate")
    try:
        wait_for_gate(proc, tmp_path / "gate")
    finally:
        proc.kill()
        proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    finished = {name: shards(out)[name] for name in recorded(out)}
    assert finished, "no shard was finished before the kill"
    assert len(finished) <= GATE_AT // CHUNK
    # Whatever is visible is a whole shard (a shard being written is under a hidden name).
    for name in shards(out):
        assert pq.read_table(out / name).num_rows == CHUNK

    rerun = shoal_batch(str(repository), "--model", "gate", str(data), "-o", str(out),
                        "--id-column", "id", "--chunk-rows", str(CHUNK), "--batch-size", "50")
    assert rerun.returncode == 0, rerun.stderr
    skipped = len(finished) * CHUNK
    assert rerun.stdout.startswith(f"rows ok {ROWS - skipped:,}, failed 0, skipped {skipped:,};")
    check_complete(out, x)
    after = shards(out)
    assert sorted(after) == [f"data-{k:05d}.parquet" for k in range(ROWS // CHUNK)]
    for name, stamp in finished.items():  # not recomputed: the very same files
        assert after[name] == stamp
    assert not [p for p in out.rglob(".*")]  # no temporary file left


def test_ctrl_c_stops_cleanly(repository: Path, tmp_path: Path) -> None:
    data, x = gated_data(tmp_path, "parquet")
    out = tmp_path / "out"
    proc = start_gated(repository, data, out, tmp_path / "gate")
    try:
        wait_for_gate(proc, tmp_path / "gate")
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, stderr
    assert "interrupted: finished shards are kept" in stderr
    assert stdout.startswith("rows ok ")
    kept = shards(out)
    assert sorted(kept) == sorted(recorded(out))  # every finished shard is recorded
    assert 1 <= len(kept) <= GATE_AT // CHUNK
    assert not [p for p in out.rglob(".*")]  # the shard it was writing is gone, not half there
    rerun = shoal_batch(str(repository), "--model", "gate", str(data), "-o", str(out),
                        "--id-column", "id", "--chunk-rows", str(CHUNK), "--batch-size", "50")
    assert rerun.returncode == 0, rerun.stderr
    check_complete(out, x)
    assert all(shards(out)[name] == stamp for name, stamp in kept.items())


def test_a_different_job_is_refused(repository: Path, tmp_path: Path) -> None:
    models = tmp_path / "models"
    shutil.copytree(repository / "lr", models / "lr")
    data = tmp_path / "in.parquet"
    write_input(table(30), data, "parquet")
    out = tmp_path / "out"

    def run(**options: object) -> object:
        return run_batch(str(models / "lr"), str(data), str(out), id_column="id", progress="none",
                         **options)

    run()
    assert run().rows_skipped == 30  # the same job again: nothing to do

    joblib.dump(LogisticRegression(C=0.01).fit(np.eye(4), [0, 1, 0, 1]), models / "lr" / "model.joblib")
    with pytest.raises(BatchFailed, match="holds the results of a different job \\(the model changed\\)"):
        run()
    replaced = run(overwrite=True)
    assert (replaced.rows_ok, replaced.rows_skipped) == (30, 0)

    write_input(table(30, seed=99), data, "parquet")
    with pytest.raises(BatchFailed, match=f"{data} changed (content|size)"):
        run()
    with pytest.raises(BatchFailed, match="chunk_rows was 1000000, now 10"):
        run(chunk_rows=10)

    stranger = tmp_path / "stranger"
    stranger.mkdir()
    (stranger / "notes.txt").write_text("mine")
    with pytest.raises(BatchFailed, match="is not empty and holds no batch manifest"):
        run_batch(str(models / "lr"), str(data), str(stranger), progress="none")
    assert issubclass(OutputRefused, Exception)
