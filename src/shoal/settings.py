"""Server settings: one object that the CLI, environment variables and Python callers fill.

``shoal serve --help`` documents each one; a Python caller passes the same values to
``shoal.server.app.run(ServerSettings(...))``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MiB = 1024 * 1024


@dataclass(slots=True)
class ServerSettings:
    #: The local folder served. A URI string (``s3://bucket/prefix``, ``gs://...``,
    #: ``https://.../repository.tar.gz`` or ``.zip``) is accepted too: it becomes
    #: ``repository_uri``, and ``repository`` the folder it is fetched into under ``cache_dir``.
    repository: Path
    host: str = "127.0.0.1"
    http_port: int = 8080
    grpc_port: int = 8081
    max_request_size: int = 64 * MiB
    #: Largest request line + headers over REST (431 above it).
    max_header_size: int = 64 * 1024
    #: Seconds a REST request line + headers may take to arrive (408); 0: no limit.
    header_timeout: float = 10.0
    drain_timeout: float = 30.0
    log_level: str = "info"
    model_threads: int | None = None
    max_batch_size: int = 0
    max_batch_delay_ms: float = 0.0
    max_inflight: int = 0
    request_timeout: float = 0.0
    workers: int = 0
    http_workers: int = 1
    #: Set by the --http-workers supervisor for its server processes: bind with SO_REUSEPORT.
    reuse_port: bool = False
    #: Where graphs keep bandit state; None: ``<repository>/.shoal-state``.
    state_dir: Path | None = None
    #: Bearer token control routes (repository load/unload, rollout changes) require;
    #: None: they are open.
    admin_token: str | None = None
    #: PEM certificate (chain) both ports present; with ``tls_key``, REST and gRPC use TLS.
    tls_cert: Path | None = None
    #: PEM private key of ``tls_cert`` (unencrypted).
    tls_key: Path | None = None
    #: PEM CA certificate(s): clients must present a certificate they signed (mutual TLS),
    #: on both ports. Needs ``tls_cert`` and ``tls_key``.
    tls_ca: Path | None = None
    #: Poll the repository and load new model folders, reload changed ones and unload
    #: removed ones (``shoal.repository.watch``).
    watch: bool = False
    #: Seconds between two looks at the repository; a folder is acted on once it has not
    #: changed for this long.
    watch_interval: float = 2.0
    #: Payload log sink for models and graphs without a ``logger:`` block (CloudEvents;
    #: ``http(s)://``, ``kafka://host:port/topic``, ``file:///dir``); None: only those with one.
    payload_log: str | None = None
    #: Bytes the payload log's disk spool (under the state directory) may hold.
    payload_log_spool_size: int = 1024 * MiB
    #: OTLP/HTTP collector (base URL, e.g. ``http://collector:4318``) to send OpenTelemetry
    #: traces to; None: tracing only if the standard ``OTEL_*`` variables ask for it.
    otel_endpoint: str | None = None
    #: The web dashboard at ``/ui`` on the HTTP port (and the sampling behind its charts);
    #: False (``--no-ui``): neither.
    ui: bool = True
    #: Autoscale every model whose model.yaml does not say ``autoscaling: false`` (otherwise
    #: only those with an ``autoscaling:`` block); see docs/autoscaling.md.
    autoscale: bool = False
    #: Server-wide defaults for the ``autoscaling:`` fields a model.yaml leaves out
    #: (``min_replicas``, ``max_replicas``, ``target_concurrency``, ``stable_window``,
    #: ``panic_window``, ``panic_threshold``, ``scale_to_zero_after``).
    autoscaling_defaults: dict[str, Any] = field(default_factory=dict)
    #: Bytes the replicas of autoscaled models may take together (least recently used idle
    #: models are scaled to zero to make room); None: no budget.
    memory_budget: int | None = None
    #: GPUs replicas may use (``CUDA_VISIBLE_DEVICES`` names); None: found with NVML or
    #: nvidia-smi.
    gpus: list[str] | None = None
    #: Which of the ``--http-workers`` processes this is (0 for a single server): each takes
    #: its share of the GPUs and of the memory budget.
    process_index: int = 0
    #: Where the repository comes from when it is not a local folder (see
    #: ``shoal.repository.sources``): fetched into ``repository`` before the server starts,
    #: and each model's folder again when it is loaded through the repository API. None: the
    #: repository is a local folder.
    repository_uri: str | None = None
    #: Where remote repositories are cached, one folder per URI; None: ``$SHOAL_CACHE_DIR``
    #: or ``~/.cache/shoal/repositories``.
    cache_dir: Path | None = None

    def __post_init__(self) -> None:
        if self.cache_dir is not None and not isinstance(self.cache_dir, Path):
            self.cache_dir = Path(self.cache_dir)
        if isinstance(self.repository, Path):
            return
        from .repository.uris import is_remote, local_folder, local_path

        given = os.fspath(self.repository)
        if is_remote(given):
            self.repository_uri = given
            self.repository = local_folder(given, self.cache_dir)
        else:
            self.repository = local_path(given)
