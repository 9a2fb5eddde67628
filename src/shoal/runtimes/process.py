"""``runtime: process``: a model served by a program Shoal starts, watches and restarts.

``model.yaml``::

    command: ["java", "-jar", "model-server.jar"]   # implies runtime: process
    env: {MODEL_DIR: "."}                           # added to the program's environment
    ready_timeout: 60                               # seconds to become ready (default 60)
    protocol: v2-rest                               # or v2-grpc: what it serves on $PORT
    parameters: {timeout: 30}                       # seconds per call (model_name, model_version too)

Shoal's equivalent, on one machine, of KServe's and Seldon's custom containers: the program
(any language) serves the V2 protocol on ``127.0.0.1:$PORT``; Shoal starts it in the model's
version folder with ``PORT``, ``HOST`` (``127.0.0.1``), ``SHOAL_MODEL_NAME`` and
``SHOAL_MODEL_VERSION`` set, waits for
it to be ready, reads its metadata and serves it as an ordinary model, over every protocol
Shoal speaks and with its batching, limits, rollouts and graphs. Requests reach the program
through the remote-model client (``runtimes.triton``): V2 REST with JSON tensors (the binary
extension when the program's ``GET /v2`` lists ``binary_tensor_data``), carried by
``process_http``'s lean loopback connections, or V2 gRPC.

``process_supervisor`` starts, watches, restarts and stops the program; this module is the
model that requests meet. A request that was running when the program exited is answered 503
saying so; requests while it restarts are 503 at once. The program runs with Shoal's own
privileges, like a pickle's code: a ``model.yaml`` with ``command`` runs whatever it names.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..errors import LoadError, ShoalError, Unavailable
from ..repository.config import ModelConfig
from ..types import InferenceRequest, InferenceResponse
from . import process_supervisor as supervisor
from .process_http import LoopbackRemote
from .process_supervisor import Program, ProgramSpec, Run, describe_exit, wait_exit
from .triton import HttpRemote, Remote, RemoteSettings, RemoteUnreachable, TritonModel

#: Set by Shoal for the program, as ``PORT`` is: the address to listen on (a ``HOST`` in
#: Shoal's own environment must not make a program listen beyond loopback).
HOST = "127.0.0.1"
#: How long a request whose connection dropped waits to learn that the program exited (the
#: kernel closes a dying process's sockets a moment before its parent can reap it).
EXIT_NOTICE_S = 2.0
#: Variables of Shoal's environment a program does not inherit: the admin token (which the
#: program has no use for; not a protection: the program runs as Shoal's user and can read
#: Shoal's environment in /proc), and the metrics folder of --http-workers, which a Python program
#: using prometheus-client would otherwise write its own series into.
NOT_INHERITED = frozenset({"SHOAL_ADMIN_TOKEN", "PROMETHEUS_MULTIPROC_DIR"})


class ProcessSettings(BaseModel):
    """``parameters`` of a process-runtime model: how Shoal calls the program."""

    model_config = ConfigDict(extra="forbid")

    model_name: str | None = None
    """The program's name for the model; default: this model's name (``$SHOAL_MODEL_NAME``)."""
    model_version: int | str | None = None
    timeout: float = Field(30.0, gt=0)
    """Seconds per call to the program."""


def create(name: str, version: str, version_dir: Path, model_dir: Path,
           config: ModelConfig) -> ProcessModel:
    return ProcessModel(name, version, version_dir, model_dir, config)


def program_spec(name: str, version: str, version_dir: Path, model_dir: Path,
                 config: ModelConfig) -> ProgramSpec:
    """What to run, checked now: a command that cannot be found fails the load naming it."""
    if not config.command:
        raise LoadError("runtime 'process' needs command: the program that serves the model")
    if "HOST" in config.env:  # reserved as PORT is (model.yaml's check names PORT's)
        raise LoadError(f"env.HOST: Shoal sets HOST ({HOST}) for the program itself: it "
                        "must listen on 127.0.0.1:$PORT")
    inherited = {k: v for k, v in os.environ.items() if k not in NOT_INHERITED}
    env = {**inherited, **config.env, "SHOAL_MODEL_NAME": name, "SHOAL_MODEL_VERSION": version,
           "HOST": HOST}
    executable = resolve_command(config.command[0], version_dir, model_dir, env.get("PATH", ""))
    return ProgramSpec(
        name=name, version=version, command=tuple(config.command), executable=executable,
        cwd=version_dir, env=env, protocol=config.protocol or "v2-rest",
        ready_timeout=config.ready_timeout or supervisor.READY_TIMEOUT_S,
    )


def resolve_command(program: str, version_dir: Path, model_dir: Path, path: str) -> str:
    """The absolute path of ``command[0]``.

    A name without a slash is looked up on ``PATH`` (its absolute entries only: a relative
    one would mean Shoal's working directory, not the model's); a relative path is the
    version folder's, and must stay inside the model folder (``../../other-model/run.sh`` is
    refused; an absolute path is the user's to give); an absolute path is used as it is.
    """
    if "/" not in program:
        search = os.pathsep.join(p for p in path.split(os.pathsep) if os.path.isabs(p))
        found = shutil.which(program, path=search)
        if found is not None:
            return found
        hint = ""
        if (version_dir / program).exists():
            hint = f"; to run the file in the model's folder, write ./{program}"
        raise LoadError(f"command not found: {program!r} is not on PATH{hint}")
    target = Path(os.path.normpath(version_dir / program))
    if not Path(program).is_absolute() and not target.is_relative_to(model_dir):
        raise LoadError(
            f"command {program!r} points outside the model's folder {model_dir.name}/; "
            "give an absolute path to run a program from elsewhere"
        )
    if not target.exists():
        raise LoadError(f"command not found: {program!r} (no such file: {target})")
    if target.is_dir() or not os.access(target, os.X_OK):
        raise LoadError(
            f"command {program!r} is not an executable file (chmod +x it, or run it "
            "through its interpreter: [\"sh\", \"run.sh\"])"
        )
    return str(target)


class ProcessModel(TritonModel):
    platform = "process"
    accepted_parameters = frozenset(ProcessSettings.model_fields)

    def __init__(self, name: str, version: str, version_dir: Path, model_dir: Path,
                 config: ModelConfig) -> None:
        # Unknown keys are left to create_model's check, which suggests the key meant.
        known = {k: v for k, v in config.parameters.items() if k in self.accepted_parameters}
        try:
            own = ProcessSettings.model_validate(known)
        except ValidationError as exc:
            problems = "; ".join(f"parameters.{'.'.join(str(p) for p in e['loc'])}: {e['msg']}"
                                 for e in exc.errors())
            raise LoadError(f"runtime 'process': {problems}") from None
        settings = RemoteSettings(model_name=own.model_name, model_version=own.model_version,
                                  timeout=own.timeout, retries=0)
        super().__init__(name, version, version_dir, config.parameters, settings=settings)
        self.spec = program_spec(name, version, version_dir, model_dir, config)
        self.program: Program | None = None
        #: The run (process and port) that ``self.remote`` talks to.
        self.run: Run | None = None
        #: JSON tensors, unless the program lists the binary extension (HTTP only).
        self.binary = False
        self._closing: set[asyncio.Task[None]] = set()

    @property
    def where(self) -> str:
        """How errors name the program: ``the process of model 'iris' (pid 4242)``."""
        pid = f" (pid {self.run.pid})" if self.run is not None else ""
        return f"the process of model {self.name!r}{pid}"

    async def load(self) -> None:
        self.program = supervisor.start(self.spec)
        try:
            run = await asyncio.wrap_future(self.program.ready)
            self.connect(run)
            assert self.remote is not None
            if isinstance(self.remote, HttpRemote):
                self.binary = self.remote.binary = (
                    "binary_tensor_data" in await self.remote.extensions()
                )
            await self.read_metadata(self.remote)
        except BaseException as exc:
            await self._abandon()
            if isinstance(exc, ShoalError) and not isinstance(exc, LoadError):
                raise LoadError(self._metadata_problem(exc)) from None
            raise

    def _metadata_problem(self, exc: ShoalError) -> str:
        if isinstance(exc, Unavailable) and "answered 404" in str(exc):
            return (f"{exc}: it must serve the model under the name in $SHOAL_MODEL_NAME "
                    f"({self.remote_name!r}), or set parameters.model_name")
        return f"its metadata is not V2's: {exc}"

    async def _abandon(self) -> None:
        """After a failed or cancelled load: close the client, stop the program."""
        remote, self.remote, self.run = self.remote, None, None
        program = self.program
        if program is not None:
            stopped = program.stop(supervisor.FAILED_START_GRACE_S)
            try:
                await asyncio.shield(asyncio.wrap_future(stopped))
            except asyncio.CancelledError:
                pass  # the stop goes on on the supervisor thread
        if remote is not None:
            await remote.close()

    def new_remote(self) -> Remote:
        """V2 REST: the remote-model client over the loopback pool (process_http)."""
        if self.protocol == "http":
            assert self.run is not None
            return LoopbackRemote(self, "127.0.0.1", self.run.port, self.binary)
        return super().new_remote()

    def connect(self, run: Run) -> None:
        """Point the remote-model client at ``run``'s port (a new port after each restart)."""
        grpc = self.spec.protocol == "v2-grpc"
        self.point_at("grpc" if grpc else "http",
                      f"127.0.0.1:{run.port}" if grpc else f"http://127.0.0.1:{run.port}")
        old, self.run = self.remote, run
        self.remote = self.new_remote()
        if old is not None:  # its run exited: nothing it carried can still succeed
            task = asyncio.create_task(old.close())
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    async def predict(self, request: InferenceRequest) -> InferenceResponse:
        program = self.program
        run = program.serving if program is not None else None
        if run is None or run.exited.done():
            raise Unavailable(f"model {self.name!r} is unavailable: {self._status(run)}")
        if run is not self.run:
            self.connect(run)
        remote = self.remote
        assert remote is not None
        # Only a connection that failed is sent again or waits for the exit notice: a 503 (gRPC:
        # UNAVAILABLE) the program answers is its own word, and goes back as it is, at once.
        try:
            return await remote.infer(request)
        except RemoteUnreachable as exc:
            failure = exc
        if not run.exited.done():
            try:  # a keep-alive connection the program had just closed: once more
                return await remote.infer(request)
            except RemoteUnreachable as exc:
                failure = exc
        if await wait_exit(run, EXIT_NOTICE_S):
            code = run.exit_code
            assert code is not None
            raise Unavailable(
                f"model {self.name!r}: its process (pid {run.pid}) {describe_exit(code)} while "
                "running this request; it is being restarted"
            ) from None
        raise failure

    def _status(self, run: Run | None) -> str:
        code = run.exit_code if run is not None else None
        if code is not None:  # before the supervisor thread has marked it
            return f"its process {describe_exit(code)} and is restarting"
        return self.program.status if self.program is not None else "it is not loaded"

    def state_reason(self) -> str | None:
        """Why a loaded model's program is not serving now (restarting, stopped), for the
        repository index; None while it serves. (The name and meaning of
        ``ReplicatedModel.state_reason``.)"""
        program = self.program
        run = program.serving if program is not None else None
        if program is None or (run is not None and not run.exited.done()):
            return None
        return self._status(run)

    async def unload(self) -> None:
        await super().unload()  # the client first: nothing new reaches the program
        if self.program is not None:
            await asyncio.shield(asyncio.wrap_future(self.program.stop()))

    def __repr__(self) -> str:
        return f"ProcessModel({self.name!r}, {self.spec.shown!r})"

