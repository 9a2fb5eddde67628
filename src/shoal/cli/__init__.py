"""The ``shoal`` command: ``serve``; ``models``, ``metadata``, ``predict``, ``load`` and
``unload`` against a running server; ``rollout`` to steer its rollouts.

Each command group is a thin layer over the documented Python API (the server settings, the
client), so every command is also usable from Python.
"""

from . import batch, client, rollout, serve  # noqa: F401  (registers the commands)
from . import fetch  # noqa: F401  (shoal fetch URI DIR)
from . import k8s  # noqa: F401  (shoal k8s render / crd / view)
from . import operator  # noqa: F401  (shoal operator, shoal k8s operator-manifests)
from .main import main

__all__ = ["main"]
