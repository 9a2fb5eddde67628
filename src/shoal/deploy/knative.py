"""``--mode knative``: one Knative Service; a canary is a revision of its own.

- The revision template carries the KPA annotations (:func:`~shoal.deploy.autoscalers.knative_annotations`),
  ``containerConcurrency`` (the models' ``max_inflight`` added up, when every model sets
  one) and one port: REST on 8080 (``http1``), or gRPC on 8081 named ``h2c`` with
  ``--protocol grpc`` (Knative routes one port per Service).
- Revision names are content-addressed: ``NAME-<version>-<hash of the template>``. Applying
  the same render again changes nothing, a changed setting makes a new revision (Knative
  refuses a changed template under an old name), and the stable revision a canary's traffic
  block names is the one the same settings rendered without the canary: the revision that
  is running.
- With a canary the template is the canary's; ``traffic`` sends ``100 - percent`` to the
  stable revision (tag ``stable``) and ``percent`` to the canary (tag ``canary``), each also
  reachable at its tag's own URL. Without one, all traffic goes to the latest revision.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from dataclasses import replace
from typing import Any

from ..serving.autoscale.config import AutoscalingConfig, ResolvedAutoscaling
from .autoscalers import knative_annotations
from .pod import mesh_annotations, pod_spec
from .spec import GRPC_PORT, HTTP_PORT, DeploySpec
from .units import DeployWarning, Layout, Unit, plan_units

#: Knative's revision names are DNS labels.
MAX_NAME = 63


def scaling(spec: DeploySpec) -> ResolvedAutoscaling:
    if spec.autoscaling_override is None and not any(m.autoscaling for m in spec.models):
        # No autoscaling: block: Shoal's meaning, a fixed count (--replicas).
        return AutoscalingConfig(min_replicas=spec.replicas,
                                 max_replicas=max(spec.replicas, 1)).resolved()
    return spec.autoscaling()


def template(spec: DeploySpec, unit: Unit) -> dict[str, Any]:
    body: dict[str, Any] = {
        "metadata": {
            "labels": {"app": spec.name, "version": unit.version},
            # The sidecar annotations do nothing outside an Istio-injected namespace.
            "annotations": {**knative_annotations(scaling(spec)), **mesh_annotations(spec)},
        },
        "spec": pod_spec(spec, unit, knative=True),
    }
    digest = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:7]
    prefix = f"{spec.name}-{unit.version}"[: MAX_NAME - len(digest) - 1].rstrip("-")
    body["metadata"] = {"name": f"{prefix}-{digest}", **body["metadata"]}
    return body


def knative_service(spec: DeploySpec, layout: Layout) -> dict[str, Any]:
    stable = layout.unit("stable")
    canary = layout.unit("canary")
    assert stable is not None
    current = template(spec, canary or stable)
    if canary is None:
        traffic: list[dict[str, Any]] = [{"latestRevision": True, "percent": 100}]
    else:
        percent = float(layout.canary_percent or 0.0)
        whole = round(percent)
        if whole != percent:
            warnings.warn(f"Knative splits traffic in whole percents: the canary gets {whole}%, "
                          f"not {percent:g}%", DeployWarning, stacklevel=2)
        stable_revision = spec.stable_revision or _stable_revision(spec, layout, stable)
        traffic = [
            {"revisionName": stable_revision, "percent": 100 - whole, "tag": "stable"},
            {"revisionName": current["metadata"]["name"], "percent": whole, "tag": "canary"},
        ]
    return {
        "apiVersion": "serving.knative.dev/v1",
        "kind": "Service",
        "metadata": spec.metadata(spec.name),
        "spec": {"template": current, "traffic": traffic},
    }


def _stable_revision(spec: DeploySpec, layout: Layout, stable: Unit) -> str:
    """The stable revision's name: the template of the stable variant without the canary,
    which is the revision running when the repository had ``rollout: {stable: ...}`` before.
    When the repository had no rollout before, the running revision is the one rendered
    without it, and that is another name where the rollout changes what the revision serves
    (``version_policy: all`` or ``{latest: 2}``, a stable that is not the newest version):
    said with a DeployWarning (pass ``stable_revision``, ``--stable-revision``)."""
    name = str(template(spec, stable)["metadata"]["name"])
    plain = _without_rollout(spec, layout.model)
    if plain is not None and plain != name:
        warnings.warn(
            f"{layout.model}: the canary's stable revision is {name} (what this repository "
            f"renders with its rollout's stable variant and no canary); without the rollout "
            f"it renders {plain}. If that is the revision running, pass --stable-revision "
            f"{plain} (or the running revision: kubectl get ksvc {spec.name} -o "
            "jsonpath='{.status.latestReadyRevisionName}'), else Knative refuses the traffic "
            "block", DeployWarning, stacklevel=3)
    return name


def _without_rollout(spec: DeploySpec, model: str | None) -> str | None:
    if model is None:
        return None
    models = [replace(m, config=m.config.model_copy(update={"rollout": None}))
              if m.name == model else m for m in spec.models]
    bare = replace(spec, models=models, rollout_override=None)
    try:
        layout = plan_units(bare)
    except ValueError:
        return None
    return str(template(bare, layout.units[0])["metadata"]["name"])


def pod_monitor(spec: DeploySpec) -> dict[str, Any]:
    endpoint: dict[str, Any] = {"targetPort": HTTP_PORT, "path": "/metrics", "interval": "15s"}
    if spec.protocol == "grpc":
        # Knative declares one container port (h2c, 8081), and Prometheus discovers a pod's
        # declared ports only: select that one, and scrape the REST port (where /metrics is)
        # of the same pod IP instead (IPv6 addresses in brackets).
        endpoint["targetPort"] = GRPC_PORT
        endpoint["relabelings"] = [
            {"sourceLabels": ["__meta_kubernetes_pod_ip"], "regex": "(.+:.+)",
             "targetLabel": "__address__", "replacement": f"[$1]:{HTTP_PORT}",
             "action": "replace"},
            {"sourceLabels": ["__meta_kubernetes_pod_ip"], "regex": "([^:]+)",
             "targetLabel": "__address__", "replacement": f"$1:{HTTP_PORT}",
             "action": "replace"},
        ]
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PodMonitor",
        "metadata": spec.metadata(spec.name),
        "spec": {
            "selector": {"matchLabels": {"serving.knative.dev/service": spec.name}},
            "podMetricsEndpoints": [endpoint],
        },
    }


def render_knative(spec: DeploySpec, layout: Layout) -> list[dict[str, Any]]:
    objects = [knative_service(spec, layout)]
    if spec.monitor:
        objects.append(pod_monitor(spec))
    return objects
