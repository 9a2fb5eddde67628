"""Runtime registry: from a model folder to a :class:`shoal.Model` instance.

A runtime is named in ``model.yaml`` (``runtime: sklearn``) or detected from the artifact's
file name. Framework modules are imported only when a model needs them, so a missing
optional extra fails that one model's load with the ``pip install`` line that fixes it.
"""

from __future__ import annotations

import difflib
import importlib
import re
import threading
from dataclasses import dataclass
from pathlib import Path

from ..errors import LoadError
from ..llm import folder as hf_folder
from ..model import Model
from ..repository.config import ModelConfig


@dataclass(frozen=True)
class Runtime:
    module: str
    factory: str
    extra: str | None
    artifacts: tuple[str, ...]


#: Runtime name -> where it lives and the artifacts that identify it. A folder with artifacts
#: of two runtimes is refused (detect_runtime), except where the overlap is documented: an
#: MLflow folder holds its flavor's artifact (``model.pkl``, ``model.onnx``, ...) beside
#: ``MLmodel``; ``model.bst`` is listed for XGBoost only (LightGBM's needs ``runtime: lightgbm``).
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
    # A Hugging Face save_pretrained() folder, identified by its weights (config.json is too
    # common a name); shoal.llm.folder names what else it needs (config.json, a tokenizer).
    "huggingface": Runtime(
        "shoal.runtimes.huggingface", "HuggingFaceModel", "huggingface",
        ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
         "pytorch_model.bin.index.json"),
    ),
    "triton": Runtime("shoal.runtimes.triton", "create", "triton", ()),
    # A program Shoal starts (model.yaml's command): no artifact; it talks to the program
    # with the triton runtime's client, hence that extra (aiohttp).
    "process": Runtime("shoal.runtimes.process", "create", "triton", ()),
    "custom": Runtime("shoal.runtimes.custom", "create", None, ("model.py",)),
}


#: ``runtime: graph`` in model.yaml: the folder's graph.yaml is what is served.
GRAPH_RUNTIME = "graph"
#: graph.spec.GRAPH_FILE (not imported from there: the graph package imports this one).
GRAPH_FILE = "graph.yaml"


def artifacts_in(folder: Path) -> dict[str, list[str]]:
    """Runtime name -> the artifacts of that runtime that ``folder`` holds."""
    found: dict[str, list[str]] = {}
    for name, runtime in RUNTIMES.items():
        present = [a for a in runtime.artifacts if (folder / a).exists()]
        if present:
            found[name] = present
    return found


def model_artifacts(folders: list[Path]) -> list[str]:
    """The model artifacts in ``folders``, for telling a graph folder from a model folder.
    ``model.py`` is left out: beside ``graph.yaml`` it is the graph's own code."""
    return sorted(
        {artifact for folder in folders for name, present in artifacts_in(folder).items()
         if name != "custom" for artifact in present}
    )


def detect_runtime(version_dir: Path, model_dir: Path) -> str:
    """The runtime whose artifact the version folder holds, else the model folder.

    Two runtimes' artifacts in one folder (``model.joblib`` and ``model.json``) are not
    resolved by a guess: the load fails and asks for ``runtime:``. The documented overlaps are
    no guess: an MLflow folder holds its flavor's file beside ``MLmodel``, and ``model.bst``
    belongs to XGBoost alone unless ``model.yaml`` says ``runtime: lightgbm``.
    """
    for folder in dict.fromkeys([version_dir, model_dir]):
        found = artifacts_in(folder)
        if "mlflow" in found or len(found) == 1:
            return next(iter(found)) if len(found) == 1 else "mlflow"
        if found:
            listed = ", ".join(f"{a} ({name})" for name, present in found.items() for a in present)
            raise LoadError(
                f"{_shown(folder, model_dir)} holds artifacts of several runtimes: {listed}; "
                "say which one to serve with runtime: in model.yaml (e.g. "
                f"runtime: {next(iter(found))})"
            )
    for folder in dict.fromkeys([version_dir, model_dir]):
        config = hf_folder.read_config(folder)
        if config is not None and "model_type" in config:
            # A Hugging Face config.json without weights: say what the folder lacks.
            hf_folder.inspect_folder(folder)
    known = ", ".join(a for r in RUNTIMES.values() for a in r.artifacts)
    raise LoadError(f"no model artifact found (looked for {known}) and model.yaml names no runtime")


#: Sub-folder names that look like versions but are not: versions are plain integers.
VERSION_LIKE = re.compile(
    r"^(?:v|ver|version)[-_.]?\d+$|^0\d+$|^\d+(?:\.\d+)+$", re.IGNORECASE
)


def check_version_folders(version_dir: Path, model_dir: Path) -> None:
    """A model folder with no artifact but sub-folders named like versions (``v1/``,
    ``version-2/``, ``01/``) was most likely meant to have versions: say how they are named,
    instead of only "no model artifact found"."""
    if version_dir != model_dir or not model_dir.is_dir() or artifacts_in(model_dir):
        return
    lookalikes = sorted(
        p.name + "/" for p in model_dir.iterdir() if p.is_dir() and VERSION_LIKE.match(p.name)
    )
    if lookalikes:
        raise LoadError(
            f"no model artifact in {model_dir.name}/; its sub-folder(s) {', '.join(lookalikes)} "
            "look like versions, but version folders are plain integers (1/, 2/, ...): rename them"
        )


def _shown(folder: Path, model_dir: Path) -> str:
    """``iris/`` or ``iris/2/``: a folder as a user finds it in the repository."""
    if folder == model_dir:
        return f"{model_dir.name}/"
    return f"{model_dir.name}/{folder.name}/"


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
    if not config.url and not config.command:
        check_version_folders(version_dir, model_dir)
    runtime_name = config.runtime or ("triton" if config.url else None) or _detect(
        version_dir, model_dir, config
    )
    if runtime_name == GRAPH_RUNTIME:
        raise LoadError(_not_a_graph(model_dir, config))
    runtime = RUNTIMES.get(runtime_name)
    if runtime is None:
        raise LoadError(
            f"unknown runtime {runtime_name!r}; available: "
            f"{', '.join(sorted([*RUNTIMES, GRAPH_RUNTIME]))}"
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
    if getattr(model, "batches_itself", False):
        # It schedules concurrent requests itself (a generation engine): model.yaml's
        # max_batch_size bounds that instead of an adaptive batcher (repository.manager).
        model.max_batch_size = config.max_batch_size
    check_parameters(model, runtime_name)
    declare_metadata(model, config)
    return model


def _detect(version_dir: Path, model_dir: Path, config: ModelConfig) -> str:
    """The detected runtime. A folder that also holds graph.yaml reaches this only when it
    is not plainly a graph (manager.serves_graph): say what makes it unclear."""
    folders = [version_dir, model_dir]
    if (model_dir / GRAPH_FILE).is_file():
        found = model_artifacts(folders)
        if not found:
            raise LoadError(_not_a_graph(model_dir, config))
        runtimes = sorted({n for f in folders for n in artifacts_in(f) if n != "custom"})
        raise LoadError(
            f"{model_dir.name}/ holds both {GRAPH_FILE} and model artifacts ({', '.join(found)}): "
            f"add runtime: {GRAPH_RUNTIME} to model.yaml to serve the graph, or "
            f"runtime: {' / '.join(runtimes)} to serve the model"
        )
    return detect_runtime(version_dir, model_dir)


def _not_a_graph(model_dir: Path, config: ModelConfig) -> str:
    """Why a folder that says (or looks like) it is a graph was not loaded as one."""
    if not (model_dir / GRAPH_FILE).is_file():
        return f"model.yaml says runtime: {GRAPH_RUNTIME}, but {model_dir.name}/ has no {GRAPH_FILE}"
    defaults, given = ModelConfig().model_dump(), config.model_dump()
    others = sorted(key for key in given if key != "runtime" and given[key] != defaults[key])
    return (
        f"model.yaml beside {GRAPH_FILE} sets {', '.join(others) or 'nothing'}, which a graph "
        f"does not take: a graph's settings go in {GRAPH_FILE} (its model.yaml may say only "
        f"runtime: {GRAPH_RUNTIME})"
    )


def check_parameters(model: Model, runtime_name: str) -> None:
    """Refuse ``parameters`` keys the model's class does not read (see Model.accepted_parameters)."""
    accepted = type(model).accepted_parameters
    if accepted is None:
        return
    unknown = sorted(set(model.parameters) - accepted)
    if not unknown:
        return
    close = {key: difflib.get_close_matches(key, accepted, n=1) for key in unknown}
    hints = [f"{key!r} (did you mean {match[0]!r}?)" for key, match in close.items() if match]
    named = ", ".join(hints + [repr(key) for key, match in close.items() if not match])
    takes = ", ".join(sorted(accepted)) or "none"
    raise LoadError(
        f"unknown parameters in model.yaml for runtime {runtime_name!r}: {named}; it accepts: {takes}"
    )


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
