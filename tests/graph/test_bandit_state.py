"""Bandit state on disk: atomic writes, survival across instances, no update lost between
processes that share the state directory."""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
from pathlib import Path

import pytest

from shoal.errors import LoadError, Unavailable
from shoal.graph.state import BanditStore

ARMS = ["a", "b"]


def test_updates_persist_and_reload(tmp_path: Path) -> None:
    path = tmp_path / "g" / "router.json"
    store = BanditStore(ARMS, path)
    store.update(0, 1.0)
    store.update(1, 0.25)
    data = json.loads(path.read_text())
    assert data["arms"] == {"a": {"pulls": 1.0, "reward": 1.0}, "b": {"pulls": 1.0, "reward": 0.25}}
    again = BanditStore(ARMS, path)
    assert again.snapshot()["b"] == {"pulls": 1.0, "reward": 0.25, "mean": 0.25}
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]  # no temporaries left


def test_arms_are_matched_by_name(tmp_path: Path) -> None:
    path = tmp_path / "router.json"
    BanditStore(["a", "b"], path).update(1, 1.0)
    store = BanditStore(["b", "c"], path)  # an arm removed, one added
    assert store.snapshot()["b"]["pulls"] == 1.0 and store.snapshot()["c"]["pulls"] == 0.0


def test_another_instance_sees_changes_when_it_reloads(tmp_path: Path) -> None:
    path = tmp_path / "router.json"
    reader = BanditStore(ARMS, path, refresh=3600)
    writer = BanditStore(ARMS, path)
    writer.update(0, 1.0)
    assert reader.counts()[0][0] == 0.0  # counts() is memory only: no I/O on the event loop
    assert not reader.due()  # read at load: the next reload is an hour away
    reader.reload()
    assert reader.counts()[0][0] == 1.0
    assert reader.snapshot()["a"]["pulls"] == 1.0


def test_an_in_memory_store_never_reloads() -> None:
    assert not BanditStore(ARMS).due()


def test_due_is_claimed_by_one_caller(tmp_path: Path) -> None:
    store = BanditStore(ARMS, tmp_path / "router.json", refresh=3600)
    store._checked -= 3600  # an hour later
    assert store.due() and not store.due()


@pytest.mark.parametrize("damage", ['{"arms": []}', '{"arms": {"a": {"pulls": "x"}}}', "[1]"])
def test_a_file_of_the_wrong_shape_is_damaged_not_fatal(tmp_path: Path, damage: str) -> None:
    path = tmp_path / "router.json"
    path.write_text(damage)
    store = BanditStore(ARMS, path)
    assert store.counts()[0].sum() == 0
    store.update(0, 1.0)
    assert json.loads(path.read_text())["arms"]["a"]["pulls"] == 1.0


def test_a_state_dir_that_goes_away_keeps_routing_and_refuses_feedback(tmp_path: Path) -> None:
    folder = tmp_path / "g"
    store = BanditStore(ARMS, folder / "router.json", refresh=0.0)
    store.update(0, 1.0)
    shutil.rmtree(folder)
    folder.write_text("")  # every file operation under g/ now fails (even as root)
    assert store.counts()[0].tolist() == [1.0, 0.0]  # routing goes on with what it has
    with pytest.raises(Unavailable, match="cannot save bandit state .* the reward was not recorded"):
        store.update(1, 1.0)
    assert store.snapshot()["b"]["pulls"] == 0.0


def test_a_failed_write_changes_nothing_and_leaves_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "router.json"
    store = BanditStore(ARMS, path)
    store.update(0, 1.0)
    path.unlink()
    (path / "blocker").mkdir(parents=True)  # the rename over a non-empty directory fails
    with pytest.raises(Unavailable):
        store.update(0, 1.0)
    assert store.snapshot()["a"]["pulls"] == 1.0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["router.json", "router.json.lock"]


def test_an_unwritable_state_dir_fails_the_load(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(LoadError, match="choose a writable --state-dir"):
        BanditStore(ARMS, blocker / "g" / "router.json")


def _hammer(path: str, arm: int, count: int) -> None:
    store = BanditStore(ARMS, Path(path))
    for _ in range(count):
        store.update(arm, 1.0)


def test_no_update_is_lost_between_processes(tmp_path: Path) -> None:
    path = tmp_path / "router.json"
    context = multiprocessing.get_context("fork" if hasattr(os, "fork") else "spawn")
    workers = [context.Process(target=_hammer, args=(str(path), i % 2, 100)) for i in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(30)
        assert worker.exitcode == 0
    data = json.loads(path.read_text())["arms"]
    assert data["a"]["pulls"] == 200 and data["b"]["pulls"] == 200


def test_in_memory_store_without_a_path() -> None:
    store = BanditStore(ARMS)
    store.update(1, 0.5)
    assert store.snapshot()["b"] == {"pulls": 1.0, "reward": 0.5, "mean": 0.5}
