"""Inference graphs: models, remote servers and user code composed in a ``graph.yaml``.

The public Python surface is the base classes for user code in a graph folder:
:class:`Combiner` (an ensemble's custom merge) and :class:`Router` (a custom router).
Transformers are ``shoal.Model`` subclasses.
"""

from .plugins import Combiner, Router

__all__ = ["Combiner", "Router"]
