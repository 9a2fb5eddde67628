"""The pod every unit runs: init containers that fetch and lay out the repository, and the
``shoal serve`` container.

- ``fetch`` (repositories in object storage only): ``shoal fetch URI /mnt/models/source``
  into an ``emptyDir``. An init container must succeed before the server container starts,
  so a pod never serves a half-downloaded model; a failed fetch restarts the init container
  (``kubectl describe pod`` shows the store's reason).
- ``view``: ``shoal k8s view`` lays out the unit's repository (:mod:`shoal.deploy.view`) in
  ``/mnt/models/repo``, from the fetched folder or the one baked into the image (``/models``).
- ``shoal``: ``shoal serve /mnt/models/repo`` on 0.0.0.0, REST on 8080 and gRPC on 8081,
  probed on ``/v2/health/live`` and ``/v2/health/ready``, as the image's non-root user. A
  ``runtime: process`` model's program runs inside this container, started by the server (the
  image must contain that program's runtime: ``docs/kubernetes.md``).
"""

from __future__ import annotations

import json
import math
from typing import Any

from .spec import GRPC_PORT, HTTP_PORT, IMAGE_REPOSITORY, MOUNT, RUN_AS_USER, DeploySpec
from .units import Unit

VOLUME = "models"
#: Seconds the server keeps accepting connections after SIGTERM is due (preStop), so that
#: endpoints and proxies stop sending before it stops listening.
PRESTOP_SECONDS = 5
#: Added to the drain timeout: the server's own abort margin and worker shutdown.
GRACE_MARGIN_SECONDS = 5
GPU_RESOURCE = "nvidia.com/gpu"


def termination_grace(spec: DeploySpec) -> int:
    return math.ceil(spec.drain_timeout) + PRESTOP_SECONDS + GRACE_MARGIN_SECONDS


def mesh_annotations(spec: DeploySpec) -> dict[str, str]:
    """Pod annotations for an Istio sidecar (``--istio``; Knative in an injected namespace):

    - ``sidecar.istio.io/nativeSidecar``: Envoy runs as a native sidecar (an init container
      that keeps running, Istio 1.19+ on Kubernetes 1.28+), started before the ``fetch`` init
      container, whose traffic to S3/GCS the mesh redirects to Envoy: with a classic sidecar
      that traffic goes to an Envoy that is not running yet, and the fetch fails.
    - ``proxy.istio.io/config`` ``terminationDrainDuration``: Envoy keeps serving while the
      server drains (preStop + drain timeout), rather than closing after its default 5 s.
    """
    drain = math.ceil(spec.drain_timeout) + PRESTOP_SECONDS
    return {
        "sidecar.istio.io/nativeSidecar": "true",
        "proxy.istio.io/config": json.dumps({"terminationDrainDuration": f"{drain}s"},
                                            separators=(",", ":")),
    }


def container_security() -> dict[str, Any]:
    return {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "runAsNonRoot": True,
        "runAsUser": RUN_AS_USER,
        "runAsGroup": RUN_AS_USER,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def server_args(spec: DeploySpec) -> list[str]:
    args = ["serve", f"{MOUNT}/repo", "--host", "0.0.0.0",
            "--http-port", str(HTTP_PORT), "--grpc-port", str(GRPC_PORT),
            "--drain-timeout", f"{spec.drain_timeout:g}"]
    gpus = spec.gpus()
    if gpus:
        # The device plugin shows the pod its own GPUs only, numbered from 0.
        args += ["--gpus", ",".join(str(i) for i in range(gpus))]
    return args


def init_containers(spec: DeploySpec, unit: Unit) -> list[dict[str, Any]]:
    mounts = [{"name": VOLUME, "mountPath": MOUNT}]
    containers = []
    if spec.uri is not None:
        fetch: dict[str, Any] = {
            "name": "fetch", "image": spec.image, "command": ["shoal"],
            "args": ["fetch", spec.uri, f"{MOUNT}/source", *_only(spec, unit)],
            "volumeMounts": mounts, "securityContext": container_security(),
        }
        if spec.storage_secret:
            fetch["envFrom"] = [{"secretRef": {"name": spec.storage_secret}}]
        containers.append(fetch)
    source = f"{MOUNT}/source" if spec.uri is not None else IMAGE_REPOSITORY
    containers.append({
        "name": "view", "image": spec.image, "command": ["shoal"],
        "args": ["k8s", "view", source, f"{MOUNT}/repo",
                 "--plan", json.dumps(unit.plan, sort_keys=True, separators=(",", ":"))],
        "volumeMounts": mounts, "securityContext": container_security(),
    })
    return containers


def _only(spec: DeploySpec, unit: Unit) -> list[str]:
    if not spec.fetch_only:
        return []
    folders = sorted({str(entry.get("from", name)) for name, entry in unit.plan["models"].items()})
    return [arg for folder in folders for arg in ("--model", folder)]


def _probe(path: str, port: int | str | None, **timing: int) -> dict[str, Any]:
    get: dict[str, Any] = {"path": path}
    if port is not None:
        get["port"] = port
    return {"httpGet": get, **timing}


def server_container(spec: DeploySpec, knative: bool) -> dict[str, Any]:
    container: dict[str, Any] = {
        "name": "shoal", "image": spec.image, "command": ["shoal"], "args": server_args(spec),
    }
    if knative:
        # Knative exposes one port: REST (HTTP/1.1), or gRPC as h2c.
        if spec.protocol == "grpc":
            container["ports"] = [{"name": "h2c", "containerPort": GRPC_PORT}]
            probe_port: int | None = HTTP_PORT
        else:
            container["ports"] = [{"name": "http1", "containerPort": HTTP_PORT}]
            probe_port = None
        # periodSeconds 0: Knative's queue-proxy probes aggressively until ready.
        container["readinessProbe"] = _probe("/v2/health/ready", probe_port, successThreshold=1)
        container["livenessProbe"] = _probe("/v2/health/live", probe_port, periodSeconds=10,
                                            timeoutSeconds=5, failureThreshold=6)
    else:
        container["ports"] = [{"name": "http", "containerPort": HTTP_PORT, "protocol": "TCP"},
                              {"name": "grpc", "containerPort": GRPC_PORT, "protocol": "TCP"}]
        container["readinessProbe"] = _probe("/v2/health/ready", "http", periodSeconds=5,
                                             timeoutSeconds=2, failureThreshold=3,
                                             successThreshold=1)
        container["livenessProbe"] = _probe("/v2/health/live", "http", periodSeconds=10,
                                            timeoutSeconds=5, failureThreshold=6)
        container["lifecycle"] = {"preStop": {"exec": {"command": ["sleep", str(PRESTOP_SECONDS)]}}}
    env = []
    if spec.admin_token_secret:
        env.append({"name": "SHOAL_ADMIN_TOKEN", "valueFrom": {"secretKeyRef": {
            "name": spec.admin_token_secret, "key": "token"}}})
    if env:
        container["env"] = env
    resources = spec.resources()
    if resources:
        container["resources"] = resources
    container["volumeMounts"] = [{"name": VOLUME, "mountPath": MOUNT}]
    container["securityContext"] = container_security()
    return container


def pod_spec(spec: DeploySpec, unit: Unit, knative: bool) -> dict[str, Any]:
    pod: dict[str, Any] = {}
    if spec.service_account:
        pod["serviceAccountName"] = spec.service_account
    if not knative:
        pod["automountServiceAccountToken"] = False
        # Service links would put variables like SHOAL_HTTP_PORT=tcp://... (a Service named
        # shoal-http) into the environment, which `shoal serve` reads as its own.
        pod["enableServiceLinks"] = False
        pod["terminationGracePeriodSeconds"] = termination_grace(spec)
        pod["securityContext"] = {"runAsNonRoot": True, "runAsUser": RUN_AS_USER,
                                  "runAsGroup": RUN_AS_USER, "fsGroup": RUN_AS_USER,
                                  "seccompProfile": {"type": "RuntimeDefault"}}
    else:
        timeout = spec.max_timeout()
        if timeout is not None and timeout > 300:
            pod["timeoutSeconds"] = math.ceil(timeout) + 1
        concurrency = spec.container_concurrency()
        pod["containerConcurrency"] = concurrency
    pod["initContainers"] = init_containers(spec, unit)
    pod["containers"] = [server_container(spec, knative)]
    if spec.gpus():
        pod["tolerations"] = [{"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}]
    pod["volumes"] = [{"name": VOLUME, "emptyDir": {}}]
    return pod
