"""The disk spool: records a sink could not take yet, in order, surviving a crash.

One spool per sink and server process: a folder of segment files (``000000000001.jsonl``,
...), each a run of structured CloudEvents, one per line, appended in the order the records
were made. The head segment is read back whole (it is sealed first: appends go to a new
segment), and its lines are acknowledged as the sink takes them; the read position is kept
in ``head.offset`` so a restart resends as little as possible (delivery is at least once). A
segment is deleted once all of it is delivered.

Writes go to the page cache (no ``fsync`` per record): a spool survives the server being
killed, not the machine losing power. A folder is held with an exclusive ``flock`` by the
process using it; at start, a process also adopts the folders of processes that are gone
(a crash, or fewer ``--http-workers`` than before), so what they spooled is delivered too.

All spools of a process share one budget (``--payload-log-spool-size``): a line that would
go over it is refused, and the caller counts it as dropped.
"""

from __future__ import annotations

import fcntl
import os
import threading
from pathlib import Path

SEGMENT_BYTES = 4 * 1024 * 1024
_SUFFIX = ".jsonl"
_OFFSET = "head.offset"
_LOCK = ".lock"


class SpoolBudget:
    """Bytes every spool of this process may hold together."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self._lock = threading.Lock()

    def take(self, size: int) -> bool:
        with self._lock:
            if self.used + size > self.limit:
                return False
            self.used += size
            return True

    def give(self, size: int) -> None:
        with self._lock:
            self.used = max(0, self.used - size)

    def add(self, size: int) -> None:
        """Bytes found on disk (a spool left behind): they count, even over the limit."""
        with self._lock:
            self.used += size


class SpoolBusy(Exception):
    """Another live process holds this spool folder."""


class Spool:
    def __init__(self, directory: Path, budget: SpoolBudget) -> None:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.directory = directory
        self.budget = budget
        self._lock_fd = _lock(directory)
        self._segments = sorted(_segments(directory))
        self._writer: tuple[int, object] | None = None  # (segment number, open file)
        self._head: list[bytes] = []
        self._head_number: int | None = None
        self._head_index = 0
        self._head_offset = 0
        self._head_unacked = 0  # bytes of the head counted in ``bytes`` and not yet acked
        self.bytes = sum(_size(self._path(n)) for n in self._segments)
        segment, offset = _read_offset(directory)
        if self._segments and segment == self._segments[0]:
            self.bytes = max(0, self.bytes - offset)
        elif segment is not None:
            _write_offset(directory, None, 0)  # it named a segment that is gone: stale
        budget.add(self.bytes)

    # -- writing --------------------------------------------------------------------------

    def append(self, lines: list[bytes]) -> int:
        """Append lines (no newlines in them); returns how many fitted the budget (a prefix:
        the order is kept, the rest is the caller's to count as dropped)."""
        taken = 0
        sizes = []
        for line in lines:
            size = len(line) + 1
            if not self.budget.take(size):
                break
            sizes.append(size)
            taken += 1
        if not taken:
            return 0
        position: int | None = None
        try:
            number, handle = self._tail()
            position = handle.tell()  # type: ignore[attr-defined]
            handle.write(b"\n".join(lines[:taken]) + b"\n")  # type: ignore[attr-defined]
            handle.flush()  # type: ignore[attr-defined]
        except OSError:
            self.budget.give(sum(sizes))
            self._abandon_tail(position)
            raise
        self.bytes += sum(sizes)
        if handle.tell() >= SEGMENT_BYTES:  # type: ignore[attr-defined]
            self._seal()
        return taken

    def _tail(self) -> tuple[int, object]:
        if self._writer is None:
            number = (self._segments[-1] + 1) if self._segments else 1
            if self._head_number is not None:
                number = max(number, self._head_number + 1)
            handle = open(self._path(number), "ab")
            self._segments.append(number)
            self._writer = (number, handle)
        return self._writer

    def _abandon_tail(self, position: int | None) -> None:
        """After a failed write: cut what part of it reached the file (a cut line would
        merge with the next one) and start a new segment next time."""
        if self._writer is None:
            return
        handle = self._writer[1]
        try:
            if position is not None:
                handle.truncate(position)  # type: ignore[attr-defined]
            handle.close()  # type: ignore[attr-defined]
        except OSError:
            pass
        self._writer = None

    def _seal(self) -> None:
        if self._writer is not None:
            self._writer[1].close()  # type: ignore[attr-defined]
            self._writer = None

    # -- reading ----------------------------------------------------------------------------

    def empty(self) -> bool:
        return not self._segments and not self._head

    def peek(self, limit: int) -> list[bytes]:
        """Up to ``limit`` of the oldest lines, not yet acknowledged."""
        while self._head_index >= len(self._head):
            if not self._next_head():
                return []
        return self._head[self._head_index : self._head_index + limit]

    def ack(self, count: int) -> None:
        """The first ``count`` lines :meth:`peek` gave were delivered (or dropped for good)."""
        done = self._head[self._head_index : self._head_index + count]
        self._head_index += len(done)
        size = sum(len(line) + 1 for line in done)
        self._head_offset += size
        self._head_unacked -= size
        self.bytes = max(0, self.bytes - size)
        self.budget.give(size)
        if self._head_index >= len(self._head):
            self._finish_head()
        else:
            _write_offset(self.directory, self._head_number, self._head_offset)

    def _next_head(self) -> bool:
        if not self._segments:
            return False
        number = self._segments[0]
        if self._writer is not None and self._writer[0] == number:
            self._seal()  # appends go to a new segment from now on
        path = self._path(number)
        segment, offset = _read_offset(self.directory)
        try:
            content = path.read_bytes()
        except FileNotFoundError:
            content = b""
        offset = offset if segment == number and 0 < offset <= len(content) else 0
        lines = content[offset:].split(b"\n")
        # A last line without its newline was cut off by a crash mid-write: not a record.
        self._head = [line for line in lines[:-1] if line]
        self._head_number = number
        self._head_index = 0
        self._head_offset = offset
        self._head_unacked = len(content) - offset  # what ``bytes`` counts of it
        self._segments.pop(0)
        if not self._head:
            self._finish_head()
            return bool(self._segments) and self._next_head()
        return True

    def _finish_head(self) -> None:
        # The offset goes before the segment: a crash between the two must not leave an
        # offset that the next segment would be read from.
        _write_offset(self.directory, None, 0)
        if self._head_number is not None:
            try:
                self._path(self._head_number).unlink()
            except FileNotFoundError:
                pass
        if self._head_unacked > 0:  # empty or cut lines: counted, never acked
            self.bytes = max(0, self.bytes - self._head_unacked)
            self.budget.give(self._head_unacked)
        self._head_unacked = 0
        self._head = []
        self._head_number = None
        self._head_index = 0
        self._head_offset = 0
        if not self._segments:
            self.bytes = 0

    # -- lifecycle ----------------------------------------------------------------------------

    def adopt(self, other: Path) -> int:
        """Take over the segments of a spool folder no live process holds; returns how many.
        Called at start, before any append: they are older than anything this spool has not
        read yet, and go behind its own leftovers."""
        try:
            fd = _lock(other)
        except SpoolBusy:
            return 0
        try:
            numbers = sorted(_segments(other))
            segment, offset = _read_offset(other)
            base = max(self._segments, default=0)
            moved = 0
            for index, number in enumerate(numbers, start=1):
                target = self._path(base + index)
                source = other / f"{number:012d}{_SUFFIX}"
                if number == segment and offset:
                    target.write_bytes(source.read_bytes()[offset:])
                    _write_offset(other, None, 0)  # before the source goes (see _finish_head)
                    source.unlink()
                else:
                    os.replace(source, target)
                self._segments.append(base + index)
                size = _size(target)
                self.bytes += size
                self.budget.add(size)
                moved += 1
            _write_offset(other, None, 0)
            # The folder goes while it is still locked: a process that opened its lock file
            # meanwhile finds, once it gets the lock, that the file is no longer there.
            for leftover in (other / _LOCK, other / f"{_OFFSET}.tmp"):
                leftover.unlink(missing_ok=True)
            try:
                other.rmdir()
            except OSError:
                pass
            return moved
        finally:
            os.close(fd)

    def close(self) -> None:
        self._seal()
        if self._head and self._head_index < len(self._head):
            _write_offset(self.directory, self._head_number, self._head_offset)
        os.close(self._lock_fd)

    def _path(self, number: int) -> Path:
        return self.directory / f"{number:012d}{_SUFFIX}"


def open_slot(root: Path, budget: SpoolBudget) -> Spool:
    """A spool in the first folder under ``root`` (``0``, ``1``, ...) no live process holds,
    with the folders of processes that are gone adopted into it."""
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    slot = 0
    while True:
        try:
            spool = Spool(root / str(slot), budget)
            break
        except SpoolBusy:
            slot += 1
    for other in sorted(root.iterdir()):
        if other.is_dir() and other != spool.directory and other.name.isdigit():
            spool.adopt(other)
    return spool


def _lock(directory: Path) -> int:
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = directory / _LOCK
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        # Adopting a folder deletes its lock file while holding the lock: a lock taken on a
        # file that is gone by now is a lock on nothing.
        if os.fstat(fd).st_ino != os.stat(path).st_ino:
            raise BlockingIOError
    except (BlockingIOError, FileNotFoundError):
        os.close(fd)
        raise SpoolBusy(str(directory)) from None
    return fd


def _segments(directory: Path) -> list[int]:
    numbers = []
    for path in directory.glob(f"*{_SUFFIX}"):
        if path.stem.isdigit():
            numbers.append(int(path.stem))
    return numbers


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _read_offset(directory: Path) -> tuple[int | None, int]:
    """(segment, offset) of the head segment's delivered part; (None, 0) when none."""
    try:
        segment, offset = (directory / _OFFSET).read_text().split()
        return int(segment), int(offset)
    except (FileNotFoundError, ValueError):
        return None, 0


def _write_offset(directory: Path, segment: int | None, offset: int) -> None:
    path = directory / _OFFSET
    if segment is not None and offset:
        temporary = directory / f"{_OFFSET}.tmp"
        temporary.write_text(f"{segment} {offset}")
        os.replace(temporary, path)
    else:
        path.unlink(missing_ok=True)
