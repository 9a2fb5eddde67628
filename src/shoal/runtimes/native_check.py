"""Let a throwaway process read a model file before the server does.

XGBoost's, LightGBM's and CatBoost's readers do not always raise on a damaged file: a corrupted
one can kill the whole process (SIGSEGV, or std::terminate from a parse error inside an OpenMP
loop) or make it spin forever, taking every other model down with it. The runtimes check what
they can in Python first (:mod:`ubjson`, :mod:`lightgbm_text`); then :mod:`native_check_child`
reads the file and predicts one row in a child process (about 30 ms through the C library for
XGBoost and LightGBM, about 0.4 s for CatBoost, which has to import its Python package). A child
killed by a signal, or one that does not finish, becomes a ``LoadError`` with the reason;
anything else leaves the real load to report its own errors.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from types import ModuleType

from ..errors import LoadError

CHILD = Path(__file__).with_name("native_check_child.py")
#: How long the check may take: generous, as reading a valid model takes well under a second
#: per 10 MB; a file that takes longer than this is spinning, not loading.
BASE_TIMEOUT = 30.0
SECONDS_PER_BYTE = 1 / 10_000_000


def library_path(module: ModuleType) -> str | None:
    """The shared library the framework's Python package loaded (``module._LIB``, a CDLL)."""
    return getattr(getattr(module, "_LIB", None), "_name", None)


def search_path() -> str:
    """This process's module search path, for a child that imports the framework's package."""
    return os.pathsep.join(sys.path)


def read_in_child(
    framework: str, where: str, artifact: Path, timeout: float
) -> subprocess.CompletedProcess[str]:
    """Run the child; its return code is 0 (read fine), 3 (an ordinary error) or -signal."""
    command = [sys.executable, "-I", "-S", str(CHILD), framework, where, str(artifact)]
    return subprocess.run(
        command, check=False, stdin=subprocess.DEVNULL, capture_output=True, text=True,
        errors="replace", timeout=timeout,
    )


def check_native_read(
    framework: str, label: str, where: str | None, artifact: Path, timeout: float | None = None
) -> None:
    """Raise LoadError if reading ``artifact`` crashes or hangs ``framework``.

    ``where`` is the framework's shared library (:func:`library_path`) or, for CatBoost, the
    module search path (:func:`search_path`). Without it, or without a Python executable to
    start (an embedded interpreter), there is nothing to run the check with, and the file is
    read in-process only.
    """
    if not where or not sys.executable:
        return
    if timeout is None:
        timeout = BASE_TIMEOUT + artifact.stat().st_size * SECONDS_PER_BYTE
    try:
        done = read_in_child(framework, where, artifact, timeout)
    except subprocess.TimeoutExpired:
        raise LoadError(
            f"{label} did not finish reading {artifact.name} within {timeout:.0f} s (checked in a "
            "separate process): the file is corrupt"
        ) from None
    if done.returncode < 0:
        try:
            how = signal.Signals(-done.returncode).name
        except ValueError:
            how = f"signal {-done.returncode}"
        fatal = [line.strip() for line in done.stderr.splitlines() if "Fatal" in line]
        detail = f"; it said: {fatal[0][:200]}" if fatal else ""
        raise LoadError(
            f"{label} crashed ({how}) reading {artifact.name} in a separate check process: the "
            f"file is corrupt or truncated{detail}"
        )
