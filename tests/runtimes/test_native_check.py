"""The throwaway-process check the tree runtimes run before reading a model file."""

from __future__ import annotations

from pathlib import Path

import catboost
import lightgbm
import numpy as np
import pytest
import xgboost

from shoal.errors import LoadError
from shoal.runtimes.native_check import (
    check_native_read,
    library_path,
    read_in_child,
    search_path,
)

X = np.random.default_rng(0).normal(size=(50, 3))


@pytest.fixture(scope="module")
def xgboost_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("xgb") / "model.ubj"
    xgboost.train({"max_depth": 2}, xgboost.DMatrix(X, X[:, 0]), 3).save_model(path)
    return path


@pytest.fixture(scope="module")
def lightgbm_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("lgb") / "model.txt"
    lightgbm.train({"verbose": -1, "num_leaves": 4}, lightgbm.Dataset(X, X[:, 0]), 4).save_model(path)
    return path


def test_both_libraries_are_found() -> None:
    assert Path(library_path(xgboost.core)).is_file()
    assert Path(library_path(lightgbm.basic)).is_file()


@pytest.fixture(scope="module")
def catboost_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("cb") / "model.cbm"
    catboost.CatBoostRegressor(iterations=3, depth=2, verbose=False, allow_writing_files=False).fit(X, X[:, 0]).save_model(str(path))
    return path


def where(framework: str) -> str:
    if framework == "catboost":
        return search_path()
    return library_path({"xgboost": xgboost.core, "lightgbm": lightgbm.basic}[framework])


@pytest.mark.parametrize("framework", ["xgboost", "lightgbm", "catboost"])
def test_the_child_reads_and_predicts(framework: str, request: pytest.FixtureRequest) -> None:
    artifact = request.getfixturevalue(f"{framework}_file")
    done = read_in_child(framework, where(framework), artifact, timeout=60)
    assert done.returncode == 0, done.stderr
    check_native_read(framework, framework, where(framework), artifact)


@pytest.mark.parametrize(
    ("framework", "name"), [("xgboost", "model.json"), ("lightgbm", "model.txt"), ("catboost", "model.cbm")]
)
def test_an_ordinary_read_error_is_left_to_the_real_load(framework: str, name: str, tmp_path: Path) -> None:
    garbage = tmp_path / name
    garbage.write_text("tree\nnot a model")
    done = read_in_child(framework, where(framework), garbage, timeout=60)
    assert done.returncode == 3 and done.stderr.strip(), done.stderr
    check_native_read(framework, framework, where(framework), garbage)


def test_a_crash_is_a_load_error(tmp_path: Path, lightgbm_file: Path) -> None:
    text = lightgbm_file.read_bytes()
    damaged = tmp_path / "model.txt"
    damaged.write_bytes(text.replace(b"leaf_value=", b"leaf_valuX=", 1))
    with pytest.raises(LoadError, match=r"LightGBM crashed \(SIGABRT\) reading model.txt"):
        check_native_read("lightgbm", "LightGBM", library_path(lightgbm.basic), damaged)


def test_a_read_that_does_not_finish_is_a_load_error(xgboost_file: Path) -> None:
    with pytest.raises(LoadError, match="did not finish reading model.ubj within 0 s"):
        check_native_read("xgboost", "XGBoost", library_path(xgboost.core), xgboost_file, timeout=0.001)


def test_without_a_library_nothing_runs(tmp_path: Path) -> None:
    check_native_read("xgboost", "XGBoost", None, tmp_path / "missing.json")
