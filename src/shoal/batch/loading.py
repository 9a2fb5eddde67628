"""What scores a job's rows: a model or graph loaded in-process exactly as ``shoal serve``
loads it (the same runtimes, ``model.yaml``, worker processes, graph loader), or a model on a
running server reached over V2 (binary REST or gRPC) through the remote-model runtime.

Either way the result is an :class:`~shoal.serving.endpoint.Endpoint`: the runner calls
``infer`` and never knows which it has. ``model.yaml``'s adaptive batching, in-flight limit
and time limit are serving settings for concurrent clients; a batch job forms its own batches
(``batch_size``), so it loads models without them.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import InvalidInput, LoadError, ShoalError
from ..types import TensorSpec

REMOTE_SCHEMES = ("http://", "https://", "grpc://")
#: Seconds a job that stops waits for model code still running (its threads are daemons).
SHUTDOWN_WAIT = 1.0
#: Retries of a request to a server that is unreachable or answers 503 (the most it takes).
REMOTE_RETRIES = 10


def is_remote(model: str) -> bool:
    return model.startswith(REMOTE_SCHEMES)


@dataclass
class Loaded:
    endpoint: Any
    name: str
    inputs: list[TensorSpec]
    fingerprint: str
    """Changes when the model does (its folder's files; a server's model metadata)."""
    row_wise: bool = False
    """Send rows one by one (a graph whose routers decide per request)."""
    remote: bool = False
    _close: list[Callable[[], Any]] = field(default_factory=list, repr=False)

    async def close(self) -> None:
        for step in reversed(self._close):
            result = step()
            if hasattr(result, "__await__"):
                await result
        self._close.clear()


async def load(
    model: str, name: str | None = None, workers: int = 0, request_timeout: float = 60.0,
    threads: int = 2,
) -> Loaded:
    """Load what ``shoal batch MODEL [--model NAME]`` names; the caller closes it.
    ``threads``: model threads, as many as batches in flight (a model's calls run on few
    threads, each warm in its cache, rather than round-robin over many)."""
    if is_remote(model):
        if not name:
            raise InvalidInput(f"{model} is a server: name the model to score with --model NAME")
        return await _remote(model, name, request_timeout)
    if model.startswith(("s3://", "gs://")):  # a repository in object storage, as shoal serve
        import asyncio

        from ..repository.sources import fetch_repository

        try:
            local = await asyncio.to_thread(fetch_repository, model)
        except ShoalError:
            raise
        except Exception as exc:  # the store's own reason, in one line
            raise LoadError(f"cannot fetch {model}: {exc}") from None
        return await _local(local, name, workers, threads)
    return await _local(Path(model), name, workers, threads)


def model_fingerprint(folders: list[Path]) -> str:
    """SHA-256 over every file of the folders (names and contents), state folders aside."""
    digest = hashlib.sha256()
    for folder in folders:
        for path in sorted(folder.rglob("*")):
            relative = path.relative_to(folder)
            if any(part in (".shoal-state", "__pycache__") for part in relative.parts):
                continue
            if path.is_file():
                digest.update(f"{folder.name}/{relative.as_posix()}\0".encode())
                with open(path, "rb") as handle:
                    while block := handle.read(1 << 20):
                        digest.update(block)
    return f"sha256:{digest.hexdigest()}"


def split_model_path(path: Path, name: str | None) -> tuple[Path, str]:
    """(repository, model name) for ``MODEL`` or ``REPO --model NAME``."""
    if not path.exists():
        raise InvalidInput(f"{path}: no such model folder or repository")
    if not path.is_dir():
        raise InvalidInput(f"{path} is a file: name the model's folder (or a repository and --model)")
    if name:
        if not (path / name).is_dir():
            from ..repository.layout import model_names

            known = ", ".join(model_names(path)) or "none"
            raise InvalidInput(f"{path} has no model {name!r} (its models: {known})")
        return path.resolve(), name
    from ..repository.layout import model_names, version_dirs
    from ..runtimes import artifacts_in

    folder = path.resolve()
    looks_like_model = (
        (folder / "model.yaml").is_file() or (folder / "graph.yaml").is_file()
        or any(artifacts_in(d) for d in version_dirs(folder).values())
    )
    if not looks_like_model:
        inside = model_names(folder)
        if inside:
            raise InvalidInput(
                f"{path} is a repository of {len(inside)} model(s) ({', '.join(inside[:8])}): "
                "say which to score with --model NAME"
            )
    return folder.parent, folder.name


def model_folders(root: Path, name: str) -> list[Path]:
    """The folders a model's results depend on: its own, and a graph's models' folders."""
    from ..graph.spec import ModelNode, read_graph
    from ..repository.manager import serves_graph

    folders = [root / name]
    if serves_graph(root / name):
        spec = read_graph(root / name)
        called = dict.fromkeys(n.model for n in spec.nodes.values() if isinstance(n, ModelNode))
        folders += [root / m for m in called if (root / m).is_dir()]
    return folders


async def fingerprint(model: str, name: str | None) -> str:
    """The fingerprint :func:`load` would give, without loading anything (the Ray driver)."""
    if is_remote(model):
        if not name:
            raise InvalidInput(f"{model} is a server: name the model to score with --model NAME")
        return await _remote_fingerprint(model, name, None)
    root, model_name = split_model_path(Path(model), name)
    return model_fingerprint(model_folders(root, model_name))


async def _local(path: Path, name: str | None, workers: int, threads: int = 2) -> Loaded:
    from ..graph.endpoint import GraphEndpoint
    from ..graph.nodes.routing import RoutingNode
    from ..observe.metrics import Metrics
    from ..repository.manager import ModelRepository
    from ..serving.endpoint import ModelEndpoint
    from ..serving.executor import Executor
    from ..serving.limits import Limits
    from ..serving.registry import Registry
    from ..serving.workers.pool import WorkerPool

    root, model_name = split_model_path(path, name)
    executor = Executor(max(2, threads))
    pool = WorkerPool("warning", workers)
    state = tempfile.mkdtemp(prefix="shoal-batch-state-")
    registry = Registry()
    repository = ModelRepository(root, registry, executor, Metrics(), workers=workers, pool=pool,
                                 state_dir=Path(state))
    loaded = Loaded(None, model_name, [], "")
    loaded._close += [lambda: shutil.rmtree(state, ignore_errors=True),
                      lambda: executor.shutdown(SHUTDOWN_WAIT), pool.close]
    try:
        folders = model_folders(root, model_name)
        names = [f.name for f in folders[1:]] + [model_name]
        for item in names:
            await repository.load(item)
            loaded._close.append(_unloader(repository, item))
        endpoint = registry.get(model_name)
    except ShoalError as exc:
        await loaded.close()
        if isinstance(exc, LoadError):
            raise LoadError(f"cannot load {model_name!r} from {root}: {exc}") from None
        raise
    except BaseException:
        await loaded.close()
        raise
    for item in names:  # serving settings off: the job makes its own batches
        for entry in registry.entries(item):
            if isinstance(entry.endpoint, ModelEndpoint):
                entry.endpoint.batcher = None
                entry.endpoint.batching = None
                entry.endpoint.limits = Limits()
    loaded.endpoint = endpoint
    loaded.inputs = _specs(endpoint.metadata().get("inputs"))
    loaded.fingerprint = model_fingerprint(folders)
    loaded.row_wise = isinstance(endpoint, GraphEndpoint) and any(
        isinstance(node, RoutingNode) for node in endpoint.nodes.values()
    )
    return loaded


def _unloader(repository: Any, name: str) -> Callable[[], Any]:
    async def unload() -> None:
        try:
            await repository.unload(name)
        except ShoalError:
            pass

    return unload


async def _remote(url: str, name: str, request_timeout: float) -> Loaded:
    from ..repository.config import ModelConfig
    from ..runtimes import create_model
    from ..serving.endpoint import ModelEndpoint
    from ..serving.executor import Executor

    parameters = {"model_name": name, "timeout": request_timeout, "retries": REMOTE_RETRIES}
    try:
        config = ModelConfig(url=url, parameters=parameters)
        model = create_model(name, "1", Path("."), Path("."), config)
    except ShoalError as exc:
        raise LoadError(f"{url}: {exc}") from None
    executor = Executor(1)
    loaded = Loaded(None, name, [], "", remote=True)
    loaded._close.append(lambda: executor.shutdown(SHUTDOWN_WAIT))
    try:
        await model.load()
    except ShoalError as exc:
        executor.shutdown(SHUTDOWN_WAIT)
        raise LoadError(f"cannot score with model {name!r} at {url}: {exc}") from None
    loaded._close.append(model.unload)
    endpoint = ModelEndpoint(model, executor)
    loaded.endpoint = endpoint
    loaded.inputs = list(model.inputs)
    loaded.fingerprint = await _remote_fingerprint(url, name, endpoint)
    return loaded


async def _remote_fingerprint(url: str, name: str, endpoint: Any) -> str:
    """The server's metadata for the model (its version included), hashed."""
    from ..client import AsyncClient, ShoalClientError

    grpc = url.startswith("grpc://")
    client = AsyncClient("http://127.0.0.1" if grpc else url, grpc=url if grpc else None)
    try:
        metadata = await client.metadata(name)
    except ShoalClientError as exc:
        if endpoint is None:
            raise LoadError(f"cannot read model {name!r}'s metadata from {url}: {exc}") from None
        metadata = endpoint.metadata()
    finally:
        await client.close()
    text = json.dumps(metadata, sort_keys=True, default=str)
    return f"remote-sha256:{hashlib.sha256(text.encode()).hexdigest()}"


def _specs(raw: Any) -> list[TensorSpec]:
    return [TensorSpec(str(t["name"]), str(t["datatype"]), tuple(int(d) for d in t["shape"]))
            for t in raw or ()]

