"""The ``shoal`` command: ``serve``, and ``rollout`` to steer a running server.

Each command group is a thin layer over the documented Python API (the server settings, the
client), so every command is also usable from Python.
"""

from . import rollout, serve  # noqa: F401  (registers the commands)
from .main import main

__all__ = ["main"]
