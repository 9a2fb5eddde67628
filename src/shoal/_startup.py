"""Garbage collection while a server starts.

Starting a server allocates hundreds of thousands of long-lived objects (modules, classes,
models); at CPython's default thresholds the cyclic collector runs thousands of young
collections and several full ones over them, about a tenth of the CPU a start takes. Between
:func:`begin` and :func:`end` the thresholds are raised: young collections still run (every
20,000 allocations rather than 700), full ones wait until the startup load is over, when the
server freezes what it keeps (``gc.freeze``) and restores the thresholds.
"""

from __future__ import annotations

import gc

STARTUP_THRESHOLDS = (20_000, 50, 1_000)

_saved: tuple[int, int, int] | None = None


def begin() -> None:
    """Raise the collector's thresholds until :func:`end` (once; a second call does nothing)."""
    global _saved
    if _saved is None:
        _saved = gc.get_threshold()
        gc.set_threshold(*STARTUP_THRESHOLDS)


def end() -> None:
    """Restore the thresholds :func:`begin` found (nothing to do if it was not called)."""
    global _saved
    if _saved is not None:
        gc.set_threshold(*_saved)
        _saved = None
