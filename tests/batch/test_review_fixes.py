"""Regression tests for the review of ``shoal batch``: an output folder inside its inputs,
id columns whose type a first block would guess wrong, server failures that are no row's
fault, ``--max-errors`` on Ray, ``--overwrite`` and unrecorded shards, and input names that
would escape the output folder."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from shoal.batch import BatchFailed, run_batch

from .helpers import FEATURES, read_output, table, write_input


def visible(out: Path) -> list[str]:
    return sorted(str(p.relative_to(out)) for p in out.rglob("*")
                  if p.is_file() and not p.name.startswith((".", "_")))


# -- 1. an output folder inside an input folder or glob --------------------------------------

@pytest.mark.parametrize("glob", [False, True])
def test_an_output_folder_inside_the_inputs_is_not_read_back(
        repository: Path, tmp_path: Path, glob: bool) -> None:
    data = tmp_path / "data"
    data.mkdir()
    write_input(table(20), data / "a.parquet", "parquet")
    out = data / "scored"
    source = str(data / "**" / "*.parquet") if glob else str(data)

    def run() -> object:
        return run_batch(str(repository / "lr"), source, str(out), id_column="id", progress="none")

    first = run()
    assert first.rows_ok == 20
    before = visible(out)
    assert before == ["a-00000.parquet"]
    again = run()
    assert (again.rows_ok, again.rows_skipped, again.shards_written) == (0, 20, 0)
    assert visible(out) == before  # nothing nested like scored/scored/a-00000-00000.parquet
    assert read_output(out, "parquet").num_rows == 20


# -- 2. ids read as written, whatever the first rows look like --------------------------------

def id_rows(rows: int) -> tuple[list[str], np.ndarray]:
    ids = [f"{i:06d}" for i in range(rows - 3)] + ["X59995", "X59996", "007"]
    return ids, np.random.default_rng(3).standard_normal((rows, len(FEATURES)))


def test_csv_ids_keep_their_text(repository: Path, tmp_path: Path) -> None:
    ids, x = id_rows(50)
    data = tmp_path / "in.csv"
    lines = ["id," + ",".join(FEATURES)] + [
        f"{i}," + ",".join(repr(float(v)) for v in row) for i, row in zip(ids, x)]
    data.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    summary = run_batch(str(repository / "lr"), str(data), str(out), id_column="id",
                        batch_size=7, progress="none")
    assert (summary.rows_ok, summary.rows_failed) == (50, 0)
    assert read_output(out, "parquet")["id"].to_pylist() == ids


def test_json_lines_ids_keep_their_text(repository: Path, tmp_path: Path) -> None:
    ids, x = id_rows(50)
    data = tmp_path / "in.jsonl"
    with data.open("w") as handle:
        for n, (i, row) in enumerate(zip(ids, x)):
            # Bare numbers first, strings later: neither may become a bad row.
            value = str(n) if n < 20 else json.dumps(i)
            handle.write(f'{{"id": {value}, ' + ", ".join(
                f'"{f}": {float(v)!r}' for f, v in zip(FEATURES, row)) + "}\n")
    out = tmp_path / "out"
    summary = run_batch(str(repository / "lr"), str(data), str(out), id_column="id",
                        batch_size=7, progress="none")
    assert (summary.rows_ok, summary.rows_failed) == (50, 0)
    assert read_output(out, "parquet")["id"].to_pylist() == [str(n) for n in range(20)] + ids[20:]


# -- 3. failures that are no row's fault -----------------------------------------------------

def test_which_errors_are_a_rows_fault() -> None:
    from shoal.batch.scoring import is_row_error
    from shoal.errors import InvalidInput, ModelFailure

    where = "model 'm' at http://h:8080"
    for status in ("500", "502"):
        assert not is_row_error(ModelFailure(f"{where} answered {status}: boom"), remote=True)
    for status in ("401", "403", "408"):
        assert not is_row_error(InvalidInput(f"{where} answered {status}: no"), remote=True)
    for code in ("INTERNAL", "UNKNOWN"):
        assert not is_row_error(ModelFailure(f"{where} answered {code}: boom"), remote=True)
    for answer in ("400", "422", "INVALID_ARGUMENT"):
        assert is_row_error(InvalidInput(f"{where} answered {answer}: bad value"), remote=True)
    assert is_row_error(InvalidInput("input 'x': cannot encode"), remote=True)
    assert not is_row_error(ModelFailure(f"{where} sent a response Shoal cannot read"), remote=True)
    # In-process, the model raising on a row is that row's fault.
    assert is_row_error(ModelFailure("model 'm' failed: ValueError: bad"))


class FakeEndpoint:
    def __init__(self, fail: list[Exception]) -> None:
        self.fail = fail
        self.calls = 0

    async def infer(self, request: object) -> object:
        from shoal.types import InferenceResponse, Tensor

        self.calls += 1
        if self.fail:
            raise self.fail.pop(0)
        rows = request.inputs[0].shape[0]  # type: ignore[attr-defined]
        data = np.zeros(rows)
        return InferenceResponse([Tensor("y", "FP64", (rows,), data)], model_name="m")


def tensors(rows: int) -> list:
    from shoal.types import Tensor

    return [Tensor("x", "FP64", (rows, 1), np.zeros((rows, 1)))]


def test_an_overloaded_model_is_asked_again(monkeypatch: pytest.MonkeyPatch) -> None:
    import asyncio

    from shoal.batch import scoring
    from shoal.errors import Overloaded

    monkeypatch.setattr(scoring, "OVERLOADED_PAUSE_S", 0.001)
    endpoint = FakeEndpoint([Overloaded("busy"), Overloaded("busy")])
    scored = asyncio.run(scoring.Scorer(endpoint, "m", remote=True).score(tensors(4), 4))
    assert len(scored.kept) == 4 and not scored.errors and endpoint.calls == 3

    endpoint = FakeEndpoint([Overloaded("busy") for _ in range(10)])
    with pytest.raises(scoring.JobError, match="busy \\(after 5 tries\\)"):
        asyncio.run(scoring.Scorer(endpoint, "m", remote=True).score(tensors(4), 4))
    assert endpoint.calls == scoring.OVERLOADED_TRIES


def test_every_row_failing_alone_alike_is_the_models_failure() -> None:
    import asyncio

    from shoal.batch import scoring
    from shoal.errors import ModelFailure

    endpoint = FakeEndpoint([ModelFailure("model 'm' failed: OSError: no disk") for _ in range(20)])
    with pytest.raises(scoring.JobError, match="each of 4 rows alone.*no disk"):
        asyncio.run(scoring.Scorer(endpoint, "m").score(tensors(4), 4))


# -- 5. --overwrite deletes unrecorded shards too --------------------------------------------

@pytest.mark.parametrize("with_manifest", [True, False])
def test_overwrite_deletes_unrecorded_shards(repository: Path, tmp_path: Path,
                                             with_manifest: bool) -> None:
    data = tmp_path / "in.parquet"
    write_input(table(30), data, "parquet")
    out = tmp_path / "out"

    def run(**options: object) -> object:
        return run_batch(str(repository / "lr"), str(data), str(out), id_column="id",
                         chunk_rows=10, progress="none", **options)

    run()
    if not with_manifest:
        (out / "_manifest.json").unlink()
    # What a run that died before recording them leaves: shards, error parts, an errors file.
    for name in ("in-00007.parquet", "in-00003.jsonl", "_errors/in-00009.jsonl", "_errors.jsonl"):
        (out / name).parent.mkdir(exist_ok=True)
        (out / name).write_text("stale")
    (out / "mine.txt").write_text("not a shard")
    summary = run_batch(str(repository / "lr"), str(data), str(out), id_column="id",
                        chunk_rows=15, progress="none", overwrite=True)
    assert summary.rows_ok == 30
    assert visible(out) == ["in-00000.parquet", "in-00001.parquet", "mine.txt"]
    assert not (out / "_errors").exists() and not (out / "_errors.jsonl").exists()
    assert read_output(out, "parquet").num_rows == 30


# -- 10. no input name leads out of the output folder -----------------------------------------

def test_input_names_stay_inside_the_output_folder(tmp_path: Path) -> None:
    from shoal.batch import storage
    from shoal.batch.inputs import safe_relative
    from shoal.errors import InvalidInput

    assert safe_relative("/evil", "s3://bucket/data//evil.parquet") == "evil"
    assert safe_relative("day=1//./a", "x") == "day=1/a"
    for bad in ("../evil", "a/../../evil", "", "/", "."):
        with pytest.raises(InvalidInput):
            safe_relative(bad, "x")

    out = storage.locate(str(tmp_path / "out"))
    assert out.child("day=1/a-00000.parquet").path == str(tmp_path / "out" / "day=1" / "a-00000.parquet")
    for bad in ("/evil-00000.parquet", "../evil-00000.parquet", "a/../../evil.parquet"):
        with pytest.raises(InvalidInput):
            out.child(bad)
    remote = storage.Location(out.fs, "bucket/out", "s3://bucket/out")
    remote_fs_child = remote.child("a-00000.parquet")
    assert remote_fs_child.shown == "s3://bucket/out/a-00000.parquet"
    with pytest.raises(InvalidInput):
        remote.child("/evil-00000.parquet")


def test_an_object_key_with_an_empty_part_is_named_inside(s3: object, repository: Path) -> None:
    fs = s3.filesystem()  # type: ignore[attr-defined]
    write_input(table(12), "batch/names/data//evil.parquet", "parquet", fs)
    summary = run_batch(str(repository / "lr"), "s3://batch/names/data/", "s3://batch/names/out/",
                        id_column="id", storage_options=s3.options,  # type: ignore[attr-defined]
                        progress="none")
    assert summary.rows_ok == 12
    assert fs.exists("batch/names/out/evil-00000.parquet")


# -- 6. one run at a time in a local output folder -------------------------------------------

def test_a_second_run_in_the_same_folder_is_refused(repository: Path, tmp_path: Path) -> None:
    from shoal.batch import storage

    data = tmp_path / "in.parquet"
    write_input(table(20), data, "parquet")
    out = tmp_path / "out"
    held = storage.FolderLock(storage.locate(str(out)))
    held.acquire()  # another run, as far as flock can tell (its own open file)
    try:
        with pytest.raises(BatchFailed, match="being written by another shoal batch run"):
            run_batch(str(repository / "lr"), str(data), str(out), id_column="id", progress="none")
    finally:
        held.release()
    assert not list(out.iterdir())  # the refused run wrote nothing
    assert run_batch(str(repository / "lr"), str(data), str(out), id_column="id", progress="none").rows_ok == 20
    assert sorted(p.name for p in out.iterdir()) == ["_manifest.json", "in-00000.parquet"]


# -- 7. a shard is on disk before the manifest names it ---------------------------------------

def test_shards_are_synced_before_they_are_recorded(repository: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from shoal.batch import manifest as manifest_module
    from shoal.batch import storage

    log: list[str] = []
    file_sync, folder_sync, save = storage._fsync_file, storage._fsync_folder, manifest_module.Manifest.save
    monkeypatch.setattr(storage, "_fsync_file", lambda p: (log.append(f"file {Path(p).name}"), file_sync(p)))
    monkeypatch.setattr(storage, "_fsync_folder", lambda p: (log.append(f"folder {p}"), folder_sync(p)))

    def saving(self: object) -> None:
        log.append("save " + ",".join(sorted(self.shards)))  # type: ignore[attr-defined]
        save(self)  # type: ignore[arg-type]

    monkeypatch.setattr(manifest_module.Manifest, "save", saving)
    data = tmp_path / "in.parquet"
    write_input(table(20), data, "parquet")
    out = tmp_path / "out"
    run_batch(str(repository / "lr"), str(data), str(out), id_column="id", progress="none")
    recorded = log.index("save in-00000.parquet")
    synced = [i for i, e in enumerate(log) if e.startswith("file .in-00000.parquet.shoal-tmp-")]
    assert synced and synced[0] < recorded
    assert f"folder {out}" in log[synced[0]:recorded]
