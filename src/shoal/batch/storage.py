"""Where a job reads and writes: local paths and object storage (``s3://``, ``gs://``,
``https://``) through fsspec, and files that appear only once they are complete.

A local file is written under a hidden temporary name beside its final one and renamed into
place; an object in a store is written to a local temporary file first and uploaded when it is
complete (a store makes an upload visible only once it has all of it). Either way a crash
leaves nothing that looks like a finished file: at worst a hidden ``.*.shoal-tmp-*`` file,
which the next run in that folder removes.
"""

from __future__ import annotations

import os
import posixpath
import re
import tempfile
import uuid
from dataclasses import dataclass, field
from typing import IO, Any

from . import deps

#: The marker in temporary file names (``.part-00000.parquet.shoal-tmp-<pid>-<hex>``).
TMP_MARK = ".shoal-tmp-"
_URL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")


def is_url(text: str) -> bool:
    return bool(_URL.match(text))


@dataclass
class Location:
    """A folder or file: its filesystem, the path that filesystem uses, and how to show it."""

    fs: Any
    path: str
    shown: str
    storage_options: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def local(self) -> bool:
        return "file" in _protocols(self.fs)

    def child(self, relative: str) -> Location:
        """The file or folder ``relative`` names in this folder; InvalidInput for a name that
        would lead out of it (absolute, or with ``..``)."""
        parts = relative.replace("\\", "/").split("/") if self.local else relative.split("/")
        if relative.startswith("/") or ".." in parts or (self.local and os.path.isabs(relative)):
            from ..errors import InvalidInput

            raise InvalidInput(f"{relative!r} is not a name inside {self.shown}")
        path = posixpath.join(self.path, relative) if not self.local else os.path.join(self.path, relative)
        shown = self.shown.rstrip("/") + "/" + relative
        return Location(self.fs, path, shown, self.storage_options)

    def url(self) -> str:
        """What fsspec (on any machine) opens this with: a local absolute path or a URL."""
        return self.path if self.local else self.fs.unstrip_protocol(self.path)


def _protocols(fs: Any) -> tuple[str, ...]:
    protocol = fs.protocol
    return (protocol,) if isinstance(protocol, str) else tuple(protocol)


def locate(target: str, storage_options: dict[str, Any] | None = None) -> Location:
    """The filesystem and path of a local path or URL (``s3://bucket/key``)."""
    fsspec = deps.fsspec()
    options = dict(storage_options or {})
    if is_url(target) and not target.startswith("file://"):
        try:
            fs, path = fsspec.core.url_to_fs(target, **options)
        except ImportError as exc:
            scheme = target.split("://", 1)[0]
            extra = {"s3": "s3", "s3a": "s3", "gs": "gcs", "gcs": "gcs"}.get(scheme)
            hint = f": pip install 'shoal[{extra}]'" if extra else f" ({exc})"
            raise deps.MissingExtra(f"{target}: no filesystem for {scheme}://{hint}") from None
        return Location(fs, path, target, options)
    local = os.path.abspath(os.path.expanduser(target.removeprefix("file://")))
    return Location(fsspec.filesystem("file"), local, target, options)


class AtomicFile:
    """A file written in full before it appears under its name (see the module's docstring).

    Write to the local file at :attr:`tmp` (by name, or through :meth:`open`), then
    :meth:`commit` or :meth:`abort`.
    """

    def __init__(self, location: Location) -> None:
        self.location = location
        name = f"{TMP_MARK}{os.getpid()}-{uuid.uuid4().hex[:8]}"
        if location.local:
            folder, base = os.path.split(location.path)
            os.makedirs(folder, exist_ok=True)
            self.tmp = os.path.join(folder, f".{base}{name}")
        else:
            handle, self.tmp = tempfile.mkstemp(prefix="shoal-batch-", suffix=name)
            os.close(handle)
        self.handle: IO[bytes] | None = None

    def open(self) -> IO[bytes]:
        if self.handle is None:
            self.handle = open(self.tmp, "wb")
        return self.handle

    def commit(self) -> None:
        """Close, then rename into place (local) or upload (object storage)."""
        if self.handle is not None:
            self.handle.close()
            self.handle = None
        try:
            if self.location.local:
                # On disk before its name, and its name on disk before the manifest names it:
                # a crash (power loss) after the manifest records a shard never finds it empty.
                _fsync_file(self.tmp)
                os.replace(self.tmp, self.location.path)
                _fsync_folder(os.path.dirname(self.location.path))
            else:
                self.location.fs.put_file(self.tmp, self.location.path)
        finally:
            if os.path.exists(self.tmp):
                os.unlink(self.tmp)

    def abort(self) -> None:
        if self.handle is not None:
            self.handle.close()
            self.handle = None
        if os.path.exists(self.tmp):
            os.unlink(self.tmp)


def _fsync_file(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_folder(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return  # a platform that cannot open folders (Windows): nothing more to do
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems refuse fsync on a folder
    finally:
        os.close(fd)


#: The lock file a run holds in a local output folder.
LOCK = ".shoal-batch.lock"


class OutputLocked(Exception):
    """Another run is writing to the same local output folder."""


class FolderLock:
    """An exclusive lock (``flock``) on a local output folder, held while a job runs, so that
    two runs cannot interleave their shards and manifests; the system releases it when the
    process ends, however it ends. Object storage has no such lock: two runs writing to the
    same bucket folder at once are not stopped (run one per output folder)."""

    def __init__(self, folder: Location) -> None:
        self.folder = folder
        self.fd: int | None = None

    def acquire(self) -> None:
        if not self.folder.local:
            return
        import fcntl

        os.makedirs(self.folder.path, exist_ok=True)
        path = os.path.join(self.folder.path, LOCK)
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise OutputLocked(
                    f"{self.folder.shown} is being written by another shoal batch run "
                    f"(it holds {LOCK}): wait for it to end, or write to another folder"
                ) from None
            try:
                same = os.fstat(fd).st_ino == os.stat(path).st_ino
            except FileNotFoundError:
                same = False
            if same:  # not a file the run before us deleted as we opened it
                self.fd = fd
                os.ftruncate(fd, 0)
                os.write(fd, f"{os.getpid()}\n".encode())
                return
            os.close(fd)

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            os.unlink(os.path.join(self.folder.path, LOCK))
        except FileNotFoundError:
            pass
        os.close(self.fd)
        self.fd = None


def write_bytes(location: Location, data: bytes) -> None:
    """``data`` as the whole content of ``location``, atomically."""
    out = AtomicFile(location)
    try:
        out.open().write(data)
    except BaseException:
        out.abort()
        raise
    out.commit()


def read_bytes(location: Location) -> bytes | None:
    """The file's content, or None when there is no such file."""
    try:
        with location.fs.open(location.path, "rb") as handle:
            return handle.read()
    except FileNotFoundError:
        return None


def remove_stale_temporaries(folder: Location) -> int:
    """Delete temporary files a killed run left in a local output folder; returns how many."""
    if not folder.local or not os.path.isdir(folder.path):
        return 0
    removed = 0
    for parent, _, files in os.walk(folder.path):
        for name in files:
            if name.startswith(".") and TMP_MARK in name:
                os.unlink(os.path.join(parent, name))
                removed += 1
    return removed


def delete(location: Location) -> None:
    try:
        location.fs.rm_file(location.path)
    except FileNotFoundError:
        pass
