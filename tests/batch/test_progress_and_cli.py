"""Progress output, the optional extras' errors, and the command's option checks."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import pytest

from shoal.batch import BatchJob, deps
from shoal.batch.deps import MissingExtra
from shoal.batch.progress import Progress
from shoal.errors import InvalidInput

from .helpers import shoal_batch, table, write_input


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_log_line_every_few_seconds_off_a_terminal() -> None:
    stream, clock = io.StringIO(), Clock()
    progress = Progress(10_000, 0, "auto", stream, clock, every=5.0)
    assert progress.mode == "log"  # a StringIO is no terminal
    clock.now += 2
    progress.advance(2_000, 0)
    assert stream.getvalue() == ""
    clock.now += 3
    progress.advance(2_000, 1)
    assert stream.getvalue() == "shoal batch: 4,001 / 10,000 rows (40.0%), 800 rows/s, 0:00:07 left, 1 failed\n"


def test_text_inputs_are_estimated_from_bytes() -> None:
    progress = Progress(1_000, 50_000, "log", io.StringIO(), Clock())
    assert progress.total() is None
    progress.advance(100, 0, text_bytes_read=5_000, text_rows=100)
    assert progress.total() == 1_000 + 1_000


def test_a_bar_on_a_terminal() -> None:
    stream = io.StringIO()
    progress = Progress(500, 0, "bar", stream, Clock())
    progress.advance(250, 0)
    progress.close()
    assert "250/500" in stream.getvalue()


def test_missing_extras_name_their_install_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    with pytest.raises(MissingExtra, match=r"pip install 'shoal\[batch\]'"):
        deps.pyarrow()
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(MissingExtra, match=r"pip install 'shoal\[ray\]'"):
        deps.ray()


def test_options_are_checked_before_anything_runs(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="needs engine='ray'"):
        BatchJob("m", ["x"], "o", address="ray://head:10001").check()
    with pytest.raises(InvalidInput, match="output format 'xml'"):
        BatchJob("m", ["x"], "o", output_format="xml").check()


def test_the_command(repository: Path, tmp_path: Path) -> None:
    data = tmp_path / "in.parquet"
    write_input(table(20), data, "parquet")
    done = shoal_batch(str(repository), "--model", "lr", str(data), "-o", str(tmp_path / "out"),
                       "--format", "csv", "--columns", "f0,f1,f2,f3", "--progress", "log")
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "out" / "in-00000.csv").read_text().startswith('"row","predict"')
    no_id = shoal_batch(str(repository / "lr"), str(data), "-o", str(tmp_path / "no-id"))
    assert no_id.returncode == 1
    assert ("input 'input-0' takes 4 values per row, but the columns taken for it from "
            f"{data} (every column but the id column), ['id', 'f0', 'f1', 'f2', 'f3'], give 5"
            ) in no_id.stderr
    repo_without_name = shoal_batch(str(repository), str(data), "-o", str(tmp_path / "o2"))
    assert repo_without_name.returncode == 1
    assert "is a repository of" in repo_without_name.stderr and "--model NAME" in repo_without_name.stderr
    usage = shoal_batch(str(repository / "lr"), str(data))
    assert usage.returncode == 2 and "Missing option '-o'" in usage.stderr
