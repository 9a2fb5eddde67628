"""What to deploy: a repository's models and the settings their ``model.yaml`` files give.

:func:`read_repository` reads a local repository folder with Shoal's own config code
(:func:`~shoal.repository.layout.model_names`, :func:`~shoal.repository.config.read_config`,
:func:`~shoal.repository.layout.version_dirs`): which models and graphs it has, which versions
each serves, and their ``autoscaling``, ``rollout``, ``workers``, ``resources``,
``max_inflight`` and ``timeout``. :class:`DeploySpec` adds what the command line says (name,
image, mode, autoscaler, mesh) and combines the per-model settings into the ones a pod takes:
a pod serves every model of the repository, as ``shoal serve`` does.
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ..errors import LoadError
from ..repository.config import ModelConfig, read_config
from ..repository.layout import model_names, version_dirs
from ..serving.autoscale.config import AutoscalingConfig, ResolvedAutoscaling

Mode = Literal["standard", "knative"]
Autoscaler = Literal["none", "hpa", "keda"]
Metric = Literal["concurrency", "cpu", "gpu"]
Protocol = Literal["rest", "grpc"]

MODES = ("standard", "knative")
AUTOSCALERS = ("none", "hpa", "keda")
METRICS = ("concurrency", "cpu", "gpu")
PROTOCOLS = ("rest", "grpc")

HTTP_PORT = 8080
GRPC_PORT = 8081
#: Where the pod's emptyDir is mounted: ``source/`` (what ``shoal fetch`` wrote) and
#: ``repo/`` (the view ``shoal k8s view`` builds, which ``shoal serve`` serves).
MOUNT = "/mnt/models"
#: Where a repository baked into the image lives (``COPY models/ /models/``).
IMAGE_REPOSITORY = "/models"
#: The image's non-root user (the Dockerfile's ``shoal`` user).
RUN_AS_USER = 10001

#: The longest variant slug: NAME (40) + "-" + slug fits a DNS label (63).
MAX_SLUG = 22
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


class RenderError(ValueError):
    """The repository or the options cannot be rendered; the message says which and why."""


@dataclass(frozen=True)
class ModelInfo:
    """One model (or graph) folder of the repository, as the server would read it."""

    name: str
    folder: Path
    config: ModelConfig
    #: Every version folder there is (``[1]`` for a model without version folders).
    versions: list[int]
    #: The versions the version policy serves.
    served: list[int]
    #: Whether the model has numbered version folders (else its files are version 1).
    versioned: bool
    graph: bool = False

    @property
    def autoscaling(self) -> AutoscalingConfig | None:
        value = self.config.autoscaling
        return value if isinstance(value, AutoscalingConfig) else None

    def replicas_in_pod(self) -> int:
        """Worker processes of this model in one pod: ``workers`` (or 1)."""
        return max(self.config.workers or 1, 1)


def read_repository(root: Path, only: list[str] | None = None) -> list[ModelInfo]:
    """The models of a local repository folder (all of them, or those named in ``only``)."""
    from ..repository.manager import serves_graph

    if not root.is_dir():
        raise RenderError(f"{root} is not a folder")
    names = model_names(root)
    if only:
        missing = [n for n in only if n not in names]
        if missing:
            raise RenderError(f"--model {missing[0]}: the repository has no such model "
                              f"(it has {', '.join(names) or 'none'})")
        names = [n for n in names if n in only]
    if not names:
        raise RenderError(f"{root} has no model folders: nothing to deploy")
    models = []
    for name in names:
        folder = root / name
        graph = serves_graph(folder)
        try:
            config = ModelConfig() if graph else read_config(folder)
        except LoadError as exc:
            raise RenderError(f"{name}: {exc}") from None
        dirs = version_dirs(folder)
        versioned = dirs != {1: folder}
        versions = sorted(dirs)
        models.append(ModelInfo(name, folder, config, versions, config.select_versions(versions),
                                versioned, graph))
    return models


def check_name(name: str) -> str:
    """A Kubernetes object name that also fits the derived names (``NAME-canary``)."""
    if not _DNS_LABEL.fullmatch(name) or len(name) > 40:
        raise RenderError(
            f"--name {name!r}: use lower-case letters, digits and '-' (a DNS label), "
            "starting and ending with a letter or digit, at most 40 characters"
        )
    return name


def slug(text: str) -> str:
    """A DNS-label fragment from a variant or model name (``iris_xgb:2`` -> ``iris-xgb-v2``)."""
    name, _, version = text.partition(":")
    if name.isdigit():
        return f"v{name}"
    out = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "model"
    out = f"{out}-v{version}" if version else out
    if len(out) > MAX_SLUG:  # NAME-<slug> must stay a DNS label: shorten, keep it unique
        digest = hashlib.sha256(text.encode()).hexdigest()[:6]
        out = f"{out[: MAX_SLUG - 7].rstrip('-')}-{digest}"
    return out


@dataclass
class DeploySpec:
    """Everything :func:`shoal.deploy.render` needs; see its docstring for each field."""

    name: str
    image: str
    models: list[ModelInfo]
    #: Where pods get the repository: an object-storage URI fetched by an init container, or
    #: None for a repository baked into the image at :data:`IMAGE_REPOSITORY`.
    uri: str | None = None
    mode: Mode = "standard"
    autoscaler: Autoscaler = "none"
    metric: Metric = "concurrency"
    istio: bool = False
    protocol: Protocol = "rest"
    namespace: str | None = None
    drain_timeout: float = 30.0
    replicas: int = 1
    cpu_target: int = 80
    gpu_target: int = 80
    prometheus_url: str = "http://prometheus-operated.monitoring.svc:9090"
    monitor: bool = True
    service_account: str | None = None
    storage_secret: str | None = None
    admin_token_secret: str | None = None
    stable_revision: str | None = None
    #: Fetch only the model folders the pods serve (``shoal fetch --model``), not the whole
    #: repository (set when ``models`` restricts what is served).
    fetch_only: bool = False
    #: Replace what the models' files say (the ShoalService's spec does this).
    autoscaling_override: dict[str, Any] | None = None
    rollout_override: dict[str, Any] | None = None
    resources_override: dict[str, Any] | None = None
    labels: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_name(self.name)
        for value, allowed, option in ((self.mode, MODES, "--mode"),
                                       (self.autoscaler, AUTOSCALERS, "--autoscaler"),
                                       (self.metric, METRICS, "--metric"),
                                       (self.protocol, PROTOCOLS, "--protocol")):
            if value not in allowed:
                raise RenderError(f"{option} {value!r}: use one of {', '.join(allowed)}")
        if not self.image or any(c.isspace() for c in self.image):
            raise RenderError(f"--image {self.image!r} is not an image reference")
        if self.mode == "knative":
            if self.autoscaler != "none":
                raise RenderError("--autoscaler is for --mode standard: a Knative Service "
                                  "scales with Knative's own autoscaler (KPA)")
            if self.istio:
                raise RenderError("--istio is for --mode standard: Knative routes traffic "
                                  "itself (its traffic blocks)")
        if self.metric == "gpu" and self.autoscaler != "keda":
            raise RenderError("--metric gpu (DCGM GPU utilisation) needs --autoscaler keda")
        if self.metric == "gpu" and not self.gpus():
            raise RenderError("--metric gpu: no model of the repository asks for GPUs "
                              "(resources.gpus in model.yaml)")
        if self.drain_timeout < 0:
            raise RenderError("--drain-timeout cannot be negative")
        if self.uri is not None:
            check_pod_uri(self.uri)

    # -- what the labels and names are -------------------------------------------------------

    def base_labels(self) -> dict[str, str]:
        return {"app.kubernetes.io/name": "shoal", "app.kubernetes.io/instance": self.name,
                "app.kubernetes.io/managed-by": "shoal", "app": self.name, **self.labels}

    def metadata(self, name: str, labels: dict[str, str] | None = None) -> dict[str, Any]:
        meta: dict[str, Any] = {"name": name}
        if self.namespace:
            meta["namespace"] = self.namespace
        meta["labels"] = {**self.base_labels(), **(labels or {})}
        return meta

    # -- settings combined over the models a pod serves ---------------------------------------

    @property
    def platform_scales(self) -> bool:
        """Whether Kubernetes scales the pods (then each pod runs its models at a fixed count)."""
        return self.mode == "knative" or self.autoscaler != "none"

    def autoscaling(self) -> ResolvedAutoscaling:
        """One pod's autoscaling: a pod serves every model, so each field takes the most
        cautious of the models' values (highest minimum and maximum, lowest target, longest
        windows, lowest panic threshold)."""
        if self.autoscaling_override is not None:
            try:
                return AutoscalingConfig(**self.autoscaling_override).resolved()
            except ValueError as exc:
                raise RenderError(f"autoscaling: {exc}") from None
        configs = [m.autoscaling for m in self.models if m.autoscaling is not None]
        if not configs:
            raise RenderError(
                "no model of the repository has an autoscaling: block in its model.yaml "
                "(docs/autoscaling.md); add one, or render without an autoscaler"
            )
        resolved = [c.resolved() for c in configs]
        stable = max(r.stable_window for r in resolved)
        return ResolvedAutoscaling(
            min_replicas=max(r.min_replicas for r in resolved),
            max_replicas=max(r.max_replicas for r in resolved),
            target_concurrency=min(r.target_concurrency for r in resolved),
            stable_window=stable,
            panic_window=min(min(r.panic_window for r in resolved), stable),
            panic_threshold=min(r.panic_threshold for r in resolved),
            scale_to_zero_after=max(r.scale_to_zero_after for r in resolved),
        )

    def gpus(self) -> int:
        """GPUs one pod needs: per model, its replicas in the pod times ``resources.gpus``,
        shared ``gpu_share`` ways; added up."""
        if self.resources_override is not None and "gpus" in self.resources_override:
            return int(self.resources_override["gpus"])
        total = 0
        for model in self.models:
            res = model.config.resources
            if res is not None and res.gpus:
                total += math.ceil(res.gpus * model.replicas_in_pod() / res.gpu_share)
        return total

    def resources(self) -> dict[str, Any]:
        """The server container's requests and limits: the models' ``cpu`` and ``memory``
        requests times their replicas in the pod, added up; memory is also the limit; GPUs
        are limits (``nvidia.com/gpu``)."""
        cpu_milli = 0
        memory = 0
        binary = False  # a memory amount was given in Ki, Mi, Gi...: write the sum that way
        for model in self.models:
            res = model.config.resources
            if res is None:
                continue
            if res.cpu is not None:
                cpu_milli += parse_cpu(res.cpu, model.name) * model.replicas_in_pod()
            if res.memory is not None:
                memory += parse_memory(res.memory, model.name) * model.replicas_in_pod()
                binary = binary or is_binary(res.memory)
        override = self.resources_override or {}
        if override.get("cpu") is not None:
            cpu_milli = parse_cpu(override["cpu"], "resources")
        if override.get("memory") is not None:
            memory = parse_memory(override["memory"], "resources")
            binary = is_binary(override["memory"])
        requests: dict[str, str] = {}
        limits: dict[str, str] = {}
        if cpu_milli:
            requests["cpu"] = f"{cpu_milli // 1000}" if cpu_milli % 1000 == 0 else f"{cpu_milli}m"
        if memory:
            requests["memory"] = limits["memory"] = format_bytes(memory, binary)
        gpus = self.gpus()
        if gpus:
            limits["nvidia.com/gpu"] = str(gpus)
        out: dict[str, Any] = {}
        if requests:
            out["requests"] = requests
        if limits:
            out["limits"] = limits
        return out

    def container_concurrency(self) -> int:
        """Knative's hard per-pod limit: the models' ``max_inflight`` added up when every
        model sets one, else 0 (no limit)."""
        limits = [m.config.max_inflight for m in self.models if not m.graph]
        if limits and all(limit for limit in limits):
            return sum(limit or 0 for limit in limits)
        return 0

    def max_timeout(self) -> float | None:
        timeouts = [m.config.timeout for m in self.models if m.config.timeout]
        return max(timeouts) if timeouts else None


_CPU = re.compile(r"^(\d+(?:\.\d+)?)(m?)$")
_MEMORY = re.compile(r"^(\d+(?:\.\d+)?)([KMGTPE]i?|k)?$")
_MEMORY_UNITS = {None: 1, "k": 1000, "K": 1000, "M": 1000**2, "G": 1000**3, "T": 1000**4,
                 "P": 1000**5, "E": 1000**6, "Ki": 1024, "Mi": 1024**2, "Gi": 1024**3,
                 "Ti": 1024**4, "Pi": 1024**5, "Ei": 1024**6}


def parse_cpu(value: Any, where: str) -> int:
    """Millicores from ``2``, ``"500m"`` or ``0.5``."""
    match = _CPU.fullmatch(str(value).strip())
    if match is None or isinstance(value, bool):
        raise RenderError(f"{where}: resources.cpu {value!r} is not a CPU amount like 2 or 500m")
    number = float(match.group(1))
    return max(1, round(number if match.group(2) else number * 1000))


def parse_memory(value: Any, where: str) -> int:
    """Bytes from ``"4Gi"``, ``"512M"`` or a number of bytes."""
    match = _MEMORY.fullmatch(str(value).strip())
    if match is None or isinstance(value, bool):
        raise RenderError(f"{where}: resources.memory {value!r} is not an amount like 4Gi or 512Mi")
    return math.ceil(float(match.group(1)) * _MEMORY_UNITS[match.group(2)])


def is_binary(value: Any) -> bool:
    """Whether a memory amount is written with a binary suffix (``Ki``, ``Mi``, ``Gi``...)."""
    return str(value).strip().endswith("i")


def format_bytes(value: int, binary: bool = True) -> str:
    """``value`` bytes as the API server writes the quantity back (its canonical form), so
    that applying the object again changes nothing: with the largest binary suffix that
    divides it (``512Mi``, ``1Ti``) when ``binary``, else (or when none divides it) the
    largest decimal one (``1G``, ``1500M``), else a plain number."""
    if binary:
        for unit in ("Ei", "Pi", "Ti", "Gi", "Mi", "Ki"):
            size = _MEMORY_UNITS[unit]
            if value % size == 0:
                return f"{value // size}{unit}"
    for unit in ("E", "P", "T", "G", "M", "k"):
        size = _MEMORY_UNITS[unit]
        if value % size == 0:
            return f"{value // size}{unit}"
    return str(value)


def check_pod_uri(uri: str) -> str:
    """A repository URI the pods may be given (it is written into the Deployment's args,
    readable by anyone who can read the Deployment): without a user, password or query
    string (a presigned URL's signature)."""
    from urllib.parse import urlsplit

    from ..repository.uris import display

    parts = urlsplit(uri)
    if "://" in uri and ("@" in parts.netloc or parts.query):
        raise RenderError(
            f"{display(uri)}: the repository URI carries credentials (a user, password or "
            "query string), which would be written into the manifests: give the URI without "
            "them, and the store's credentials in a Secret with --storage-secret")
    return uri


def quantity(value: float) -> str:
    """A Kubernetes quantity for a (possibly fractional) number: ``2``, ``1500m``."""
    if float(value).is_integer():
        return str(int(value))
    return f"{round(value * 1000)}m"
