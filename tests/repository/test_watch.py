"""--watch without a server: folder signatures, the debounce, and what the watcher does."""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

import pytest

from shoal.errors import LoadError, ModelNotFound
from shoal.serving.registry import Registry
from shoal.repository.watch import (
    Change,
    Debouncer,
    RepositoryWatcher,
    folder_signature,
    scan_repository,
)


def make(path: Path, data: bytes = b"x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


# ---- signatures ---------------------------------------------------------------------------


def test_signature_lists_files_with_size_and_time_and_folders(tmp_path: Path) -> None:
    model = tmp_path / "iris"
    make(model / "model.yaml", b"runtime: sklearn\n")
    artifact = make(model / "1" / "model.joblib", b"12345")
    os.utime(artifact, ns=(1_000_000_000, 2_000_000_000))
    (model / "2").mkdir()  # an empty version folder counts: the load would see it
    signature = folder_signature(model)
    assert signature is not None
    assert ("1/", 0, 0) in signature and ("2/", 0, 0) in signature
    assert ("1/model.joblib", 5, 2_000_000_000) in [entry[:3] for entry in signature]
    assert [entry[0] for entry in signature] == sorted(entry[0] for entry in signature)


def test_signature_changes_with_size_time_and_new_or_removed_entries(tmp_path: Path) -> None:
    model = tmp_path / "iris"
    artifact = make(model / "model.joblib", b"abc")
    os.utime(artifact, ns=(1, 1_000_000_000))
    first = folder_signature(model)
    assert folder_signature(model) == first  # nothing changed: the same signature

    artifact.write_bytes(b"abcd")
    os.utime(artifact, ns=(1, 1_000_000_000))
    grown = folder_signature(model)
    assert grown != first  # same time, other size

    artifact.write_bytes(b"wxyz")
    os.utime(artifact, ns=(1, 3_000_000_000))
    touched = folder_signature(model)
    assert touched != grown  # same size, other time

    (model / "3").mkdir()
    assert folder_signature(model) != touched
    (model / "3").rmdir()
    assert folder_signature(model) == touched


def test_signature_ignores_dot_names_and_pycache(tmp_path: Path) -> None:
    model = tmp_path / "custom"
    make(model / "model.py", b"pass\n")
    before = folder_signature(model)
    make(model / "__pycache__" / "model.cpython-311.pyc", b"compiled")  # written by its load
    make(model / ".model.py.swp", b"editor")
    make(model / ".2.partial" / "model.joblib", b"a copy in progress")
    assert folder_signature(model) == before


def test_signature_of_a_missing_folder_or_a_file_is_none(tmp_path: Path) -> None:
    assert folder_signature(tmp_path / "nope") is None
    assert folder_signature(make(tmp_path / "file")) is None


def test_signature_follows_links_once(tmp_path: Path) -> None:
    model = tmp_path / "linked"
    make(tmp_path / "artifacts" / "model.joblib", b"12")
    model.mkdir()
    (model / "1").symlink_to(tmp_path / "artifacts")
    (model / "loop").symlink_to(model)  # a cycle must not hang the scan
    (model / "dangling").symlink_to(tmp_path / "gone")
    signature = folder_signature(model)
    assert signature is not None
    linked = (tmp_path / "artifacts" / "model.joblib").stat().st_mtime_ns
    assert ("1/model.joblib", 2, linked) in [entry[:3] for entry in signature]
    assert not any(entry[0].startswith(("dangling", "loop/")) for entry in signature)


def test_scan_sees_the_model_folders_only(tmp_path: Path) -> None:
    make(tmp_path / "iris" / "model.joblib")
    make(tmp_path / "graph" / "graph.yaml")
    make(tmp_path / ".shoal-state" / "bandit.json")
    make(tmp_path / "_scratch" / "notes")
    make(tmp_path / "README.md")
    assert set(scan_repository(tmp_path)) == {"iris", "graph"}
    with pytest.raises(OSError):
        scan_repository(tmp_path / "gone")


# ---- debounce -----------------------------------------------------------------------------

A = (("model.joblib", 10, 1),)
A_GROWING = (("model.joblib", 5, 2),)
B = (("model.joblib", 10, 3),)


def test_a_new_folder_is_added_once_it_is_stable_for_one_interval() -> None:
    debouncer = Debouncer({})
    assert debouncer.update({"iris": A_GROWING}) == []  # first seen: wait
    assert debouncer.update({"iris": A}) == []  # still changing: wait
    assert debouncer.update({"iris": A}) == [Change("iris", "added")]
    assert debouncer.update({"iris": A}) == []  # acted on once, not every interval


def test_a_folder_that_keeps_changing_is_never_acted_on() -> None:
    debouncer = Debouncer({"iris": A})
    for size in range(1, 20):
        assert debouncer.update({"iris": (("model.joblib", size, size),)}) == []
    assert debouncer.update({"iris": B}) == []
    assert debouncer.update({"iris": B}) == [Change("iris", "changed")]


def test_unchanged_folders_and_changes_undone_before_they_settle_do_nothing() -> None:
    debouncer = Debouncer({"iris": A, "other": B})
    assert debouncer.update({"iris": A, "other": B}) == []
    assert debouncer.update({"iris": B, "other": B}) == []  # changed...
    assert debouncer.update({"iris": A, "other": B}) == []  # ...and back: nothing to reload
    assert debouncer.update({"iris": A, "other": B}) == []
    assert debouncer.pending == {}


def test_a_removed_folder_is_unloaded_once_it_stays_gone() -> None:
    debouncer = Debouncer({"iris": A, "other": B})
    assert debouncer.update({"other": B, "iris": A_GROWING}) == []  # being deleted
    assert debouncer.update({"other": B}) == []
    assert debouncer.update({"other": B}) == [Change("iris", "removed")]
    assert debouncer.update({"other": B}) == []
    # Back again: added anew, even with the files it had before.
    assert debouncer.update({"other": B, "iris": A}) == []
    assert debouncer.update({"other": B, "iris": A}) == [Change("iris", "added")]


def test_a_folder_that_appears_and_vanishes_before_it_settles_is_never_loaded() -> None:
    debouncer = Debouncer({})
    assert debouncer.update({"tmp": A}) == []
    assert debouncer.update({}) == []
    assert debouncer.update({}) == []
    assert debouncer.pending == {} and debouncer.acted == {}


def test_changes_come_out_by_name_each_when_its_own_folder_settles() -> None:
    debouncer = Debouncer({"a": A, "b": A})
    assert debouncer.update({"a": B, "b": B, "c": A}) == []
    assert debouncer.update({"a": B, "b": A_GROWING, "c": A}) == [
        Change("a", "changed"), Change("c", "added")]
    assert debouncer.update({"a": B, "b": A_GROWING, "c": A}) == [Change("b", "changed")]


# ---- the watcher --------------------------------------------------------------------------


class FakeRepository:
    """What the watcher uses of ModelRepository, recording the calls."""

    def __init__(self, root: Path, failing: dict[str, Exception] | None = None) -> None:
        self.root = root
        self.calls: list[tuple[str, str]] = []
        self.failing = failing or {}
        self.registry = Registry()

    def names(self) -> list[str]:
        return sorted(p.name for p in self.root.iterdir() if p.is_dir())

    def is_graph(self, name: str) -> bool:
        return (self.root / name / "graph.yaml").is_file()

    async def load(self, name: str) -> list[str]:
        self.calls.append(("load", name))
        await asyncio.sleep(0)
        if name in self.failing:
            raise self.failing[name]
        return ["1"]

    async def unload(self, name: str) -> None:
        self.calls.append(("unload", name))
        if name in self.failing:
            raise self.failing[name]


def test_unloads_come_first_and_graphs_load_after_models(tmp_path: Path) -> None:
    make(tmp_path / "chain" / "graph.yaml")
    make(tmp_path / "iris" / "model.joblib")
    repository = FakeRepository(tmp_path)
    watcher = RepositoryWatcher(repository, 1.0)  # type: ignore[arg-type]
    asyncio.run(watcher.apply([Change("chain", "added"), Change("iris", "changed"),
                               Change("old", "removed")]))
    assert repository.calls == [("unload", "old"), ("load", "iris"), ("load", "chain")]


def test_a_failing_change_is_logged_and_the_others_still_happen(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    repository = FakeRepository(tmp_path, {
        "broken": LoadError("bad artifact"), "gone": ModelNotFound("not loaded"),
        "bug": RuntimeError("oops")})
    watcher = RepositoryWatcher(repository, 1.0)  # type: ignore[arg-type]
    monkeypatch.setattr(logging.getLogger("shoal"), "propagate", True)  # configure() turns it off
    with caplog.at_level(logging.INFO, logger="shoal"):
        asyncio.run(watcher.apply([Change("gone", "removed"), Change("broken", "changed"),
                                   Change("bug", "added"), Change("fine", "added")]))
    assert ("load", "fine") in repository.calls and len(repository.calls) == 4
    failed = [r for r in caplog.records if r.getMessage() == "repository_change_failed"]
    assert [r.fields["model"] for r in failed] == ["bug"]  # type: ignore[attr-defined]
    changed = [r.fields for r in caplog.records if r.getMessage() == "repository_changed"]  # type: ignore[attr-defined]
    assert {(f["model"], f["change"]) for f in changed} == {
        ("gone", "removed"), ("broken", "changed"), ("bug", "added"), ("fine", "added")}


def test_the_watcher_loads_a_new_folder_and_unloads_a_removed_one(tmp_path: Path) -> None:
    make(tmp_path / "iris" / "model.joblib")
    repository = FakeRepository(tmp_path)
    watcher = RepositoryWatcher(repository, 0.05)  # type: ignore[arg-type]

    async def scenario() -> None:
        await watcher.baseline()
        task = asyncio.create_task(watcher.run())
        try:
            make(tmp_path / "new" / "model.joblib")
            await until(lambda: ("load", "new") in repository.calls)
            make(tmp_path / "iris" / "2" / "model.joblib")
            await until(lambda: ("load", "iris") in repository.calls)
            for path in [tmp_path / "new" / "model.joblib", tmp_path / "new"]:
                path.unlink() if path.is_file() else path.rmdir()
            await until(lambda: ("unload", "new") in repository.calls)
            await asyncio.sleep(0.3)  # nothing more: each change once
        finally:
            task.cancel()
        assert repository.calls == [("load", "new"), ("load", "iris"), ("unload", "new")]

    asyncio.run(scenario())


def test_an_unreadable_repository_changes_nothing(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    make(root / "iris" / "model.joblib")
    repository = FakeRepository(root)
    watcher = RepositoryWatcher(repository, 0.05)  # type: ignore[arg-type]

    async def scenario() -> None:
        await watcher.baseline()
        task = asyncio.create_task(watcher.run())
        try:
            root.rename(tmp_path / "elsewhere")  # the repository is gone for a while
            await asyncio.sleep(0.4)
            (tmp_path / "elsewhere").rename(root)
            await asyncio.sleep(0.3)
        finally:
            task.cancel()
        assert repository.calls == []  # a failed scan is not "every folder was removed"

    asyncio.run(scenario())


async def until(condition, timeout: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.01)


def test_a_file_replaced_with_the_same_size_and_time_is_a_change(tmp_path: Path) -> None:
    """rsync -a, cp -p or an archive keep size and mtime; the ctime and inode still move."""
    model = tmp_path / "iris"
    artifact = make(model / "model.joblib", b"weights-1")
    os.utime(artifact, ns=(1, 1_000_000_000))
    before = folder_signature(model)
    replacement = make(tmp_path / "new.joblib", b"weights-2")  # same size
    os.utime(replacement, ns=(1, 1_000_000_000))
    os.replace(replacement, artifact)
    assert folder_signature(model) != before


def test_a_failed_graph_is_tried_again_when_models_arrive(tmp_path: Path) -> None:
    from shoal.serving.endpoint import ModelState
    from shoal.serving.registry import VersionEntry

    make(tmp_path / "chain" / "graph.yaml")
    repository = FakeRepository(tmp_path)
    repository.registry.set("chain", VersionEntry("1", ModelState.UNAVAILABLE, "unknown model 'iris'"))
    watcher = RepositoryWatcher(repository, 1.0)  # type: ignore[arg-type]
    make(tmp_path / "iris" / "model.joblib")
    asyncio.run(watcher.apply([Change("iris", "added")]))
    assert repository.calls == [("load", "iris"), ("load", "chain")]
