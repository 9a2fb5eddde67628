"""Bad rows: each goes to the errors file with its id and reason, the good rows still score,
and --max-errors decides whether the job (and its exit status) fails."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from shoal.batch import BatchFailed, run_batch

from .helpers import FEATURES, read_output, shoal_batch

CSV = """id,f0,f1,f2,f3
1000,1.5,2,3,4
1001,2.5,2,3,4
1002,3.5,abc,3,4
1003,4.5,,3,4
1004,5.5,2,3,4,99
1005,666,2,3,4
1006,6.5,2,3,4
"""

JSONL = """{"id": "a", "f0": 1, "f1": 2, "f2": 3, "f3": 4}
{"id": "b", "f0": 2, "f1": 2, "f3": 4}
{"id": "c", "f0": 3, "f1": "two", "f2": 3, "f3": 4}

{"id": "d", "f0": 666, "f1": 2, "f2": 3, "f3": 4}
this is not json
{"id": "e", "f0": 5, "f1": null, "f2": 3, "f3": 4}
{"id": "f", "f0": 6, "f1": 2, "f2": 3, "f3": 4}
"""


def errors_of(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "_errors.jsonl").read_text().splitlines()]


def test_bad_csv_rows_are_reported_and_the_rest_scores(repository: Path, tmp_path: Path) -> None:
    (tmp_path / "t.csv").write_text(CSV)
    summary = run_batch(str(repository / "picky"), str(tmp_path / "t.csv"), str(tmp_path / "out"),
                        id_column="id", max_errors=4, batch_size=4, progress="none")
    assert (summary.rows_ok, summary.rows_failed) == (3, 4)
    out = read_output(tmp_path / "out", "parquet")
    assert out["id"].to_pylist() == ["1000", "1001", "1006"]  # a text file's ids, as written
    assert out["total"].to_pylist() == [10.5, 11.5, 15.5]
    errors = errors_of(tmp_path / "out")
    shown = str(tmp_path / "t.csv")
    rows = [e for e in errors if e["row"] is not None]
    lines = [e for e in errors if e["row"] is None]
    assert rows == [
        {"input": shown, "row": 2, "id": "1002", "reason": "column 'f1': 'abc' is not a number"},
        {"input": shown, "row": 3, "id": "1003", "reason": "missing value in column 'f1'"},
        {"input": shown, "row": 4, "id": "1005",
         "reason": "model 'picky' failed: ValueError: 666 is not a value this model takes"},
    ]
    # A line with too many fields is no row: it is reported by its line number.
    assert len(lines) == 1 and lines[0]["line"] == 6
    assert "5 fields expected, 6 found" in lines[0]["reason"]
    manifest = json.loads((tmp_path / "out" / "_manifest.json").read_text())
    assert manifest["shards"]["t-00000.parquet"] == {
        "input": shown, "chunk": 0, "rows": 7, "ok": 3, "failed": 4,
        "file": "t-00000.parquet", "errors": "_errors/t-00000.jsonl",
    }


def test_bad_json_lines_are_reported(repository: Path, tmp_path: Path) -> None:
    (tmp_path / "t.jsonl").write_text(JSONL)
    summary = run_batch(str(repository / "picky"), str(tmp_path / "t.jsonl"), str(tmp_path / "out"),
                        id_column="id", max_errors=10, progress="none")
    assert (summary.rows_ok, summary.rows_failed) == (2, 5)
    out = read_output(tmp_path / "out", "parquet")
    assert out["id"].to_pylist() == ["a", "f"]
    reasons = {e["row"]: (e.get("id"), e["reason"]) for e in errors_of(tmp_path / "out")}
    assert reasons[1] == ("b", "missing value in column 'f2'")
    assert reasons[2][1] == "field 'f1' is a string, not a number"
    assert reasons[3] == ("d", "model 'picky' failed: ValueError: 666 is not a value this model takes")
    assert reasons[4] == (None, "not valid JSON: b'this is not json'")
    assert reasons[5] == ("e", "missing value in column 'f1'")


def test_max_errors_decides_the_exit_status(repository: Path, tmp_path: Path) -> None:
    data = tmp_path / "t.csv"
    data.write_text(CSV)
    model = str(repository / "picky")

    refused = shoal_batch(model, str(data), "-o", str(tmp_path / "none"), "--id-column", "id")
    assert refused.returncode == 1
    assert f"row 2 of {data} (id '1002'): column 'f1': 'abc' is not a number" in refused.stderr
    assert "rows ok" in refused.stdout  # the summary line, still

    over = shoal_batch(model, str(data), "-o", str(tmp_path / "three"), "--id-column", "id",
                       "--max-errors", "3")
    assert over.returncode == 1
    assert "4 bad rows, more than --max-errors 3" in over.stderr

    within = shoal_batch(model, str(data), "-o", str(tmp_path / "four"), "--id-column", "id",
                         "--max-errors", "4")
    assert within.returncode == 0, within.stderr
    assert within.stdout.startswith("rows ok 3, failed 4, skipped 0;")
    assert f"bad rows in {tmp_path / 'four' / '_errors.jsonl'}" in within.stdout


def test_scores_do_not_depend_on_the_batch(repository: Path, tmp_path: Path) -> None:
    """Whatever the batch size (and so whichever rows share a call, or get split off a failing
    one), every row gets the same score and every bad row the same reason."""
    x = np.random.default_rng(7).standard_normal((50, 4))
    x[[3, 17, 18, 40], 0] = 666
    data = tmp_path / "x.parquet"
    pq.write_table(pa.table({f: x[:, i] for i, f in enumerate(FEATURES)}), data)
    results = []
    for size in (1, 7, 64):
        out = tmp_path / f"out-{size}"
        run_batch(str(repository / "picky"), str(data), str(out), batch_size=size, max_errors=4,
                  progress="none")
        results.append((read_output(out, "parquet"), errors_of(out)))
    for table, errors in results[1:]:
        assert table.equals(results[0][0])
        assert errors == results[0][1]
    table, errors = results[0]
    good = np.setdiff1d(np.arange(50), [3, 17, 18, 40])
    assert table["row"].to_pylist() == good.tolist()
    assert np.array_equal(table["total"].to_numpy(), x[good].sum(axis=1))
    assert [e["row"] for e in errors] == [3, 17, 18, 40]


def test_a_routing_graph_routes_each_row_on_its_own(repository: Path, tmp_path: Path) -> None:
    x = np.random.default_rng(8).standard_normal((40, 4))
    data = tmp_path / "x.parquet"
    pq.write_table(pa.table({f: x[:, i] for i, f in enumerate(FEATURES)}), data)
    run_batch(str(repository), str(data), str(tmp_path / "out"), model_name="route",
              batch_size=40, progress="none")
    totals = read_output(tmp_path / "out", "parquet")["total"].to_numpy()
    expected = np.where(x[:, 0] > 0, 2 * x.sum(axis=1), x.sum(axis=1))
    assert np.allclose(totals, expected)


def test_a_systematic_error_fails_at_once(repository: Path, tmp_path: Path) -> None:
    """A file without the id column named is no row's fault: the job fails at once, saying so."""
    data = tmp_path / "x.csv"
    data.write_text("f0,f1,f2,f3\n1,2,3,4\n")
    with pytest.raises(BatchFailed, match="has no column 'key' \\(the id column\\)"):
        run_batch(str(repository / "lr"), str(data), str(tmp_path / "out"), id_column="key",
                  progress="none")
