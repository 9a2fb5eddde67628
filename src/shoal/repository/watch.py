"""``shoal serve --watch``: poll the repository; load new model folders, reload changed ones,
unload removed ones (Triton's poll mode).

Every ``interval`` seconds the watcher takes a *signature* of each model folder: the relative
path, size and modification time of every file under it, and the name of every sub-folder (so
a new, still empty version folder counts). Names that start with a dot are left out (the
``.shoal-state`` folder, an editor's swap file, a copy in progress under a dot-name that is
renamed into place when complete), and so is ``__pycache__`` (a Python model's load writes it).
Model folders are the ones the startup load serves (``layout.model_names``).

A folder is acted on only once its signature has been the same in two scans in a row, one full
interval apart, and differs from the signature it had when it was last loaded: a file still
being copied changes size or time between scans, so a half-copied artifact is never loaded. A
copy that pauses for longer than the interval can still be seen half-way; copying into a
dot-name and renaming it into place avoids that.

New folder: load it. Changed folder: reload it through ``ModelRepository.load``, which brings
the new instance up before it retires the old one (no request fails), and which keeps the old
instance serving, logging ``model_reload_failed``, when the new one does not load. Removed
folder: unload it. A failed load is not retried until the folder changes again. Scanning runs
on a thread, off the event loop; a scan that fails (the repository unreadable or gone) changes
nothing.

A repository fetched from a store (``s3://``, ``gs://``, an archive over HTTP) is fetched again
before each scan: the fetch swaps each changed model folder into the local copy in one step
and removes the folders the store lost, and the scans above act on that (each load fetches
the model's folder once more, which finds it current).
"""

from __future__ import annotations

import asyncio
import logging
import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import ModelNotFound, ShoalError
from ..observe import logging as log
from ..serving.endpoint import ModelState
from .layout import model_names

if TYPE_CHECKING:
    from .manager import ModelRepository

#: One entry per file (relative path, size, mtime, ctime in ns, inode) and per folder
#: ("path/", 0, 0), sorted.
Signature = tuple[tuple[str, int, int] | tuple[str, int, int, int, int], ...]

#: Folder and file names the watcher never looks at (beside names starting with a dot).
IGNORED_NAMES = frozenset({"__pycache__"})


def ignored(name: str) -> bool:
    return name.startswith(".") or name in IGNORED_NAMES


def folder_signature(folder: str | os.PathLike[str]) -> Signature | None:
    """What ``folder`` holds, by name, size and modification time; None when it is not a folder.

    Symbolic links are followed (a model folder may link to its artifacts), each folder once.
    An entry that vanishes or cannot be read while it is scanned is left out: the next scan
    sees it again, or sees it gone.
    """
    try:
        top = os.stat(folder)
    except OSError:
        return None
    if not stat.S_ISDIR(top.st_mode):
        return None
    entries: list[tuple[str, int, int]] = []
    visited = {(top.st_dev, top.st_ino)}
    stack = [(os.fspath(folder), "")]
    while stack:
        path, prefix = stack.pop()
        try:
            with os.scandir(path) as found:
                children = list(found)
        except OSError:
            continue
        for entry in children:
            if ignored(entry.name):
                continue
            relative = prefix + entry.name
            try:
                info = entry.stat()  # follows symbolic links
            except OSError:  # removed meanwhile, or a dangling link
                continue
            if stat.S_ISDIR(info.st_mode):
                key = (info.st_dev, info.st_ino)
                if key in visited:  # a link back up the tree
                    continue
                visited.add(key)
                entries.append((relative + "/", 0, 0))
                stack.append((entry.path, relative + "/"))
            else:
                # ctime and inode too: a copy tool can keep a file's size and mtime (rsync -a,
                # cp -p, an archive with fixed times), never its ctime or a new file's inode.
                entries.append((relative, info.st_size, info.st_mtime_ns, info.st_ctime_ns, info.st_ino))
    entries.sort()
    return tuple(entries)


def scan_repository(root: Path) -> dict[str, Signature]:
    """Each model folder's signature. Raises OSError when ``root`` cannot be listed."""
    snapshot = {}
    for name in model_names(root):
        signature = folder_signature(root / name)
        if signature is not None:
            snapshot[name] = signature
    return snapshot


@dataclass(frozen=True, slots=True)
class Change:
    name: str
    #: "added", "changed" or "removed"
    kind: str


_ABSENT = object()


class Debouncer:
    """Turns successive scans into changes to act on, each once its folder is stable.

    ``acted`` holds each folder's signature as last acted on (at first: as the startup load
    found it); ``pending`` the signature a differing folder had in the previous scan.
    """

    def __init__(self, baseline: Mapping[str, Signature]) -> None:
        self.acted: dict[str, Signature] = dict(baseline)
        self.pending: dict[str, Signature | None] = {}

    def update(self, snapshot: Mapping[str, Signature]) -> list[Change]:
        """Feed one scan; returns the changes that are now stable, by name."""
        changes = []
        for name in sorted(set(snapshot) | set(self.acted) | set(self.pending)):
            now = snapshot.get(name)
            if now == self.acted.get(name):  # unchanged, or changed back before it settled
                self.pending.pop(name, None)
                continue
            if self.pending.get(name, _ABSENT) != now:  # still changing: wait an interval
                self.pending[name] = now
                continue
            del self.pending[name]
            if now is None:
                del self.acted[name]
                changes.append(Change(name, "removed"))
            else:
                kind = "changed" if name in self.acted else "added"
                self.acted[name] = now
                changes.append(Change(name, kind))
        return changes


class RepositoryWatcher:
    """Polls ``repository.root`` and applies what changed; ``run`` until cancelled."""

    def __init__(self, repository: ModelRepository, interval: float) -> None:
        if interval <= 0:
            raise ValueError("the watch interval must be positive")
        self.repository = repository
        self.interval = interval
        self.debouncer: Debouncer | None = None
        self._scan_error: str | None = None

    async def scan(self, fetch: bool = True) -> dict[str, Signature] | None:
        """The repository now (None, logged, when it cannot be read). A repository in a store
        is fetched again first (unless ``fetch`` is False): what changed there is swapped into
        the local folder, model folder by model folder, and seen here."""
        try:
            if fetch and getattr(self.repository, "source", None) is not None:
                await self.repository.refresh()
            snapshot = await asyncio.to_thread(scan_repository, self.repository.root)
        except (OSError, ShoalError) as exc:
            error = f"{type(exc).__name__}: {exc}"
            if error != self._scan_error:  # once, not every interval
                log.event("repository_scan_failed", logging.WARNING,
                          repository=str(self.repository.root), reason=error)
            self._scan_error = error
            return None
        self._scan_error = None
        return snapshot

    async def baseline(self) -> None:
        """What the repository holds before the startup load reads it: a change made while
        the models load is seen (and acted on) afterwards."""
        self.debouncer = Debouncer(await self.scan(fetch=False) or {})

    async def run(self) -> None:
        if self.debouncer is None:
            await self.baseline()
        assert self.debouncer is not None
        log.event("watching", repository=str(self.repository.root), interval=self.interval)
        while True:
            await asyncio.sleep(self.interval)
            try:
                snapshot = await self.scan()
                if snapshot is None:
                    continue
                changes = self.debouncer.update(snapshot)
                if changes:
                    await self.apply(changes)
            except Exception as exc:  # noqa: BLE001 - a bug here must not end the watching
                log.event("repository_watch_failed", logging.ERROR,
                          reason=f"{type(exc).__name__}: {exc}")

    async def apply(self, changes: list[Change]) -> None:
        """Unloads first, then loads; graphs after the models they may call, as at startup."""
        for change in changes:
            if change.kind == "removed":
                await self._act(change)
        loads = [c for c in changes if c.kind != "removed"]
        graphs = [c for c in loads if self.repository.is_graph(c.name)]
        await asyncio.gather(*(self._act(c) for c in loads if c not in graphs))
        if len(graphs) < len(loads):
            # A graph that failed because a model it calls was missing (copied in before it)
            # loads now that models arrived, though its own folder did not change.
            graphs += [Change(name, "changed") for name in await self._failed_graphs(changes)]
        await asyncio.gather(*(self._act(c) for c in graphs))

    async def _failed_graphs(self, changes: list[Change]) -> list[str]:
        changed = {c.name for c in changes}
        registry = self.repository.registry
        names = await asyncio.to_thread(self.repository.names)
        return [
            name for name in names
            if name not in changed and self.repository.is_graph(name)
            and (entries := registry.entries(name))
            and all(e.state is ModelState.UNAVAILABLE for e in entries)
        ]

    async def _act(self, change: Change) -> None:
        log.event("repository_changed", model=change.name, change=change.kind)
        try:
            if change.kind == "removed":
                await self.repository.unload(change.name)
            else:
                await self.repository.load(change.name)
        except ModelNotFound:
            pass  # removed while not loaded, or gone again before its load
        except ShoalError:
            pass  # the repository logged it (model_load_failed, model_reload_failed)
        except Exception as exc:  # noqa: BLE001 - one folder never stops the watching
            log.event("repository_change_failed", logging.ERROR, model=change.name,
                      change=change.kind, reason=f"{type(exc).__name__}: {exc}")
