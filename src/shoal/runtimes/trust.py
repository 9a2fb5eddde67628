"""Refusing artifacts that anyone on the machine could have replaced.

Loading a pickle (or any format that runs code on load) executes whatever the file holds, so
runtimes that unpickle check the artifact and its folder first.
"""

from __future__ import annotations

import stat
from pathlib import Path

from ..errors import LoadError


def refuse_untrusted(artifact: Path) -> None:
    for path in (artifact, artifact.parent):
        mode = path.stat().st_mode
        if mode & stat.S_IWOTH and not (path.is_dir() and mode & stat.S_ISVTX):
            raise LoadError(
                f"refusing to unpickle {artifact.name}: {path} is world-writable, so anyone could "
                "have replaced it (loading a pickle runs its code)"
            )
