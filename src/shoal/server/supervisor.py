"""``--http-workers N``: N server processes on the same HTTP and gRPC ports.

The supervisor picks the ports (port 0 becomes a free port, reserved by a socket it holds
with ``SO_REUSEPORT`` but never listens on), starts N server processes that bind the same
ports with ``SO_REUSEPORT`` (the kernel spreads new connections over them), prints the one
startup line once all of them listen, restarts a process that dies, and on SIGTERM / SIGINT
passes the signal on and waits for every process to drain and exit.

Each process is a full server with its own copy of the models. Metrics are written to a
shared folder (prometheus-client's multiprocess mode), so ``/metrics`` from any process
shows the totals.
"""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing
import os
import shutil
import signal
import tempfile
import time
from multiprocessing.connection import Connection
from typing import Any

from ..observe import logging as log
from ..settings import ServerSettings
from .app import announce, bind


def _serve_one(settings: ServerSettings, ready: Connection) -> None:
    from .app import exit_now, run

    # The supervisor decides when to stop; Ctrl-C in a terminal reaches the whole group.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    run(settings, on_listening=lambda http, grpc: ready.send((http, grpc)))
    exit_now()


def supervise(settings: ServerSettings) -> None:
    metrics_dir = tempfile.mkdtemp(prefix="shoal-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir  # read by children at import
    holders = [bind(settings.host, settings.http_port, reuse_port=True),
               bind(settings.host, settings.grpc_port, reuse_port=True)]
    ports = [s.getsockname()[1] for s in holders]
    child_settings = dataclasses.replace(
        settings, http_port=ports[0], grpc_port=ports[1], reuse_port=True
    )
    context = multiprocessing.get_context("spawn")
    stopping = False

    def stop(signum: int, frame: Any) -> None:
        nonlocal stopping
        stopping = True
        for process in processes:
            if process.is_alive():
                os.kill(process.pid, signal.SIGTERM)

    def start(index: int) -> Any:
        receive, send = context.Pipe(duplex=False)
        process = context.Process(target=_serve_one,
                                  args=(dataclasses.replace(child_settings, process_index=index), send),
                                  name=f"shoal-http-{index}")
        process.start()
        send.close()
        return process, receive

    processes: list[Any] = []
    # Each process's end of its "listening" pipe, kept open while the process loads (it binds,
    # and reports, only once its models are loaded): a pipe closed early would make its
    # report fail.
    reports: list[Any] = []
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        started = [start(i) for i in range(settings.http_workers)]
        processes = [p for p, _ in started]
        reports = [r for _, r in started]
        for process, receive in started:
            try:
                receive.recv()
            except EOFError:
                if stopping:  # stopped while loading: not a failure
                    break
                raise SystemExit(f"server process {process.pid} exited while starting") from None
        if not stopping:
            tls = {"tls": True} if settings.tls_cert is not None else {}
            announce(settings.host, ports[0], ports[1], http_workers=settings.http_workers, **tls)
        while not stopping:
            time.sleep(0.2)
            for index, process in enumerate(processes):
                if process.is_alive() or stopping:
                    continue
                _mark_dead(process.pid)
                log.event("server_process_died", logging.ERROR, pid=process.pid, exitcode=process.exitcode)
                reports[index].close()
                processes[index], reports[index] = start(index)
        for process in processes:
            process.join()
    finally:
        for process in processes:
            if process.is_alive():
                process.kill()
        for holder in [*holders, *reports]:
            holder.close()
        shutil.rmtree(metrics_dir, ignore_errors=True)
    log.event("stopped", http_workers=settings.http_workers)


def _mark_dead(pid: int) -> None:
    from ..observe.metrics import mark_process_dead

    mark_process_dead(pid)
