"""The local copy of a fetched repository: its manifest (what each file's version is), the
lock that keeps fetchers apart, and the one-step swaps that put a complete folder in place."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import shutil
import stat
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from .uris import identity

try:  # POSIX; elsewhere fetches are not locked against other processes
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

MANIFEST = ".shoal-fetch.json"
LOCK = ".shoal-fetch.lock"
#: Hidden work folders beside their targets: a fetch's staging copies, the old copy between
#: two renames. Left over by a fetch that died; the next fetch removes them.
STAGING_PREFIX = ".shoal-fetch-"
OLD_PREFIX = ".shoal-old-"


@dataclass(slots=True)
class Manifest:
    """What the last fetches put in the folder: path -> (size, version)."""

    source: str
    files: dict[str, tuple[int, str | None]] = field(default_factory=dict)
    archive: dict[str, str] | None = None

    @classmethod
    def read(cls, folder: Path, uri: str) -> Manifest:
        source = identity(uri).rstrip("/")  # another query is another repository
        try:
            data = orjson.loads((folder / MANIFEST).read_bytes())
            files = {str(k): (int(v[0]), v[1]) for k, v in data.get("files", {}).items()}
        except (OSError, ValueError, TypeError, IndexError, AttributeError):
            return cls(source)
        if data.get("source") != source:
            # Another store's copy: its names are known (to remove what is not ours any more),
            # its versions are not trusted.
            return cls(source, {k: (size, None) for k, (size, _) in files.items()})
        archive = data.get("archive") if isinstance(data.get("archive"), dict) else None
        return cls(source, files, archive)

    def write(self, folder: Path) -> None:
        data = {"format": 1, "source": self.source, "archive": self.archive,
                "files": {k: list(v) for k, v in sorted(self.files.items())}}
        temporary = folder / f"{MANIFEST}.{os.getpid()}.{threading.get_ident()}"
        temporary.write_bytes(orjson.dumps(data, option=orjson.OPT_INDENT_2))
        os.replace(temporary, folder / MANIFEST)

    def model(self, name: str) -> dict[str, tuple[int, str | None]]:
        prefix = name + "/"
        return {k: v for k, v in self.files.items() if k.startswith(prefix)}

    def intact(self, folder: Path) -> bool:
        """Every recorded file is there, with its size."""
        return all(has_file(folder / path, size) for path, (size, _) in self.files.items())


def has_file(path: Path, size: int) -> bool:
    try:
        info = path.lstat()
    except OSError:
        return False
    return stat.S_ISREG(info.st_mode) and info.st_size == size


@contextlib.contextmanager
def locked(folder: Path, shared: bool = False) -> Iterator[None]:
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / LOCK, "a+b") as handle:
        if fcntl is not None:
            fcntl.flock(handle, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
        try:
            yield
        finally:
            if fcntl is not None:
                fcntl.flock(handle, fcntl.LOCK_UN)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two folders in one step (Linux ``renameat2(RENAME_EXCHANGE)``); False where the
    system or the file system cannot."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EPERM, errno.ENOTSUP):
        return False
    raise OSError(code, os.strerror(code), str(b))


def token() -> str:
    return f"{os.getpid()}-{threading.get_ident() % 100000}-{os.urandom(3).hex()}"


def swap_in(staging: Path, target: Path) -> None:
    """Put the complete ``staging`` folder (or file) at ``target`` in one step."""
    if not os.path.lexists(target):
        os.rename(staging, target)
        return
    if staging.is_dir() and target.is_dir() and not target.is_symlink() and _exchange(staging, target):
        shutil.rmtree(staging)  # the previous copy, now under the staging name
        return
    old = target.with_name(f"{OLD_PREFIX}{target.name}-{token()}")
    os.rename(target, old)
    os.rename(staging, target)
    _remove(old)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def retire(target: Path) -> None:
    """Remove a model folder or file in one step (renamed away, then deleted)."""
    if not os.path.lexists(target):
        return
    old = target.with_name(f"{OLD_PREFIX}{target.name}-{token()}")
    os.rename(target, old)
    _remove(old)


def clear_leftovers(folder: Path) -> None:
    """What fetches that died left: staging copies, old copies, manifest drafts."""
    for entry in folder.iterdir():
        if entry.name.startswith((STAGING_PREFIX, OLD_PREFIX)) or (
                entry.name.startswith(MANIFEST + ".")):
            with contextlib.suppress(OSError):
                _remove(entry)


def link_or_copy(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)
