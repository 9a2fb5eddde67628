"""Repository URIs: which are fetched (``s3://``, ``gs://``, ``http(s)://``), how they are shown
(never with a password or a presigned query), and where each is cached."""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

#: scheme -> (fsspec protocol, the extra that installs it, its package); http(s) are archives.
OBJECT_STORES = {"s3": ("s3", "s3", "s3fs"), "s3a": ("s3", "s3", "s3fs"),
                 "gs": ("gcs", "gcs", "gcsfs"), "gcs": ("gcs", "gcs", "gcsfs")}
ARCHIVE_SCHEMES = ("http", "https")
REMOTE_SCHEMES = frozenset(OBJECT_STORES) | frozenset(ARCHIVE_SCHEMES)


def scheme(uri: str) -> str:
    found = urlsplit(uri).scheme.lower()
    return found if len(found) > 1 and "://" in uri else ""  # "C:\\models" has no scheme


def is_remote(uri: str | os.PathLike[str]) -> bool:
    """Whether ``uri`` names a repository to fetch (``s3://``, ``gs://``, ``http(s)://``)
    rather than a local folder (a path, or ``file://``)."""
    return isinstance(uri, str) and scheme(uri) in REMOTE_SCHEMES


def check_uri(uri: str) -> None:
    """ValueError for a ``scheme://`` Shoal cannot fetch from (a local path passes)."""
    kind = scheme(uri)
    if kind and kind != "file" and kind not in REMOTE_SCHEMES:
        raise ValueError(
            f"cannot fetch a repository from {kind}://: use s3://bucket/prefix, "
            "gs://bucket/prefix, https://host/repository.tar.gz (or .zip) or a local folder"
        )
    if kind in OBJECT_STORES and not urlsplit(uri).netloc:
        raise ValueError(f"{uri!r} names no bucket: use {kind}://bucket/prefix")


def local_path(uri: str | os.PathLike[str]) -> Path:
    """A local folder's path (``file://`` taken off)."""
    text = os.fspath(uri)
    if scheme(text) == "file":
        return Path(urlsplit(text).path)
    return Path(text)


def display(uri: str) -> str:
    """``uri`` without a password, user or query (a presigned URL's signature): for logs and
    messages."""
    parts = urlsplit(uri)
    if not parts.scheme or not parts.netloc:
        return uri
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def default_cache_dir() -> Path:
    """``$SHOAL_CACHE_DIR``, else ``$XDG_CACHE_HOME/shoal/repositories`` (``~/.cache/...``)."""
    configured = os.environ.get("SHOAL_CACHE_DIR")
    if configured:
        return Path(configured).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "shoal" / "repositories"


#: Query parameters that sign a URL or say when it expires (S3 and GCS presigned URLs, V2 and
#: V4): a fresh signature for the same object is the same repository. Compared ignoring case;
#: names ending in ``-`` are prefixes.
SIGNATURE_PARAMETERS = ("x-amz-", "x-goog-", "signature", "expires", "googleaccessid",
                        "awsaccesskeyid")


def _signature(name: str) -> bool:
    lowered = name.lower()
    return any(lowered.startswith(p) if p.endswith("-") else lowered == p
               for p in SIGNATURE_PARAMETERS)


def identity(uri: str) -> str:
    """What names a repository: ``uri`` without a user or password and without the query
    parameters that sign it or say when it expires (:data:`SIGNATURE_PARAMETERS`); every
    other query parameter stays (``download?job=fraud`` and ``?job=churn`` are two
    repositories)."""
    parts = urlsplit(uri)
    if not parts.scheme or not parts.netloc:
        return uri.rstrip("/")
    host = display(urlunsplit((parts.scheme, parts.netloc, "", "", ""))).split("://", 1)[1]
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True)
             if not _signature(k)]
    return urlunsplit((parts.scheme, host, parts.path.rstrip("/") if not query else parts.path,
                       urlencode(query), ""))


def cache_key(uri: str) -> str:
    """The cache folder's name for ``uri``: readable (:func:`display`: no credentials, no
    query), and unique by a hash of :func:`identity` (the whole URI but its credentials and
    signature: a fresh presigned URL reuses the cache, another query string does not)."""
    shown = display(uri).rstrip("/")
    digest = hashlib.sha256(identity(uri).encode()).hexdigest()[:16]
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", shown.split("://", 1)[-1]).strip("-.")[:48]
    return f"{slug}-{digest}" if slug else digest


def local_folder(uri: str, cache_dir: Path | None = None) -> Path:
    """Where ``fetch_repository(uri, cache_dir)`` puts the repository (nothing is fetched)."""
    if not is_remote(uri):
        return local_path(uri)
    return (cache_dir or default_cache_dir()).expanduser() / cache_key(uri)
