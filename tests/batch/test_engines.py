"""The other scorers: the Ray engine on a two-node cluster on this machine, a running
``shoal serve`` over V2 binary REST and gRPC, and a graph in-process. Each writes what the
local engine writes."""

from __future__ import annotations

import gc
import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import ray
from e2e.process import ShoalProcess

from shoal.batch import BatchFailed, run_batch

from .helpers import FEATURES, lr_model, read_output, shoal_batch, table, write_input


def shard_tables(out: Path) -> dict[str, object]:
    return {str(p.relative_to(out)): pq.read_table(p)
            for p in sorted(out.rglob("*.parquet")) if not p.name.startswith((".", "_"))}


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[str]:
    """Two Ray nodes on loopback (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 keeps Ray's own traffic
    on 127.0.0.1: ../shared/reference/real-parts.md §2), one CPU each."""
    before = os.environ.get("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True,
                      head_node_args={"num_cpus": 1, "include_dashboard": False})
    try:
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        yield cluster.address
    finally:
        cluster.shutdown()
        if before is None:
            os.environ.pop("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", None)
        else:
            os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = before


def assert_ray_left_alone() -> None:
    """The job shut down the Ray it started, after Ray Data's own threads for the run had
    ended: nothing left behind calls into Ray again (which would start it again in this
    process, connected to the cluster, and break the cluster's shutdown)."""
    left = [t.name for t in threading.enumerate()
            if t.name.startswith(("StreamingExecutor", "iter_threaded"))]
    assert not left, left
    gc.collect()  # an abandoned iteration's executor shuts down (and calls Ray) when collected
    assert not ray.is_initialized()


def test_ray_engine_writes_what_the_local_engine_writes(
    repository: Path, tmp_path: Path, ray_cluster: str,
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    write_input(table(250, seed=10), data / "a.parquet", "parquet")   # a unit per chunk
    write_input(table(120, seed=11, first_id=5000), data / "b.csv", "csv")  # a unit per file
    options = dict(id_column="id", outputs=["predict", "predict_proba"], chunk_rows=100,
                   batch_size=32, progress="none")
    local = run_batch(str(repository / "lr"), str(data), str(tmp_path / "local"), **options)
    remote = run_batch(str(repository / "lr"), str(data), str(tmp_path / "ray"), engine="ray",
                       address=ray_cluster, num_actors=2, **options)
    assert (remote.rows_ok, remote.shards_written) == (local.rows_ok, local.shards_written) == (370, 5)
    assert len(remote.nodes) == 2  # both nodes had an actor
    assert_ray_left_alone()
    ours, theirs = shard_tables(tmp_path / "local"), shard_tables(tmp_path / "ray")
    assert sorted(ours) == sorted(theirs) == [
        "a-00000.parquet", "a-00001.parquet", "a-00002.parquet", "b-00000.parquet", "b-00001.parquet"]
    for name, shard in ours.items():
        assert shard.equals(theirs[name]), name


def test_ray_engine_stops_at_max_errors_and_leaves_no_unrecorded_shard(
    repository: Path, tmp_path: Path, ray_cluster: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Ray Data's prefetching thread fetches each block half a second after the executor hands
    # it over, so that one is mid-fetch when the job fails: the engine must wait for it before
    # it shuts Ray down (a fetch after that starts Ray again in this process).
    from ray.data._internal.block_batching import iter_batches

    resolve = iter_batches.resolve_block_refs

    def slow_resolve(block_ref_iter: Iterator[object], stats: object = None) -> object:
        def delayed() -> Iterator[object]:
            for ref in block_ref_iter:
                time.sleep(0.5)
                yield ref
        return resolve(delayed(), stats=stats)

    monkeypatch.setattr(iter_batches, "resolve_block_refs", slow_resolve)
    x = np.random.default_rng(15).standard_normal((250, 4))
    x[130, 0] = 666  # picky fails on it: the second chunk's shard must not be left behind
    data = tmp_path / "x.parquet"
    pq.write_table(_table(x), data)
    out = tmp_path / "out"
    with pytest.raises(BatchFailed, match="row 130 of .*666 is not a value"):
        run_batch(str(repository / "picky"), str(data), str(out), engine="ray",
                  address=ray_cluster, num_actors=2, chunk_rows=100, batch_size=25,
                  max_errors=0, progress="none")
    time.sleep(1.0)
    assert_ray_left_alone()
    manifest = json.loads((out / "_manifest.json").read_text())
    listed = {n for r in manifest["shards"].values() for n in (r["file"], r["errors"]) if n}
    written = {str(p.relative_to(out)) for p in out.rglob("*")
               if p.is_file() and (not p.name.startswith((".", "_")) or "_errors" in p.parts)}
    assert "x-00001.parquet" not in written
    assert written <= listed, written - listed
    assert all(r["failed"] == 0 for r in manifest["shards"].values())


def _table(x: np.ndarray) -> object:
    import pyarrow as pa

    return pa.table({f: x[:, i] for i, f in enumerate(FEATURES)})


@pytest.fixture(scope="module")
def server(repository: Path) -> Iterator[ShoalProcess]:
    process = ShoalProcess(repository)
    try:
        process.wait_ready()
        yield process
    finally:
        process.stop()


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_a_running_server_scores(repository: Path, server: ShoalProcess, tmp_path: Path,
                                 protocol: str) -> None:
    url = server.url if protocol == "http" else f"grpc://{server.grpc_target}"
    data = tmp_path / "in.csv"
    source = table(300, seed=12)
    write_input(source, data, "csv")
    result = shoal_batch(url, "--model", "lr", str(data), "-o", str(tmp_path / "remote"),
                         "--id-column", "id", "--outputs", "predict,predict_proba",
                         "--batch-size", "64", "--concurrency", "3", "--format", "jsonl")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("rows ok 300, failed 0")
    out = read_output(tmp_path / "remote", "jsonl")
    x = np.stack([source[c].to_numpy() for c in FEATURES], axis=1)
    assert out["id"].to_pylist() == [str(i) for i in source["id"].to_pylist()]  # CSV ids: text
    assert np.array_equal(out["predict"].to_numpy(), lr_model(repository).predict(x))
    assert np.array_equal(np.array(out["predict_proba"].to_pylist()), lr_model(repository).predict_proba(x))


def test_bad_rows_are_narrowed_through_a_server(repository: Path, server: ShoalProcess,
                                                tmp_path: Path) -> None:
    x = np.random.default_rng(13).standard_normal((40, 4))
    x[[5, 30], 0] = 666
    data = tmp_path / "x.npy"
    np.save(data, x)
    # A server's 400 (the model refused the input) is narrowed down to the rows at fault.
    summary = run_batch(server.url, str(data), str(tmp_path / "out"), model_name="refusing",
                        max_errors=2, batch_size=16, progress="none")
    assert (summary.rows_ok, summary.rows_failed) == (38, 2)
    out = read_output(tmp_path / "out", "parquet")
    good = np.setdiff1d(np.arange(40), [5, 30])
    assert out["row"].to_pylist() == good.tolist()
    assert np.allclose(out["total"].to_numpy(), x[good].sum(axis=1))
    errors = (tmp_path / "out" / "_errors.jsonl").read_text()
    assert errors.count("666 is not a value this model takes") == 2


@pytest.mark.parametrize("protocol", ["http", "grpc"])
@pytest.mark.parametrize("model", ["broken", "picky"])
def test_a_servers_own_failure_fails_the_job(repository: Path, server: ShoalProcess,
                                             tmp_path: Path, protocol: str, model: str) -> None:
    """A 500 (gRPC INTERNAL) is the server's failure, not the rows': the job fails with the
    server's message and records no bad row, even when only some rows make the model fail."""
    url = server.url if protocol == "http" else f"grpc://{server.grpc_target}"
    x = np.random.default_rng(13).standard_normal((40, 4))
    x[5, 0] = 666
    data = tmp_path / "x.npy"
    np.save(data, x)
    out = tmp_path / "out"
    with pytest.raises(BatchFailed) as failed:
        run_batch(url, str(data), str(out), model_name=model, max_errors=100, batch_size=16,
                  progress="none")
    message = str(failed.value)
    assert ("answered 500" if protocol == "http" else "answered INTERNAL") in message, message
    reason = "the model's disk is gone" if model == "broken" else "666 is not a value this model takes"
    assert reason in message
    assert failed.value.summary is not None and failed.value.summary.rows_failed == 0
    errors = out / "_errors.jsonl"
    assert not errors.exists() or errors.read_text() == ""
    manifest = json.loads((out / "_manifest.json").read_text())
    assert all(r["failed"] == 0 for r in manifest["shards"].values())


def test_a_graph_scores_in_process(repository: Path, tmp_path: Path) -> None:
    data = tmp_path / "in.parquet"
    source = table(80, seed=14)
    write_input(source, data, "parquet")
    run_batch(str(repository / "pipeline"), str(data), str(tmp_path / "out"), id_column="id",
              batch_size=30, workers=1, progress="none")
    out = read_output(tmp_path / "out", "parquet")
    x = np.stack([source[c].to_numpy() for c in FEATURES], axis=1)
    assert np.array_equal(out["predict"].to_numpy(), lr_model(repository).predict(x))
