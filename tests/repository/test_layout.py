"""Model folder layout and safe model names."""

from __future__ import annotations

from pathlib import Path

import pytest

from shoal.errors import InvalidInput
from shoal.repository.layout import check_model_name, model_names, version_dirs


@pytest.mark.parametrize("name", ["iris", "my-model", "model_v2.1", "_private", "A1", "x"])
def test_good_names(name: str) -> None:
    assert check_model_name(name) == name


@pytest.mark.parametrize(
    "name",
    ["", "..", "a..b", "../etc", "a/b", "/abs", "a\\b", "a\x00b", ".hidden", "-flag",
     "a b", "a\n", "caf\u00e9"],
)
def test_bad_names(name: str) -> None:
    with pytest.raises(InvalidInput) as info:
        check_model_name(name)
    assert "invalid model name" in str(info.value) and repr(name) in str(info.value)


def test_model_names_skip_hidden_private_and_files(tmp_path: Path) -> None:
    for folder in ("iris", "echo", ".git", "_cache", "bad name"):
        (tmp_path / folder).mkdir()
    (tmp_path / "README.md").write_text("x")
    assert model_names(tmp_path) == ["echo", "iris"]


def test_model_without_version_folders_is_version_1(tmp_path: Path) -> None:
    (tmp_path / "model.joblib").write_bytes(b"")
    (tmp_path / "assets").mkdir()
    assert version_dirs(tmp_path) == {1: tmp_path}


def test_numbered_version_folders(tmp_path: Path) -> None:
    for folder in ("1", "3", "10", "latest"):
        (tmp_path / folder).mkdir()
    (tmp_path / "2").write_text("a file, not a version")
    assert version_dirs(tmp_path) == {1: tmp_path / "1", 3: tmp_path / "3", 10: tmp_path / "10"}
