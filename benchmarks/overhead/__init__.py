"""Per-runtime cases for ``benchmarks/runtime_overhead.py``.

Each runtime has a module here, ``benchmarks/overhead/<runtime>.py``, with one function::

    def build(folder: Path) -> Case

It writes a small real model of that framework into ``folder`` (a model folder of a Shoal
repository: artifact, optional ``model.yaml``) and returns how to call it: the V2 JSON
request body for one row, and a function that runs the same prediction in-process with the
framework's own API (what a user would call without a server).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable


@dataclass
class Case:
    runtime: str
    #: The V2 REST JSON body of a one-row request, e.g. {"inputs": [{"name": ..., ...}]}.
    body: dict[str, Any]
    #: The same prediction through the framework directly, in-process (no Shoal).
    direct: Callable[[], Any]
