"""User code in a graph folder: transformers, combiners and routers.

A node names a Python file of the graph folder and a class in it. Transformers are
``shoal.Model`` subclasses (``preprocess`` / ``postprocess``, as in KServe); combiners and
routers subclass :class:`Combiner` and :class:`Router`. Each method may be a plain function
(run on Shoal's worker threads) or ``async def`` (run on the event loop).
"""

from __future__ import annotations

import inspect
from pathlib import Path
from types import ModuleType
from typing import Any

from ..errors import LoadError
from ..model import PredictResult
from ..runtimes import IMPORT_LOCK
from ..runtimes.custom import import_source
from ..types import InferenceRequest, InferenceResponse


class Combiner:
    """Merges the answers of an ensemble's children (given in the spec's order)."""

    def __init__(self, parameters: dict[str, Any] | None = None) -> None:
        self.parameters = dict(parameters or {})

    def load(self) -> None:
        """Called once when the graph loads."""

    def combine(self, responses: list[InferenceResponse]) -> PredictResult:
        raise NotImplementedError(f"{type(self).__name__} does not implement combine")


class Router:
    """Picks one of its arms per request, and may learn from feedback (Seldon's ROUTER)."""

    def __init__(self, parameters: dict[str, Any] | None = None) -> None:
        self.parameters = dict(parameters or {})
        #: The arms' node names, in the spec's order; set before ``load``.
        self.arms: list[str] = []

    def load(self) -> None:
        """Called once when the graph loads."""

    def route(self, request: InferenceRequest) -> int | str:
        """The arm to take: its index in ``arms`` or its name."""
        raise NotImplementedError(f"{type(self).__name__} does not implement route")

    def feedback(self, arm: str, reward: float, truth: Any) -> None:
        """The reward (and optional truth) for a request this router sent to ``arm``."""


class ClassLoader:
    """Imports the graph folder's files once per graph load, under private module names."""

    def __init__(self, graph: str, folder: Path) -> None:
        self.graph = graph
        self.folder = folder.resolve()
        self._modules: dict[Path, ModuleType] = {}

    def load(self, node: str, path: str, class_name: str, base: type) -> type:
        source = (self.folder / path).resolve()
        if source.parent != self.folder and self.folder not in source.parents:
            raise LoadError(f"node {node!r}: {path!r} is outside the graph folder")
        if not source.is_file():
            raise LoadError(f"node {node!r}: no file {path!r} in the graph folder")
        module = self._modules.get(source)
        if module is None:
            module = self._modules[source] = self._import(node, source)
        cls = getattr(module, class_name, None)
        if not inspect.isclass(cls) or not issubclass(cls, base):
            raise LoadError(
                f"node {node!r}: {path} has no class {class_name!r} subclassing "
                f"{base.__module__.split('.')[0]}.{base.__qualname__}"
            )
        return cls

    def _import(self, node: str, source: Path) -> ModuleType:
        # One name per graph and file: a reload replaces the module rather than adding one.
        relative = source.relative_to(self.folder).with_suffix("")
        safe = "".join(c if c.isalnum() else "_" for c in relative.as_posix())
        graph = "".join(c if c.isalnum() else "_" for c in self.graph)
        with IMPORT_LOCK:
            try:
                return import_source(source, f"shoal_graphs.{graph}.{safe}")  # type: ignore[return-value]
            except LoadError as exc:
                raise LoadError(f"node {node!r}: {exc}") from exc
