"""Every input format into every output format, on local disk and on S3 (moto): the scores
equal the model's own predict on the same rows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from shoal.batch import BatchFailed, run_batch

from .helpers import (
    FEATURES,
    MotoServer,
    lr_model,
    read_output,
    shoal_batch,
    table,
    write_input,
)

IN_FORMATS = ["parquet", "csv", "jsonl", "npy"]
OUT_FORMATS = ["parquet", "csv", "jsonl"]
EXTENSION = {"parquet": "parquet", "csv": "csv", "jsonl": "jsonl", "npy": "npy"}
ROWS = 100


def check_scores(out: pa.Table, source: pa.Table, repository: Path, in_fmt: str, out_fmt: str) -> None:
    estimator = lr_model(repository)
    x = np.stack([source[c].to_numpy() for c in FEATURES], axis=1)
    if in_fmt == "npy":
        assert out.column_names[0] == "row"
        assert out["row"].to_pylist() == list(range(ROWS))
    else:
        assert out.column_names[0] == "id"
        expected = source["id"].to_pylist()
        if in_fmt in ("csv", "jsonl") and out_fmt != "csv":  # a text file's ids: strings, as written
            expected = [str(i) for i in expected]
        assert out["id"].to_pylist() == expected
    assert np.array_equal(out["predict"].to_numpy(), estimator.predict(x))
    proba = estimator.predict_proba(x)
    if out_fmt == "csv":  # CSV has no lists: one column per class
        got = np.stack([out[f"predict_proba_{k}"].to_numpy() for k in range(3)], axis=1)
    else:
        got = np.array(out["predict_proba"].to_pylist())
    assert np.array_equal(got, proba)


@pytest.mark.parametrize("out_fmt", OUT_FORMATS)
@pytest.mark.parametrize("in_fmt", IN_FORMATS)
def test_every_format_locally(repository: Path, tmp_path: Path, in_fmt: str, out_fmt: str) -> None:
    source = table(ROWS)
    data = tmp_path / f"data.{EXTENSION[in_fmt]}"
    write_input(source, data, in_fmt)
    summary = run_batch(
        str(repository / "lr"), str(data), str(tmp_path / "out"),
        id_column=None if in_fmt == "npy" else "id", outputs=["predict", "predict_proba"],
        output_format=out_fmt, chunk_rows=40, batch_size=16, progress="none",
    )
    assert (summary.rows_ok, summary.rows_failed, summary.shards_written) == (ROWS, 0, 3)
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert names == ["_manifest.json", *[f"data-{k:05d}.{out_fmt}" for k in range(3)]]
    check_scores(read_output(tmp_path / "out", out_fmt), source, repository, in_fmt, out_fmt)


@pytest.mark.parametrize("out_fmt", OUT_FORMATS)
@pytest.mark.parametrize("in_fmt", IN_FORMATS)
def test_every_format_on_s3(repository: Path, s3: MotoServer, in_fmt: str, out_fmt: str) -> None:
    fs = s3.filesystem()
    source = table(ROWS, seed=2)
    key = f"batch/in-{in_fmt}-{out_fmt}/day=2026-12-06/data.{EXTENSION[in_fmt]}"
    write_input(source, key, in_fmt, fs)
    output = f"s3://batch/scored-{in_fmt}-{out_fmt}/"
    summary = run_batch(
        str(repository / "lr"), f"s3://batch/in-{in_fmt}-{out_fmt}/*/*.{EXTENSION[in_fmt]}", output,
        id_column=None if in_fmt == "npy" else "id", outputs=["predict", "predict_proba"],
        output_format=out_fmt, chunk_rows=60, batch_size=25, storage_options=s3.options,
        progress="none",
    )
    assert (summary.rows_ok, summary.shards_written) == (ROWS, 2)
    fs.invalidate_cache()
    written = sorted(p.split(f"scored-{in_fmt}-{out_fmt}/", 1)[1] for p in fs.find(output))
    # The glob's partition folder carries over; no temporary object is ever left behind.
    assert written == ["_manifest.json", *[f"day=2026-12-06/data-{k:05d}.{out_fmt}" for k in range(2)]]
    check_scores(read_output(output, out_fmt, fs), source, repository, in_fmt, out_fmt)


def test_folders_globs_and_names(repository: Path, tmp_path: Path) -> None:
    """A folder is read recursively (hidden and _-prefixed files left out); each file's shards
    keep its path relative to the folder; several sources go into one job."""
    data = tmp_path / "data"
    (data / "day=1").mkdir(parents=True)
    (data / "day=2").mkdir()
    write_input(table(30, seed=3), data / "day=1" / "a.parquet", "parquet")
    write_input(table(20, seed=4, first_id=5000), data / "day=2" / "b.parquet", "parquet")
    (data / "_SUCCESS").write_text("")
    (data / ".hidden.parquet").write_text("not parquet")
    extra = tmp_path / "extra.csv"
    write_input(table(10, seed=5, first_id=9000), extra, "csv")
    summary = run_batch(str(repository / "lr"), [str(data), str(extra)], str(tmp_path / "out"),
                        id_column="id", progress="none")
    assert summary.rows_ok == 60
    written = sorted(str(p.relative_to(tmp_path / "out")) for p in (tmp_path / "out").rglob("*.parquet"))
    assert written == ["day=1/a-00000.parquet", "day=2/b-00000.parquet", "extra-00000.parquet"]
    # The output folder reads back as one dataset (the manifest and errors are _-prefixed).
    dataset = pq.read_table(tmp_path / "out", partitioning=None)
    assert sorted(dataset["id"].to_pylist()) == sorted([*range(1000, 1030), *range(5000, 5020), *range(9000, 9010)])


def test_columns_choose_and_map_inputs(repository: Path, tmp_path: Path) -> None:
    """--columns picks and orders the feature columns; INPUT=COLS maps columns to a
    multi-input model; a model's inputs are also found by column name; a list column feeds
    an input as it is."""
    x = np.random.default_rng(6).standard_normal((12, 3))
    data = tmp_path / "mixed.parquet"
    pq.write_table(pa.table({"key": [f"k{i}" for i in range(12)], "noise": np.ones(12),
                             "u": x[:, 0], "v": x[:, 1], "w": x[:, 2]}), data)
    run_batch(str(repository / "two"), str(data), str(tmp_path / "mapped"), id_column="key",
              columns={"a": ["u"], "b": ["v", "w"]}, progress="none")
    out = read_output(tmp_path / "mapped", "parquet")
    assert out["key"].to_pylist() == [f"k{i}" for i in range(12)]
    assert np.allclose(out["score"].to_numpy(), x[:, 0] * 10 + x[:, 1] + x[:, 2])

    by_name = tmp_path / "named.parquet"
    pq.write_table(pa.table({"a": x[:, 0], "b": pa.FixedSizeListArray.from_arrays(pa.array(x[:, 1:].ravel()), 2)}), by_name)
    run_batch(str(repository / "two"), str(by_name), str(tmp_path / "named"), progress="none")
    assert np.allclose(read_output(tmp_path / "named", "parquet")["score"].to_numpy(),
                       x[:, 0] * 10 + x[:, 1] + x[:, 2])

    run_batch(str(repository / "picky"), str(data), str(tmp_path / "picked"), id_column="key",
              columns=["w", "u"], split_outputs=True, progress="none")
    out = read_output(tmp_path / "picked", "parquet")
    assert out.column_names == ["key", "total", "pair_0", "pair_1"]
    assert np.allclose(out["total"].to_numpy(), x[:, 2] + x[:, 0])
    assert np.array_equal(out["pair_0"].to_numpy(), x[:, 2])

    with pytest.raises(BatchFailed, match=r"takes inputs \['a', 'b'\].*--columns INPUT=COLUMN"):
        run_batch(str(repository / "two"), str(data), str(tmp_path / "wrong"), progress="none")


def test_wrong_types_are_the_servers_errors(repository: Path, tmp_path: Path) -> None:
    """A column the model cannot take fails each row with the message a server gives."""
    data = tmp_path / "strings.parquet"
    pq.write_table(pa.table({f: pa.array(["x"] * 3) for f in FEATURES}), data)
    with pytest.raises(BatchFailed) as failed:
        run_batch(str(repository / "lr"), str(data), str(tmp_path / "out"), progress="none")
    assert "row 0 of" in failed.value.message
    assert "is BYTES but model 'lr' expects FP64" in failed.value.message


def test_npy_rows_keep_their_shape(repository: Path, tmp_path: Path) -> None:
    images = np.arange(5 * 2 * 3, dtype=np.float32).reshape(5, 2, 3)
    np.save(tmp_path / "images.npy", images)
    run_batch(str(repository / "picky"), str(tmp_path / "images.npy"), str(tmp_path / "out"),
              outputs=["pair"], progress="none")
    out = read_output(tmp_path / "out", "parquet")
    # picky sees [rows, 2, 3]: x[:, 0] is each image's first row.
    assert np.array_equal(np.array(out["pair"].to_pylist()),
                          np.stack([images[:, 0], -images[:, 0]], axis=1))


def test_the_command_on_s3(repository: Path, s3: MotoServer) -> None:
    """``shoal batch`` with object storage on both sides, the store named by --storage-option."""
    fs = s3.filesystem()
    source = table(ROWS, seed=15)
    write_input(source, "batch/cli-in/data.parquet", "parquet", fs)
    done = shoal_batch(str(repository / "lr"), "s3://batch/cli-in/", "-o", "s3://batch/cli-out",
                       "--id-column", "id", "--outputs", "predict,predict_proba", "--format", "csv",
                       *s3.cli_options())
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"rows ok {ROWS}, failed 0, skipped 0; shards written 1")
    fs.invalidate_cache()
    check_scores(read_output("batch/cli-out", "csv", fs), source, repository, "parquet", "csv")


def test_a_repository_in_object_storage(repository: Path, s3: MotoServer, tmp_path: Path) -> None:
    """``shoal batch s3://bucket/models --model lr ...``: the repository is fetched as
    ``shoal serve`` fetches it (credentials and endpoint from the store's environment)."""
    fs = s3.filesystem()
    fs.put(str(repository / "lr"), "batch/models/lr", recursive=True)
    source = table(ROWS, seed=16)
    write_input(source, str(tmp_path / "in.parquet"), "parquet")
    done = shoal_batch("s3://batch/models", "--model", "lr", str(tmp_path / "in.parquet"),
                       "-o", str(tmp_path / "out"), "--id-column", "id",
                       "--outputs", "predict,predict_proba",
                       env={"AWS_ENDPOINT_URL": s3.url, "AWS_ACCESS_KEY_ID": "testing",
                            "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
                            "SHOAL_CACHE_DIR": str(tmp_path / "cache")})
    assert done.returncode == 0, done.stderr
    check_scores(read_output(tmp_path / "out", "parquet"), source, repository, "parquet", "parquet")
