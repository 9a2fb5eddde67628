"""Rollout records on disk: read-modify-write, the generation counter, the controller lock."""

from __future__ import annotations

import dataclasses

import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from shoal.errors import InvalidInput, Unavailable
from shoal.rollout.record import PAUSED, RolloutRecord
from shoal.rollout.spec import parse_spec
from shoal.rollout.store import RolloutStore


def record(model: str = "iris", percent: float = 10.0) -> RolloutRecord:
    spec = parse_spec({"stable": "2", "canary": {"variant": "3", "percent": percent}})
    return RolloutRecord(model, spec, percent=percent, since=1000.0, revision=1)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    return tmp_path / "state" / "rollouts"


@pytest.fixture
def store(folder: Path) -> Iterator[RolloutStore]:
    store = RolloutStore(folder)
    yield store
    store.close()


def test_a_new_store_is_usable_and_empty(store: RolloutStore, folder: Path) -> None:
    assert store.usable
    assert store.problem is None
    assert folder.is_dir()
    assert store.generation() == 0
    assert store.read_all() == {}


def test_update_writes_the_record_and_bumps_the_generation(store: RolloutStore, folder: Path) -> None:
    seen: list[RolloutRecord | None] = []

    def create(current: RolloutRecord | None) -> RolloutRecord:
        seen.append(current)
        return record()

    stored = store.update("iris", create)
    assert seen == [None]
    assert stored == record()
    assert store.generation() == 1
    assert (folder / "iris.json").is_file()
    assert RolloutRecord.from_json(orjson.loads((folder / "iris.json").read_bytes())) == record()
    assert store.read_all() == {"iris": record()}


def test_update_hands_change_the_current_record(store: RolloutStore) -> None:
    store.update("iris", lambda current: record())
    seen: list[RolloutRecord | None] = []

    def pause(current: RolloutRecord | None) -> RolloutRecord:
        seen.append(current)
        assert current is not None
        return current.changed("paused", 2000.0, state=PAUSED)

    stored = store.update("iris", pause)
    assert seen == [record()]
    assert stored is not None and stored.state == PAUSED and stored.revision == 2
    assert store.read_all()["iris"].state == PAUSED
    assert store.generation() == 2


def test_update_returning_none_deletes_the_record(store: RolloutStore, folder: Path) -> None:
    store.update("iris", lambda current: record())
    store.update("other", lambda current: record("other"))
    assert store.update("iris", lambda current: None) is None
    assert not (folder / "iris.json").exists()
    assert set(store.read_all()) == {"other"}
    assert store.generation() == 3


def test_deleting_a_record_that_does_not_exist_is_no_change(store: RolloutStore) -> None:
    # change(None) returning None returns the same object: nothing to write.
    assert store.update("iris", lambda current: None) is None
    assert store.generation() == 0


def test_returning_the_same_record_writes_nothing(store: RolloutStore, folder: Path) -> None:
    store.update("iris", lambda current: record())
    written = (folder / "iris.json").stat().st_ino  # a write replaces the file: a new inode
    returned = store.update("iris", lambda current: current)
    assert returned == record()
    assert store.generation() == 1
    assert (folder / "iris.json").stat().st_ino == written
    store.update("iris", lambda current: record(percent=20.0))
    assert (folder / "iris.json").stat().st_ino != written  # (the check above can tell)
    assert store.generation() == 2


def test_an_equal_but_new_record_is_a_change(store: RolloutStore) -> None:
    store.update("iris", lambda current: record())
    store.update("iris", lambda current: record())  # equal, not the same object
    assert store.generation() == 2


def test_a_refusal_in_change_writes_nothing(store: RolloutStore, folder: Path) -> None:
    store.update("iris", lambda current: record())
    body = (folder / "iris.json").read_bytes()

    def refuse(current: RolloutRecord | None) -> RolloutRecord:
        raise InvalidInput("nothing to pause")

    with pytest.raises(InvalidInput, match="nothing to pause"):
        store.update("iris", refuse)
    assert (folder / "iris.json").read_bytes() == body
    assert store.generation() == 1
    with pytest.raises(InvalidInput):
        store.update("new", refuse)
    assert not (folder / "new.json").exists()
    assert store.generation() == 1
    # The locks were released: the next change goes through.
    store.update("iris", lambda current: None)
    assert store.generation() == 2


def test_no_temporary_files_are_left_behind(store: RolloutStore, folder: Path) -> None:
    for percent in (10.0, 20.0, 30.0):
        store.update("iris", lambda current, p=percent: record(percent=p))
    names = {path.name for path in folder.iterdir()}
    assert names <= {"iris.json", ".generation", ".lock", ".controller.lock"}
    assert store.read_all()["iris"].percent == 30.0


@pytest.mark.parametrize(
    "body",
    [b"", b"{not json", b"[]", b'{"model": "broken"}', b"null",
     (b'{"model": "broken", "spec": {}, "state": "progressing", "percent": "x", "step": 0, '
      b'"since": 0}')],
)
def test_read_all_skips_damaged_files(store: RolloutStore, folder: Path, body: bytes) -> None:
    store.update("iris", lambda current: record())
    (folder / "broken.json").write_bytes(body)
    assert store.read_all() == {"iris": record()}


# A record whose spec does not validate (hand-edited, or written by another Shoal version):
# parse_spec raises InvalidInput, which is neither ValueError nor KeyError.
INVALID_SPEC = (b'{"model": "broken", "spec": {"canary": {"variant": "3"}}, "state": "progressing", '
                b'"percent": 0, "step": 0, "since": 0}')


def test_read_all_skips_a_record_whose_spec_does_not_validate(store: RolloutStore, folder: Path) -> None:
    store.update("iris", lambda current: record())
    (folder / "broken.json").write_bytes(INVALID_SPEC)
    assert store.read_all() == {"iris": record()}


def test_a_record_whose_spec_does_not_validate_is_replaced_by_the_next_change(
    store: RolloutStore, folder: Path
) -> None:
    (folder / "broken.json").write_bytes(INVALID_SPEC)
    seen: list[RolloutRecord | None] = []

    def replace(current: RolloutRecord | None) -> RolloutRecord | None:
        seen.append(current)
        return None

    store.update("broken", replace)
    assert seen == [None]
    assert not (folder / "broken.json").exists()


def test_a_damaged_record_is_replaced_by_the_next_change(store: RolloutStore, folder: Path) -> None:
    (folder / "iris.json").write_bytes(b"\x00garbage")
    seen: list[RolloutRecord | None] = []

    def create(current: RolloutRecord | None) -> RolloutRecord:
        seen.append(current)
        return record()

    store.update("iris", create)
    assert seen == [None]
    assert store.read_all() == {"iris": record()}


def test_read_all_ignores_files_that_are_not_records(store: RolloutStore, folder: Path) -> None:
    store.update("iris", lambda current: record())
    (folder / "notes.txt").write_text("hello")
    (folder / "sub.json").mkdir()
    assert store.read_all() == {"iris": record()}


def test_two_stores_on_one_folder_share_records_and_generation(folder: Path) -> None:
    first, second = RolloutStore(folder), RolloutStore(folder)
    try:
        first.update("iris", lambda current: record())
        assert second.generation() == first.generation() == 1
        assert second.read_all() == {"iris": record()}
        second.update("iris", lambda current: None)
        assert first.generation() == 2
        assert first.read_all() == {}
    finally:
        first.close()
        second.close()


def test_the_generation_survives_a_new_store(folder: Path) -> None:
    store = RolloutStore(folder)
    store.update("iris", lambda current: record())
    store.update("iris", lambda current: record())
    store.close()
    again = RolloutStore(folder)
    assert again.generation() == 2
    assert again.read_all() == {"iris": dataclasses.replace(record(), revision=2)}


def test_a_store_that_cannot_create_its_folder_is_unusable(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    store = RolloutStore(blocker / "rollouts")
    assert not store.usable
    assert store.problem is not None and "cannot keep rollout state in" in store.problem
    assert store.generation() == 0
    assert store.read_all() == {}
    assert not store.lead()
    with pytest.raises(Unavailable, match="choose a writable --state-dir"):
        store.update("iris", lambda current: record())


# -- the controller lock -----------------------------------------------------------------------------

_HOLDER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from shoal.rollout.store import RolloutStore

    store = RolloutStore(Path(sys.argv[1]))
    print("led" if store.lead() else "not led", flush=True)
    for line in sys.stdin:
        command = line.strip()
        if command == "close":
            store.close()
            print("closed", flush=True)
        elif command == "lead":
            print("led" if store.lead() else "not led", flush=True)
        elif command == "exit":
            break
    """
)


class Holder:
    """Another process with a store on the same folder, driven line by line (no sleeps)."""

    def __init__(self, folder: Path) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", _HOLDER, str(folder)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )
        self.first = self.read()

    def read(self) -> str:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        assert line, f"the holder process ended (exit status {self.process.poll()})"
        return line.strip()

    def ask(self, command: str) -> str:
        assert self.process.stdin is not None
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()
        return self.read()

    def stop(self) -> None:
        if self.process.poll() is None:
            assert self.process.stdin is not None
            self.process.stdin.close()
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:  # pragma: no cover
                self.process.kill()
                self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()


def test_lead_is_exclusive_across_processes_and_released_by_close(folder: Path) -> None:
    holder = Holder(folder)
    store = RolloutStore(folder)
    try:
        assert holder.first == "led"
        assert not store.lead()
        assert not store.lead()  # asking again does not take it either
        assert holder.ask("close") == "closed"
        assert store.lead()
        assert store.lead()  # held: still ours
        assert holder.ask("lead") == "not led"
        store.close()
        assert holder.ask("lead") == "led"
    finally:
        store.close()
        holder.stop()


def test_lead_is_released_when_the_holder_exits(folder: Path) -> None:
    holder = Holder(folder)
    store = RolloutStore(folder)
    try:
        assert holder.first == "led"
        assert not store.lead()
        holder.stop()  # the kernel releases the lock with the process
        assert holder.process.returncode == 0
        assert store.lead()
    finally:
        store.close()
        holder.stop()


def test_a_process_that_leads_is_not_blocked_by_record_changes(folder: Path) -> None:
    store = RolloutStore(folder)
    try:
        assert store.lead()
        store.update("iris", lambda current: record())  # another lock file
        holder = Holder(folder)
        try:
            assert holder.first == "not led"
        finally:
            holder.stop()
    finally:
        store.close()


def test_a_revision_is_never_reused_even_after_a_delete(store: RolloutStore) -> None:
    """Processes tell records apart by revision: set, delete, set again must not repeat one."""
    first = store.update("iris", lambda current: record(percent=10.0))
    store.update("iris", lambda current: None)
    second = store.update("iris", lambda current: record(percent=90.0))
    assert first is not None and second is not None
    assert second.revision > first.revision
    assert store.read_all()["iris"].revision == second.revision
