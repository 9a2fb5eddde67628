"""Between Shoal and a ``runtime: process`` program: a small watcher that starts the program
and makes sure nothing it started outlives Shoal.

    python -I -S process_exec.py PARENT_PID PID_FD EXECUTABLE ARGV0 [ARG ...]

Shoal starts this script as the leader of a new process group (a new session). It

- asks the kernel for SIGUSR1 when the thread that forked it ends (Shoal forks from its
  supervisor thread, which lives as long as Shoal: also when Shoal is killed with
  ``kill -9``), and to become the reaper of its orphaned descendants
  (``PR_SET_CHILD_SUBREAPER``): a program's child whose parent exits comes to this watcher,
  not to init;
- forks the program, which resets every signal to its default action, clears the signal
  mask (a ``--workers`` worker ignores SIGINT and SIGTERM, and Python ignores SIGPIPE and
  SIGXFSZ: ignored signals survive ``exec``) and execs it; writes the program's pid on
  ``PID_FD`` for Shoal;
- waits for it. SIGTERM (Shoal's stop signals the whole group) reaches the program and is
  otherwise ignored here. On SIGUSR1 (Shoal is gone) it SIGKILLs the group and every
  descendant that left it, then ends. When the program exits it SIGKILLs what is left of
  them too, then ends the way the program did: the same exit code, or the same signal, so
  that Shoal reports the program's end.

Exec'd rather than run as a ``preexec_fn``: Python code run between ``fork`` and ``exec`` in
a process with threads (Shoal has many) can deadlock on a lock another thread held at the
fork; this process has one thread. This costs one interpreter start (about 15 ms, with
``-I -S``) per program start. Shoal may have died before the request for SIGUSR1 took
effect: then the parent is no longer ``PARENT_PID`` and the program is not started. Only the
standard library: ``-I`` keeps Shoal's package and the user's ``PYTHON*`` settings out of
this interpreter (the program gets its environment unchanged).
"""

import ctypes
import os
import resource
import signal
import sys
import time

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
#: Sent to this watcher when Shoal dies: catchable, so that it can take the rest along.
ORPHANED = signal.SIGUSR1
#: As shells answer: the command cannot be run / was not found.
CANNOT_RUN, NOT_FOUND = 126, 127
#: How long the final sweep may keep killing descendants that keep appearing.
SWEEP_S = 5.0


def prctl(option: int, value: int) -> None:
    try:
        ctypes.CDLL(None).prctl(option, value, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: Shoal does not use this script there
        pass


def reset_signals() -> None:
    """Every catchable signal to its default action, and none blocked (before ``exec``)."""
    for sig in signal.valid_signals():
        if sig in (signal.SIGKILL, signal.SIGSTOP):
            continue
        try:
            signal.signal(sig, signal.SIG_DFL)
        except (OSError, ValueError):  # the C library's own real-time signals
            pass
    signal.pthread_sigmask(signal.SIG_SETMASK, [])


def run_program(executable: str, argv: list[str]) -> None:
    """In the forked child: become the program."""
    try:
        reset_signals()
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL)  # should the watcher itself be killed
        os.execv(executable, argv)
    except OSError as exc:
        sys.stderr.write(f"shoal: cannot run {executable}: {exc.strerror or exc}"
                         + (" (a script needs a #! line, or run it through its interpreter)"
                            if exc.errno == 8 else "") + "\n")
        sys.stderr.flush()
        os._exit(NOT_FOUND if isinstance(exc, FileNotFoundError) else CANNOT_RUN)
    finally:
        os._exit(CANNOT_RUN)


def others() -> list[int]:
    """The processes to take along: this group's other members, and this watcher's children
    (descendants that left the group come here once their parent is gone)."""
    me, group = os.getpid(), os.getpgrp()
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == me:
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as stat:
                fields = stat.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != b"Z" and (int(fields[1]) == me or int(fields[2]) == group):
            found.append(int(name))
    return found


def sweep() -> None:
    """SIGKILL to the rest of the group and to every descendant, until none is left."""
    deadline = time.monotonic() + SWEEP_S
    while time.monotonic() < deadline:
        left = others()
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        reaped = False
        while True:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            reaped = True
        if not left and not reaped:
            return
        time.sleep(0.005)


def on_orphaned(signum: int, frame: object) -> None:
    sweep()
    os._exit(128 + signum)


def end_like(status: int) -> None:
    """Exit the way the program did: the same code, or killed by the same signal."""
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # the program's core, not this one's
        signal.signal(sig, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_SETMASK, [])
        os.kill(os.getpid(), sig)
        os._exit(128 + sig)  # a signal whose default is not to end a process
    os._exit(os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else 1)


def main() -> None:
    parent, pid_fd, executable, *argv = sys.argv[1:]
    # Blocked until the program is forked: a signal sent meanwhile stays pending and reaches
    # the program once it has reset its handlers (an ignored one would be lost).
    signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())
    signal.signal(signal.SIGTERM, lambda signum, frame: None)
    signal.signal(signal.SIGINT, lambda signum, frame: None)
    signal.signal(signal.SIGHUP, lambda signum, frame: None)
    signal.signal(ORPHANED, on_orphaned)
    prctl(PR_SET_CHILD_SUBREAPER, 1)
    prctl(PR_SET_PDEATHSIG, ORPHANED)
    if os.getppid() != int(parent):
        os._exit(1)
    fd = int(pid_fd)
    program = os.fork()
    if program == 0:
        os.close(fd)
        run_program(executable, argv)
    try:
        os.write(fd, str(program).encode())
        os.close(fd)
    except OSError:
        pass
    signal.pthread_sigmask(signal.SIG_SETMASK, [])
    while True:
        pid, status = os.waitpid(-1, 0)  # also reaps descendants that come here
        if pid == program:
            break
    signal.signal(ORPHANED, signal.SIG_IGN)
    sweep()
    end_like(status)


if __name__ == "__main__":
    main()
