"""The ``shoal`` command: ``serve``; ``models``, ``metadata``, ``predict``, ``load`` and
``unload`` against a running server; ``rollout`` to steer its rollouts.

Each command group is a thin layer over the documented Python API (the server settings, the
client), so every command is also usable from Python. A command's module is imported when the
command runs (``shoal.cli.main.LazyGroup``): ``shoal serve`` imports only what serving needs.
"""

from .main import main

__all__ = ["main"]
