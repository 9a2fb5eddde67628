"""A repository packed in a tar (.tar, .tar.gz, .tgz, .tar.bz2, .tar.xz) or zip archive
served over HTTP(S): asked for again only if changed (``If-None-Match`` /
``If-Modified-Since``), extracted safely into a hidden scratch folder, each file versioned by
its SHA-256 so that only the model folders whose files changed are swapped in."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import stat
import tarfile
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

from .localcopy import STAGING_PREFIX, Manifest
from .stores import FetchError, Listing, RemoteFile, reason, safe_relative
from .uris import display

_VERSION_DIR = re.compile(r"^(0|[1-9][0-9]*)$")


class ArchiveStore:
    """A tar or zip archive of the repository, over HTTP(S)."""

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self.shown = display(uri)

    def list(self, folder: Path, manifest: Manifest, model: str | None) -> Listing:
        import httpx

        headers = {}
        # Ask "changed since?" only when the local copy is the archive's, whole and intact.
        if manifest.archive and manifest.intact(folder):
            if manifest.archive.get("etag"):
                headers["If-None-Match"] = manifest.archive["etag"]
            if manifest.archive.get("last_modified"):
                headers["If-Modified-Since"] = manifest.archive["last_modified"]
        scratch = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}archive-", dir=folder))
        archive = scratch / "archive"
        try:
            client = httpx.Client(follow_redirects=True, timeout=httpx.Timeout(60, connect=15))
            with client, client.stream("GET", self.uri, headers=headers) as response:
                if response.status_code == 304:
                    shutil.rmtree(scratch, ignore_errors=True)
                    files = {path: RemoteFile(path, size, version or "")
                             for path, (size, version) in manifest.files.items()}
                    return Listing(files, _no_download, dict(manifest.archive or {}),
                                   not_modified=True)
                if response.status_code >= 400:
                    raise FetchError(f"cannot download {self.shown}: HTTP "
                                     f"{response.status_code} {response.reason_phrase}")
                with open(archive, "wb") as out:
                    out.writelines(response.iter_bytes(1 << 20))
                meta = {key: value for key, value in (
                    ("etag", response.headers.get("etag")),
                    ("last_modified", response.headers.get("last-modified"))) if value}
            tree = scratch / "tree"
            tree.mkdir()
            _extract(archive, tree, self.shown)
            archive.unlink()
            root = _archive_root(tree)
            files = {}
            for path in _walk_files(root):
                relative = path.relative_to(root).as_posix()
                files[relative] = RemoteFile(relative, path.stat().st_size, "sha256:" + _sha256(path))

            def place(pairs: list[tuple[RemoteFile, Path]]) -> None:
                for file, path in pairs:
                    path.parent.mkdir(parents=True, exist_ok=True)
                    os.replace(root / file.path, path)

            return Listing(files, place, meta, scratch=scratch)
        except FetchError:
            shutil.rmtree(scratch, ignore_errors=True)
            raise
        except (httpx.HTTPError, OSError) as exc:
            shutil.rmtree(scratch, ignore_errors=True)
            raise FetchError(f"cannot download {self.shown}: {reason(exc)}") from None


def _no_download(pairs: list[tuple[RemoteFile, Path]]) -> None:
    if pairs:  # a 304 promised nothing changed, yet a file is missing: fetch again
        raise FetchError(f"{pairs[0][0].path} is missing locally: fetch again")


def _extract(archive: Path, tree: Path, source: str) -> None:
    """Extract a tar or zip archive into ``tree``, refusing every member that would land
    outside it, and links, devices and the like."""
    if zipfile.is_zipfile(archive):
        try:
            with zipfile.ZipFile(archive) as bundle:
                for info in bundle.infolist():
                    relative = safe_relative(info.filename, "the archive member", source, True)
                    mode = info.external_attr >> 16
                    if mode and stat.S_ISLNK(mode):
                        raise FetchError(f"refusing the archive member {info.filename!r} from "
                                         f"{source}: links are not supported in repositories")
                    if relative is None or info.is_dir():
                        continue
                    target = tree / relative
                    target.parent.mkdir(parents=True, exist_ok=True)
                    with bundle.open(info) as src, open(target, "wb") as out:
                        shutil.copyfileobj(src, out, 1 << 20)
        except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError) as exc:
            raise FetchError(f"cannot read the zip archive {source}: {reason(exc)}") from None
        return
    try:
        with tarfile.open(archive, "r:*") as bundle:
            members = bundle.getmembers()
            for member in members:
                safe_relative(member.name, "the archive member", source, True)
                if not (member.isfile() or member.isdir()):
                    kind = "links" if member.issym() or member.islnk() else "special files"
                    raise FetchError(f"refusing the archive member {member.name!r} from "
                                     f"{source}: {kind} are not supported in repositories")
            # The "data" filter too (PEP 706): refuses whatever the checks above would miss.
            bundle.extractall(tree, members=members, filter="data")
    except tarfile.FilterError as exc:
        raise FetchError(f"refusing the archive {source}: {reason(exc)}") from None
    except tarfile.TarError as exc:
        raise FetchError(f"{source} is not a tar or zip archive ({reason(exc)})") from None


def _archive_root(tree: Path) -> Path:
    """The repository inside an extracted archive: the archive's top, or its only folder when
    that folder holds only folders, not all of them versions (``tar czf r.tgz models/``)."""
    top = [p for p in tree.iterdir() if p.name not in ("__MACOSX",)]
    if len(top) == 1 and top[0].is_dir():
        inner = list(top[0].iterdir())
        if inner and all(p.is_dir() for p in inner) and not all(
                _VERSION_DIR.fullmatch(p.name) for p in inner):
            return top[0]
    return tree


def _walk_files(root: Path) -> Iterator[Path]:
    for directory, _, names in os.walk(root):
        for name in names:
            yield Path(directory, name)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
