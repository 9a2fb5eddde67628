"""Where a model's versions live on disk, and which names are safe to look up.

``REPO/<name>/`` is one model; integer sub-folders ``REPO/<name>/<n>/`` are its versions; a
model folder without any is version ``1`` (its artifacts sit in the model folder itself).
"""

from __future__ import annotations

import re
from pathlib import Path

from ..errors import InvalidInput

_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$")
_VERSION = re.compile(r"^(0|[1-9][0-9]*)$")  # ASCII, no leading zeros: "01" is not a version


#: A model name is a folder name: at most 255 bytes on every common file system.
MAX_NAME_LENGTH = 255


def check_model_name(name: str) -> str:
    """Reject names that could escape the repository (``..``, ``/``, NUL, ...) or that no
    folder can have."""
    if len(name) > MAX_NAME_LENGTH:
        raise InvalidInput(
            f"invalid model name {name[:40]!r}... ({len(name)} characters): a model name is a "
            f"folder name, at most {MAX_NAME_LENGTH} characters"
        )
    if not _NAME.fullmatch(name) or ".." in name:
        raise InvalidInput(
            f"invalid model name {name!r}: use letters, digits, '_', '-' and '.', "
            "without '..' or '/'"
        )
    return name


def model_names(root: Path) -> list[str]:
    return sorted(
        p.name
        for p in root.iterdir()
        if p.is_dir() and not p.name.startswith((".", "_")) and _NAME.fullmatch(p.name)
    )


def version_dirs(model_dir: Path) -> dict[int, Path]:
    """Version number -> folder; the implicit version 1 when there are no version folders."""
    versions = {
        int(p.name): p for p in model_dir.iterdir() if p.is_dir() and _VERSION.fullmatch(p.name)
    }
    return versions or {1: model_dir}
