"""The programs of ``runtime: process`` models: started, watched, restarted and stopped.

Everything here runs on one thread per Python process (``shoal-processes``), with its own
event loop, for three reasons:

- the parent-death signal (``PR_SET_PDEATHSIG``, asked for by ``process_exec.py``, the
  watcher that starts the program and takes its group and descendants along when Shoal
  goes) fires when the *thread* that forked the watcher exits, not the process: programs
  forked from a thread that lives as long as the process die with it, also when Shoal is
  killed with ``kill -9``, and never earlier;
- a model may live in a ``--workers`` worker process, whose event loop runs only while it
  answers a request: the programs' output must be read, and a program that exits restarted,
  whatever that loop does;
- nothing here can slow the serving loop: the log lines, readiness probes and restarts of a
  chatty or crashing program stay on this thread.

Requests do not come here: the model (``process.ProcessModel``) talks to the program on its
own loop, with the remote-model client, and reads :attr:`Program.serving` to know which run
(process and port) answers now.

A program runs in its own process group (a new session): stopping it signals the group, so
what it started goes too, and Ctrl-C in Shoal's terminal does not reach it before Shoal
decides. A run that exits is restarted with a growing pause (0, 0.5, 1, 2 ... 30 s; back to 0
once a run has served for ``STABLE_S``). Unload stops a program (:meth:`Program.stop`); a
server stopping calls :func:`stop_all`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import itertools
import logging
import os
import select
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, TypeVar

from ..errors import LoadError
from ..observe import logging as log
from .process_probe import Verdict, probe

T = TypeVar("T")

READY_TIMEOUT_S = 60.0
#: Lines of a program's output kept for error reasons (a failed load, an exit).
LAST_LINES = 20
#: A longer line is logged in pieces of this many bytes (a program writing without newlines
#: must not grow a buffer without bound).
LINE_LIMIT = 16 * 1024
#: Pauses before restarting a run that exited: the first restart is at once, then these grow.
BACKOFF_S = 0.5
MAX_BACKOFF_S = 30.0
#: A run that served this long before it exited is restarted at once again.
STABLE_S = 10.0
#: After SIGKILL: how long a program's output may take to reach its end (then it is dropped).
OUTPUT_DRAIN_S = 1.0
#: A program that never became ready (or does not speak V2) gets this long after SIGTERM.
FAILED_START_GRACE_S = 2.0
#: How long a start waits for the watcher to say the program's pid (it takes about 15 ms).
PID_TIMEOUT_S = 10.0


def default_stop_timeout() -> float:
    """How long a stopping program gets between SIGTERM and SIGKILL: the server's drain
    timeout when it comes from ``SHOAL_DRAIN_TIMEOUT``, else its default, 30 s. (A server
    that knows its own calls :func:`set_stop_timeout`.)"""
    try:
        return max(0.0, float(os.environ["SHOAL_DRAIN_TIMEOUT"]))
    except (KeyError, ValueError):
        return 30.0


_stop_timeout = default_stop_timeout()


def set_stop_timeout(seconds: float) -> None:
    """Seconds between SIGTERM and SIGKILL when programs stop (``--drain-timeout``)."""
    global _stop_timeout
    _stop_timeout = max(0.0, seconds)


@dataclass(frozen=True)
class ProgramSpec:
    """What to run for one model version, resolved and checked (``process.program_spec``)."""

    name: str
    version: str
    command: tuple[str, ...]
    #: The absolute path exec'd (``command[0]`` stays the program's argv[0]).
    executable: str
    cwd: Path
    #: The whole environment but ``PORT``, which each run gets its own of (``HOST`` is
    #: ``127.0.0.1``).
    env: dict[str, str]
    protocol: str
    ready_timeout: float

    @property
    def shown(self) -> str:
        return shlex.join(self.command)


def restart_pause(failures: int) -> float:
    """Seconds before the next start after ``failures`` runs in a row that ended early (a
    run that served for ``STABLE_S`` ends the row): 0, 0.5, 1, 2, 4 ... up to 30."""
    if failures <= 1:
        return 0.0
    return min(BACKOFF_S * 2 ** (failures - 2), MAX_BACKOFF_S)


def describe_exit(code: int) -> str:
    """``exited with code 3`` or ``was killed by signal SIGKILL``."""
    if code < 0:
        try:
            return f"was killed by signal {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


class Run:
    """One start of a program: its process, its port, its latest output lines.

    ``process`` is the leader of the run's process group: on Linux the watcher
    (``process_exec.py``) that started the program and ends as it does, elsewhere the program
    itself; ``pid`` is the program's. ``exited`` (a thread-safe future, resolved with the exit
    status as soon as the leader is reaped) is what other threads wait on; this thread waits
    on ``exit_seen``.
    """

    def __init__(self, number: int, process: subprocess.Popen[bytes], port: int,
                 pid: int | None = None) -> None:
        self.number = number
        self.process = process
        self.group = process.pid
        self.pid = process.pid if pid is None else pid
        self.port = port
        #: The group got its last SIGKILL after its leader was reaped: its number may
        #: belong to someone else now, and is never signalled again.
        self.swept = False
        self.started = time.monotonic()
        self.exited: concurrent.futures.Future[int] = concurrent.futures.Future()
        self.exit_seen = asyncio.Event()
        self.lines: deque[str] = deque(maxlen=LAST_LINES)
        self.readers: list[asyncio.Task[None]] = []

    @property
    def exit_code(self) -> int | None:
        return self.exited.result() if self.exited.done() else None

    def signal_group(self, sig: int) -> None:
        """Signal the run's process group (the program and what it started), while its
        leader has not been reaped (its number cannot belong to anyone else then) or while
        members of the group are left (a group id is not reused while the group exists);
        never once it was swept (:meth:`sweep`)."""
        if self.swept:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.group, sig)

    def sweep(self) -> None:
        """Once the leader was reaped: SIGKILL to what is left of the group, the last signal
        the group gets."""
        self.signal_group(signal.SIGKILL)
        self.swept = True

    def last_lines(self) -> str:
        if not self.lines:
            return "it wrote nothing"
        return "its last output lines:\n" + "\n".join(self.lines)


async def wait_exit(run: Run, timeout: float) -> bool:
    """Whether ``run`` exits within ``timeout`` seconds, from any event loop (never cancels
    the run's ``exited`` future)."""
    if run.exited.done():
        return True
    done, _ = await asyncio.wait({asyncio.wrap_future(run.exited)}, timeout=timeout)
    return bool(done)


class Program:
    """One model version's program, over all its runs.

    ``ready`` resolves with the first run that became ready, or fails with the
    :class:`LoadError` that says why none did; after that, :attr:`serving` is the run that
    answers now (None while it restarts, with :attr:`status` saying why).
    """

    def __init__(self, spec: ProgramSpec) -> None:
        self.spec = spec
        self.ready: concurrent.futures.Future[Run] = concurrent.futures.Future()
        self.serving: Run | None = None
        self.status = "its process is starting"
        self.stopping = False
        self._runs = itertools.count(1)
        self._current: Run | None = None
        self._wake = asyncio.Event()  # replaced on the supervisor loop by _main
        self._task: asyncio.Task[Any] | None = None
        self._stopped: asyncio.Future[None] | None = None

    # -- from any thread -----------------------------------------------------------------

    def stop(self, timeout: float | None = None) -> concurrent.futures.Future[None]:
        """SIGTERM to the program's group, SIGKILL after ``timeout`` (the stop timeout by
        default); no restart after. Resolves once the program has exited."""
        return _submit(self._stop(_stop_timeout if timeout is None else timeout))

    # -- on the supervisor thread ------------------------------------------------------------

    async def _main(self) -> None:
        self._task = asyncio.current_task()
        self._wake = asyncio.Event()
        failures = 0
        problem_reason = "its process was stopped before it was ready"
        try:
            while not self.stopping:
                run, problem, output = await self._start_until_ready()
                if self.stopping:
                    break
                if run is None:
                    if not self.ready.done():
                        self.status = "its process failed to start"
                        self.ready.set_exception(
                            LoadError(f"its process ({self.spec.shown}) {problem}; {output}")
                        )
                        return
                    failures += 1
                    self.status = f"its process is restarting; its last start failed: {problem}"
                    log.event("model_process_restart_failed", logging.ERROR, model=self.spec.name,
                              version=self.spec.version, reason=problem, output=output)
                else:
                    if not self.ready.done():
                        self.ready.set_result(run)
                    failures = await self._serve(run, failures)
                if self.stopping:
                    break
                pause = restart_pause(failures)
                if pause:
                    self.status += f" (next start in {pause:g} s)"
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), pause)
        except BaseException as exc:  # a bug here must not leave a load waiting forever
            if not isinstance(exc, asyncio.CancelledError):
                problem_reason = f"its process could not be supervised: {exc!r}"
            raise
        finally:  # also a stop before the first run was ready: the load must hear of it
            if not self.ready.done():
                self.ready.set_exception(LoadError(problem_reason))

    async def _serve(self, run: Run, failures: int) -> int:
        """Serve with ``run`` until it exits; the consecutive failures after it."""
        self.serving, self.status = run, "its process is ready"
        log.event("model_process_ready", model=self.spec.name, version=self.spec.version,
                  pid=run.pid, port=run.port, seconds=round(time.monotonic() - run.started, 3))
        ready_since = time.monotonic()
        await run.exit_seen.wait()
        code = run.exit_code
        assert code is not None
        if not self.stopping:  # said before serving goes: a request reads one, then the other
            self.status = f"its process {describe_exit(code)} and is restarting"
        self.serving = None
        await self._after_exit(run)
        if self.stopping:
            return failures
        log.event("model_process_exited", logging.ERROR, model=self.spec.name,
                  version=self.spec.version, pid=run.pid, exitcode=code,
                  last_lines=list(run.lines))
        return 1 if time.monotonic() - ready_since >= STABLE_S else failures + 1

    async def _start_until_ready(self) -> tuple[Run | None, str, str]:
        """A run that became ready; or None, why it did not, and its last output."""
        try:
            run = self._spawn()
        except OSError as exc:
            return None, self._spawn_error(exc), "it did not start"
        self._current = run
        problem = await self._until_ready(run)
        if problem is None:
            return run, "", ""
        if not run.exit_seen.is_set():
            run.signal_group(signal.SIGTERM)
            try:
                await asyncio.wait_for(run.exit_seen.wait(), FAILED_START_GRACE_S)
            except asyncio.TimeoutError:
                run.signal_group(signal.SIGKILL)
                await run.exit_seen.wait()
        await self._after_exit(run)
        return None, problem, run.last_lines()

    async def _until_ready(self, run: Run) -> str | None:
        """None once the run is ready; else why it never will be (exited, not V2, too slow)."""
        timeout = self.spec.ready_timeout
        deadline = time.monotonic() + timeout
        pause, last = 0.01, "nothing listens on $PORT yet"
        while True:
            if run.exit_seen.is_set():
                break
            verdict, said = await probe(self.spec.protocol, run.port)
            if verdict is Verdict.READY:
                return None
            if run.exit_seen.is_set():
                break
            if verdict is Verdict.NOT_V2:
                kind = "gRPC" if self.spec.protocol == "v2-grpc" else "REST"
                return f"does not serve V2 {kind} on $PORT ({run.port}): {said}"
            last = said
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self.stopping:
                return (f"was not ready within {timeout:g} s (ready_timeout) on $PORT "
                        f"({run.port}): {last}")
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(run.exit_seen.wait(), min(pause, remaining))
            pause = min(pause * 2, 0.25)
        code = run.exit_code
        assert code is not None
        seconds = time.monotonic() - run.started
        return f"{describe_exit(code)} {seconds:.2f} s after it started, before it was ready"

    def _spawn(self) -> Run:
        spec = self.spec
        port = free_port()
        pid_read, pid_write = os.pipe() if EXEC_WRAPPER else (-1, -1)
        try:
            if EXEC_WRAPPER:
                args = [sys.executable, "-I", "-S", str(EXEC_WRAPPER), str(os.getpid()),
                        str(pid_write), spec.executable, *spec.command]
            else:
                args = list(spec.command)
            process = subprocess.Popen(
                args, executable=None if EXEC_WRAPPER else spec.executable, cwd=spec.cwd,
                env={**spec.env, "PORT": str(port)},
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                start_new_session=True, pass_fds=(pid_write,) if EXEC_WRAPPER else (),
            )
        except BaseException:
            if EXEC_WRAPPER:
                os.close(pid_read)
            raise
        finally:
            if EXEC_WRAPPER:
                os.close(pid_write)
        pid = _program_pid(pid_read) if EXEC_WRAPPER else None
        run = Run(next(self._runs), process, port, pid)
        loop = asyncio.get_running_loop()
        threading.Thread(target=_reap, args=(run, loop), daemon=True,
                         name=f"shoal-process-{run.pid}").start()
        assert process.stdout is not None and process.stderr is not None
        run.readers = [asyncio.create_task(self._read(run, process.stdout, "stdout")),
                       asyncio.create_task(self._read(run, process.stderr, "stderr"))]
        log.event("model_process_started", model=spec.name, version=spec.version, pid=run.pid,
                  port=port, command=spec.shown, run=run.number)
        return run

    def _spawn_error(self, exc: OSError) -> str:
        shown = self.spec.command[0]
        if not self.spec.cwd.is_dir():
            return f"cannot start in {self.spec.cwd}: the folder is gone"
        if isinstance(exc, FileNotFoundError):
            return f"command not found: {shown!r} ({exc.strerror})"
        if isinstance(exc, PermissionError):
            return f"command {shown!r} cannot be run: {exc.strerror} (is it executable?)"
        return (f"command {shown!r} cannot be run: {exc.strerror or exc} (a script needs a "
                "#! line, or run it through its interpreter)")

    async def _read(self, run: Run, pipe: IO[bytes], stream: str) -> None:
        """The program's output, to Shoal's log a line at a time, tagged with the model."""
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        transport, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), pipe
        )
        pending = b""
        try:
            while chunk := await reader.read(65536):
                lines = (pending + chunk).split(b"\n")
                pending = lines.pop()
                while len(pending) > LINE_LIMIT:
                    lines.append(pending[:LINE_LIMIT])
                    pending = pending[LINE_LIMIT:]
                for line in lines:
                    self._line(run, stream, line)
            if pending:
                self._line(run, stream, pending)
        finally:
            transport.close()

    def _line(self, run: Run, stream: str, raw: bytes) -> None:
        text = raw.decode("utf-8", "replace").rstrip("\r")
        run.lines.append(text)
        log.event("model_process_output", model=self.spec.name, version=self.spec.version,
                  pid=run.pid, stream=stream, line=text)

    async def _after_exit(self, run: Run) -> None:
        """Once the run's leader exited: nothing of its group left, all its output read."""
        run.sweep()
        await asyncio.wait(run.readers, timeout=OUTPUT_DRAIN_S)
        for reader in run.readers:
            reader.cancel()

    async def _stop(self, timeout: float) -> None:
        if self._stopped is not None:  # a second stop waits for the first
            await asyncio.shield(self._stopped)
            return
        self._stopped = asyncio.get_running_loop().create_future()
        self.stopping = True
        self.status = "its process is stopping"
        self._wake.set()
        run = self._current
        was_running = run is not None and not run.exit_seen.is_set()
        try:
            if run is not None and was_running:
                run.signal_group(signal.SIGTERM)
                try:
                    await asyncio.wait_for(run.exit_seen.wait(), timeout)
                except asyncio.TimeoutError:
                    log.event("model_process_killed", logging.WARNING, model=self.spec.name,
                              version=self.spec.version, pid=run.pid, after_seconds=timeout)
                    run.signal_group(signal.SIGKILL)
                    await run.exit_seen.wait()
            if self._task is not None:
                await asyncio.wait({self._task})
            if run is not None:
                await self._after_exit(run)
            if run is not None and was_running:
                log.event("model_process_stopped", model=self.spec.name,
                          version=self.spec.version, pid=run.pid, exitcode=run.exit_code)
        finally:
            self.status = "its process was stopped"
            _programs.discard(self)
            self._stopped.set_result(None)


def _reap(run: Run, loop: asyncio.AbstractEventLoop) -> None:
    """On its own thread: wait for the run's process, and say so to every waiter."""
    code = run.process.wait()
    run.exited.set_result(code)
    with contextlib.suppress(RuntimeError):  # the loop is closed: the process is ending
        loop.call_soon_threadsafe(run.exit_seen.set)


def _program_pid(fd: int) -> int | None:
    """The program's pid, as the watcher writes it once it has forked the program (None if
    the watcher ended first). Takes the watcher's start, about 15 ms."""
    try:  # one read: the pid is written at once, and a fork elsewhere may hold the pipe open
        readable, _, _ = select.select([fd], [], [], PID_TIMEOUT_S)
        data = os.read(fd, 64) if readable else b""
        return int(data) if data else None
    except (OSError, ValueError):
        return None
    finally:
        os.close(fd)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# -- the parent-death signal ---------------------------------------------------------------

#: The script a program is exec'd through on Linux, which asks for SIGKILL when the thread
#: that forked it (this supervisor thread: it lives as long as the process) ends. Elsewhere
#: unload and shutdown still stop programs; a Shoal killed with kill -9 leaves them behind.
EXEC_WRAPPER: Path | None = (
    Path(__file__).with_name("process_exec.py")
    if sys.platform.startswith("linux") and sys.executable else None
)


# -- the thread ------------------------------------------------------------------------------

_lock = threading.Lock()
_loop: asyncio.AbstractEventLoop | None = None
_programs: set[Program] = set()


def _supervisor_loop() -> asyncio.AbstractEventLoop:
    global _loop
    with _lock:
        if _loop is None:
            loop = asyncio.SelectorEventLoop()
            threading.Thread(target=loop.run_forever, name="shoal-processes", daemon=True).start()
            _loop = loop
        return _loop


def _forget_after_fork() -> None:
    """A forked child has no supervisor thread (only the forking thread survives a fork)."""
    global _loop, _lock
    _loop, _lock = None, threading.Lock()
    _programs.clear()


os.register_at_fork(after_in_child=_forget_after_fork)


def _submit(coroutine: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
    return asyncio.run_coroutine_threadsafe(coroutine, _supervisor_loop())


def start(spec: ProgramSpec) -> Program:
    """Start ``spec``'s program on the supervisor thread; ``ready`` says how that went."""
    program = Program(spec)
    _programs.add(program)
    # Coroutines submitted to the loop start in order: a stop() submitted later finds
    # _main's task and event set.
    _submit(program._main())
    return program


async def stop_all(timeout: float | None = None) -> None:
    """Stop every program this process started (shutdown): SIGTERM, then SIGKILL after
    ``timeout`` (the stop timeout by default), all at once."""
    stops = [asyncio.wrap_future(p.stop(timeout)) for p in list(_programs)]
    if stops:
        await asyncio.gather(*stops, return_exceptions=True)
