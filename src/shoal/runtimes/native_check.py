"""Let a throwaway process read a model file before the server does.

XGBoost's UBJSON reader and LightGBM's text reader do not always raise on a damaged file: a
truncated or corrupted one can kill the whole process (SIGSEGV, or std::terminate from a
parse error inside an OpenMP loop) or loop forever, taking every other model down with it.
So the XGBoost and LightGBM runtimes first have :mod:`native_check_child` read the file (and
predict one row) through the framework's C library in a child process: about 40 ms, no
Python package import. A child killed by a signal, or one that does not finish, becomes a
``LoadError`` with the reason; anything else leaves the real load to report its own errors.
"""

from __future__ import annotations

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


def check_native_read(
    framework: str, label: str, library: str | None, artifact: Path, timeout: float | None = None
) -> None:
    """Raise LoadError if reading ``artifact`` crashes or hangs ``framework``'s library.

    Without a library path or a Python executable to start (an embedded interpreter) there is
    nothing to run the check with, and the file is read in-process as before.
    """
    if not library or not sys.executable:
        return
    if timeout is None:
        timeout = BASE_TIMEOUT + artifact.stat().st_size * SECONDS_PER_BYTE
    command = [sys.executable, "-I", "-S", str(CHILD), framework, library, str(artifact)]
    try:
        done = subprocess.run(
            command, stdin=subprocess.DEVNULL, capture_output=True, text=True, errors="replace",
            timeout=timeout,
        )
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
