"""Custom Python models: a ``model.py`` beside ``model.yaml`` with a :class:`shoal.Model` subclass.

The file is imported under a private module name per model version, so two models may both
call their class ``Model`` and reloading a version picks up edits to its file.
"""

from __future__ import annotations

import importlib.util
import inspect
import sys
from pathlib import Path

from ..errors import LoadError
from ..model import Model
from ..repository.config import ModelConfig

MODULE_FILE = "model.py"


def create(name: str, version: str, version_dir: Path, model_dir: Path, config: ModelConfig) -> Model:
    source = next(
        (d / MODULE_FILE for d in (version_dir, model_dir) if (d / MODULE_FILE).is_file()), None
    )
    if source is None:
        raise LoadError(f"runtime 'custom' needs a {MODULE_FILE} in {model_dir.name}/")
    module = import_source(source, f"shoal_models.{name.replace('.', '_').replace('-', '_')}.v{version}")
    cls = _pick_class(module, config.model_class, source)
    if cls.predict is Model.predict:
        # Loading would succeed and every request fail with a 500: fail the load instead.
        raise LoadError(
            f"{cls.__name__} in {source.name} does not define predict(self, request); "
            "a shoal.Model subclass must override it"
        )
    return cls(name, version, version_dir, config.parameters)


def import_source(source: Path, module_name: str) -> object:
    """Import a user's file as ``module_name`` (replacing an earlier import of that name, so a
    reload picks up edits); LoadError if the file fails to import."""
    spec = importlib.util.spec_from_file_location(module_name, source)
    if spec is None or spec.loader is None:
        raise LoadError(f"cannot import {source}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        sys.modules.pop(module_name, None)
        raise LoadError(f"importing {source.name} failed: {type(exc).__name__}: {exc}") from exc
    return module


def _pick_class(module: object, wanted: str | None, source: Path) -> type[Model]:
    classes = [
        obj
        for obj in vars(module).values()
        if inspect.isclass(obj) and issubclass(obj, Model) and obj.__module__ == module.__name__
    ]
    if wanted is not None:
        for cls in classes:
            if cls.__name__ == wanted:
                return cls
        raise LoadError(f"{source.name} has no shoal.Model subclass named {wanted!r}")
    if len(classes) != 1:
        found = ", ".join(c.__name__ for c in classes) or "none"
        raise LoadError(
            f"{source.name} must define exactly one shoal.Model subclass (found {found}); "
            "name one with 'class:' in model.yaml"
        )
    return classes[0]
