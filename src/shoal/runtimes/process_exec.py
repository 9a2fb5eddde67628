"""Between Shoal's fork and a ``runtime: process`` program: ask the kernel to SIGKILL the
program when Shoal dies, then become the program.

    python -I -S process_exec.py PARENT_PID EXECUTABLE ARGV0 [ARG ...]

Exec'd rather than run as a ``preexec_fn``: Python code run between ``fork`` and ``exec`` in
a process with threads (Shoal has many) can deadlock on a lock another thread held at the
fork. This costs one interpreter start (about 15 ms, with ``-I -S``) per program start.

The parent-death signal survives ``execve``, and is sent when the *thread* that forked this
process ends: Shoal forks from its supervisor thread, which lives as long as Shoal. Shoal
may have died before the request took effect: then the parent is no longer ``PARENT_PID``
and the program is not started. Only the standard library: ``-I`` keeps Shoal's package
and the user's ``PYTHON*`` settings out of this interpreter (the program gets its
environment unchanged).
"""

import ctypes
import os
import sys

PR_SET_PDEATHSIG = 1
SIGKILL = 9
#: As shells answer: the command cannot be run / was not found.
CANNOT_RUN, NOT_FOUND = 126, 127


def main() -> None:
    parent, executable, *argv = sys.argv[1:]
    try:
        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: Shoal does not use this script there
        pass
    if os.getppid() != int(parent):
        os._exit(1)
    try:
        os.execv(executable, argv)
    except OSError as exc:
        sys.stderr.write(f"shoal: cannot run {executable}: {exc.strerror or exc}"
                         + (" (a script needs a #! line, or run it through its interpreter)"
                            if exc.errno == 8 else "") + "\n")
        sys.stderr.flush()
        os._exit(NOT_FOUND if isinstance(exc, FileNotFoundError) else CANNOT_RUN)


if __name__ == "__main__":
    main()
