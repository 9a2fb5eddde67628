"""What a job reads: files, folders and globs, local or in object storage, resolved into the
list of input files, each with its format, size, a fingerprint (to notice a changed input on a
rerun) and, where the format says so cheaply, its row count.

A folder is read recursively; files whose names start with ``.`` or ``_`` (``_SUCCESS``,
``.crc`` files, a job's own ``_manifest.json``) are left out, as Spark and Arrow do. Each file
keeps its path relative to the folder or glob it came from: its output shards are named after
it (``day=1/a.parquet`` -> ``day=1/a-00000.parquet``), so partitioned layouts carry over.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import re
from dataclasses import dataclass
from typing import Any

from ..errors import InvalidInput
from . import storage

#: File name endings -> input format.
EXTENSIONS = {
    ".parquet": "parquet", ".pq": "parquet",
    ".csv": "csv",
    ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl",
    ".npy": "npy",
}
FORMATS = ("parquet", "csv", "jsonl", "npy")
_GLOB = re.compile(r"[*?\[]")
#: Local files up to this size are hashed in full; larger ones by samples (see fingerprint()).
FULL_HASH_LIMIT = 64 * 1024 * 1024
SAMPLE_BYTES = 1024 * 1024
SAMPLES = 16


@dataclass(frozen=True)
class InputFile:
    url: str
    """What fsspec opens: a local absolute path or a URL (the same on every machine of a job)."""
    shown: str
    """As the user named it (error messages, the errors file, the manifest)."""
    relative: str
    """POSIX path relative to the folder or glob it came from, without its extension."""
    format: str
    size: int
    fingerprint: str
    rows: int | None = None
    """Known up front for Parquet (footer) and .npy (header); None for text formats."""


def resolve(
    sources: list[str], storage_options: dict[str, Any] | None = None,
    input_format: str | None = None, exclude: str | None = None,
) -> list[InputFile]:
    """Every input file of the job, in a stable order (each source's files sorted by path).

    ``exclude``: the job's output folder (a local absolute path or a URL, as
    :meth:`storage.Location.url` gives it). Files under it are left out, so that an output
    folder inside an input folder or glob is never read back as input on a rerun.
    """
    if not sources:
        raise InvalidInput("no input: name a file, a folder or a glob")
    found: list[InputFile] = []
    names: dict[str, str] = {}
    for source in sources:
        files = [f for f in _expand(source, storage_options, input_format)
                 if exclude is None or not is_under(f.url, exclude)]
        if not files:
            raise InvalidInput(f"{source}: no input files (looked for {', '.join(sorted(EXTENSIONS))})")
        for file in files:
            other = names.get(file.relative)
            if other is not None and other != file.url:
                raise InvalidInput(
                    f"{file.shown} and {other} would write the same output shards "
                    f"({file.relative}-*): score them in separate jobs or output folders"
                )
            if other is None:
                names[file.relative] = file.url
                found.append(file)
    return found


def is_under(url: str, folder: str) -> bool:
    """Whether ``url`` (a local absolute path or a URL) is ``folder`` or lies under it."""
    if storage.is_url(url) or storage.is_url(folder):
        base = folder.rstrip("/")
        return url == base or url.startswith(base + "/")
    base = os.path.realpath(folder)
    path = os.path.realpath(url)
    return path == base or path.startswith(base.rstrip(os.sep) + os.sep)


def _expand(source: str, options: dict[str, Any] | None, input_format: str | None):
    location = storage.locate(source, options)
    fs, path = location.fs, location.path
    if _GLOB.search(path):
        base = _glob_base(path)
        paths = sorted(p for p in fs.glob(path) if fs.isfile(p))
        explicit = False
    elif fs.isdir(path):
        base = path
        paths = sorted(fs.find(path))
        explicit = False
    elif fs.exists(path):
        base = os.path.dirname(path) if location.local else posixpath.dirname(path)
        paths = [path]
        explicit = True
    else:
        raise InvalidInput(f"{source}: no such file or folder")
    for file_path in paths:
        relative = safe_relative(_relative(file_path, base, location.local), file_path)
        if any(part.startswith((".", "_")) for part in relative.split("/")):
            continue
        stem, extension = _split_extension(relative)
        fmt = input_format or EXTENSIONS.get(extension.lower())
        if fmt is None:
            if explicit:
                raise InvalidInput(
                    f"{source}: cannot tell its format from {extension or 'a name without extension'};"
                    f" say it with --input-format ({'|'.join(FORMATS)})"
                )
            continue
        info = fs.info(file_path)
        shown = source if explicit else _shown(location, file_path)
        file = InputFile(
            url=file_path if location.local else fs.unstrip_protocol(file_path),
            shown=shown, relative=stem, format=fmt, size=int(info.get("size") or 0),
            fingerprint=fingerprint(fs, file_path, info, location.local),
        )
        yield _with_rows(file, options)


def safe_relative(relative: str, where: str) -> str:
    """An input's name relative to its folder, as output shards are named after it: empty and
    ``.`` parts dropped (``data//a.parquet``: an object store key may hold them), a ``..``
    part refused, so that no name can point outside the output folder."""
    parts = [part for part in relative.replace("\\", "/").split("/") if part not in ("", ".")]
    if not parts or ".." in parts:
        raise InvalidInput(f"{where}: cannot name output shards after {relative!r} (a name with "
                           "'..' or no name at all): rename the file or name it another way")
    return "/".join(parts)


def _glob_base(path: str) -> str:
    head = _GLOB.split(path, 1)[0]
    return head.rsplit("/", 1)[0] if "/" in head else ""


def _relative(path: str, base: str, local: bool) -> str:
    if local:
        return os.path.relpath(path, base).replace(os.sep, "/")
    base = base.rstrip("/")
    return path[len(base) + 1:] if base and path.startswith(base + "/") else posixpath.basename(path)


def _split_extension(relative: str) -> tuple[str, str]:
    stem, extension = posixpath.splitext(relative)
    return (stem, extension) if extension else (relative, "")


def _shown(location: storage.Location, file_path: str) -> str:
    if location.local:
        return file_path
    return location.fs.unstrip_protocol(file_path)


def fingerprint(fs: Any, path: str, info: dict[str, Any], local: bool) -> str:
    """What changes when a file's content does.

    Object stores report a content checksum (S3's ETag, GCS's md5Hash / crc32c), used as it
    is. A local file is hashed (SHA-256) in full up to 64 MiB; a larger one by its size, its
    first and last MiB and 16 evenly spaced MiB between them, so a rerun over a large input
    does not read it all twice (an edit that keeps the size and misses every sample is not
    seen: pass --overwrite after changing a large file in place).
    """
    if not local:
        for key in ("ETag", "etag", "md5Hash", "crc32c", "checksum"):
            value = info.get(key)
            if value:
                return f"{key.lower()}:{str(value).strip(chr(34))}"
    size = int(info.get("size") or 0)
    digest = hashlib.sha256(str(size).encode())
    with fs.open(path, "rb") as handle:
        if size <= FULL_HASH_LIMIT:
            while chunk := handle.read(SAMPLE_BYTES):
                digest.update(chunk)
            return f"sha256:{digest.hexdigest()}"
        step = (size - SAMPLE_BYTES) // (SAMPLES + 1)
        for offset in [0, *(step * (i + 1) for i in range(SAMPLES)), size - SAMPLE_BYTES]:
            handle.seek(offset)
            digest.update(handle.read(SAMPLE_BYTES))
    return f"sha256-sampled:{digest.hexdigest()}"


def _with_rows(file: InputFile, options: dict[str, Any] | None) -> InputFile:
    if file.format not in ("parquet", "npy"):
        return file
    from .readers import count_rows

    return InputFile(file.url, file.shown, file.relative, file.format, file.size,
                     file.fingerprint, count_rows(file, options))
