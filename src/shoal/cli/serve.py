"""``shoal serve``. Every option can also be set as ``SHOAL_<OPTION>``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from ..settings import MiB, ServerSettings
from .fetch import CACHE_DIR_HELP, REPOSITORY
from .main import main

SIZE_SUFFIXES = {"k": 1024, "m": MiB, "g": 1024 * MiB}


class ByteSize(click.ParamType):
    """Bytes, or a number with a K/M/G suffix (``64M``, ``1G``)."""

    name = "size"

    def convert(self, value: object, param: object, ctx: object) -> int:
        if isinstance(value, int):
            return value
        text = str(value).strip().lower().removesuffix("ib").removesuffix("b")
        factor = SIZE_SUFFIXES.get(text[-1:], 1)
        number = text[:-1] if text[-1:] in SIZE_SUFFIXES else text
        try:
            size = int(float(number) * factor)
        except ValueError:
            self.fail(f"{value!r} is not a size like 1048576, 64M or 1G", param, ctx)  # type: ignore[arg-type]
        if size <= 0:
            self.fail("the size must be positive", param, ctx)  # type: ignore[arg-type]
        return size


class Duration(click.ParamType):
    """Seconds, or a duration like ``60s``, ``5m``, ``500ms``."""

    name = "duration"

    def convert(self, value: object, param: object, ctx: object) -> float:
        from ..serving.autoscale.config import parse_duration

        try:
            return parse_duration(value)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)  # type: ignore[arg-type]


def _autoscaling_options(fn: Any) -> Any:
    """The server-wide defaults of model.yaml's ``autoscaling:`` fields."""
    options = [
        ("--min-replicas", "min_replicas", click.IntRange(0),
         "Replicas an autoscaled model keeps at least; 0 lets it scale to zero [default: 1]."),
        ("--max-replicas", "max_replicas", click.IntRange(1),
         "Replicas an autoscaled model may have at most [default: 1]."),
        ("--target-concurrency", "target_concurrency", click.FloatRange(0, min_open=True),
         "In-flight requests per replica the autoscaler aims at [default: 1]."),
        ("--stable-window", "stable_window", Duration(),
         "Window the autoscaler averages concurrency over (Knative's window) [default: 60s]."),
        ("--panic-window", "panic_window", Duration(),
         "Short window that reacts to bursts [default: 6s]."),
        ("--panic-threshold", "panic_threshold", click.FloatRange(1.0),
         "Panic when the panic window asks for this many times the ready replicas "
         "[default: 2.0]."),
        ("--scale-to-zero-after", "scale_to_zero_after", Duration(),
         "Idle time after which a model with min_replicas 0 has no replica [default: 300s]."),
    ]
    for flag, dest, kind, text in reversed(options):
        env = "SHOAL_" + dest.upper()
        fn = click.option(flag, dest, envvar=env, default=None, type=kind, show_envvar=True,
                          help=text)(fn)
    return fn


@main.command()
@click.argument("repository", envvar="SHOAL_REPOSITORY", type=REPOSITORY)
@click.option("--cache-dir", envvar="SHOAL_CACHE_DIR", default=None, show_envvar=True,
              type=click.Path(file_okay=False, path_type=Path), help=CACHE_DIR_HELP)
@click.option("--host", envvar="SHOAL_HOST", default="127.0.0.1", show_default=True, show_envvar=True,
              help="Interface to bind; 0.0.0.0 (or ::) listens on all interfaces.")
@click.option("--http-port", envvar="SHOAL_HTTP_PORT", default=8080, show_default=True, type=click.IntRange(0, 65535),
              show_envvar=True, help="REST port (V2 and V1); 0 picks a free port.")
@click.option("--grpc-port", envvar="SHOAL_GRPC_PORT", default=8081, show_default=True, type=click.IntRange(0, 65535),
              show_envvar=True, help="V2 gRPC port; 0 picks a free port.")
@click.option("--max-request-size", envvar="SHOAL_MAX_REQUEST_SIZE", default="64M", show_default=True, type=ByteSize(),
              show_envvar=True, help="Largest REST body or gRPC message accepted (413 / RESOURCE_EXHAUSTED).")
@click.option("--max-header-size", envvar="SHOAL_MAX_HEADER_SIZE", default="64K", show_default=True,
              type=ByteSize(), show_envvar=True,
              help="Largest REST request line + headers accepted (431, and the connection closes).")
@click.option("--header-timeout", envvar="SHOAL_HEADER_TIMEOUT", default=10.0, show_default=True,
              type=click.FloatRange(0), show_envvar=True,
              help="Seconds a REST request line + headers may take to arrive, from their first "
                   "byte or from the connection's start (408, and the connection closes); 0: no limit.")
@click.option("--drain-timeout", envvar="SHOAL_DRAIN_TIMEOUT", default=30.0, show_default=True, type=click.FloatRange(0),
              show_envvar=True, help="Seconds in-flight requests may take to finish on SIGTERM.")
@click.option("--log-level", envvar="SHOAL_LOG_LEVEL", default="info", show_default=True, show_envvar=True,
              type=click.Choice(["debug", "info", "warning", "error"], case_sensitive=False))
@click.option("--model-threads", envvar="SHOAL_MODEL_THREADS", default=None, type=click.IntRange(1), show_envvar=True,
              help="Threads running blocking model code (default: 2 per core, at least 4).")
@click.option("--max-batch-size", envvar="SHOAL_MAX_BATCH_SIZE", default=0, show_default=True,
              type=click.IntRange(0), show_envvar=True,
              help="Adaptive batching for models whose model.yaml does not say: most rows per "
                   "predict (0 or 1: off).")
@click.option("--max-batch-delay-ms", envvar="SHOAL_MAX_BATCH_DELAY_MS", default=0.0,
              show_default=True, type=click.FloatRange(0), show_envvar=True,
              help="How long a batch may wait for more requests (0: batch only what queued "
                   "while the model was busy).")
@click.option("--max-inflight", envvar="SHOAL_MAX_INFLIGHT", default=0, show_default=True,
              type=click.IntRange(0), show_envvar=True,
              help="Requests in flight per model version before new ones get 503 with "
                   "Retry-After (gRPC: RESOURCE_EXHAUSTED); 0: no limit.")
@click.option("--request-timeout", envvar="SHOAL_REQUEST_TIMEOUT", default=0.0, show_default=True,
              type=click.FloatRange(0), show_envvar=True,
              help="Seconds a request may take at its model before a 504 (gRPC: "
                   "DEADLINE_EXCEEDED); 0: none.")
@click.option("--workers", envvar="SHOAL_WORKERS", default=0, show_default=True,
              type=click.IntRange(0), show_envvar=True,
              help="Worker processes running each model's code, for GIL-bound Python models "
                   "(model.yaml `workers:` overrides per model); 0: in the server process.")
@click.option("--http-workers", envvar="SHOAL_HTTP_WORKERS", default=1, show_default=True,
              type=click.IntRange(1), show_envvar=True,
              help="Server processes sharing the HTTP and gRPC ports (SO_REUSEPORT), each "
                   "with its own copy of the models; /metrics adds them up.")
@click.option("--state-dir", envvar="SHOAL_STATE_DIR", default=None, show_envvar=True,
              type=click.Path(file_okay=False, path_type=Path),
              help="Where graphs keep bandit router state and rollouts their records (shared by "
                   "server processes that point at the same folder) "
                   "[default: REPOSITORY/.shoal-state].")
@click.option("--admin-token", envvar="SHOAL_ADMIN_TOKEN", default=None, show_envvar=True,
              help="Bearer token that repository load/unload and rollout changes require "
                   "(REST 'Authorization: Bearer ...', gRPC 'authorization' metadata); "
                   "unset: they are open.")
@click.option("--tls-cert", envvar="SHOAL_TLS_CERT", default=None, show_envvar=True,
              type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="PEM certificate (chain) for TLS on both ports; needs --tls-key. "
                   "Unset: plain HTTP and gRPC.")
@click.option("--tls-key", envvar="SHOAL_TLS_KEY", default=None, show_envvar=True,
              type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="PEM private key (unencrypted) of --tls-cert.")
@click.option("--tls-ca", envvar="SHOAL_TLS_CA", default=None, show_envvar=True,
              type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="PEM CA certificate(s): both ports then require a client certificate "
                   "signed by it (mutual TLS).")
@click.option("--watch", envvar="SHOAL_WATCH", is_flag=True, default=False, show_envvar=True,
              help="Poll the repository: load new model folders, reload changed ones (new or "
                   "removed version folders, changed files), unload removed ones.")
@click.option("--watch-interval", envvar="SHOAL_WATCH_INTERVAL", default=2.0, show_default=True,
              type=click.FloatRange(0, min_open=True), show_envvar=True,
              help="Seconds between two looks at the repository with --watch; a folder is "
                   "acted on once it has stayed unchanged this long.")
@click.option("--payload-log", envvar="SHOAL_PAYLOAD_LOG", default=None, show_envvar=True,
              help="Log every request and response as CloudEvents to this sink, for models "
                   "and graphs whose model.yaml / graph.yaml has no logger: block: "
                   "http(s)://host/path, kafka://host:port/topic or file:///directory.")
@click.option("--payload-log-spool-size", envvar="SHOAL_PAYLOAD_LOG_SPOOL_SIZE", default="1G",
              show_default=True, type=ByteSize(), show_envvar=True,
              help="Disk the payload log may use (under --state-dir) for records a sink cannot "
                   "take yet; beyond it records are dropped, and counted.")
@click.option("--otel-endpoint", envvar="SHOAL_OTEL_ENDPOINT", default=None, show_envvar=True,
              help="Send OpenTelemetry traces to this OTLP/HTTP collector (base URL, e.g. "
                   "http://collector:4318; /v1/traces is appended). Unset: traced only if "
                   "the standard OTEL_* variables ask for it. Needs pip install 'shoal[otel]'.")
@click.option("--no-ui", envvar="SHOAL_NO_UI", is_flag=True, default=False, show_envvar=True,
              help="Turn the web dashboard (/ui on the HTTP port) off, and the in-memory "
                   "time series sampled for its charts.")
@click.option("--autoscale", envvar="SHOAL_AUTOSCALE", is_flag=True, default=False,
              show_envvar=True,
              help="Autoscale every model (replicas in worker processes that follow the load, "
                   "down to zero) unless its model.yaml says autoscaling: false; otherwise only "
                   "models with an autoscaling: block are. See docs/autoscaling.md.")
@_autoscaling_options
@click.option("--memory-budget", envvar="SHOAL_MEMORY_BUDGET", default=None, type=ByteSize(),
              show_envvar=True,
              help="Memory the replicas of autoscaled models may take together (e.g. 4G): "
                   "least recently used idle models are scaled to zero to make room. "
                   "Unset: no budget.")
@click.option("--gpus", envvar="SHOAL_GPUS", default=None, show_envvar=True,
              help="GPUs replicas may use, as CUDA_VISIBLE_DEVICES names them (0,1), or "
                   "'none'. Unset: found with NVML or nvidia-smi.")
def serve(repository: Path | str, cache_dir: Path | None, host: str, http_port: int,
          grpc_port: int, max_request_size: int,
          max_header_size: int, header_timeout: float, drain_timeout: float, log_level: str,
          model_threads: int | None,
          max_batch_size: int, max_batch_delay_ms: float, max_inflight: int,
          request_timeout: float, workers: int, http_workers: int,
          state_dir: Path | None, admin_token: str | None, tls_cert: Path | None,
          tls_key: Path | None, tls_ca: Path | None, watch: bool, watch_interval: float,
          payload_log: str | None, payload_log_spool_size: int,
          otel_endpoint: str | None, no_ui: bool, autoscale: bool,
          memory_budget: int | None, gpus: str | None, **autoscaling: Any) -> None:
    """Serve every model in REPOSITORY (one folder per model): a folder, or s3://bucket/prefix,
    gs://bucket/prefix or an https:// tar.gz / zip archive, fetched into --cache-dir first."""
    if (tls_cert is None) != (tls_key is None):
        missing = "--tls-key" if tls_key is None else "--tls-cert"
        raise click.UsageError(f"--tls-cert and --tls-key go together: {missing} is missing")
    if tls_ca is not None and tls_cert is None:
        raise click.UsageError("--tls-ca (client certificates) needs --tls-cert and --tls-key")
    if payload_log:
        from ..observe.payload.config import parse_sink_url

        try:
            parse_sink_url(payload_log)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--payload-log") from None
    if otel_endpoint:
        from ..observe.tracing import check_endpoint

        try:
            check_endpoint(otel_endpoint)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--otel-endpoint") from None

    devices = None
    if gpus is not None:
        from ..serving.autoscale.gpus import parse_devices

        try:
            devices = parse_devices(gpus)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--gpus") from None
    defaults = {key: value for key, value in autoscaling.items() if value is not None}
    if defaults:
        from ..serving.autoscale.config import AutoscalingConfig

        try:
            AutoscalingConfig(**defaults)
        except ValueError as exc:
            raise click.UsageError(f"autoscaling defaults: {exc}") from None

    settings = ServerSettings(
        repository=repository, cache_dir=cache_dir, host=host, http_port=http_port,
        grpc_port=grpc_port,
        max_request_size=max_request_size, max_header_size=max_header_size,
        header_timeout=header_timeout, drain_timeout=drain_timeout,
        log_level=log_level.lower(), model_threads=model_threads,
        max_batch_size=max_batch_size, max_batch_delay_ms=max_batch_delay_ms,
        max_inflight=max_inflight, request_timeout=request_timeout, workers=workers,
        http_workers=http_workers, state_dir=state_dir, admin_token=admin_token or None,
        tls_cert=tls_cert, tls_key=tls_key, tls_ca=tls_ca,
        watch=watch, watch_interval=watch_interval,
        payload_log=payload_log or None, payload_log_spool_size=payload_log_spool_size,
        otel_endpoint=otel_endpoint or None, ui=not no_ui,
        autoscale=autoscale, autoscaling_defaults=defaults, memory_budget=memory_budget,
        gpus=devices,
    )
    from .. import _startup

    _startup.begin()  # before the server's imports (see shoal._startup); run() ends it
    try:
        from ..server.app import exit_now, run
    except BaseException:
        _startup.end()
        raise
    run(settings)
    exit_now()

