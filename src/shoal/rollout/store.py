"""Rollout records on disk, shared by every server process and kept across restarts.

``<state-dir>/rollouts/<model>.json`` holds one model's record. Consistency:

- **Changes are read-modify-write under one exclusive ``flock``** (``.lock``): a user's
  promote on one process and the automatic step taken by another never overwrite each other.
  Files are replaced atomically (write a temporary file, rename it).
- **Every change bumps a generation counter** (``.generation``, 8 bytes every process maps
  into memory). A process compares the counter with the one it last read before each
  unversioned lookup: a memory read, no system call, so a change made by any process takes
  effect for the next request everywhere; the records are re-read only when it moved.
- **One process drives the analyses**: the one holding ``.controller.lock`` (a non-blocking
  ``flock``, released by the kernel when that process exits, so another takes over).

Locks are advisory and need a local file system (or one with working ``flock``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import mmap
import os
import struct
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from ..errors import ShoalError, Unavailable
from .record import RolloutRecord

_COUNTER = struct.Struct("<Q")


class RolloutStore:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.problem: str | None = None
        self._map: mmap.mmap | None = None
        self._controller: Any = None
        self._local = threading.Lock()
        try:
            folder.mkdir(parents=True, exist_ok=True)
            fd = os.open(folder / ".generation", os.O_RDWR | os.O_CREAT, 0o644)
            try:
                if os.fstat(fd).st_size < _COUNTER.size:
                    os.ftruncate(fd, _COUNTER.size)  # zeros; racing creators agree
                self._map = mmap.mmap(fd, _COUNTER.size)
            finally:
                os.close(fd)
        except OSError as exc:
            self.problem = f"cannot keep rollout state in {folder}: {exc.strerror or exc}"

    @property
    def usable(self) -> bool:
        return self._map is not None

    def generation(self) -> int:
        """The change counter: cheap enough for every request."""
        return _COUNTER.unpack_from(self._map)[0] if self._map is not None else 0

    def read_all(self) -> dict[str, RolloutRecord]:
        """Every record. Blocking, but small local files, read only after a change."""
        records: dict[str, RolloutRecord] = {}
        if self._map is None:
            return records
        for path in self.folder.glob("*.json"):
            record = _load(path)
            if record is not None:
                records[record.model] = record
        return records

    def update(
        self, model: str, change: Callable[[RolloutRecord | None], RolloutRecord | None]
    ) -> RolloutRecord | None:
        """Apply ``change`` to the model's current record (None: none) under the lock, and
        store what it returns (None deletes the record). Blocking: off the event loop.

        ``change`` may raise a ShoalError to refuse: nothing is written then.
        """
        if self._map is None:
            raise Unavailable(f"{self.problem}; choose a writable --state-dir")
        path = self.folder / f"{model}.json"
        try:
            with self._local, open(self.folder / ".lock", "a") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
                current = _load(path)
                updated = change(current)
                if updated is current and (current is not None or not path.exists()):
                    return current  # nothing to change: no write, no new generation
                generation = self.generation() + 1
                if updated is None:
                    with contextlib.suppress(FileNotFoundError):
                        path.unlink()
                else:
                    # Stamped with the generation it makes: a revision is never reused, even
                    # after a delete, so "same revision" always means "same record".
                    updated = dataclasses.replace(updated, revision=generation)
                    _write(path, orjson.dumps(updated.to_json(), option=orjson.OPT_INDENT_2))
                _COUNTER.pack_into(self._map, 0, generation)
                return updated
        except OSError as exc:
            raise Unavailable(
                f"cannot save rollout state to {path}: {exc.strerror or exc}; nothing changed"
            ) from None

    def lead(self) -> bool:
        """Whether this process drives the analyses: takes the controller lock if it is free.
        Blocking only for the ``open``; the lock itself is never waited for."""
        if self._controller is not None:
            return True
        if self._map is None:
            return False
        handle = open(self.folder / ".controller.lock", "a")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            return False
        self._controller = handle
        # A leader that died between writing a record and moving the counter left the other
        # processes one change behind: moving it now makes every process re-read.
        try:
            with self._local, open(self.folder / ".lock", "a") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                _COUNTER.pack_into(self._map, 0, self.generation() + 1)
        except OSError:
            pass
        return True

    def close(self) -> None:
        if self._controller is not None:
            self._controller.close()  # releases the lock for the next process
            self._controller = None


def _load(path: Path) -> RolloutRecord | None:
    try:
        return RolloutRecord.from_json(orjson.loads(path.read_bytes()))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError, KeyError, ShoalError):
        # Damaged, or a spec this version does not accept: treated as absent, so serving
        # goes on and the next change replaces it.
        return None


def _write(path: Path, body: bytes) -> None:
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}")
    try:
        temporary.write_bytes(body)
        os.replace(temporary, path)
    except OSError:
        with contextlib.suppress(OSError):
            temporary.unlink()
        raise
