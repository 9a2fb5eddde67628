"""Runtime registry: from a model folder to a :class:`shoal.Model` instance.

A runtime is named in ``model.yaml`` (``runtime: sklearn``) or detected from the artifact's
file name. Framework modules are imported only when a model needs them, so a missing
optional extra fails that one model's load with the ``pip install`` line that fixes it.
"""

from __future__ import annotations

import importlib
import threading
from dataclasses import dataclass
from pathlib import Path

from ..errors import LoadError
from ..model import Model
from ..repository.config import ModelConfig


@dataclass(frozen=True)
class Runtime:
    module: str
    factory: str
    extra: str | None
    artifacts: tuple[str, ...]


#: Detection order matters where artifacts overlap: ``model.bst`` is XGBoost's unless
#: ``model.yaml`` says ``runtime: lightgbm``. An MLflow folder holds its flavor's artifact
#: too (``model.pkl``, ``model.onnx``, ...) beside ``MLmodel``, so MLflow is looked for first.
RUNTIMES: dict[str, Runtime] = {
    "mlflow": Runtime("shoal.runtimes.mlflow", "MLflowModel", "mlflow", ("MLmodel",)),
    "sklearn": Runtime(
        "shoal.runtimes.sklearn", "SKLearnModel", "sklearn",
        ("model.joblib", "model.pkl", "model.pickle"),
    ),
    "xgboost": Runtime(
        "shoal.runtimes.xgboost", "XGBoostModel", "xgboost", ("model.json", "model.ubj", "model.bst"),
    ),
    "lightgbm": Runtime("shoal.runtimes.lightgbm", "LightGBMModel", "lightgbm", ("model.txt",)),
    "catboost": Runtime("shoal.runtimes.catboost", "CatBoostModel", "catboost", ("model.cbm",)),
    "onnx": Runtime("shoal.runtimes.onnx", "ONNXModel", "onnx", ("model.onnx",)),
    "pytorch": Runtime("shoal.runtimes.pytorch", "PyTorchModel", "pytorch", ("model.pt", "model.pt2")),
    "tensorflow": Runtime(
        "shoal.runtimes.tensorflow", "TensorFlowModel", "tensorflow",
        ("saved_model.pb", "model.keras"),
    ),
    "triton": Runtime("shoal.runtimes.triton", "create", "triton", ()),
    "custom": Runtime("shoal.runtimes.custom", "create", None, ("model.py",)),
}


def detect_runtime(folders: list[Path]) -> str:
    """The runtime whose artifact appears first in ``folders`` (version folder first)."""
    for folder in folders:
        for name, runtime in RUNTIMES.items():
            if any((folder / artifact).exists() for artifact in runtime.artifacts):
                return name
    known = ", ".join(a for r in RUNTIMES.values() for a in r.artifacts)
    raise LoadError(f"no model artifact found (looked for {known}) and model.yaml names no runtime")


#: Models load on several threads at once. Two threads importing parts of one framework can
#: see it half-initialised ("cannot import name 'clone' from partially initialized module
#: 'sklearn.base'"), so whatever imports (creating the model, which imports the runtime or a
#: user's model.py, and unpickling, which imports the pickled classes' modules) holds this lock.
IMPORT_LOCK = threading.RLock()


def first_line(exc: BaseException) -> str:
    """``Type: first line``: framework errors (onnxruntime, PyTorch, TensorFlow) append pages
    of context that a repository index or a 400 should not carry. TensorFlow's ``OpError``
    keeps its own text in ``message`` (``str()`` adds the op's name)."""
    lines = (getattr(exc, "message", None) or str(exc)).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0] if lines else ''}"


def create_model(
    name: str, version: str, version_dir: Path, model_dir: Path, config: ModelConfig
) -> Model:
    with IMPORT_LOCK:
        return _create_model(name, version, version_dir, model_dir, config)


def _create_model(
    name: str, version: str, version_dir: Path, model_dir: Path, config: ModelConfig
) -> Model:
    runtime_name = config.runtime or ("triton" if config.url else None) or detect_runtime(
        [version_dir, model_dir]
    )
    runtime = RUNTIMES.get(runtime_name)
    if runtime is None:
        raise LoadError(
            f"unknown runtime {runtime_name!r}; available: {', '.join(sorted(RUNTIMES))}"
        )
    try:
        module = importlib.import_module(runtime.module)
    except ImportError as exc:
        hint = f": pip install 'shoal[{runtime.extra}]'" if runtime.extra else ""
        raise LoadError(f"runtime {runtime_name!r} is not installed ({exc.name}){hint}") from None
    factory = getattr(module, runtime.factory)
    if isinstance(factory, type):
        model = factory(name, version, version_dir, config.parameters)
    else:
        model = factory(name, version, version_dir, model_dir, config)
    declare_metadata(model, config)
    return model


def declare_metadata(model: Model, config: ModelConfig) -> None:
    """``model.yaml``'s inputs/outputs win over what a runtime reads from its artifact.

    Applied before ``load`` (a runtime whose artifact carries no metadata, like TorchScript,
    reads them there) and again after it (a runtime that fills them from its artifact must not
    replace what the user declared).
    """
    if config.inputs:
        model.inputs = [t.spec() for t in config.inputs]
    if config.outputs:
        model.outputs = [t.spec() for t in config.outputs]
