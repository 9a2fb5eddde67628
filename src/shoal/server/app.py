"""The server process: REST and gRPC on one event loop, startup loading, draining shutdown.

Startup binds both ports first (port 0 picks a free one) and prints one JSON line with the
chosen ports on stdout, then loads the repository; ``/v2/health/ready`` turns true only
when loading has finished. SIGTERM or SIGINT stops accepting connections, lets in-flight
requests finish for up to ``drain_timeout`` seconds, and exits 0.

With ``tls_cert`` and ``tls_key`` both ports speak TLS only (REST through uvicorn's SSL
settings, gRPC through ``grpc.ssl_server_credentials``); with ``tls_ca`` too, both require a
client certificate signed by that CA. With ``watch``, a ``RepositoryWatcher`` polls the
repository once the startup load is done, until shutdown.

A repository from object storage or an archive (``repository_uri``) is fetched into its local
folder before either port is bound (by the supervisor, once, under ``--http-workers``); a
store that cannot be read stops the server with the store's reason. Everything after reads
the local folder; a repository load re-fetches that model's folder first.

With ``ui`` (the default) the REST app serves the dashboard under ``/ui`` and a recorder
(``shoal.ui.series``) samples the request metrics for its charts while someone looks at it
(from the first ``/ui`` request until ten minutes after the last), never after the drain; with
``--no-ui`` there are neither routes nor sampling.

OpenTelemetry tracing (``otel_endpoint`` or the ``OTEL_*`` variables, see
``shoal.observe.tracing``) is set up before either port listens, in every server process, and
shut down (its last spans exported) after the drain.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import ipaddress
import logging
import os
import signal
import socket
import ssl
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import orjson
import uvicorn

from .. import _startup
from ..observe import logging as log
from ..observe import tracing
from ..observe.metrics import Metrics
from ..observe.payload import PayloadLogger
from ..repository.manager import ModelRepository
from ..rollout.manager import RolloutManager
from ..runtimes import process_supervisor
from ..serving.autoscale.gpus import GpuAllocator
from ..serving.autoscale.scaler import Autoscaler
from ..serving.batcher import BatchSettings
from ..serving.dataplane import DataPlane
from ..serving.executor import Executor
from ..serving.limits import Limits
from ..serving.registry import Registry
from ..serving.workers.pool import WorkerPool
from ..settings import ServerSettings
from ..ui import SeriesRecorder, ServerInfo
from . import grpc as grpc_transport
from .auth import AdminToken
from .http_protocol import http_protocol
from .rest import build_app


#: After the drain timeout, requests still running are answered 503 "server is shutting down";
#: uvicorn and gRPC cut what is left this much later (their own answer is a bare 500/CANCELLED).
ABORT_MARGIN = 1.0
#: How long worker processes and model threads get to finish after the drain.
RELEASE_TIMEOUT = 1.0


async def _first_of(task: asyncio.Task[None], stop: Any) -> bool:
    """Wait for ``task`` or for ``stop`` (a stop request); True if the task finished first."""
    stopping = asyncio.ensure_future(stop)
    await asyncio.wait([task, stopping], return_when=asyncio.FIRST_COMPLETED)
    stopping.cancel()
    return task.done()


class _UvicornServer(uvicorn.Server):
    """Uvicorn without its own signal handling: the Shoal process owns shutdown."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """The PEM files of ``--tls-cert``, ``--tls-key`` and ``--tls-ca``, read and checked."""

    cert: Path
    key: Path
    ca: Path | None
    cert_pem: bytes
    key_pem: bytes
    ca_pem: bytes | None

    def grpc_credentials(self) -> grpc.ServerCredentials:
        return grpc.ssl_server_credentials(
            [(self.key_pem, self.cert_pem)], root_certificates=self.ca_pem,
            require_client_auth=self.ca_pem is not None,
        )

    def uvicorn_settings(self) -> dict[str, Any]:
        return {
            "ssl_certfile": str(self.cert), "ssl_keyfile": str(self.key),
            "ssl_ca_certs": None if self.ca is None else str(self.ca),
            "ssl_cert_reqs": ssl.CERT_NONE if self.ca is None else ssl.CERT_REQUIRED,
        }


def load_tls(settings: ServerSettings) -> TlsFiles | None:
    """The TLS files (None: no TLS), or SystemExit with a message naming the file at fault:
    checked up front, so that a bad file stops the server before it binds, not later in
    uvicorn or gRPC with a message that names no file."""
    cert, key, ca = settings.tls_cert, settings.tls_key, settings.tls_ca
    if cert is None and key is None:
        if ca is not None:
            raise SystemExit("--tls-ca needs --tls-cert and --tls-key (client certificates "
                             "are only asked for over TLS)")
        return None
    if cert is None or key is None:
        raise SystemExit("TLS needs both --tls-cert and --tls-key: "
                         f"{'--tls-key' if cert is None else '--tls-cert'} is missing")
    cert_pem = _read_pem(cert, "TLS certificate", b"-----BEGIN CERTIFICATE-----")
    key_pem = _read_pem(key, "TLS key", b"PRIVATE KEY-----", "-----BEGIN ... PRIVATE KEY-----")
    ca_pem = None if ca is None else _read_pem(ca, "TLS CA certificate",
                                               b"-----BEGIN CERTIFICATE-----")
    if b"ENCRYPTED" in key_pem:
        raise SystemExit(f"the TLS key {key} is encrypted: give it unencrypted (for example "
                         "`openssl pkey -in KEY -out PLAIN_KEY`), and keep it readable only "
                         "by the server")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        # A password of b"" makes an encrypted key fail here rather than prompt on a terminal.
        context.load_cert_chain(cert, key, password=b"")
    except ssl.SSLError as exc:
        reason = ("the key does not belong to the certificate"
                  if exc.reason == "KEY_VALUES_MISMATCH" else exc.reason or str(exc))
        raise SystemExit(f"cannot use the TLS certificate {cert} with the key {key}: "
                         f"{reason}") from None
    if ca is not None:
        try:
            context.load_verify_locations(cafile=ca)
        except ssl.SSLError as exc:
            raise SystemExit(f"cannot use the TLS CA certificate {ca}: "
                             f"{exc.reason or exc}") from None
    return TlsFiles(cert, key, ca, cert_pem, key_pem, ca_pem)


def _read_pem(path: Path, what: str, marker: bytes, shown: str | None = None) -> bytes:
    try:
        pem = path.read_bytes()
    except OSError as exc:
        raise SystemExit(f"cannot read the {what} {path}: {exc.strerror or exc}") from None
    if marker not in pem:
        raise SystemExit(f"the {what} {path} is not PEM (no '{shown or marker.decode()}' line)")
    return pem


def build_autoscaler(settings: ServerSettings, metrics: Metrics, pool: WorkerPool) -> Autoscaler:
    """The server's autoscaler. Under ``--http-workers N`` each server process scales its own
    replicas: it takes every Nth GPU (from its index) and 1/N of the memory budget, so the
    processes never hand one device to two replicas nor overrun the budget together."""
    share = max(settings.http_workers, 1)
    budget = settings.memory_budget
    return Autoscaler(
        metrics.registry, pool, settings.autoscaling_defaults,
        enabled_by_default=settings.autoscale,
        memory_budget=None if budget is None else budget // share,
        gpus=GpuAllocator(settings.gpus, (settings.process_index, share)),
        drain_timeout=settings.drain_timeout,
    )


#: Called with (http_port, grpc_port) once both ports listen; prints the startup line unless
#: a supervisor collects it instead.
ListeningHook = Callable[[int, int], None]


class ShoalServer:
    def __init__(self, settings: ServerSettings, on_listening: ListeningHook | None = None) -> None:
        self.settings = settings
        self.on_listening = on_listening
        self.metrics = Metrics()
        self.registry = Registry()
        self.executor = Executor(settings.model_threads)
        self.pool = WorkerPool(settings.log_level, settings.workers)
        self.pool.on_restart = self.metrics.worker_restarts.inc
        state_dir = (settings.state_dir or settings.repository / ".shoal-state").resolve()
        self.payload = PayloadLogger(
            self.metrics.registry, state_dir, settings.payload_log,
            settings.payload_log_spool_size, several_processes=settings.reuse_port,
            keep_recent=settings.ui,
        )
        self.autoscaler = build_autoscaler(settings, self.metrics, self.pool)
        # What a runtime: process program gets between SIGTERM and SIGKILL when it stops, here
        # and in worker processes.
        process_supervisor.set_stop_timeout(settings.drain_timeout)
        self.pool.env["SHOAL_DRAIN_TIMEOUT"] = str(settings.drain_timeout)
        source = None
        if settings.repository_uri is not None:
            from ..repository.sources import RepositorySource

            source = RepositorySource(settings.repository_uri, settings.repository)
        self.repository = ModelRepository(
            settings.repository, self.registry, self.executor, self.metrics,
            BatchSettings(settings.max_batch_size, settings.max_batch_delay_ms / 1000),
            Limits(settings.max_inflight, settings.request_timeout),
            settings.workers, self.pool, state_dir=settings.state_dir, payload=self.payload,
            autoscaler=self.autoscaler, source=source,
        )
        self.dataplane = DataPlane(self.registry, self.repository, self.metrics, self.payload)
        self.rollouts = RolloutManager(
            self.registry, self.repository.root, self.repository.names, self.metrics.registry,
            self.repository.state_dir,
        )
        self.admin = AdminToken(settings.admin_token)
        #: The dashboard's time series: sampled only with the UI on, once listening.
        self.series = SeriesRecorder(self.metrics) if settings.ui else None
        self.app = build_app(
            self.dataplane, settings.max_request_size, self.rollouts, self.admin,
            ui=settings.ui, series=self.series,
            server_info=ServerInfo(http_workers=settings.http_workers),
        )
        self.tls = load_tls(settings)
        self.watcher = None
        if settings.watch:
            from ..repository.watch import RepositoryWatcher

            self.watcher = RepositoryWatcher(self.repository, settings.watch_interval)
        self._watching: asyncio.Task[None] | None = None
        #: Whether this server set tracing up (and so shuts it down); a program that
        #: configured tracing itself keeps its own.
        self._tracing = False
        self.http_port: int | None = None
        self.grpc_port: int | None = None
        self._stop = asyncio.Event()

    def request_stop(self) -> None:
        self._stop.set()

    async def serve(self) -> None:
        settings = self.settings
        self._tracing = tracing.configure_server(settings.otel_endpoint)
        if not self.admin.enabled and not _loopback(settings.host):
            log.event("control_routes_open", logging.WARNING, host=settings.host,
                      detail="repository and rollout changes need no token: set --admin-token")
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)

        loading: asyncio.Task[None] | None = None
        if settings.reuse_port:
            # One of several processes on shared ports (--http-workers): it takes no
            # connection before its models are loaded, so the kernel never hands a new
            # process requests it could only answer "loading" (or, for a graph, "not served").
            loading = asyncio.create_task(self._load())
            if not await _first_of(loading, self._stop.wait()):
                loading.cancel()
                await self.payload.close()  # a spool it started delivering stays consistent
                await self._release()
                self._stop_tracing()
                return
        http_server, http_task, grpc_server = await self._listen()
        if self.series is not None:
            self.series.start()  # under --http-workers: watches for looks at the dashboard
        if loading is None:
            loading = asyncio.create_task(self._load())
        await self._stop.wait()

        log.event("shutting_down", drain_timeout=settings.drain_timeout)
        self.dataplane.draining = True
        loading.cancel()
        if self._watching is not None:  # no load starts while draining
            self._watching.cancel()
        http_server.should_exit = True  # no new connections; idle ones close
        grpc_stopped = asyncio.ensure_future(
            grpc_server.stop(grace=settings.drain_timeout + ABORT_MARGIN)
        )
        if not await self.dataplane.drained(settings.drain_timeout):
            cut = self.dataplane.abort_in_flight()
            log.event("drain_timeout", logging.WARNING, drain_timeout=settings.drain_timeout,
                      requests_cut=cut)
        await asyncio.gather(grpc_stopped, http_task, return_exceptions=True)
        if self.series is not None:
            await self.series.stop()
        # Every answered request's record is queued by now: flush it, or spool it.
        await self.payload.close()
        await self.rollouts.close()
        await self._release()
        self._stop_tracing()
        log.event("stopped")

    async def _listen(self) -> tuple[uvicorn.Server, asyncio.Task[None], grpc.aio.Server]:
        """Bind both ports, start both servers, and announce the ports."""
        settings = self.settings
        http_socket = bind(settings.host, settings.http_port, settings.reuse_port)
        self.http_port = http_socket.getsockname()[1]
        grpc_server = grpc_transport.build_server(
            self.dataplane, settings.max_request_size, settings.reuse_port, self.admin
        )
        address = _grpc_address(settings.host, settings.grpc_port)
        try:
            if self.tls is None:
                self.grpc_port = grpc_server.add_insecure_port(address)
            else:
                self.grpc_port = grpc_server.add_secure_port(address, self.tls.grpc_credentials())
        except RuntimeError as exc:
            raise SystemExit(
                f"cannot listen for gRPC on {settings.host}:{settings.grpc_port}: {exc}"
            ) from None
        await grpc_server.start()

        config = uvicorn.Config(
            self.app, lifespan="off", log_level="warning", access_log=False,
            http=http_protocol(settings.max_header_size, settings.header_timeout),  # httptools
            loop="none", ws="none",  # no WebSocket routes: uvicorn need not import websockets
            timeout_graceful_shutdown=settings.drain_timeout + ABORT_MARGIN,
            server_header=False, proxy_headers=False,  # Shoal never reads client addresses
            # TLS sits below the HTTP protocol (asyncio's SSL transport): the protocol class
            # above, with its limits, sees the decrypted bytes.
            **(self.tls.uvicorn_settings() if self.tls is not None else {}),
        )
        http_server = _UvicornServer(config)
        http_task = asyncio.create_task(http_server.serve(sockets=[http_socket]))
        while not http_server.started and not http_task.done():
            await asyncio.sleep(0.005)
        if self.on_listening is not None:
            self.on_listening(self.http_port, self.grpc_port)
        else:
            announce(settings.host, self.http_port, self.grpc_port,
                     **({"tls": True} if self.tls is not None else {}))
        return http_server, http_task, grpc_server

    def _stop_tracing(self) -> None:
        """Export the spans still queued (every request has been answered by now)."""
        if self._tracing:
            self._tracing = False
            tracing.shutdown()

    async def _release(self) -> None:
        """Stop the worker processes and model threads: after the drain, whatever still runs
        there has had its time and must not keep the process alive."""
        self.pool.closing = True  # a replica that dies now is not restarted
        await asyncio.gather(self.autoscaler.close(RELEASE_TIMEOUT),
                             self.pool.close(timeout=RELEASE_TIMEOUT),
                             self._stop_programs())
        self.executor.shutdown(timeout=RELEASE_TIMEOUT)

    async def _stop_programs(self) -> None:
        """``runtime: process`` programs this process started: SIGTERM, then SIGKILL after
        the drain timeout (nothing to do when there are none)."""
        await process_supervisor.stop_all(self.settings.drain_timeout)

    async def _load(self) -> None:
        if self.watcher is not None:
            # What the startup load is about to read: a change made while it loads is seen.
            await self.watcher.baseline()
        self.payload.resume()  # records an earlier run spooled go out first
        try:
            await self.repository.load_all()
        finally:
            _startup.end()  # the collector's usual thresholds from now on
        # Everything alive now (modules, models) lives as long as the process: keep it out of
        # the garbage collector's scans, which otherwise walk it on every full collection.
        gc.freeze()
        await self.rollouts.start()  # model.yaml rollouts need their variants loaded
        self.dataplane.startup_complete = True
        ready = [n for n in self.registry.names() if any(e.endpoint for e in self.registry.entries(n))]
        log.event("ready", models=len(self.registry.names()), ready=len(ready))
        if self.watcher is not None:
            self._watching = asyncio.create_task(self.watcher.run())


def bind(host: str, port: int, reuse_port: bool = False) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:  # several server processes share the port; the kernel spreads connections
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise SystemExit(f"cannot listen for HTTP on {host}:{port}: {exc.strerror}") from None
    sock.set_inheritable(True)
    return sock


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def _grpc_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def announce(host: str, http_port: int, grpc_port: int, **extra: object) -> None:
    """The machine-readable startup line: scripts and tests read the chosen ports from it."""
    line = {"event": "listening", "host": host, "http_port": http_port, "grpc_port": grpc_port,
            "pid": os.getpid(), **extra}
    sys.stdout.write(orjson.dumps(line).decode() + "\n")
    sys.stdout.flush()


def exit_now(code: int = 0) -> None:
    """End the process once the server has stopped, without the interpreter's own shutdown:
    it would wait for a model thread stuck in a call the drain already gave up on, and for
    frameworks' exit handlers (TensorFlow's and PyTorch's take seconds)."""
    _stop_resource_tracker()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _stop_resource_tracker(timeout: float = 1.0) -> None:
    """multiprocessing's resource tracker (started for the worker processes, which are gone
    by now) exits once its pipe closes: waiting for it (a moment, never more than
    ``timeout``) means a stopped server leaves no process behind."""
    from multiprocessing import resource_tracker

    tracker = getattr(resource_tracker, "_resource_tracker", None)
    fd, pid = getattr(tracker, "_fd", None), getattr(tracker, "_pid", None)
    if fd is None or pid is None:  # not started here (a private API: look, never assume)
        return
    try:
        os.close(fd)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not os.waitpid(pid, os.WNOHANG)[0]:
            time.sleep(0.01)
    except OSError:
        pass


def fetch_repository(settings: ServerSettings) -> None:
    """Fetch a remote repository (``settings.repository_uri``) into ``settings.repository``,
    or SystemExit with the store's reason in one line."""
    from ..errors import ShoalError
    from ..repository.sources import RepositorySource

    assert settings.repository_uri is not None
    try:
        RepositorySource(settings.repository_uri, settings.repository).fetch()
    except ShoalError as exc:
        raise SystemExit(f"cannot fetch the repository: {exc}") from None


def run(settings: ServerSettings, on_listening: ListeningHook | None = None) -> None:
    """Serve until SIGTERM/SIGINT; the documented Python entry point behind ``shoal serve``."""
    _startup.begin()  # fewer garbage collections until the startup load is done
    try:
        _run(settings, on_listening)
    finally:
        _startup.end()  # done by the load already, unless the server stopped before it


def _run(settings: ServerSettings, on_listening: ListeningHook | None) -> None:
    log.configure(settings.log_level)
    if settings.repository_uri is not None and not settings.reuse_port:
        # Before any port is bound, and once for all --http-workers processes.
        fetch_repository(settings)
    if settings.http_workers > 1 and not settings.reuse_port:
        load_tls(settings)  # a bad file stops the supervisor, before any server process starts
        tracing.requested(settings.otel_endpoint)  # and so does a tracing setup Shoal cannot do
        from .supervisor import supervise

        _startup.end()  # the supervisor loads no model
        supervise(settings)
        return
    server = ShoalServer(settings, on_listening)
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency, but not on Windows
        asyncio.run(server.serve())
    else:
        uvloop.run(server.serve())
