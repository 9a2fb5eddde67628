"""Repositories in object storage or in an archive, mirrored into a local folder.

``s3://bucket/prefix``, ``gs://bucket/prefix`` (``gcs://`` too) and ``http(s)://host/repo.tar.gz``
(a tar, tar.gz / .bz2 / .xz or zip archive of the repository) are fetched into a local folder,
which is then served like any other: everything after the fetch sees a local folder.

- **Only what changed is fetched again.** A manifest in the folder (``.shoal-fetch.json``)
  records each file's size and version (the store's ETag or generation; for an archive, the
  SHA-256 of the member). A file whose size and version match, and whose local copy is there,
  is hard-linked from the current copy instead of downloaded. An archive is asked for with
  ``If-None-Match`` / ``If-Modified-Since``: a ``304`` fetches nothing.
- **Atomic per model folder.** A changed model is put together in a hidden folder beside its
  target (``.shoal-fetch-NAME-...``, hidden names are never served) and swapped into place in
  one ``rename`` (``renameat2(RENAME_EXCHANGE)`` on Linux, two renames elsewhere): a load sees
  the old complete copy or the new complete copy, never a mix. A fetch that fails or dies
  midway leaves the previous copy, and the next fetch clears what it left behind.
- **One fetcher at a time** per folder, across processes and threads (``flock`` on
  ``.shoal-fetch.lock``); a model load holds the same lock shared (``reading``), so no fetch
  swaps a folder while it is read.
- **Removed in the store, removed here**: files of a model folder, model folders and files at
  the top (only those a fetch put there: the manifest says which; top-level names starting
  with a dot, such as ``.shoal-state``, are never fetched nor touched).
- **Safe names.** An object key or archive member with a ``..`` component, an absolute path,
  a drive letter or a NUL, and archive links, devices and the like are refused; tar archives
  are also extracted with ``tarfile``'s ``data`` filter.
- **Credentials** come from each store's own environment, through fsspec: ``AWS_*`` variables,
  ``~/.aws``, instance roles and ``AWS_ENDPOINT_URL`` (any S3-compatible server) for s3fs;
  ``GOOGLE_APPLICATION_CREDENTIALS`` or the metadata server for gcsfs. A URL may carry a
  user and password (basic auth) or be presigned; they are never logged.

The Python API: ``fetch_repository(uri, cache_dir)`` (the local folder to serve),
``fetch_model(uri, name, cache_dir)``, ``is_remote(uri)``; ``sync(uri, folder)`` mirrors into a
folder named exactly (``shoal fetch URI DIR``); ``RepositorySource`` is what the server keeps.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ModelNotFound
from ..observe import logging as log
from .layout import check_model_name
from .localcopy import (
    LOCK,
    STAGING_PREFIX,
    Manifest,
    clear_leftovers,
    fcntl,
    has_file,
    link_or_copy,
    locked,
    retire,
    swap_in,
    token,
)
from .stores import FetchError, Listing, RemoteFile, Store, open_store
from .uris import (
    check_uri,
    default_cache_dir,
    display,
    is_remote,
    local_folder,
    local_path,
)

__all__ = [
    "FetchError", "FetchReport", "RepositorySource", "default_cache_dir", "display",
    "fetch_model", "fetch_repository", "is_remote", "local_folder", "sync",
]

#: Serializes the fetches of one process into one folder (flock keeps other processes out).
_THREAD_LOCKS: dict[Path, threading.Lock] = {}
_THREAD_LOCKS_GUARD = threading.Lock()


def fetch_repository(uri: str | os.PathLike[str], cache_dir: Path | None = None) -> Path:
    """Fetch the repository at ``uri`` into the cache and return the local folder to serve
    (``cache_dir/<name from the URI>``; ``cache_dir`` defaults to ``default_cache_dir()``).
    A local folder comes back as it is. Raises ``FetchError`` with the store's reason."""
    if not is_remote(uri):
        check_uri(os.fspath(uri))
        return local_path(uri)
    assert isinstance(uri, str)
    folder = local_folder(uri, cache_dir)
    RepositorySource(uri, folder).fetch()
    return folder


def fetch_model(uri: str | os.PathLike[str], name: str, cache_dir: Path | None = None) -> Path:
    """Fetch one model folder of the repository at ``uri`` (as ``fetch_repository`` does, for
    that folder only) and return it. ``ModelNotFound`` when the store has no such folder."""
    check_model_name(name)
    if not is_remote(uri):
        check_uri(os.fspath(uri))
        return local_path(uri) / name
    assert isinstance(uri, str)
    folder = local_folder(uri, cache_dir)
    RepositorySource(uri, folder).fetch_model(name)
    return folder / name


def sync(uri: str, folder: Path, models: list[str] | None = None) -> FetchReport:
    """Mirror the repository at ``uri`` (or only ``models`` of it) into ``folder`` itself: what
    ``shoal fetch URI DIR`` does. A local folder can be the source too."""
    source = RepositorySource(uri, folder)
    if not models:
        return source.fetch()
    report = FetchReport(source.shown, source.folder)
    for name in models:
        report.add(source.fetch_model(name))
    return report


@dataclass(slots=True)
class FetchReport:
    """What one fetch did."""

    uri: str
    folder: Path
    #: Files downloaded (new or changed), and their bytes.
    downloaded: int = 0
    bytes: int = 0
    #: Files of changed model folders that were unchanged: linked from the current copy.
    reused: int = 0
    #: Model folders swapped in (new or changed), and removed (gone from the store).
    changed: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    #: Whether the listing was a 304 from an archive's server (nothing looked at).
    not_modified: bool = False
    seconds: float = 0.0

    def add(self, other: FetchReport) -> None:
        self.downloaded += other.downloaded
        self.bytes += other.bytes
        self.reused += other.reused
        self.changed += other.changed
        self.removed += other.removed
        self.seconds += other.seconds

    def summary(self) -> str:
        changed = f"{len(self.changed)} model folder(s) updated" + (
            f" ({', '.join(self.changed)})" if self.changed else "")
        removed = f", {len(self.removed)} removed ({', '.join(self.removed)})" if self.removed else ""
        return (f"fetched {self.uri} into {self.folder}: {self.downloaded} file(s) downloaded "
                f"({self.bytes} bytes), {self.reused} reused, {changed}{removed}")


class RepositorySource:
    """The repository at ``uri``, mirrored into ``folder``."""

    def __init__(self, uri: str, folder: Path) -> None:
        self.uri = uri
        self.shown = display(uri)
        self.folder = Path(folder).expanduser().absolute()
        self._store: Store | None = None

    @property
    def store(self) -> Store:
        if self._store is None:  # the store's client is made once, on first use
            self._store = open_store(self.uri)
        return self._store

    def fetch(self) -> FetchReport:
        """Bring the whole folder up to date with the store (removing what the store lost)."""
        return self._run(None)

    def fetch_model(self, name: str) -> FetchReport:
        """Bring one model folder up to date; ``ModelNotFound`` when the store has none (the
        local copy, if any, is left as it is)."""
        check_model_name(name)
        return self._run(name)

    def listing(self, model: str | None = None) -> Listing:
        """What the store holds now (all of it, or one model's folder). ``apply`` it, under the
        lock: ``fetch`` and ``fetch_model`` do both."""
        self.folder.mkdir(parents=True, exist_ok=True)
        return self.store.list(self.folder, Manifest.read(self.folder, self.uri), model)

    @contextlib.asynccontextmanager
    async def reading(self) -> AsyncIterator[None]:
        """Held while a model is read from the folder: no fetch swaps a folder meanwhile (the
        fetch lock, shared; polled, so that cancelling the wait leaves nothing locked)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        handle = open(self.folder / LOCK, "a+b")  # noqa: SIM115, ASYNC230 - a lock file
        try:
            while fcntl is not None:
                try:
                    fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    await asyncio.sleep(0.05)  # a fetch is swapping folders
            yield
        finally:
            handle.close()  # releases the lock

    def _run(self, model: str | None) -> FetchReport:
        started = time.perf_counter()
        with _THREAD_LOCKS_GUARD:
            thread_lock = _THREAD_LOCKS.setdefault(self.folder, threading.Lock())
        try:
            with thread_lock, locked(self.folder):
                clear_leftovers(self.folder)
                listing = self.listing(model)
                try:
                    report = self.apply(listing, model)
                finally:
                    listing.close()
        except OSError as exc:  # the local side: a cache folder that cannot be written
            raise FetchError(f"cannot fetch {self.shown} into {self.folder}: "
                             f"{exc.strerror or exc} ({exc.filename or self.folder})") from None
        report.seconds = round(time.perf_counter() - started, 4)
        log.event("repository_fetched", uri=self.shown, folder=str(self.folder),
                  **({"model": model} if model else {}), downloaded=report.downloaded,
                  bytes=report.bytes, reused=report.reused, changed=report.changed,
                  removed=report.removed, seconds=report.seconds)
        return report

    def apply(self, listing: Listing, model: str | None = None) -> FetchReport:
        """Make the folder match ``listing`` (only ``model``'s folder when given)."""
        folder = self.folder
        folder.mkdir(parents=True, exist_ok=True)
        manifest = Manifest.read(folder, self.uri)
        report = FetchReport(self.shown, folder, not_modified=listing.not_modified)
        models: dict[str, dict[str, RemoteFile]] = {}
        top: dict[str, RemoteFile] = {}
        for path, file in listing.files.items():
            head, _, rest = path.partition("/")
            if head.startswith("."):
                continue  # hidden names are the local copy's own (.shoal-state, the manifest)
            if rest:
                models.setdefault(head, {})[path] = file
            else:
                top[path] = file
        if not listing.files and model is None:
            raise FetchError(f"{self.shown} holds no files (an empty or misspelt prefix?)")
        clash = set(models) & set(top)
        if clash:
            raise FetchError(f"{self.shown} has both a file and a folder named {min(clash)!r}")
        if model is not None:
            if model not in models:
                raise ModelNotFound(f"model {model!r} is not in the repository {self.shown}")
            models = {model: models[model]}
        failures: list[str] = []
        for name, files in sorted(models.items()):
            try:
                self._apply_model(name, files, manifest, listing, report)
            except FetchError as exc:
                if model is not None:
                    raise
                failures.append(str(exc))
        if model is None:
            for name in sorted({p.split("/", 1)[0] for p in manifest.files if "/" in p}
                               - set(models)):
                retire(folder / name)  # gone from the store
                report.removed.append(name)
                manifest.files = {k: v for k, v in manifest.files.items()
                                  if not k.startswith(name + "/")}
                manifest.write(folder)
            self._apply_top(top, manifest, listing, report)
        if failures:
            manifest.archive = None
        elif model is None:
            manifest.archive = listing.archive
        elif not listing.not_modified:
            manifest.archive = None  # the other models may be older than this archive
        manifest.write(folder)
        if failures:
            raise FetchError("; ".join(failures))
        return report

    def _apply_model(self, name: str, files: dict[str, RemoteFile], manifest: Manifest,
                     listing: Listing, report: FetchReport) -> None:
        target = self.folder / name
        recorded = manifest.model(name)
        current = target.is_dir() and not target.is_symlink() and recorded == {
            p: (f.size, f.version) for p, f in files.items()
        } and all(has_file(self.folder / p, f.size) for p, f in files.items())
        if current:
            return
        staging = self.folder / f"{STAGING_PREFIX}{name}-{token()}"
        staging.mkdir()
        try:
            wanted = []
            reused = 0
            for path, file in files.items():
                local = self.folder / path
                destination = staging / path.split("/", 1)[1]
                if recorded.get(path) == (file.size, file.version) and has_file(local, file.size):
                    link_or_copy(local, destination)
                    reused += 1
                else:
                    wanted.append((file, destination))
            listing.download(wanted)
            swap_in(staging, target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        report.downloaded += len(wanted)
        report.bytes += sum(f.size for f, _ in wanted)
        report.reused += reused
        report.changed.append(name)
        manifest.files = {k: v for k, v in manifest.files.items() if not k.startswith(name + "/")}
        manifest.files.update({p: (f.size, f.version) for p, f in files.items()})
        manifest.write(self.folder)

    def _apply_top(self, top: dict[str, RemoteFile], manifest: Manifest, listing: Listing,
                   report: FetchReport) -> None:
        """Files at the top of the repository, each replaced in one step."""
        for path, file in sorted(top.items()):
            target = self.folder / path
            if manifest.files.get(path) == (file.size, file.version) and has_file(target, file.size):
                continue
            staging = self.folder / f"{STAGING_PREFIX}{token()}"
            staging.mkdir()
            try:
                listing.download([(file, staging / "file")])
                if target.is_dir() and not target.is_symlink():
                    retire(target)
                os.replace(staging / "file", target)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
            report.downloaded += 1
            report.bytes += file.size
            manifest.files[path] = (file.size, file.version)
        for path in [p for p in manifest.files if "/" not in p and p not in top]:
            (self.folder / path).unlink(missing_ok=True)
            del manifest.files[path]
