"""``lazy_module``: a module imported on its first attribute access.

For modules that only some requests need (the TF Serving protobuf classes, for instance):
the server starts without importing them, and the first request that touches one pays the
import once.
"""

from __future__ import annotations

import importlib
import sys
from types import ModuleType
from typing import Any


class _LazyModule(ModuleType):
    def __getattr__(self, attr: str) -> Any:
        module = importlib.import_module(self.__name__)
        # Later lookups find the attributes here, without this method.
        self.__dict__.update({k: v for k, v in module.__dict__.items() if k != "__name__"})
        return getattr(module, attr)


def lazy_module(name: str) -> Any:
    """``name``'s module if it is imported already, else a stand-in that imports it when an
    attribute is first read (the stand-in is not put in ``sys.modules``)."""
    module = sys.modules.get(name)
    return module if module is not None else _LazyModule(name)
