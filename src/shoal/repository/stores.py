"""What a store holds, and getting it: the listing of a bucket prefix (or a local folder)
through fsspec, with every name checked before it becomes a local path."""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlsplit

from ..errors import ShoalError, _GrpcCode
from .uris import ARCHIVE_SCHEMES, OBJECT_STORES, check_uri, display, local_path, scheme

if TYPE_CHECKING:
    from .localcopy import Manifest

_DRIVE = re.compile(r"^[A-Za-z]:")


class FetchError(ShoalError):
    """The store could not be read (no such bucket, no credentials, network down, a name
    that leaves the repository): its reason, in one line."""

    http_status = 502
    grpc_code: Any = _GrpcCode("UNAVAILABLE")


@dataclass(frozen=True, slots=True)
class RemoteFile:
    """One file of the repository in the store."""

    #: Relative to the repository root, '/'-separated, checked (no '..', not absolute).
    path: str
    size: int
    #: Changes whenever the content does: ETag, generation, modification time, SHA-256.
    version: str


@dataclass(slots=True)
class Listing:
    """The store's files (all, or one model's), and how to get them."""

    files: dict[str, RemoteFile]
    #: Downloads each file to its path: ``download([(file, path), ...])``.
    download: Callable[[list[tuple[RemoteFile, Path]]], None]
    #: An archive's ``ETag`` / ``Last-Modified``, for the next fetch to ask "changed since?".
    archive: dict[str, str] | None = None
    not_modified: bool = False
    #: Removed once the listing has been applied (an archive's extracted copy).
    scratch: Path | None = None

    def close(self) -> None:
        if self.scratch is not None:
            shutil.rmtree(self.scratch, ignore_errors=True)
            self.scratch = None


def safe_relative(name: str, what: str, source: str, lenient: bool = False) -> str | None:
    """``name`` as a checked relative path ('a/b'), or FetchError when it would leave the
    repository. None for a folder entry (ends with '/'). ``lenient`` (archives) allows './'
    and empty components, which tar and zip tools write."""
    if "\x00" in name:
        raise FetchError(f"refusing {what} {name!r} from {source}: it contains a NUL")
    if name.startswith(("/", "\\")) or _DRIVE.match(name):
        raise FetchError(f"refusing {what} {name!r} from {source}: an absolute path would "
                         "leave the repository")
    parts = re.split(r"[\\/]", name)
    if ".." in parts:
        raise FetchError(f"refusing {what} {name!r} from {source}: '..' would leave the "
                         "repository")
    if name.endswith(("/", "\\")):
        return None
    if lenient:
        parts = [p for p in parts if p not in ("", ".")]
    elif any(p in ("", ".") for p in parts):
        raise FetchError(f"refusing {what} {name!r} from {source}: empty or '.' path "
                         "components")
    return "/".join(parts) or None


def reason(exc: BaseException) -> str:
    """The store's reason, in one line."""
    text = " ".join(str(exc).split())
    if not text or isinstance(exc, KeyError):
        return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return text


class Store(Protocol):
    """A place repositories are fetched from."""

    uri: str
    #: The URI as messages show it (no credentials).
    shown: str

    def list(self, folder: Path, manifest: Manifest, model: str | None) -> Listing:
        """What the store holds (only ``model``'s folder when given); ``folder`` is the local
        copy (an archive is unpacked beside it), ``manifest`` what it holds now."""
        ...


def open_store(uri: str) -> Store:
    try:
        check_uri(uri)
    except ValueError as exc:
        raise FetchError(str(exc)) from None
    if scheme(uri) in ARCHIVE_SCHEMES:
        from .archive import ArchiveStore

        return ArchiveStore(uri)
    return ObjectStore(uri)


class ObjectStore:
    """A bucket prefix (or a local folder), through fsspec."""

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self.shown = display(uri)
        kind = scheme(uri) or "file"
        if kind == "file":
            protocol = "file"
            self.root = str(local_path(uri).resolve())
        else:
            protocol, extra, package = OBJECT_STORES[kind]
            parts = urlsplit(uri)
            self.root = f"{parts.netloc}/{parts.path.strip('/')}".rstrip("/")
            try:
                __import__(package)
            except ImportError:
                raise FetchError(f"{kind}:// repositories need {package}: "
                                 f"pip install 'shoal[{extra}]'") from None
        try:
            import fsspec
        except ImportError:  # pragma: no cover - s3fs and gcsfs depend on it
            raise FetchError("fetching repositories needs fsspec: pip install 'shoal[s3]'") from None
        self.protocol = protocol
        self.fs = fsspec.filesystem(protocol, skip_instance_cache=True)

    def list(self, folder: Path, manifest: Manifest, model: str | None) -> Listing:
        base = self.root if model is None else f"{self.root}/{model}"
        self.fs.invalidate_cache()
        try:
            found = self.fs.find(base, detail=True, withdirs=False)
        except Exception as exc:  # noqa: BLE001 - each store raises its own kinds
            where = self.shown if model is None else f"{self.shown.rstrip('/')}/{model}"
            raise FetchError(f"cannot list {where}: {reason(exc)}") from None
        files: dict[str, RemoteFile] = {}
        root = self.root.rstrip("/") + "/"
        for key, info in found.items():
            key = key if self.protocol != "file" else Path(key).as_posix()
            if info.get("type") == "directory" or not key.startswith(root):
                continue
            relative = safe_relative(key[len(root):], "the object", self.shown)
            if relative is None:
                continue
            files[relative] = RemoteFile(relative, int(info.get("size") or 0), _version(info))
        return Listing(files, self._download)

    def _download(self, pairs: list[tuple[RemoteFile, Path]]) -> None:
        if not pairs:
            return
        remote = [f"{self.root}/{file.path}" for file, _ in pairs]
        local = [str(path) for _, path in pairs]
        for _, path in pairs:
            path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.fs.get(remote, local)
        except Exception as exc:  # noqa: BLE001
            raise FetchError(f"cannot download from {self.shown}: {reason(exc)}") from None
        for file, path in pairs:
            _check_size(file, path, self.shown)


def _version(info: dict[str, Any]) -> str:
    for key in ("ETag", "etag", "generation", "md5Hash", "crc32c"):
        if info.get(key):
            return f"{key}:{str(info[key]).strip(chr(34))}"
    for key in ("LastModified", "mtime", "updated", "last_modified"):
        if info.get(key):
            value = info[key]
            return f"time:{value.isoformat() if hasattr(value, 'isoformat') else value}"
    return "unknown"


def _check_size(file: RemoteFile, path: Path, source: str) -> None:
    try:
        size = path.stat().st_size
    except OSError:
        raise FetchError(f"{file.path} from {source} was not downloaded") from None
    if size != file.size:
        raise FetchError(f"{file.path} in {source} changed while it was fetched ({file.size} "
                         f"bytes listed, {size} read): fetch again")
